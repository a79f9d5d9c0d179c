#!/usr/bin/env node
// /docs with the outside network cut: headless Chromium (playwright-core) loads Envoy's /docs
// while every request to a non-loopback address is aborted and recorded, waits for Swagger UI
// to render the route list, screenshots it, and runs "Try it out" on GET /api/v1/health.
// Run by tests/integration/browser.rs.
//
//   ENVOY_URL=http://127.0.0.1:8091 OUTPUT_DIR=tests/output/browser node tests/browser/docs.mjs
//
// Exit 0: every check passed. Exit 1: stderr says what failed.
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { CHROMIUM, launch } from "./chromium.mjs";

const TIMEOUT_MS = 90_000;

class Failure extends Error {}
const fail = (msg) => {
  throw new Failure(msg);
};

const isLoopback = (url) => {
  const host = new URL(url).hostname;
  return host === "localhost" || host === "[::1]" || /^127\.\d+\.\d+\.\d+$/.test(host);
};

async function main() {
  const envoyUrl = (process.env.ENVOY_URL || fail("ENVOY_URL is required")).replace(/\/+$/, "");
  if (!isLoopback(envoyUrl)) fail(`ENVOY_URL=${envoyUrl} is not a loopback address`);
  const outputDir = resolve(process.env.OUTPUT_DIR || fail("OUTPUT_DIR is required"));
  if (!existsSync(CHROMIUM)) fail(`${CHROMIUM} not found: apt-get install -y chromium (or set CHROMIUM_PATH)`);
  await mkdir(outputDir, { recursive: true });

  // The page's own headers: a CSP that names no other host.
  const head = await fetch(`${envoyUrl}/docs`, { signal: AbortSignal.timeout(10_000) });
  const csp = head.headers.get("content-security-policy") ?? "";
  if (head.status !== 200 || !csp) fail(`/docs: HTTP ${head.status}, CSP ${JSON.stringify(csp)}`);
  if (/https?:|\*|\/\//.test(csp)) fail(`/docs CSP names another host: ${csp}`);

  const userDataDir = await mkdtemp(join(tmpdir(), "instachatico-docs-"));
  let context;
  try {
    context = await launch(userDataDir, { viewport: { width: 1200, height: 900 } });
    // The outside network is cut: any request off loopback is aborted, and counted.
    const outside = [];
    await context.route("**/*", (route) => {
      const url = route.request().url();
      if (url.startsWith("data:") || isLoopback(url)) return route.continue();
      outside.push(url);
      return route.abort("internetdisconnected");
    });
    const page = context.pages()[0] ?? (await context.newPage());
    const consoleErrors = [];
    page.on("console", (m) => m.type() === "error" && consoleErrors.push(m.text()));
    page.on("pageerror", (e) => consoleErrors.push(String(e)));
    const served = [];
    page.on("response", (r) => served.push(`${r.status()} ${r.url()}`));

    await page.goto(`${envoyUrl}/docs`, { waitUntil: "load" });
    try {
      await page.waitForSelector(".opblock", { timeout: 30_000 });
    } catch {
      fail(`Swagger UI rendered no route list; console: ${consoleErrors.join(" | ") || "(nothing)"}; responses: ${served.join(", ")}`);
    }
    const routes = await page.$$eval(".opblock .opblock-summary-path", (els) => els.map((e) => e.getAttribute("data-path") || e.textContent.trim()));
    const screenshot = join(outputDir, "docs.png");
    await page.screenshot({ path: screenshot, fullPage: true });

    // Try it out: GET /api/v1/health, against whatever host served the page.
    const health = page.locator(".opblock-get", { has: page.locator('.opblock-summary-path[data-path="/api/v1/health"]') });
    await health.locator(".opblock-summary").first().click();
    await health.locator("button.try-out__btn").click();
    await health.locator("button.execute").click();
    const status = health.locator(".live-responses-table .response .response-col_status").first();
    await status.waitFor({ timeout: 15_000 });
    const code = (await status.textContent()).trim();
    const body = (await health.locator(".live-responses-table .response-col_description pre").first().textContent()) ?? "";
    const requestUrl = ((await health.locator(".request-url pre").first().textContent()) ?? "").trim();
    await page.screenshot({ path: join(outputDir, "docs-try-it-out.png"), fullPage: true });

    const problems = [];
    const expect = (ok, what) => ok || problems.push(what);
    expect(outside.length === 0, `requests left loopback: ${outside.join(", ")}`);
    expect(routes.length >= 20 && routes.includes("/api/v1/auth/login") && routes.includes("/api/v1/users/{id}"), `route list: ${routes.join(", ")}`);
    expect(code === "200" && body.includes('"status"') && body.includes("healthy"), `Try it out: ${code} ${body.slice(0, 200)}`);
    expect(requestUrl === `${envoyUrl}/api/v1/health`, `Try it out called ${requestUrl}, not this host`);
    expect(consoleErrors.length === 0, `browser console: ${consoleErrors.join(" | ")}`);
    if (problems.length) fail(`${problems.length} problem(s):\n  - ${problems.join("\n  - ")}\n  screenshot: ${screenshot}`);
    console.log(`docs OK: ${routes.length} routes rendered offline, Try it out GET /api/v1/health -> ${code}; screenshot ${screenshot}`);
  } finally {
    await context?.close().catch(() => {});
    await rm(userDataDir, { recursive: true, force: true });
  }
}

const watchdog = setTimeout(() => {
  console.error(`docs FAILED: timed out after ${TIMEOUT_MS / 1000}s`);
  process.exit(1);
}, TIMEOUT_MS);

main().then(
  () => {
    clearTimeout(watchdog);
    process.exit(0);
  },
  (e) => {
    console.error(`docs FAILED: ${e instanceof Failure ? e.message : e?.stack ?? e}`);
    process.exit(1);
  },
);

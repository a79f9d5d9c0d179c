#!/usr/bin/env node
// Real-browser end-to-end test: Debian Chromium (headless, driven by playwright-core) loads a
// small page from http://localhost:5173 — the origin the service and Envoy allow by CORS — and
// the page logs in, reads /users/me and logs out through Envoy's JSON face the way the seed's
// Vue auth store does, then calls the service directly over grpc-web. See README.md.
//
//   ENVOY_URL=http://127.0.0.1:8091 GRPC_WEB_URL=http://127.0.0.1:50071 ADMIN_USERNAME=admin \
//   ADMIN_PASSWORD=... OUTPUT_DIR=/tmp/out DESCRIPTOR_PATH=envoy/instachatico_auth.pb \
//   node tests/browser/run.mjs
//
// Exit 0: every check passed. Exit 1: the first line on stderr says what failed.
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readFile, rm } from "node:fs/promises";
import http from "node:http";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { isDeepStrictEqual } from "node:util";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";
import { CHROMIUM, launch } from "./chromium.mjs";

const HERE = dirname(fileURLToPath(import.meta.url));
const UI_PORT = 5173; // the seed UI's origin, the only one CORS lets in
const OTHER_PORT = 5174; // served as http://127.0.0.1:5174, an origin CORS must refuse
const UI_ORIGIN = `http://localhost:${UI_PORT}`;
const OTHER_ORIGIN = `http://127.0.0.1:${OTHER_PORT}`;
const TIMEOUT_MS = 90_000;

// The test user, created through Envoy as admin before the page loads.
const USER = {
  username: `browser_${randomBytes(4).toString("hex")}`,
  password: "Secure_password123!",
  instagram_username: "browser_ig",
  api_base_url: "http://localhost:4291/api/v1",
  bearer_token: "bearer_token_322",
};
USER.email = `${USER.username}@example.com`;

class Failure extends Error {}
const fail = (msg) => {
  throw new Failure(msg);
};

function requireEnv(name) {
  const value = process.env[name];
  if (!value) fail(`environment variable ${name} is required`);
  return value;
}

// Only loopback targets: this test must never send traffic anywhere else.
function loopbackUrl(name) {
  const raw = requireEnv(name);
  let url;
  try {
    url = new URL(raw);
  } catch {
    fail(`${name}=${raw} is not a URL`);
  }
  const host = url.hostname;
  if (!(host === "localhost" || host === "[::1]" || /^127\.\d+\.\d+\.\d+$/.test(host))) {
    fail(`${name}=${raw} is not a loopback address; this test only talks to loopback`);
  }
  return raw.replace(/\/+$/, "");
}

// Node-side JSON call (setup only); a connection error names the variable to check.
async function jsonCall(envName, method, url, { token, body } = {}) {
  let res;
  try {
    res = await fetch(url, {
      method,
      headers: {
        ...(body ? { "content-type": "application/json" } : {}),
        ...(token ? { authorization: `Bearer ${token}` } : {}),
      },
      body: body ? JSON.stringify(body) : undefined,
      signal: AbortSignal.timeout(10_000),
    });
  } catch (e) {
    fail(`cannot reach ${envName} (${method} ${url}): ${e.cause?.code ?? e.cause?.message ?? e.message}`);
  }
  const text = await res.text();
  try {
    return { status: res.status, headers: res.headers, body: text ? JSON.parse(text) : null };
  } catch {
    fail(`${method} ${url}: HTTP ${res.status} with a non-JSON body: ${text.slice(0, 200)}`);
  }
}

// A minimal static server: path -> {type, body}. Bound to 127.0.0.1 only.
function serve(port, routes) {
  const server = http.createServer((req, res) => {
    const route = routes[new URL(req.url, "http://x").pathname];
    if (!route) return res.writeHead(404, { "content-type": "text/plain" }).end("not found");
    res.writeHead(200, { "content-type": route.type, "cache-control": "no-store" }).end(route.body);
  });
  return new Promise((resolve, reject) => {
    server.once("error", (e) =>
      reject(
        e.code === "EADDRINUSE"
          ? new Failure(`port ${port} on 127.0.0.1 is already in use (a dev server?); this test must serve the page on it — stop whatever holds it and retry`)
          : e,
      ),
    );
    server.listen(port, "127.0.0.1", () => resolve(server));
  });
}

async function main() {
  const envoyUrl = loopbackUrl("ENVOY_URL");
  const grpcWebUrl = loopbackUrl("GRPC_WEB_URL");
  const adminUsername = requireEnv("ADMIN_USERNAME");
  const adminPassword = requireEnv("ADMIN_PASSWORD");
  const outputDir = resolve(requireEnv("OUTPUT_DIR"));
  const descriptorPath = resolve(requireEnv("DESCRIPTOR_PATH"));
  if (!existsSync(CHROMIUM)) fail(`${CHROMIUM} not found: apt-get install -y chromium (or set CHROMIUM_PATH)`);
  const descriptor = await readFile(descriptorPath).catch((e) => fail(`cannot read DESCRIPTOR_PATH ${descriptorPath}: ${e.message}`));
  await mkdir(outputDir, { recursive: true });

  // Setup: the test user, with a backend, created through the JSON face as admin.
  const admin = await jsonCall("ENVOY_URL", "POST", `${envoyUrl}/api/v1/auth/login`, {
    body: { username: adminUsername, password: adminPassword },
  });
  if (admin.status !== 200) fail(`admin login via ENVOY_URL: HTTP ${admin.status} ${JSON.stringify(admin.body)}`);
  const created = await jsonCall("ENVOY_URL", "POST", `${envoyUrl}/api/v1/users`, {
    token: admin.body.access_token,
    body: { username: USER.username, email: USER.email, password: USER.password, instagram_username: USER.instagram_username, api_base_url: USER.api_base_url, bearer_token: USER.bearer_token },
  });
  if (created.status !== 201) fail(`creating the test user via ENVOY_URL: HTTP ${created.status} ${JSON.stringify(created.body)}`);

  // Bundle the page script at test time so the browser gets one file; nothing is written to disk.
  const bundle = await build({
    entryPoints: [join(HERE, "page", "app.js")],
    bundle: true,
    write: false,
    format: "esm",
    platform: "browser",
    target: "chrome120",
    logLevel: "silent",
  });

  const cleanups = [];
  try {
    const config = { envoyUrl, grpcWebUrl, username: USER.username, password: USER.password };
    const ui = await serve(UI_PORT, {
      "/": { type: "text/html; charset=utf-8", body: await readFile(join(HERE, "page", "index.html")) },
      "/app.js": { type: "text/javascript; charset=utf-8", body: bundle.outputFiles[0].contents },
      "/descriptor.pb": { type: "application/octet-stream", body: descriptor },
      "/config.json": { type: "application/json", body: JSON.stringify(config) },
    });
    cleanups.push(() => new Promise((r) => (ui.closeAllConnections(), ui.close(r))));
    const other = await serve(OTHER_PORT, { "/": { type: "text/html", body: "<!doctype html><title>other origin</title>" } });
    cleanups.push(() => new Promise((r) => (other.closeAllConnections(), other.close(r))));

    const userDataDir = await mkdtemp(join(tmpdir(), "instachatico-browser-"));
    cleanups.push(() => rm(userDataDir, { recursive: true, force: true }));
    // localhost must reach our 127.0.0.1 server, not whatever may listen on [::1]:5173; the URL
    // (and so the Origin header) stays http://localhost:5173.
    const context = await launch(userDataDir, {
      viewport: { width: 1000, height: 700 },
      extraArgs: ["--host-resolver-rules=MAP localhost 127.0.0.1"],
    });
    cleanups.unshift(() => context.close()); // browser first, then servers and the profile dir

    const page = context.pages()[0] ?? (await context.newPage());
    // A platform authenticator for the page's passkey checks: Chromium's virtual one, with
    // resident keys and user verification, as a phone or laptop would have.
    const cdp = await context.newCDPSession(page);
    await cdp.send("WebAuthn.enable");
    const { authenticatorId } = await cdp.send("WebAuthn.addVirtualAuthenticator", {
      options: { protocol: "ctap2", transport: "internal", hasResidentKey: true, hasUserVerification: true, isUserVerified: true },
    });
    const consoleErrors = [];
    page.on("console", (m) => m.type() === "error" && consoleErrors.push(m.text()));
    page.on("pageerror", (e) => consoleErrors.push(String(e)));
    await page.goto(`${UI_ORIGIN}/`);
    const origin = await page.evaluate(() => location.origin);
    try {
      await page.waitForFunction(() => window.__results !== undefined, null, { timeout: 60_000 });
    } catch {
      fail(`the page never set window.__results; browser console: ${consoleErrors.join(" | ") || "(nothing)"}`);
    }
    const results = await page.evaluate(() => window.__results);
    const { credentials: heldCredentials } = await cdp.send("WebAuthn.getCredentials", { authenticatorId });
    const bodyText = await page.textContent("body");
    const screenshot = join(outputDir, "browser-flow.png");
    await page.screenshot({ path: screenshot, fullPage: true });

    // The same health fetch from an origin CORS does not allow must be refused (a TypeError in
    // the browser). The allowed-origin page ran it first as the positive control. grpc-web's
    // own CORS (the service's) is tried too, with the headers connect-web sends.
    const page2 = await context.newPage();
    await page2.goto(`${OTHER_ORIGIN}/`);
    const refused = await page2.evaluate(async ({ envoyUrl, grpcWebUrl }) => {
      const attempt = (url, init) =>
        fetch(url, init).then((r) => ({ status: r.status }), (e) => ({ error: e.name, message: e.message }));
      return {
        envoy: await attempt(`${envoyUrl}/api/v1/health`),
        grpcWeb: await attempt(`${grpcWebUrl}/instachatico.auth.v1.HealthService/Check`, {
          method: "POST",
          headers: { "content-type": "application/grpc-web+proto", "x-grpc-web": "1" },
          body: new Uint8Array(5), // an empty message in a grpc-web frame
        }),
      };
    }, { envoyUrl, grpcWebUrl });

    // Cross-site requests a browser sends without a preflight (a form post, and fetches with a
    // text/plain, form or untyped body) must not reach the password check: the user's failed
    // logins in the audit log do not move. (The page's own wrong-password login, above, is the
    // positive control: it is counted.)
    const failedLogins = async () => {
      const r = await jsonCall("ENVOY_URL", "GET", `${envoyUrl}/api/v1/audit-logs?user_id=${created.body.id}&action=login_failed&include_total=true`, {
        token: admin.body.access_token,
      });
      if (r.status !== 200) fail(`listing audit logs via ENVOY_URL: HTTP ${r.status} ${JSON.stringify(r.body)}`);
      return r.body.total;
    };
    const failedBefore = await failedLogins();
    const crossSite = await page2.evaluate(async ({ envoyUrl, username }) => {
      const url = `${envoyUrl}/api/v1/auth/login`;
      const json = JSON.stringify({ username, password: "Wrong_password1!" });
      const outcomes = {};
      const send = (name, init) =>
        fetch(url, { method: "POST", mode: "no-cors", ...init }).then(
          (r) => (outcomes[name] = r.type),
          (e) => (outcomes[name] = `error: ${e.message}`),
        );
      await send("textPlain", { headers: { "content-type": "text/plain" }, body: json });
      await send("untypedBlob", { body: new Blob([json]) });
      await send("urlencoded", { body: new URLSearchParams({ username, password: "Wrong_password1!" }) });
      const multipart = new FormData();
      multipart.append("username", username);
      multipart.append("password", "Wrong_password1!");
      await send("multipart", { body: multipart });
      // The classic JSON CSRF: a text/plain form whose one field spells a JSON body
      // ({"username":...,"password":...,"x":"="} plus CRLF), posted into a hidden frame.
      const frame = document.createElement("iframe");
      frame.name = "sink";
      document.body.append(frame);
      const loaded = new Promise((resolve) => {
        frame.addEventListener("load", resolve, { once: true });
        setTimeout(resolve, 5000);
      });
      const form = document.createElement("form");
      Object.assign(form, { method: "POST", action: url, enctype: "text/plain", target: "sink" });
      const input = document.createElement("input");
      Object.assign(input, { type: "hidden", name: `${json.slice(0, -1)},"x":"`, value: '"}' });
      form.append(input);
      document.body.append(form);
      form.submit();
      await loaded;
      outcomes.formPost = "submitted";
      return outcomes;
    }, { envoyUrl, username: USER.username });
    const failedAfter = await failedLogins();

    // ---- Assertions, from Node, against what the test itself knows ----
    const problems = [];
    const expect = (cond, msg) => cond || problems.push(msg);
    const o = results.observed;
    for (const c of results.checks) expect(c.ok, `page check failed: ${c.name}: ${c.detail}`);
    expect(origin === UI_ORIGIN, `page origin is ${origin}, expected ${UI_ORIGIN}`);
    expect(!bodyText.includes(USER.bearer_token) && !bodyText.includes("eyJ"), "the page displays a token");

    const u = o.jsonLogin?.user ?? {};
    expect(u.id === created.body.id && u.username === USER.username && u.email === USER.email && u.instagram_username === USER.instagram_username,
      `JSON login user ${JSON.stringify(u)} does not match the created user #${created.body.id} ${USER.username}`);
    expect(o.jsonLogin?.token_type === "bearer" && o.jsonLogin?.hasAccessToken && o.jsonLogin?.expires_in > 0,
      `JSON login token fields: ${JSON.stringify({ ...o.jsonLogin, user: undefined, backend_config: undefined })}`);
    expect(o.jsonLogin?.backend_config?.api_base_url === USER.api_base_url && o.jsonLogin?.backend_config?.bearer_token === USER.bearer_token,
      `JSON login backend_config is ${JSON.stringify(o.jsonLogin?.backend_config)}`);
    expect(isDeepStrictEqual(o.storeAfterLogin, { jwt_token: true, user: true, api_base_url: true, bearer_token: true }),
      `localStorage after login: ${JSON.stringify(o.storeAfterLogin)}`);
    expect(isDeepStrictEqual(o.storedUser, u) && o.storedApiBaseUrl === USER.api_base_url && o.storedBearerMatches && o.storedJwtMatches,
      "localStorage values differ from the login response");
    const me = o.jsonMe ?? {};
    expect(me.id === u.id && me.username === USER.username && me.email === USER.email && me.instagram_username === USER.instagram_username,
      `JSON /users/me: ${JSON.stringify(me)}`);
    expect(typeof me.created_at === "string" && typeof me.last_login === "string", `JSON /users/me created_at/last_login: ${me.created_at} / ${me.last_login}`);
    expect(o.logout?.status === 200 && o.logout?.body?.message === "Successfully logged out", `logout: ${JSON.stringify(o.logout)}`);
    expect(isDeepStrictEqual(o.storeAfterLogout, { jwt_token: false, user: false, api_base_url: false, bearer_token: false }),
      `localStorage after logout: ${JSON.stringify(o.storeAfterLogout)}`);
    expect(o.meAfterLogout?.status === 401 && typeof o.meAfterLogout?.body?.detail === "string", `/users/me after logout: ${JSON.stringify(o.meAfterLogout)}`);
    expect(o.badLogin?.status === 401 && o.badLogin?.body?.detail === "Incorrect username or password" && o.badLogin?.storeError === o.badLogin?.body?.detail,
      `wrong-password JSON login: ${JSON.stringify(o.badLogin)}`);
    const g = o.grpcLogin ?? {};
    expect(g.hasAccessToken && g.user?.id === u.id && g.user?.username === USER.username && g.user?.email === USER.email && g.user?.instagramUsername === USER.instagram_username,
      `grpc-web Login user: ${JSON.stringify(g.user)}`);
    expect(g.backendConfig?.apiBaseUrl === USER.api_base_url && g.backendConfig?.bearerToken === USER.bearer_token,
      `grpc-web Login backendConfig: ${JSON.stringify(g.backendConfig)}`);
    expect(o.grpcMe?.id === me.id && o.grpcMe?.username === USER.username, `grpc-web GetMe ${JSON.stringify(o.grpcMe)} vs JSON id ${me.id}`);
    expect(o.grpcBadLogin?.code === 16, `grpc-web wrong-password Login: ${JSON.stringify(o.grpcBadLogin)}`);
    const pk = o.passkey ?? {};
    expect(pk.registered?.length === 1 && pk.registered[0].name === "Chromium" && typeof pk.registered[0].last_used_at === "undefined",
      `passkeys after registration: ${JSON.stringify(pk.registered)}`);
    expect(pk.passwordless?.user?.id === u.id && pk.passwordless?.me === USER.username && pk.passwordless?.backend === USER.api_base_url,
      `passwordless sign-in: ${JSON.stringify(pk.passwordless)}`);
    expect(isDeepStrictEqual(pk.secondFactor?.methods, ["webauthn"]) && pk.secondFactor?.user?.id === u.id,
      `second factor: ${JSON.stringify(pk.secondFactor)}`);
    expect(heldCredentials.length === 1 && heldCredentials[0].isResidentCredential && heldCredentials[0].rpId === "localhost" && heldCredentials[0].signCount >= 2,
      `the virtual authenticator holds ${JSON.stringify(heldCredentials.map(({ privateKey, ...c }) => c))}`);
    expect(refused.envoy.error === "TypeError", `fetch of ENVOY_URL/api/v1/health from ${OTHER_ORIGIN} was not refused: ${JSON.stringify(refused.envoy)}`);
    expect(refused.grpcWeb.error === "TypeError", `grpc-web request to GRPC_WEB_URL from ${OTHER_ORIGIN} was not refused: ${JSON.stringify(refused.grpcWeb)}`);

    expect(failedBefore >= 1, `the page's own wrong-password login is not in the audit log (${failedBefore})`);
    expect(Object.keys(crossSite).length === 5, `cross-site attempts: ${JSON.stringify(crossSite)}`);
    expect(failedAfter === failedBefore,
      `cross-site requests without a preflight reached the password check: failed logins ${failedBefore} -> ${failedAfter} after ${JSON.stringify(crossSite)}`);

    if (problems.length) {
      fail(`${problems.length} problem(s):\n  - ${problems.join("\n  - ")}\n  screenshot: ${screenshot}`);
    }

    console.log(`browser e2e: Chromium at ${UI_ORIGIN}, test user ${USER.username} (#${u.id})`);
    for (const c of results.checks) console.log(`  ✓ ${c.name} — ${c.detail}`);
    console.log(`  ✓ cors: ${OTHER_ORIGIN} refused by Envoy (/api/v1/health) and by the service (grpc-web): TypeError`);
    console.log(`  ✓ csrf: from ${OTHER_ORIGIN}, a text/plain form post and no-preflight fetches (text/plain, form, multipart, untyped) checked no password`);
    console.log(`  ✓ node: user fields, backend_config, localStorage set/cleared, JSON and grpc-web ids agree`);
    console.log(`  ✓ node: one resident passkey for rp "localhost" in the virtual authenticator, used ${heldCredentials[0]?.signCount} times`);
    console.log(`browser e2e OK: ${results.checks.length + 3} checks; screenshot ${screenshot}`);
  } finally {
    for (const cleanup of cleanups) await cleanup().catch(() => {});
  }
}

// A hung browser or service must not hang the Rust test that runs this.
const watchdog = setTimeout(() => {
  console.error(`browser e2e FAILED: timed out after ${TIMEOUT_MS / 1000}s`);
  process.exit(1);
}, TIMEOUT_MS);

main().then(
  () => {
    clearTimeout(watchdog);
    process.exit(0);
  },
  (e) => {
    console.error(`browser e2e FAILED: ${e instanceof Failure ? e.message : e?.stack ?? e}`);
    process.exit(1);
  },
);

#!/usr/bin/env node
// Backend proxy mode in a real browser (issue 13): Debian Chromium loads a page from
// http://localhost:5173 that runs the seed's auth store (section 6.2) and API service (6.3)
// unchanged: it logs in through Envoy's JSON face, keeps what Login returned in localStorage, and
// calls `${api_base_url}/...` with `Authorization: Bearer ${bearer_token}`. In proxy mode those
// are the proxy's URL and a proxy credential; Envoy forwards to the user's backend (a fake one
// the Rust test runs) with the real token. Then the cookie variant: the same call with no
// credential in JavaScript at all.
//
// The backend's token must appear nowhere the page can see: not in localStorage, not in
// document.cookie, not in any response body or readable header, not in the page's memory (a CDP
// heap snapshot, searched for it; the proxy credential, which the page does hold, is found there
// as the control).
//
//   ENVOY_URL=http://localhost:8091 USERNAME=... PASSWORD=... BACKEND_TOKEN=... \
//   OUTPUT_DIR=/tmp/out node tests/browser/proxy.mjs
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import http from "node:http";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { CHROMIUM, launch } from "./chromium.mjs";

const UI_PORT = 5173;
const UI_ORIGIN = `http://localhost:${UI_PORT}`;
const TIMEOUT_MS = 90_000;

class Failure extends Error {}
const fail = (msg) => {
  throw new Failure(msg);
};
const env = (name) => process.env[name] || fail(`environment variable ${name} is required`);

// The seed's code, as in sections 6.2 and 6.3, with fetch in place of axios.
const PAGE = `<!doctype html><meta charset="utf-8"><title>proxy mode</title><body>
<div id="status">running</div>
<script type="module">
const AUTH_API_URL = window.CONFIG.envoyUrl + "/api/v1";
class ApiService {
  constructor() { this.baseURL = null; this.bearerToken = null; }
  setBaseURL(url) { this.baseURL = url; }
  setAuthToken(token) { this.bearerToken = token; }
  async request(method, path, body) {
    const headers = { "content-type": "application/json" };
    if (this.bearerToken) headers.Authorization = "Bearer " + this.bearerToken;
    const res = await fetch(this.baseURL + path, { method, headers, body: body && JSON.stringify(body) });
    return capture(res);
  }
}
const apiService = new ApiService();
const seen = [];
async function capture(res) {
  const text = await res.text();
  const headers = [...res.headers.entries()].map(([k, v]) => k + ": " + v).join("\\n");
  seen.push(text, headers);
  return { status: res.status, text };
}
async function login(username, password) {
  const res = await fetch(AUTH_API_URL + "/auth/login", {
    method: "POST",
    credentials: "include",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ username, password }),
  });
  const { status, text } = await capture(res);
  if (status !== 200) throw new Error("login: " + status + " " + text);
  const { access_token, user, backend_config } = JSON.parse(text);
  localStorage.setItem("jwt_token", access_token);
  localStorage.setItem("user", JSON.stringify(user));
  localStorage.setItem("api_base_url", backend_config.api_base_url);
  localStorage.setItem("bearer_token", backend_config.bearer_token);
  apiService.setBaseURL(backend_config.api_base_url);
  apiService.setAuthToken(backend_config.bearer_token);
}
let step = "login";
try {
  await login(window.CONFIG.username, window.CONFIG.password);
  step = "GET /media";
  const media = await apiService.request("GET", "/media?limit=3");
  step = "POST /posts";
  const created = await apiService.request("POST", "/posts", { caption: "from the browser" });
  // The cookie variant: no credential in JavaScript, the HttpOnly cookie from Login instead.
  step = "GET /via-cookie";
  const viaCookie = await capture(await fetch(localStorage.getItem("api_base_url") + "/via-cookie", { credentials: "include" }));
  window.__results = { media, created, viaCookie, seen, cookie: document.cookie, storage: { ...localStorage } };
  document.getElementById("status").textContent = "done";
} catch (e) {
  window.__results = { error: step + ": " + String(e) };
}
</script>`;

async function main() {
  const envoyUrl = env("ENVOY_URL").replace(/\/+$/, "");
  if (!/^http:\/\/localhost:\d+$/.test(envoyUrl)) fail(`ENVOY_URL=${envoyUrl} must be http://localhost:<port> (same site as the UI)`);
  const [username, password, backendToken] = [env("USERNAME"), env("PASSWORD"), env("BACKEND_TOKEN")];
  const outputDir = resolve(env("OUTPUT_DIR"));
  await mkdir(outputDir, { recursive: true });

  const config = `<script>window.CONFIG = ${JSON.stringify({ envoyUrl, username, password })}</script>`;
  const ui = http.createServer((req, res) => {
    res.writeHead(200, { "content-type": "text/html; charset=utf-8", "cache-control": "no-store" }).end(config + PAGE);
  });
  await new Promise((ok, ko) => ui.once("error", ko).listen(UI_PORT, "127.0.0.1", ok));
  const userDataDir = await mkdtemp(join(tmpdir(), "instachatico-proxy-"));
  let context;
  try {
    context = await launch(userDataDir, { extraArgs: ["--host-resolver-rules=MAP localhost 127.0.0.1"] });
    const page = context.pages()[0] ?? (await context.newPage());
    const errors = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    await page.goto(`${UI_ORIGIN}/`);
    await page.waitForFunction(() => window.__results !== undefined, null, { timeout: 60_000 }).catch(() =>
      fail(`the page never finished; errors: ${errors.join(" | ") || "none"}`),
    );
    const results = await page.evaluate(() => window.__results);
    if (results.error) fail(`the page failed: ${results.error}`);
    await page.screenshot({ path: join(outputDir, "proxy-mode.png") });

    // The page's memory, as a heap snapshot.
    const cdp = await context.newCDPSession(page);
    const chunks = [];
    cdp.on("HeapProfiler.addHeapSnapshotChunk", (e) => chunks.push(e.chunk));
    await cdp.send("HeapProfiler.enable");
    await cdp.send("HeapProfiler.collectGarbage");
    await cdp.send("HeapProfiler.takeHeapSnapshot", { reportProgress: false });
    const heap = chunks.join("");

    const problems = [];
    const expect = (ok, msg) => ok || problems.push(msg);
    const credential = results.storage.bearer_token ?? "";
    expect(credential.startsWith("ipx_"), `localStorage bearer_token is not a proxy credential: ${credential.slice(0, 8)}...`);
    expect(results.storage.api_base_url === `${envoyUrl}/backend`, `api_base_url ${results.storage.api_base_url}`);
    expect(results.media.status === 200 && JSON.parse(results.media.text).path === "/api/v1/media?limit=3", `GET /media: ${JSON.stringify(results.media)}`);
    expect(results.created.status === 200 && JSON.parse(results.created.text).method === "POST", `POST /posts: ${JSON.stringify(results.created)}`);
    expect(results.viaCookie.status === 200, `the cookie variant: ${JSON.stringify(results.viaCookie)}`);
    expect(!results.cookie.includes("instachatico_proxy"), `document.cookie shows the HttpOnly cookie: ${results.cookie}`);
    const places = {
      localStorage: JSON.stringify(results.storage),
      "document.cookie": results.cookie,
      "response bodies and headers": results.seen.join("\n"),
      "the heap snapshot": heap,
    };
    for (const [where, text] of Object.entries(places)) {
      expect(!text.includes(backendToken), `the backend token is in ${where}`);
    }
    expect(heap.length > 100_000 && heap.includes(credential), "control: the heap snapshot does not hold the proxy credential the page holds");
    if (problems.length) fail(`${problems.length} problem(s):\n  - ${problems.join("\n  - ")}`);
    console.log(`proxy mode in Chromium: login, GET and POST through ${envoyUrl}/backend with a proxy credential, and with the HttpOnly cookie`);
    console.log(`  backend token absent from localStorage, document.cookie, ${results.seen.length} response bodies/headers, and a ${(heap.length / 1e6).toFixed(1)} MB heap snapshot (which holds the proxy credential)`);
  } finally {
    await context?.close().catch(() => {});
    await new Promise((r) => (ui.closeAllConnections(), ui.close(r)));
    await rm(userDataDir, { recursive: true, force: true });
  }
}

const watchdog = setTimeout(() => {
  console.error(`proxy browser test FAILED: timed out after ${TIMEOUT_MS / 1000}s`);
  process.exit(1);
}, TIMEOUT_MS);
main().then(
  () => (clearTimeout(watchdog), process.exit(0)),
  (e) => (console.error(`proxy browser test FAILED: ${e instanceof Failure ? e.message : e?.stack ?? e}`), process.exit(1)),
);

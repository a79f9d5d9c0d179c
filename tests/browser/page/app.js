// The page under test. It runs in Chromium at http://localhost:5173 (the seed UI's origin) and
// talks to the service the two ways a browser UI can:
//   - JSON through Envoy with fetch, doing what the seed's Vue auth store does;
//   - grpc-web straight to the service with connect-web, the service descriptor read at run
//     time from /descriptor.pb (no protoc codegen).
// It records each check as {name, ok, detail} plus the raw values it saw in window.__results;
// run.mjs asserts on those again from Node. Tokens are never rendered nor put in __results.
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { createFileRegistry, fromBinary } from "@bufbuild/protobuf";
import { FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";

const STORE_KEYS = ["jwt_token", "user", "api_base_url", "bearer_token"];
const checks = [];
const observed = {};

function assert(cond, msg) {
  if (!cond) throw new Error(msg);
}

function render(check) {
  const li = document.createElement("li");
  li.className = check.ok ? "ok" : "fail";
  li.append(check.name + " ");
  const span = document.createElement("span");
  span.className = "detail";
  span.textContent = check.detail ? `— ${check.detail}` : "";
  li.append(span);
  document.getElementById("checks").append(li);
}

// Runs one check; a failure is recorded and later checks still run (they may fail in turn,
// but the first ✗ in the list is the cause).
async function check(name, fn) {
  let result;
  try {
    result = { name, ok: true, detail: (await fn()) ?? "" };
  } catch (e) {
    result = { name, ok: false, detail: `${e?.name ?? "Error"}: ${e?.message ?? e}` };
  }
  checks.push(result);
  render(result);
  return result.ok;
}

// fetch + JSON body, like axios: the body must be readable from this origin (CORS).
async function call(url, init = {}) {
  const res = await fetch(url, init);
  const text = await res.text();
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    throw new Error(`${init.method ?? "GET"} ${url}: HTTP ${res.status}, body is not JSON: ${text.slice(0, 200)}`);
  }
  return { status: res.status, body };
}

// WebAuthn's JSON carries bytes as base64url; navigator.credentials wants ArrayBuffers.
const fromB64u = (s) => Uint8Array.from(atob(s.replace(/-/g, "+").replace(/_/g, "/")), (c) => c.charCodeAt(0));
const toB64u = (buf) =>
  btoa(String.fromCharCode(...new Uint8Array(buf))).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");

// The options the service answered ({"publicKey": {...}}), for navigator.credentials.create().
function creationOptions(options) {
  const pk = structuredClone(options.publicKey);
  pk.challenge = fromB64u(pk.challenge);
  pk.user = { ...pk.user, id: fromB64u(pk.user.id) };
  pk.excludeCredentials = (pk.excludeCredentials ?? []).map((c) => ({ ...c, id: fromB64u(c.id) }));
  return { publicKey: pk };
}

// ... and for navigator.credentials.get().
function requestOptions(options) {
  const pk = structuredClone(options.publicKey);
  pk.challenge = fromB64u(pk.challenge);
  pk.allowCredentials = (pk.allowCredentials ?? []).map((c) => ({ ...c, id: fromB64u(c.id) }));
  return { publicKey: pk };
}

// A PublicKeyCredential as the JSON the service reads (what toJSON() gives where it exists).
function credentialJson(credential) {
  const r = credential.response;
  const response = { clientDataJSON: toB64u(r.clientDataJSON) };
  if (r.attestationObject) {
    response.attestationObject = toB64u(r.attestationObject);
    response.transports = r.getTransports?.() ?? [];
  } else {
    response.authenticatorData = toB64u(r.authenticatorData);
    response.signature = toB64u(r.signature);
    response.userHandle = r.userHandle ? toB64u(r.userHandle) : null;
  }
  return { id: credential.id, rawId: toB64u(credential.rawId), type: credential.type, response };
}

const post = (url, body, token) =>
  call(url, {
    method: "POST",
    headers: { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: JSON.stringify(body),
  });

// A sign-in with a passkey: passwordless without mfa_token, else the second step of that login.
async function passkeySignIn(apiUrl, mfaToken) {
  const start = await post(`${apiUrl}/auth/passkey/start`, mfaToken ? { mfa_token: mfaToken } : {});
  if (start.status !== 200) return start;
  const credential = await navigator.credentials.get(requestOptions(start.body.options));
  const body = { ceremony: start.body.ceremony, credential: credentialJson(credential) };
  if (mfaToken) body.mfa_token = mfaToken;
  return post(`${apiUrl}/auth/passkey/finish`, body);
}

// The seed's useAuthStore, minus Vue: login() stores the four keys, logout() removes them.
// The one addition for a user with a second factor: when Login answers mfa_required, the
// second step (a passkey if the methods list "webauthn", else a TOTP code from `totpCode`)
// answers the LoginResponse the seed's code expects.
function makeAuthStore(apiUrl, { totpCode } = {}) {
  return {
    error: null,
    lastMfaMethods: null,
    async login(username, password) {
      this.error = null;
      let { status, body } = await post(`${apiUrl}/auth/login`, { username, password });
      if (status === 200 && body.mfa_required) {
        this.lastMfaMethods = body.methods;
        if (body.methods.includes("webauthn") && window.PublicKeyCredential) {
          ({ status, body } = await passkeySignIn(apiUrl, body.mfa_token));
        } else if (body.methods.includes("totp") && totpCode) {
          ({ status, body } = await post(`${apiUrl}/auth/mfa`, { mfa_token: body.mfa_token, code: await totpCode() }));
        } else {
          this.error = "A second factor is needed";
          return { ok: false, status, body };
        }
      }
      return this.finish(status, body);
    },
    async loginWithPasskey() {
      this.error = null;
      const { status, body } = await passkeySignIn(apiUrl, null);
      return this.finish(status, body);
    },
    finish(status, body) {
      if (status !== 200) {
        // The seed reads err.response.data.detail.
        this.error = body?.detail || "Login failed";
        return { ok: false, status, body };
      }
      const { access_token, user, backend_config } = body;
      localStorage.setItem("jwt_token", access_token);
      localStorage.setItem("user", JSON.stringify(user));
      localStorage.setItem("api_base_url", backend_config.api_base_url);
      localStorage.setItem("bearer_token", backend_config.bearer_token);
      return { ok: true, status, body };
    },
    logout() {
      for (const key of STORE_KEYS) localStorage.removeItem(key);
    },
  };
}

const storeSnapshot = () => Object.fromEntries(STORE_KEYS.map((k) => [k, localStorage.getItem(k) !== null]));

async function main() {
  document.getElementById("origin").textContent = location.origin;
  const cfg = await (await fetch("/config.json")).json();
  const api = `${cfg.envoyUrl}/api/v1`;
  const store = makeAuthStore(api);
  localStorage.clear();
  let jwt = null;
  let jsonMe = null;

  // Positive control for the CORS-refusal check run from another origin by run.mjs.
  await check("json: GET /api/v1/health from the allowed origin", async () => {
    const { status, body } = await call(`${api}/health`);
    assert(status === 200 && body.status === "healthy", `HTTP ${status} ${JSON.stringify(body)}`);
    return "healthy";
  });

  await check("json: login stores jwt_token, user, api_base_url, bearer_token", async () => {
    const r = await store.login(cfg.username, cfg.password);
    assert(r.ok, `HTTP ${r.status} ${JSON.stringify(r.body)}`);
    const { access_token, token_type, expires_in, user, backend_config } = r.body;
    observed.jsonLogin = {
      token_type, expires_in, user, hasAccessToken: typeof access_token === "string" && access_token.length > 0,
      backend_config: backend_config && {
        api_base_url: backend_config.api_base_url,
        // Compared by run.mjs; it is the test's own fixed value, not a secret.
        bearer_token: backend_config.bearer_token,
      },
    };
    observed.storeAfterLogin = storeSnapshot();
    observed.storedUser = JSON.parse(localStorage.getItem("user"));
    observed.storedApiBaseUrl = localStorage.getItem("api_base_url");
    observed.storedBearerMatches = localStorage.getItem("bearer_token") === backend_config.bearer_token;
    observed.storedJwtMatches = localStorage.getItem("jwt_token") === access_token;
    assert(Object.values(observed.storeAfterLogin).every(Boolean), `keys after login: ${JSON.stringify(observed.storeAfterLogin)}`);
    jwt = localStorage.getItem("jwt_token");
    document.getElementById("username").textContent = user.username;
    document.getElementById("backend").textContent = localStorage.getItem("api_base_url");
    document.getElementById("bearer").textContent = backend_config.bearer_token ? "yes" : "no";
    return `user #${user.id} ${user.username}, token_type ${token_type}, expires_in ${expires_in}`;
  });

  await check("json: GET /api/v1/users/me with the stored JWT", async () => {
    const { status, body } = await call(`${api}/users/me`, { headers: { authorization: `Bearer ${jwt}` } });
    assert(status === 200, `HTTP ${status} ${JSON.stringify(body)}`);
    jsonMe = body;
    observed.jsonMe = body;
    return `id ${body.id}, ${body.username} <${body.email}>, instagram ${body.instagram_username}`;
  });

  await check("json: logout, then the store's logout() clears localStorage", async () => {
    // The seed's axios.post(url) sends no body; neither do we.
    const { status, body } = await call(`${api}/auth/logout`, {
      method: "POST",
      headers: { authorization: `Bearer ${jwt}` },
    });
    observed.logout = { status, body };
    assert(status === 200, `HTTP ${status} ${JSON.stringify(body)}`);
    store.logout();
    observed.storeAfterLogout = storeSnapshot();
    assert(Object.values(observed.storeAfterLogout).every((v) => !v), `keys after logout: ${JSON.stringify(observed.storeAfterLogout)}`);
    return body.message;
  });

  await check("json: the logged-out JWT gets 401 with a readable {detail}", async () => {
    const { status, body } = await call(`${api}/users/me`, { headers: { authorization: `Bearer ${jwt}` } });
    observed.meAfterLogout = { status, body };
    assert(status === 401 && typeof body.detail === "string", `HTTP ${status} ${JSON.stringify(body)}`);
    return `401 "${body.detail}"`;
  });

  await check("json: wrong password -> 401, store.error from detail", async () => {
    const r = await store.login(cfg.username, cfg.password + "-wrong");
    observed.badLogin = { status: r.status, body: r.body, storeError: store.error };
    assert(!r.ok && r.status === 401, `HTTP ${r.status} ${JSON.stringify(r.body)}`);
    assert(store.error === "Incorrect username or password", `store.error = ${JSON.stringify(store.error)}`);
    assert(!storeSnapshot().jwt_token, "a failed login left a jwt_token behind");
    return `401 "${store.error}"`;
  });

  // grpc-web, straight to the service. The descriptor set is parsed in the browser.
  const bytes = new Uint8Array(await (await fetch("/descriptor.pb")).arrayBuffer());
  const registry = createFileRegistry(fromBinary(FileDescriptorSetSchema, bytes));
  const transport = createGrpcWebTransport({ baseUrl: cfg.grpcWebUrl });
  const authClient = createClient(registry.getService("instachatico.auth.v1.AuthService"), transport);
  const userClient = createClient(registry.getService("instachatico.auth.v1.UserService"), transport);
  let grpcToken = null;

  await check("grpc-web: AuthService/Login", async () => {
    const res = await authClient.login({ username: cfg.username, password: cfg.password });
    grpcToken = res.accessToken;
    observed.grpcLogin = {
      tokenType: res.tokenType, expiresIn: res.expiresIn, hasAccessToken: res.accessToken.length > 0,
      user: res.user && { id: res.user.id, username: res.user.username, email: res.user.email, instagramUsername: res.user.instagramUsername },
      backendConfig: res.backendConfig && { apiBaseUrl: res.backendConfig.apiBaseUrl, bearerToken: res.backendConfig.bearerToken },
    };
    assert(grpcToken, "no access token");
    return `user #${res.user?.id} ${res.user?.username}, backend ${res.backendConfig?.apiBaseUrl}`;
  });

  await check("grpc-web: UserService/GetMe with authorization: Bearer", async () => {
    const me = await userClient.getMe({}, { headers: { authorization: `Bearer ${grpcToken}` } });
    observed.grpcMe = { id: me.id, username: me.username, email: me.email, instagramUsername: me.instagramUsername };
    assert(jsonMe && me.id === jsonMe.id, `grpc-web id ${me.id} != JSON id ${jsonMe?.id}`);
    return `id ${me.id} (same as JSON /users/me)`;
  });

  await check("grpc-web: wrong password -> Code.Unauthenticated (16)", async () => {
    try {
      await authClient.login({ username: cfg.username, password: cfg.password + "-wrong" });
    } catch (e) {
      const err = ConnectError.from(e);
      observed.grpcBadLogin = { code: err.code, rawMessage: err.rawMessage };
      assert(err.code === Code.Unauthenticated, `code ${err.code} (${Code[err.code]}): ${err.rawMessage}`);
      return `code ${err.code}, "${err.rawMessage}"`;
    }
    throw new Error("login with a wrong password succeeded");
  });

  // Passkeys, last (once the user has one, a password alone no longer signs in). Chromium's
  // virtual authenticator (run.mjs adds it over CDP) plays the platform authenticator.
  const signOut = async (token) => {
    const { status } = await post(`${api}/auth/logout`, {}, token);
    store.logout();
    assert(status === 200, `logout: HTTP ${status}`);
  };
  observed.passkey = {};
  await check("passkey: register one from the page (navigator.credentials.create)", async () => {
    const r = await store.login(cfg.username, cfg.password);
    assert(r.ok && !store.lastMfaMethods, `password login: HTTP ${r.status} ${JSON.stringify(r.body)}`);
    const token = localStorage.getItem("jwt_token");
    const start = await post(`${api}/users/me/passkeys/start`, {}, token);
    assert(start.status === 200, `start: HTTP ${start.status} ${JSON.stringify(start.body)}`);
    const credential = await navigator.credentials.create(creationOptions(start.body.options));
    const finish = await post(`${api}/users/me/passkeys/finish`,
      { ceremony: start.body.ceremony, name: "Chromium", credential: credentialJson(credential) }, token);
    assert(finish.status === 201, `finish: HTTP ${finish.status} ${JSON.stringify(finish.body)}`);
    const listed = await call(`${api}/users/me/passkeys`, { headers: { authorization: `Bearer ${token}` } });
    observed.passkey.registered = listed.body.passkeys;
    assert(listed.status === 200 && listed.body.passkeys.length === 1, `list: ${JSON.stringify(listed.body)}`);
    await signOut(token);
    return `passkey #${finish.body.id} "${finish.body.name}", rp ${start.body.options.publicKey.rp.id}`;
  });

  await check("passkey: passwordless sign-in with the discoverable credential", async () => {
    const r = await store.loginWithPasskey();
    assert(r.ok, `HTTP ${r.status} ${JSON.stringify(r.body)}`);
    const token = localStorage.getItem("jwt_token");
    const me = await call(`${api}/users/me`, { headers: { authorization: `Bearer ${token}` } });
    observed.passkey.passwordless = { user: r.body.user, backend: r.body.backend_config?.api_base_url, me: me.body.username };
    assert(me.status === 200 && me.body.username === cfg.username, `/users/me: ${JSON.stringify(me.body)}`);
    await signOut(token);
    return `signed in as ${me.body.username}, no password`;
  });

  await check("passkey: password, then the passkey as the second factor", async () => {
    const r = await store.login(cfg.username, cfg.password);
    observed.passkey.secondFactor = { methods: store.lastMfaMethods, user: r.body?.user };
    assert(r.ok, `HTTP ${r.status} ${JSON.stringify(r.body)}`);
    assert(JSON.stringify(store.lastMfaMethods) === JSON.stringify(["webauthn"]), `methods ${JSON.stringify(store.lastMfaMethods)}`);
    const token = localStorage.getItem("jwt_token");
    const me = await call(`${api}/users/me`, { headers: { authorization: `Bearer ${token}` } });
    assert(me.status === 200 && me.body.username === cfg.username, `/users/me: ${JSON.stringify(me.body)}`);
    await signOut(token);
    return `mfa_required (methods ${store.lastMfaMethods.join(", ")}), then a session`;
  });
}

main()
  .catch((e) => {
    const failed = { name: "page script", ok: false, detail: String(e?.stack ?? e) };
    checks.push(failed);
    render(failed);
  })
  .finally(() => {
    const ok = checks.length > 0 && checks.every((c) => c.ok);
    const status = document.getElementById("status");
    status.className = ok ? "ok" : "fail";
    status.textContent = ok ? `all ${checks.length} checks passed` : `${checks.filter((c) => !c.ok).length} of ${checks.length} checks failed`;
    window.__results = { ok, checks, observed };
  });

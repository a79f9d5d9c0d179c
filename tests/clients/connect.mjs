#!/usr/bin/env node
// connect-node, the Connect protocol's own Node client, against Envoy: unary calls in JSON and
// in binary, over HTTP/1.1 and HTTP/2, with no generated code (the services are read from the
// descriptor set at run time, as a dynamic client would). Run by tests/integration/connect.rs.
//
//   ENVOY_URL=http://127.0.0.1:8080 ADMIN_USERNAME=admin ADMIN_PASSWORD=... \
//   DESCRIPTOR_PATH=envoy/instachatico_auth.pb node tests/clients/connect.mjs
//
// Exit 0 and one line per transport: every check passed. Exit 1: stderr says what failed.
import { readFile } from "node:fs/promises";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { createFileRegistry, fromBinary } from "@bufbuild/protobuf";
import { FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`environment variable ${name} is required`);
  return value;
};

async function refusal(call) {
  try {
    await call();
  } catch (e) {
    const err = ConnectError.from(e);
    return { code: err.code, message: err.rawMessage };
  }
  return { code: "none: the call succeeded" };
}

async function main() {
  const baseUrl = env("ENVOY_URL");
  const username = env("ADMIN_USERNAME");
  const password = env("ADMIN_PASSWORD");
  const registry = createFileRegistry(fromBinary(FileDescriptorSetSchema, await readFile(env("DESCRIPTOR_PATH"))));
  const service = (name) => registry.getService(`instachatico.auth.v1.${name}`);
  const problems = [];
  const expect = (ok, what) => ok || problems.push(what);

  for (const httpVersion of ["1.1", "2"]) {
    for (const useBinaryFormat of [false, true]) {
      const label = `Connect ${useBinaryFormat ? "binary" : "JSON"} over HTTP/${httpVersion}`;
      const transport = createConnectTransport({ baseUrl, httpVersion, useBinaryFormat });
      const auth = createClient(service("AuthService"), transport);
      const users = createClient(service("UserService"), transport);
      const health = createClient(service("HealthService"), transport);

      const login = await auth.login({ username, password });
      expect(login.accessToken.length > 20 && login.tokenType === "bearer", `${label}: Login ${JSON.stringify({ tokenType: login.tokenType })}`);
      expect(login.user?.username === username && login.user?.role === "admin", `${label}: Login user ${login.user?.username}/${login.user?.role}`);
      const headers = { authorization: `Bearer ${login.accessToken}` };
      const me = await users.getMe({}, { headers });
      expect(me.username === username && me.id === login.user.id, `${label}: GetMe ${me.username} #${me.id}`);
      const list = await users.listUsers({ limit: 5, includeTotal: true }, { headers });
      expect(list.users.some((u) => u.id === me.id) && list.total >= 1, `${label}: ListUsers total ${list.total}`);
      const check = await health.check({});
      expect(check.status === "healthy", `${label}: HealthService.Check ${check.status}`);

      // An unknown name answers exactly like a wrong password (and counts toward no account's throttle).
      const stranger = `nobody_${Math.random().toString(16).slice(2, 10)}`;
      const wrong = await refusal(() => auth.login({ username: stranger, password: "Wrong_password1!" }));
      expect(wrong.code === Code.Unauthenticated && wrong.message === "Incorrect username or password",
        `${label}: wrong password gave ${JSON.stringify(wrong)}`);
      const noToken = await refusal(() => users.getMe({}));
      expect(noToken.code === Code.Unauthenticated, `${label}: GetMe without a token gave ${JSON.stringify(noToken)}`);
      const control = await refusal(() => auth.login({ username: "ad\u0000min", password }));
      expect(control.code === Code.InvalidArgument && control.message === "username: must not contain control characters",
        `${label}: a NUL in the username gave ${JSON.stringify(control)}`);
      const logout = await auth.logout({}, { headers });
      const after = await refusal(() => users.getMe({}, { headers }));
      expect(after.code === Code.Unauthenticated, `${label}: GetMe after Logout (${JSON.stringify(logout)}) gave ${JSON.stringify(after)}`);
      console.log(`  ok: ${label}: Login, GetMe, ListUsers, Check, Logout; refusals Unauthenticated/InvalidArgument`);
    }
  }
  if (problems.length) throw new Error(`${problems.length} problem(s):\n  - ${problems.join("\n  - ")}`);
  console.log("connect-node OK");
}

const watchdog = setTimeout(() => {
  console.error("connect-node FAILED: timed out after 60s");
  process.exit(1);
}, 60_000);

main().then(
  () => {
    clearTimeout(watchdog);
    process.exit(0);
  },
  (e) => {
    console.error(`connect-node FAILED: ${e instanceof ConnectError ? `${Code[e.code]}: ${e.rawMessage}` : e?.stack ?? e}`);
    process.exit(1);
  },
);

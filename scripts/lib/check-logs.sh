#!/usr/bin/env bash
# Fails when the test suite's logs contain a secret the suite used: a password, a backend
# bearer token, a JWT, an API key, a signing or encryption key, or a password hash. Run after the tests.
set -euo pipefail
log="${1:-target/tmp/integration.log}"
[ -s "$log" ] || { echo "check-logs: $log is missing or empty: the suite logged nothing to check" >&2; exit 1; }
lines=$(wc -l < "$log")
[ "$lines" -ge 500 ] || { echo "check-logs: only $lines lines in $log; expected a full run's logs" >&2; exit 1; }

patterns=(
  '[A-Za-z]+_password[0-9]*!'               # every password the suite types (Secure_password123! ...)
  'Hunter2_secret'                          # the password inside a malformed JSON body
  'bearer_token_[0-9]+|[a-z]+-backend-token|mia-token|rita-token|new_token_456|(rekeyed|ftp|lost)_token'   # backend bearer tokens
  'eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}'   # JWTs
  'iak_[0-9a-f]{16}_[A-Za-z0-9_-]{20,}'       # API keys (their secret part)
  'ipx_[0-9a-f-]{36}_[A-Za-z0-9_-]{20,}'      # backend-proxy credentials
  'integration-test-jwt-secret|the-next-jwt-secret-key|python-service-secret'   # JWT signing keys (ours, the Python service's)
  'g602nvWSC-IbC-O3i9E48oG5l8cHoY9ppxtX898Nk0o|KSDEUmaWmBWPfjVWm8Pkru5oXPd2OaHkVt0xXkx-Qbg|oVthGnEh3rSyYPEiVKrqMbPjEBNx9di2Ol1t789IF3k'   # Fernet keys
  'gAAAAA[A-Za-z0-9_=-]{20,}'               # Fernet tokens (encrypted bearer tokens)
  '\$2[abxy]\$[0-9]{2}\$'                   # bcrypt hashes
)
found=0
for p in "${patterns[@]}"; do
  if grep -Eq -- "$p" "$log"; then
    echo "check-logs: a secret matching /$p/ appears in $log:" >&2
    grep -En -- "$p" "$log" | head -3 | cut -c1-300 >&2
    found=1
  fi
done
[ "$found" = 0 ] || exit 1
echo "check-logs: $lines log lines of the suite, no password, bearer token, JWT, key or hash in them"

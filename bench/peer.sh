#!/usr/bin/env bash
# The comparison peer: the seed's own FastAPI implementation (shared/peers/fastapi-seed),
# measured on GET /api/v1/users/me in the same session and on the same machine as our service,
# so that our figures can be reported as ratios against it (bench/compare.py reads peer.json).
#
#   bench/peer.sh [OUT_DIR]          default OUT_DIR=bench/results/peer-<timestamp>
#   DUR=3 CONCURRENCIES=8 DBS=sqlite bench/peer.sh /tmp/peer-smoke     a quick check
#
# Knobs (environment): DUR (s per wrk run, 20), DBS ("sqlite postgres"), CONCURRENCIES ("8 64"),
#   WORKERS (uvicorn --workers, 2), NUSERS (seeded users = JWTs used, 200), PEER_DIR, PEER_VENV,
#   PORT (8090, the peer's README), PG_PORT (5432: the machine's PostgreSQL, trust auth).
#
# The peer is run as its README says (uvicorn --workers, env config, handlers as the seed wrote
# them). Its directory is read-only and never written: the venv and a copy of app/ and scripts/
# live under /tmp. Only 127.0.0.1 is ever targeted, every wrk run is bounded by -d and every wait
# by a deadline, and only what this script started is stopped (the server by its process group).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${1:-$ROOT/bench/results/peer-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)          # absolute: we cd below
DUR=${DUR:-20}
DBS=${DBS:-"sqlite postgres"}
CONCURRENCIES=${CONCURRENCIES:-"8 64"}
WORKERS=${WORKERS:-2}
NUSERS=${NUSERS:-200}
PEER_DIR=${PEER_DIR:-$ROOT/../shared/peers/fastapi-seed}
PEER_VENV=${PEER_VENV:-/tmp/instachatico-peer-venv}
PORT=${PORT:-8090}
PG_PORT=${PG_PORT:-5432}
HOST=127.0.0.1                                      # loopback only; do not change
BASE=http://$HOST:$PORT
PASSWORD='Secure_password123!'                      # the peer's seed_users.py default

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" | tee -a "$OUT/peer-run.log" >&2; }
die() { log "FATAL: $*"; exit 1; }

PEER_DIR=$(cd "$PEER_DIR" 2>/dev/null && pwd) || die "peer not found (set PEER_DIR)"
[ -f "$PEER_DIR/requirements.txt" ] || die "no requirements.txt in $PEER_DIR"

# ------------------------------------------------------------- cleanup ---
WORK=""; SERVER_PGID=""; SAMPLER_PID=""; PG_DB=""
stop_sampler() {
  [ -n "$SAMPLER_PID" ] || return 0
  kill "$SAMPLER_PID" 2>/dev/null || true; wait "$SAMPLER_PID" 2>/dev/null || true
  SAMPLER_PID=""
}
stop_server() {  # SIGTERM to the whole group, SIGKILL after 5 s: a locked-up worker never exits
  [ -n "$SERVER_PGID" ] || return 0
  local deadline=$((SECONDS + 5))
  kill -TERM -- "-$SERVER_PGID" 2>/dev/null || true
  while pgrep -g "$SERVER_PGID" >/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
  if pgrep -g "$SERVER_PGID" >/dev/null; then kill -KILL -- "-$SERVER_PGID" 2>/dev/null || true; fi
  wait "$SERVER_PGID" 2>/dev/null || true
  SERVER_PGID=""
}
drop_pg() {
  [ -n "$PG_DB" ] || return 0
  psql -h "$HOST" -p "$PG_PORT" -U postgres -d postgres -qc "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" \
    >/dev/null 2>&1 || log "warning: could not drop database $PG_DB"
  PG_DB=""
}
cleanup() {
  stop_sampler; stop_server; drop_pg
  if [ -n "$WORK" ]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM          # so that the EXIT trap runs on Ctrl-C too

# --------------------------------------------------------------- tools ---
if ! command -v wrk >/dev/null; then
  log "installing wrk"
  apt-get update -qq >/dev/null && apt-get install -y -qq wrk >/dev/null
fi
for t in curl psql pgrep ss setsid; do command -v "$t" >/dev/null || die "missing tool: $t"; done
if ss -Hltn "sport = :$PORT" | grep -q .; then die "port $PORT is already in use"; fi

# The peer's README asks for Python 3.11. The venv is reused while requirements.txt is unchanged.
T0=$SECONDS
if ! cmp -s "$PEER_DIR/requirements.txt" "$PEER_VENV/.peer-requirements.txt" 2>/dev/null; then
  log "creating venv $PEER_VENV (pip install -r requirements.txt)"
  rm -rf "$PEER_VENV"
  "$(command -v python3.11 || command -v python3)" -m venv "$PEER_VENV"
  "$PEER_VENV/bin/pip" install -q --disable-pip-version-check -r "$PEER_DIR/requirements.txt"
  cp "$PEER_DIR/requirements.txt" "$PEER_VENV/.peer-requirements.txt"
fi
PY=$PEER_VENV/bin/python

# A writable copy of the code: the SQLite file, __pycache__ and logs go here, not into the peer.
WORK=$(mktemp -d /tmp/instachatico-peer.XXXXXX)
cp -r "$PEER_DIR/app" "$PEER_DIR/scripts" "$WORK/"
chmod -R u+w "$WORK"
cd "$WORK"

JWT_SECRET_KEY=$("$PY" -c 'import secrets; print(secrets.token_urlsafe(48))')
ENCRYPTION_KEY=$("$PY" -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')
# A clean environment for the peer: its pydantic Settings would also pick up DEBUG (SQL echo),
# HOST, PORT, FRONTEND_URL ... from ours. PEER_HANDLERS=async is the seed as written (default).
# (An array, not a function: a function run with & would put a subshell between us and uvicorn.)
PEER_ENV=(env -i PATH="$PATH" HOME="$HOME" LANG=C.UTF-8 JWT_SECRET_KEY="$JWT_SECRET_KEY"
          ENCRYPTION_KEY="$ENCRYPTION_KEY" PEER_HANDLERS=async)

{
  echo "date: $(date -Is)"; echo "nproc: $(nproc)"; echo "loadavg_at_start: $(cat /proc/loadavg)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
  echo "wrk: $(wrk -v 2>&1 | head -1)"; echo "python: $("$PY" -V 2>&1)"
  echo "postgres: $(psql -h $HOST -p "$PG_PORT" -U postgres -tAc 'show server_version' 2>/dev/null || echo n/a)"
  echo "peer: $PEER_DIR"; echo "knobs: DUR=$DUR DBS='$DBS' CONCURRENCIES='$CONCURRENCIES' WORKERS=$WORKERS NUSERS=$NUSERS"
  "$PEER_VENV/bin/pip" freeze 2>/dev/null | sed 's/^/pip: /'
} > "$OUT/machine.txt"

# -------------------------------------------------------------- server ---
start_server() {  # start_server DATABASE_URL LOGFILE; its own session, so its group is killable
  "${PEER_ENV[@]}" DATABASE_URL="$1" setsid "$PEER_VENV/bin/uvicorn" app.main:app --host "$HOST" --port "$PORT" \
    --workers "$WORKERS" > "$2" 2>&1 &
  SERVER_PGID=$!   # env and setsid exec; setsid does not fork (a background job is no group leader)
  local deadline=$((SECONDS + 60))
  until curl -fs --noproxy '*' -m 2 "$BASE/api/v1/health" >/dev/null 2>&1; do
    kill -0 "$SERVER_PGID" 2>/dev/null || die "server exited, see $2: $(tail -3 "$2")"
    [ $SECONDS -lt $deadline ] || die "server not healthy after 60 s"
    sleep 0.3
  done
  [ "$(ps -o pgid= -p "$SERVER_PGID" | tr -d ' ')" = "$SERVER_PGID" ] || die "server is not its own process group"
  sleep 1          # let every worker finish starting (health answers from the first one)
}

# Every 0.2 s: time (µs), summed VmRSS (kB) and CPU (ticks) of all processes in the server's group
# (uvicorn supervisor, workers, multiprocessing resource tracker), how many there are, and the
# whole machine's busy CPU ticks (the machine is shared: busy minus server = wrk, DB and others).
sample_server() {
  local p k v f a rss ticks n u ni sy q sq st
  while :; do
    rss=0; ticks=0; n=0
    for p in $(pgrep -g "$SERVER_PGID" || true); do
      f=$(cat "/proc/$p/stat" 2>/dev/null) || continue          # already gone
      { while read -r k v _; do
          if [ "$k" = VmRSS: ]; then rss=$((rss + v)); break; fi
        done < "/proc/$p/status"; } 2>/dev/null || true
      read -ra a <<< "${f##*) }"                  # a[11]=utime, a[12]=stime
      ticks=$((ticks + a[11] + a[12])); n=$((n + 1))
    done
    read -r _ u ni sy _ _ q sq st _ < /proc/stat
    echo "${EPOCHREALTIME/./} $rss $ticks $n $((u + ni + sy + q + sq + st))"
    sleep 0.2
  done
}

# wrk script: rotate the users' JWTs across requests, and print one JSON line when done.
write_lua() {  # write_lua TOKENS_FILE LUA_FILE
  {
    echo 'local tokens = {'; sed 's/.*/  "&",/' "$1"; echo '}'
    cat <<'LUA'
local n, i, hdr, next_tid = #tokens, 0, {}, 0
function setup(thread) thread:set("tid", next_tid); next_tid = next_tid + 1 end
function init(args) i = ((tid or 0) * 97) % n end       -- threads start at different users
function request()
  i = i % n + 1
  hdr["Authorization"] = "Bearer " .. tokens[i]
  return wrk.format("GET", nil, hdr)
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('RESULT_JSON {"requests":%d,"duration_s":%.3f,"p50_ms":%.3f,"p90_ms":%.3f,' ..
    '"p99_ms":%.3f,"max_ms":%.3f,"non2xx":%d,"err_connect":%d,"err_read":%d,"err_write":%d,"err_timeout":%d}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000, e.status, e.connect, e.read, e.write, e.timeout))
end
LUA
  } > "$2"
}

# ---------------------------------------------------------------- runs ---
log "out=$OUT  DUR=${DUR}s DBS='$DBS' CONCURRENCIES='$CONCURRENCIES' WORKERS=$WORKERS (setup so far $((SECONDS - T0)) s)"
for db in $DBS; do
  t_db=$SECONDS
  case $db in
    sqlite) url="sqlite:///$WORK/peer.db" ;;
    postgres)
      PG_DB=instachatico_peer_$$
      psql -h "$HOST" -p "$PG_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -qc "CREATE DATABASE $PG_DB" >/dev/null \
        || die "cannot create database on $HOST:$PG_PORT"
      url="postgresql://postgres@$HOST:$PG_PORT/$PG_DB" ;;
    *) die "unknown db '$db' (sqlite|postgres)" ;;
  esac
  "${PEER_ENV[@]}" DATABASE_URL="$url" "$PY" scripts/seed_users.py --users "$NUSERS" --password "$PASSWORD" 2>&1 | tee -a "$OUT/peer-run.log" >&2

  # One login per user (bcrypt-12, ~280 ms of CPU each), at most 2 in flight per worker, far below
  # the ~15 per worker where the peer locks up. Tokens live 60 min (the seed's expiry): enough
  # unless len(CONCURRENCIES) x DUR per database gets near an hour.
  start_server "$url" "$WORK/server-login.log"
  "${PEER_ENV[@]}" BASE="$BASE" "$PY" - "$NUSERS" "$PASSWORD" "$((2 * WORKERS))" > "$WORK/tokens.txt" <<'PY'
import json, os, sys, urllib.request
from concurrent.futures import ThreadPoolExecutor
n, password, par = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))   # loopback: never a proxy
def login(i):
    body = json.dumps({"username": f"user{i:04d}", "password": password}).encode()
    req = urllib.request.Request(os.environ["BASE"] + "/api/v1/auth/login", body, {"Content-Type": "application/json"})
    with opener.open(req, timeout=60) as r:
        return json.load(r)["access_token"]
with ThreadPoolExecutor(par) as ex:
    print("\n".join(ex.map(login, range(1, n + 1))))
PY
  stop_server
  [ "$(grep -c . "$WORK/tokens.txt")" = "$NUSERS" ] || die "expected $NUSERS tokens"
  write_lua "$WORK/tokens.txt" "$WORK/me.lua"
  log "$db: seeded $NUSERS users and logged each in ($((SECONDS - t_db)) s)"

  for c in $CONCURRENCIES; do
    tag=$db-c$c
    # A fresh server per run, as the peer's own bench.sh does: once it locks up (more than ~15
    # requests in flight per worker, RESULTS.md) it stays stuck and would poison the next run.
    start_server "$url" "$WORK/server.log"
    wrk -t2 -c8 -d2s --timeout 5s -s "$WORK/me.lua" "$BASE/api/v1/users/me" >/dev/null 2>&1 || true  # warm-up
    sample_server > "$OUT/samples-$tag.txt" & SAMPLER_PID=$!
    threads=$(( c < 2 ? c : 2 ))                    # wrk needs connections >= threads
    wrk -t"$threads" -c"$c" -d"${DUR}s" --timeout 30s --latency -s "$WORK/me.lua" \
      "$BASE/api/v1/users/me" > "$OUT/wrk-$tag.txt" 2>&1 || log "wrk exited non-zero ($tag)"
    stop_sampler
    stop_server
    # keep the server log without its per-request 200 lines (errors, pool timeouts, start/stop)
    grep -v '" 200' "$WORK/server.log" > "$OUT/server-$tag.log" || true
    log "$tag: $(grep -E 'Requests/sec' "$OUT/wrk-$tag.txt" || echo 'no result')"
  done
  drop_pg
  log "$db done in $((SECONDS - t_db)) s"
done

# ------------------------------------------------------------- results ---
# A run "locked up" when the server used < 0.05 of a core in >= 2 whole seconds of the run:
# wrk keeps c requests outstanding throughout, so an idle server there is a stuck one.
"$PY" - "$OUT" "$DBS" "$CONCURRENCIES" "$WORKERS" <<'PY'
import json, os, re, sys
out, dbs, concs, workers = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), sys.argv[4]
tck = os.sysconf("SC_CLK_TCK")
rows = []
for db in dbs:
    for c in concs:
        tag = f"{db}-c{c}"
        wrk = open(f"{out}/wrk-{tag}.txt").read()
        m = re.search(r"^RESULT_JSON (.*)$", wrk, re.M)
        r = json.loads(m.group(1)) if m else {"requests": 0, "duration_s": 0, "non2xx": 0}
        s = [tuple(map(int, l.split())) for l in open(f"{out}/samples-{tag}.txt") if l.strip()]
        last = {}                                  # per whole second: last CPU tick count
        for t, _, ticks, *_ in s:
            last[(t - s[0][0]) // 1_000_000] = ticks
        secs = sorted(last)
        stalled = sum(1 for a, b in zip(secs, secs[1:]) if b == a + 1 and last[b] - last[a] < 0.05 * tck)
        span = (s[-1][0] - s[0][0]) / 1e6 if len(s) > 1 else 0
        done = r["requests"] > 0
        rows.append({
            "db": db, "concurrency": int(c),
            "rps": round(r["requests"] / r["duration_s"], 2) if r["duration_s"] else 0.0,
            "p50_ms": r["p50_ms"] if done else None, "p90_ms": r["p90_ms"] if done else None,
            "p99_ms": r["p99_ms"] if done else None, "max_ms": r.get("max_ms") if done else None,
            "non2xx": r["non2xx"],
            "socket_errors": sum(r.get(k, 0) for k in ("err_connect", "err_read", "err_write", "err_timeout")),
            "peak_rss_mib": round(max((x[1] for x in s), default=0) / 1024, 1),
            "server_procs": max((x[3] for x in s), default=0),
            "requests": r["requests"], "duration_s": r["duration_s"],
            "server_cpu_cores": round((s[-1][2] - s[0][2]) / tck / span, 2) if span else None,
            "other_cpu_cores": round((s[-1][4] - s[0][4] - s[-1][2] + s[0][2]) / tck / span, 2) if span else None,
            "stalled_s": stalled, "locked_up": stalled >= 2,
            "wrk_ok": bool(m),
        })
json.dump(rows, open(f"{out}/peer.json", "w"), indent=1)
f = lambda x: "n/a" if x is None else f"{x:,.2f}"
lines = ["| db | c | req/s | requests | p50 ms | p90 ms | p99 ms | non-2xx | socket errors | peak RSS MiB (procs) | server CPU cores | other CPU cores | locked up |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
for r in rows:
    lock = f"**yes** ({r['stalled_s']} s idle)" if r["locked_up"] else "no"
    lines.append(f"| {r['db']} | {r['concurrency']} | {r['rps']:,.1f} | {r['requests']} | {f(r['p50_ms'])} | "
                 f"{f(r['p90_ms'])} | {f(r['p99_ms'])} | {r['non2xx']} | {r['socket_errors']} | "
                 f"{r['peak_rss_mib']} ({r['server_procs']}) | {f(r['server_cpu_cores'])} | {f(r['other_cpu_cores'])} | {lock} |")
table = "\n".join(lines)
open(f"{out}/peer.md", "w").write(
    "FastAPI seed peer, GET /api/v1/users/me, uvicorn --workers %s, wrk --timeout 30s, fresh server per row.\n"
    "Latencies cover completed requests only; a locked-up run shows as collapsed req/s, not as errors.\n"
    "Other CPU = the machine's busy CPU minus the server's (wrk, PostgreSQL and anything else running).\n\n%s\n"
    % (workers, table))
print(table)
PY
log "results in $OUT (peer.json, peer.md, wrk-*.txt); total $((SECONDS - T0)) s"

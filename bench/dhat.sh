#!/usr/bin/env bash
# Heap allocations per message, measured with valgrind's DHAT on the release build: the same
# load run twice, for SHORT and LONG seconds, so that start-up and connecting cancel out and
# the difference per message is what the message path allocates (send and receive).
#   bench/dhat.sh [echo|im]     (default: both)
#   bench/dhat.sh held          what an idle connected user holds: the live heap at the peak of
#                               USERS (2,000) idle users, per user and allocation site (the
#                               README's heap table)
#   bench/dhat.sh held im       the same for `im` users (rooms of 10, a message and a heartbeat
#                               every 30 s each)
set -euo pipefail
cd "$(dirname "$0")/.."
# DHAT counts what passes through malloc: jemalloc would hide every allocation from it, so the
# measured build keeps the system's (in its own target directory: target/release stays as is).
CARGO_TARGET_DIR=target/dhat cargo build --release --quiet --features system-allocator
E2E_NAME=dhat WSFLEET=target/dhat/release/wsfleet
. scripts/e2e-lib.sh
command -v valgrind >/dev/null || { apt-get update -qq; apt-get install -y -qq valgrind >/dev/null; }
short=${SHORT:-10}; long=${LONG:-20}

blocks_and_messages() {  # SCENARIO SECONDS -> "blocks messages"
  local pt out
  pt=$(free_port)
  "$wsfleet" target --listen "127.0.0.1:$pt" 2>/dev/null & local target=$!
  cat > "$work/fleet.yaml" <<YAML
target: ws://127.0.0.1:$pt/ws
listen: 127.0.0.1:0
users: 20
message_interval: 100ms
scenario: $1
threads: 1
progress_interval: 0s
YAML
  valgrind --tool=dhat --dhat-out-file="$work/dhat.json" "$wsfleet" run -c "$work/fleet.yaml" \
    --duration "${2}s" --summary-out "$work/summary.json" >/dev/null 2>"$work/valgrind.log" || true
  kill "$target"; wait "$target" 2>/dev/null || true
  python3 - "$work/dhat.json" "$work/summary.json" <<'PY'
import json, sys
dhat = json.load(open(sys.argv[1]))
blocks = sum(pp["tbk"] for pp in dhat["pps"])
summary = json.load(open(sys.argv[2]))
print(blocks, summary["messages"]["sent"] + summary["messages"]["received"])
PY
}

held_per_user() {  # SCENARIO
  local users=${USERS:-2000} pt messages=0s
  [ "$1" = idle ] || messages=30s
  pt=$(free_port)
  "$wsfleet" target --listen "127.0.0.1:$pt" 2>/dev/null & local target=$!
  cat > "$work/fleet.yaml" <<YAML
target: ws://127.0.0.1:$pt/ws
listen: 127.0.0.1:0
users: $users
connect_rate: 500
scenario: $1
message_interval: $messages
heartbeat: {interval: 10s, timeout: 5s}
threads: 1
progress_interval: 0s
YAML
  valgrind --tool=dhat --dhat-out-file="$work/dhat.json" "$wsfleet" run -c "$work/fleet.yaml" \
    --duration "$((users / 500 + 20))s" >/dev/null 2>"$work/valgrind.log" || true
  kill "$target"; wait "$target" 2>/dev/null || true
  python3 - "$work/dhat.json" "$users" "$1" <<'PY'
import json, re, sys
dhat, users = json.load(open(sys.argv[1])), int(sys.argv[2])
machinery = re.compile(r"^(alloc|posix_memalign|aligned_malloc|__rustc|allocate|box_new|new<alloc|"
                       r"UnknownInlined|malloc|realloc|calloc|grow_|finish_grow|reserve|with_capacity|<alloc)")
rows, total = [], 0
for pp in dhat["pps"]:
    if pp["gbk"] < users * 0.3:  # not one per user: the fleet's own state
        continue
    frames = [dhat["ftbl"][i].split(": ", 1)[-1] for i in pp["fs"]]
    where = [f for f in frames[1:] if not machinery.match(f)][:2]
    rows.append((pp["gb"] / users, " <- ".join(f[:80] for f in where)))
    total += pp["gb"] / users
for size, where in sorted(rows, reverse=True):
    print(f"{size:8.1f} B  {where}")
print(f"{total:8.1f} B  live heap per connected user ({users} users, {sys.argv[3]})")
PY
}

if [ "${1:-}" = held ]; then
  held_per_user "${2:-idle}"
  exit 0
fi

for scenario in ${1:-echo im}; do
  read -r b1 m1 < <(blocks_and_messages "$scenario" "$short")
  read -r b2 m2 < <(blocks_and_messages "$scenario" "$long")
  python3 -c "print(f'$scenario: {($b2 - $b1) / ($m2 - $m1):.2f} heap blocks per message (sent or received), from {$m2 - $m1:.0f} messages more in the longer run; {$b1} and {$b2} blocks in all')"
done

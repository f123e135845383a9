#!/usr/bin/env bash
# Heap allocations per message, measured with valgrind's DHAT on the release build: the same
# load run twice, for SHORT and LONG seconds, so that start-up and connecting cancel out and
# the difference per message is what the message path allocates (send and receive).
#   bench/dhat.sh [echo|im]     (default: both)
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

for scenario in ${1:-echo im}; do
  read -r b1 m1 < <(blocks_and_messages "$scenario" "$short")
  read -r b2 m2 < <(blocks_and_messages "$scenario" "$long")
  python3 -c "print(f'$scenario: {($b2 - $b1) / ($m2 - $m1):.2f} heap blocks per message (sent or received), from {$m2 - $m1:.0f} messages more in the longer run; {$b1} and {$b2} blocks in all')"
done

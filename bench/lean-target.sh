#!/usr/bin/env bash
# What one held connection costs `wsfleet target --lean` (README "Reference target protocol",
# lean mode): its RSS at 2,000 and at 19,000 idle wsfleet users (heartbeat every 10 s), the
# users raised by PATCH, and the slope between the two. Not in CI.
#   bench/lean-target.sh                     the release build
#   WSFLEET_BIN=path bench/lean-target.sh    that binary for both sides (an older commit's)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${WSFLEET_BIN:-}" ] || cargo build --release --quiet
E2E_NAME=lean-target WSFLEET=${WSFLEET_BIN:-target/release/wsfleet}
. scripts/e2e-lib.sh
low=2000 high=19000
pt=$(free_port); pa=$(free_port); api=$(free_port)
"$wsfleet" target --lean --listen "127.0.0.1:$pt" --admin-listen "127.0.0.1:$pa" \
  2>"$work/target.log" & target=$!; pids+=($target)
cat > "$work/fleet.yaml" <<YAML
target: ws://127.0.0.1:$pt/ws
listen: 127.0.0.1:$api
users: $low
connect_rate: 4000
scenario: idle
heartbeat: {interval: 10s}
threads: 1
progress_interval: 0s
YAML
"$wsfleet" run -c "$work/fleet.yaml" 2>"$work/wsfleet.log" & pids+=($!)
held() { curl -fsS "http://127.0.0.1:$pa/metrics" 2>/dev/null |
  awk '/^wsfleet_target_connections / {print $2}'; }
holds() { [ "$(held)" = "$1" ]; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$target/status"; }
hold_at() {  # USERS -> the target's RSS in KB once it holds them and 15 s more have passed
  wait_for 120 "the target holding $1 connections" holds "$1" >&2
  sleep 15  # the hold being measured: heartbeats go through every connection
  rss_kb
}
wait_for 30 "the fleet's API" curl -fsS "http://127.0.0.1:$api/healthz"
at_low=$(hold_at $low)
curl -fsS -X PATCH "http://127.0.0.1:$api/api/v1/load" -H 'content-type: application/json' \
  -d "{\"users\": $high}" >/dev/null
at_high=$(hold_at $high)
echo "lean target -- $(date -u +%F), $(nproc) cores: RSS $((at_low / 1024)) MB at $low idle connections, $((at_high / 1024)) MB at $(held)"
python3 -c "print(f'KB per connection (slope {$low} -> {$high}): {($at_high - $at_low) / ($high - $low):.2f}')"

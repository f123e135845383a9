#!/usr/bin/env bash
# Sharded fleet at full scale on this machine: 3 wsfleet instances ("pods", APIs on
# 127.0.1.1-3) sharing one config hold 3 x 15,000 = 45,000 users of the `im` scenario against
# three reference targets (one process may open only 20,000 files, so each target holds one
# shard's connections, as a load balancer's backends would). Reports the time to connect
# everyone, per-instance RSS and KB per connection, CPU, file descriptors, the fleet-wide
# exact latency quantiles (`ctl --fleet status`), failures and saturation.
#   bench/fleet-scale.sh            # USERS=45000 HOLD=60 by default
#   WSFLEET_BIN=path bench/fleet-scale.sh   measures that binary as it is (no build: an older
#                                           commit's, for a before/after comparison)
set -euo pipefail
cd "$(dirname "$0")/.."
users=${USERS:-45000}
hold=${HOLD:-60}
[ -n "${WSFLEET_BIN:-}" ] || cargo build --release --quiet
E2E_NAME=fleet-scale WSFLEET=${WSFLEET_BIN:-target/release/wsfleet}
. scripts/e2e-lib.sh
bin=$wsfleet
pt=$(free_port); pw=$(free_port)
apis=(127.0.1.1:$pw 127.0.1.2:$pw 127.0.1.3:$pw)
fleet=$(IFS=,; echo "${apis[*]}")
cat > "$work/fleet.yaml" <<YAML
shard: {count: 3}
users: $users
connect_rate: 3000
message_interval: 30s
heartbeat: {interval: 30s, timeout: 10s}
threads: 1
progress_interval: 0s
YAML
targets=(); shards=()
for i in 0 1 2; do
  "$bin" target --listen "127.0.2.$((i + 1)):$pt" 2>"$work/target-$i.log" & pids+=($!); targets+=($!)
done
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
cpu_s() { awk '{printf "%.2f", ($14 + $15) / 100}' "/proc/$1/stat"; }
fds() { ls "/proc/$1/fd" | wc -l; }
sleep 0.5
start=$(date +%s.%N)
for i in 0 1 2; do
  WSFLEET_SHARD_INDEX=$i "$bin" run -c "$work/fleet.yaml" --listen "${apis[$i]}" \
    --target "ws://127.0.2.$((i + 1)):$pt/ws" 2>"$work/wsfleet-$i.log" & pids+=($!); shards+=($!)
done
active() { for api in "${apis[@]}"; do curl -fsS "http://$api/metrics" 2>/dev/null; done |
  awk '/^wsfleet_users_active / {s += $2} END {print s + 0}'; }
for _ in $(seq 1 100); do curl -fsS "http://${apis[2]}/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
base_rss=(); for pid in "${shards[@]}"; do base_rss+=("$(rss_kb "$pid")"); done
deadline=$((SECONDS + 300))
until [ "$(active)" -ge "$users" ]; do
  [ $SECONDS -lt $deadline ] || { echo "fleet-scale: only $(active) of $users connected after 300 s" >&2; exit 1; }
  sleep 0.5
done
ramp=$(python3 -c "import time; print(f'{time.time() - $start:.1f}')")
cpu0=(); for pid in "${shards[@]}" "${targets[@]}"; do cpu0+=("$(cpu_s "$pid")"); done
sleep "$hold"
echo "wsfleet sharded fleet -- $(date -u +%F), $(nproc) cores, $users users in 3 shards, im scenario, message every 30s, heartbeat every 30s"
echo "all $users connected after ${ramp}s (connect_rate 3000/s fleet-wide); then held ${hold}s"
echo
echo "| process | users | RSS MB | KB per user (slope from start) | CPU s over the hold | fds |"
echo "|---|---|---|---|---|---|"
for i in 0 1 2; do
  pid=${shards[$i]}; rss=$(rss_kb "$pid")
  mine=$(curl -fsS "http://${apis[$i]}/metrics" | awk '/^wsfleet_users_active / {print $2}')
  cpu=$(python3 -c "print(f'{$(cpu_s "$pid") - ${cpu0[$i]}:.2f}')")
  echo "| wsfleet shard $i | $mine | $((rss / 1024)) | $(python3 -c "print(f'{($rss - ${base_rss[$i]}) / $mine:.2f}')") | $cpu | $(fds "$pid") |"
done
for i in 0 1 2; do
  pid=${targets[$i]}
  cpu=$(python3 -c "print(f'{$(cpu_s "$pid") - ${cpu0[$((i + 3))]}:.2f}')")
  echo "| target $i | | $(($(rss_kb "$pid") / 1024)) | | $cpu | $(fds "$pid") |"
done
echo
"$bin" ctl --fleet "$fleet" status | tail -n 2
for api in "${apis[@]}"; do curl -fsS "http://$api/metrics"; done | awk '
  /^wsfleet_connects_total\{result="ok"\}/ {ok += $2}
  /^wsfleet_connects_total/ && !/result="ok"/ {failed += $2}
  /^wsfleet_disconnects_total/ {gone += $2}
  /^wsfleet_generator_saturated / {sat += $2}
  /^wsfleet_messages_sent_total / {sent += $2}
  /^wsfleet_messages_lost_total[{ ]/ {lost += $NF}
  END {printf "connects ok %d, failed %d; disconnects %d; messages sent %d, lost %d; shards saturated %d\n", ok, failed, gone, sent, lost, sat}'

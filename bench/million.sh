#!/usr/bin/env bash
# The million, rehearsed on this one machine (not in CI): SHARDS wsfleet instances (each at
# most ~19,500 users: one process may open 20,000 files) and as many `wsfleet target --lean`
# processes (each holds one shard's connections, as a load balancer's backends would), all on
# loopback source addresses, hold USERS idle WebSocket users with a heartbeat for HOLD seconds,
# scraped by one real Prometheus with the shipped rules. Then `ctl --fleet` moves the fleet
# down to half and back. Prints what it measured, for the README's "Running a million users".
#   sudo bench/million.sh        # USERS=1000000 HOLD=600 RATE=4000 LAG=50ms by default
# LAG is each shard's `self_health.max_loop_lag`: with ~100 processes time-sharing 2 cores a
# shard's event loop is often late by the scheduler's slices, and at the default 50 ms the
# shards call themselves saturated and stop adding users (they say so: it is the truth about
# this machine). A larger LAG lets them go on; their RTTs then include that scheduling delay.
# Needs root for the sysctls below (it says which it could not set), and ~20 GB of memory for
# the million (it stops before starting if the machine has less than its estimate).
set -euo pipefail
cd "$(dirname "$0")/.."
users=${USERS:-1000000}
hold=${HOLD:-600}
rate=${RATE:-4000}
lag=${LAG:-50ms}
per_shard=19200
shards=$(( (users + per_shard - 1) / per_shard ))
cargo build --release --quiet
E2E_NAME=million WSFLEET=target/release/wsfleet
. scripts/e2e-lib.sh
need_prometheus
bin=$wsfleet

# What the kernel must allow (each says what it is for):
raise() {  # raise KEY VALUE WHY (never lowers a single number already higher)
  local now; now=$(sysctl -n "$1" 2>/dev/null || true)
  if [[ "$now" =~ ^[0-9]+$ ]] && [ "$now" -ge "$2" ] 2>/dev/null; then
    echo "million: $1 = $now already ($3)"
  elif [ -e "/proc/sys/${1//.//}" ] && sysctl -qw "$1=$2" 2>/dev/null; then
    echo "million: $1 = $2 ($3)"
  else
    echo "million: could not set $1 ($3): now $(sysctl -n "$1" 2>/dev/null || echo absent)"
  fi
}
# Every loopback connection is tracked once by netfilter when conntrack is loaded; a full
# table drops new connections ("nf_conntrack: table full").
raise net.netfilter.nf_conntrack_max $((users * 2 + 100000)) "connections netfilter may track"
# Source ports for one (source address, destination) pair: 1024-65535 is 64,511.
raise net.ipv4.ip_local_port_range "1024 65535" "ephemeral source ports"
# Accept queues: the target listens with a backlog of 16,384, capped by this.
raise net.core.somaxconn 65535 "accept queue length cap"
raise net.ipv4.tcp_max_syn_backlog 65535 "half-open connections per listener"
# Open files system-wide: two ends per connection, plus the rest of the machine.
raise fs.file-max $((users * 2 + 500000)) "open files system-wide"

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
cpu_s() { awk '{printf "%.2f", ($14 + $15) / 100}' "/proc/$1/stat"; }
slab_kb() { awk '/^Slab:/ {print $2}' /proc/meminfo; }
avail_kb() { awk '/^MemAvailable:/ {print $2}' /proc/meminfo; }
# Estimate from the per-user figures (README): kernel ~9 KB per connection (both ends),
# wsfleet ~3 KB, lean target ~3 KB, 40 MB per process.
need_kb=$(( users * 15 + shards * 2 * 40 * 1024 ))
if [ "$(avail_kb)" -lt "$need_kb" ]; then
  echo "million: $((need_kb / 1024)) MB needed for $users users, $(( $(avail_kb) / 1024 )) MB available: set USERS lower" >&2
  exit 1
fi

pw=$(free_port); pt=$(free_port); pa=$(free_port); pp=$(free_port)
apis=(); targets=(); shard_pids=(); admins=()
for i in $(seq 0 $((shards - 1))); do
  # Each shard has its own loopback source address and its own target address.
  apis+=("127.0.$((10 + i / 200)).$((1 + i % 200)):$pw")
  admins+=("127.1.$((10 + i / 200)).$((1 + i % 200)):$pa")
done
fleet=$(IFS=,; echo "${apis[*]}")
cat > "$work/fleet.yaml" <<YAML
shard: {count: $shards}
users: $users
connect_rate: $rate
scenario: idle
heartbeat: {interval: 30s, timeout: 10s}
threads: 1
progress_interval: 0s
limits: {max_users: $((users * 2))}
self_health: {max_loop_lag: $lag}
YAML
slab0=$(slab_kb)
for i in $(seq 0 $((shards - 1))); do
  taddr="127.1.$((10 + i / 200)).$((1 + i % 200)):$pt"
  "$bin" target --lean --listen "$taddr" --admin-listen "${admins[$i]}" \
    2>"$work/target-$i.log" & pids+=($!); targets+=($!)
done
{
  echo "global: {scrape_interval: 15s, evaluation_interval: 15s}"
  echo "rule_files: [$PWD/prometheus/rules/wsfleet.yml]"
  echo "scrape_configs:"
  echo "  - job_name: wsfleet"
  echo "    static_configs: [{targets: [$(printf '"%s",' "${apis[@]}" | sed 's/,$//')]}]"
  echo "  - job_name: target"
  echo "    static_configs: [{targets: [$(printf '"%s",' "${admins[@]}" | sed 's/,$//')]}]"
} > "$work/prometheus.yml"
start_prometheus "$pp" "$work/prometheus.yml"
sleep 1
start=$(date +%s.%N)
for i in $(seq 0 $((shards - 1))); do
  taddr="127.1.$((10 + i / 200)).$((1 + i % 200)):$pt"
  source=${apis[$i]%:*}
  WSFLEET_SHARD_INDEX=$i "$bin" run -c "$work/fleet.yaml" --listen "${apis[$i]}" \
    --target "ws://$taddr/ws" --source-address "$source" 2>"$work/wsfleet-$i.log" &
  pids+=($!); shard_pids+=($!)
done
sum_metric() {  # sum_metric NAME -> the sum over every shard of that unlabelled metric
  for api in "${apis[@]}"; do curl -fsS --max-time 10 "http://$api/metrics" 2>/dev/null; done |
    awk -v m="$1" '$1 == m {s += $2} END {printf "%d\n", s}'
}
wait_for 60 "every shard's API" bash -c "curl -fsS http://${apis[-1]}/healthz"
base_rss=(); for pid in "${shard_pids[@]}"; do base_rss+=("$(rss_kb "$pid")"); done
base_target=(); for pid in "${targets[@]}"; do base_target+=("$(rss_kb "$pid")"); done
deadline=$((SECONDS + users / rate * 3 + 120))
last=0
until [ "$(sum_metric wsfleet_users_active)" -ge "$users" ]; do
  now=$(sum_metric wsfleet_users_active)
  if [ $SECONDS -ge $deadline ]; then
    echo "million: only $now of $users connected by the deadline; holding what is connected" >&2
    break
  fi
  if [ $((now / 100000)) -gt $((last / 100000)) ]; then echo "million: $now connected"; fi
  last=$now
  sleep 5
done
connected=$(sum_metric wsfleet_users_active)
ramp=$(python3 -c "import time; print(f'{time.time() - $start:.0f}')")
slab_held=$(slab_kb)
cpu0=(); for pid in "${shard_pids[@]}" "${targets[@]}"; do cpu0+=("$(cpu_s "$pid")"); done
echo "million: $connected connected after ${ramp}s; holding ${hold}s"
sleep "$hold"
# Users the deadline left waiting go on connecting during the hold: count them at its end.
connected=$(sum_metric wsfleet_users_active)

total() { local s=0; for v in "$@"; do s=$((s + v)); done; echo $s; }
cpu_over() {  # cpu_over FIRST COUNT -> CPU seconds of those processes over the hold
  python3 - "$@" "${cpu0[@]}" <<PY
import sys
first, count = int(sys.argv[1]), int(sys.argv[2])
before = [float(x) for x in sys.argv[3:]]
pids = "${shard_pids[*]} ${targets[*]}".split()
now = [sum(int(v) for v in open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[11:13]) / 100 for p in pids]
print(f"{sum(now[i] - before[i] for i in range(first, first + count)):.1f}")
PY
}
rss_now=(); for pid in "${shard_pids[@]}"; do rss_now+=("$(rss_kb "$pid")"); done
target_now=(); for pid in "${targets[@]}"; do target_now+=("$(rss_kb "$pid")"); done
grown=0; for i in "${!rss_now[@]}"; do grown=$((grown + rss_now[i] - base_rss[i])); done
tgrown=0; for i in "${!target_now[@]}"; do tgrown=$((tgrown + target_now[i] - base_target[i])); done
shard_cpu=$(cpu_over 0 "$shards"); target_cpu=$(cpu_over "$shards" "$shards")
p() { value "$1" | python3 -c 'import sys; v=sys.stdin.read().strip(); print(f"{float(v) * 1000:.1f} ms" if v else "none")'; }
hb='sum by (le) (rate(wsfleet_heartbeat_rtt_seconds_bucket[5m]))'
echo
echo "## wsfleet, the million -- $(date -u +%F), $(nproc) cores, $(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 1024 )) GiB"
echo
echo "| figure | value |"
echo "|---|---|"
echo "| users held at the end of the hold | $connected of $users, in $shards shards against $shards lean targets (self_health.max_loop_lag $lag) |"
echo "| time to connect everyone (or to the deadline) | ${ramp} s at connect_rate $rate/s fleet-wide |"
echo "| saturations (times a shard stopped adding users) | $(value 'sum(wsfleet_generator_saturations_total) or vector(0)') |"
echo "| wsfleet RSS per shard | $(( $(total "${rss_now[@]}") / shards / 1024 )) MB (all: $(( $(total "${rss_now[@]}") / 1024 )) MB) |"
echo "| wsfleet KB per user (RSS growth from start) | $(python3 -c "print(f'{$grown / max($connected, 1):.2f}')") |"
echo "| kernel slab per connection (both ends) | $(python3 -c "print(f'{($slab_held - $slab0) / max($connected, 1):.2f}')") KB |"
echo "| lean target RSS (all), KB per connection | $(( $(total "${target_now[@]}") / 1024 )) MB, $(python3 -c "print(f'{$tgrown / max($connected, 1):.2f}')") |"
echo "| CPU over the ${hold} s hold | wsfleet $shard_cpu s, targets $target_cpu s |"
echo "| heartbeat RTT p50 / p99 (summed buckets, 5m) | $(p "histogram_quantile(0.5, $hb)") / $(p "histogram_quantile(0.99, $hb)") |"
echo "| connect failures, disconnects, saturated shards | $(value 'sum(wsfleet_connects_total{result!="ok"}) or vector(0)'), $(value 'sum(wsfleet_disconnects_total) or vector(0)'), $(value 'sum(wsfleet_generator_saturated) or vector(0)') |"
echo "| alerts firing | $(query 'ALERTS{alertstate="firing"}' | python3 -c 'import json,sys; print(", ".join(sorted({r["metric"]["alertname"] for r in json.load(sys.stdin)["data"]["result"]})) or "none")') |"

half=$((users / 2))
t0=$SECONDS
"$bin" ctl --fleet "$fleet" set "users=$half" >/dev/null
until [ "$(sum_metric wsfleet_users_active)" -le "$half" ] || [ $((SECONDS - t0)) -gt 900 ]; do sleep 5; done
down=$((SECONDS - t0)); at_half=$(sum_metric wsfleet_users_active)
t0=$SECONDS
"$bin" ctl --fleet "$fleet" set "users=$users" >/dev/null
until [ "$(sum_metric wsfleet_users_active)" -ge "$connected" ] || [ $((SECONDS - t0)) -gt 900 ]; do sleep 5; done
echo "| ctl --fleet to $half and back | $at_half held after ${down} s; $(sum_metric wsfleet_users_active) again after $((SECONDS - t0)) s |"

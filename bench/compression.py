#!/usr/bin/env python3
"""What permessage-deflate costs wsfleet: memory per connection and CPU per message, without
compression, with it as a browser offers it (context takeover), with our messages compressed
each on its own (`client_no_context_takeover`), and with every message on its own (both), in
one run, alternating.

The server is Python's `websockets` echo server (tests/servers/echo_server.py, from the test
venv: scripts/test makes it), which compresses with windows of 2^12. Only wsfleet is measured
(/proc/PID). Messages carry 8 random UUIDs and 200 filler bytes (~560 bytes, about half of it
compressible), so the compressor has real work.

  memory   users step up by PATCH (STEPS), each step held HOLD s while every user sends a
           message every 4 s (so each has made the contexts it keeps): RSS slope in KB per
           connection
  cpu      ECHO_USERS users x 20 msg/s for ECHO_SECONDS: wsfleet CPU-seconds per 100k echoed
           messages, and the bytes on the wire per message sent

usage: bench/compression.py   (environment: WSFLEET_BIN, REPEATS, HOLD, ECHO_SECONDS, STEPS)
"""
import os
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (the shared helpers of bench/run.py)

ROOT = run.ROOT
REPEATS = int(os.environ.get("REPEATS", "2"))
HOLD = int(os.environ.get("HOLD", "10"))
STEPS = [int(s) for s in os.environ.get("STEPS", "250,1000,2000").split(",")]
ECHO_USERS, ECHO_RATE = 100, 20
ECHO_SECONDS = int(os.environ.get("ECHO_SECONDS", "30"))
MODES = {
    "off": "",
    "deflate": "compression: deflate\n",
    "deflate, client_no_context_takeover": "compression: {deflate: {client_no_context_takeover: true}}\n",
    "deflate, no context takeover": "compression: {deflate: {client_no_context_takeover: true, "
                                    "server_no_context_takeover: true}}\n",
}
BODY = "{{uuid()}}" * 8 + "{{payload}}"
SCENARIO = ("scenario:\n  message:\n"
            f"    send: '{{\"id\":\"{{{{msg_id}}}}\",\"ts\":{{{{ts}}}},\"body\":\"{BODY}\"}}'\n"
            "    ack: {match: {pointer: /id}, id: /id}\npayload_size: 200\n")


def echo_server(tmp):
    python = os.path.join(ROOT, ".venv-test/bin/python3")
    if not os.path.exists(python):
        sys.exit("bench/compression.py needs the test venv (run scripts/test once, or make "
                 ".venv-test with websockets)")
    port = run.free_port()
    proc = run.process([python, os.path.join(ROOT, "tests/servers/echo_server.py"), "--port", str(port)],
                       cwd=tmp)
    return proc, port


def connectable(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def config(tmp, sport, api, users, extra):
    path = os.path.join(tmp, "fleet.yaml")
    with open(path, "w") as f:
        f.write(f"target: ws://127.0.0.1:{sport}/\nlisten: 127.0.0.1:{api}\nusers: {users}\n"
                f"threads: 1\nconnect_rate: 2000\nheartbeat: {{interval: 10s, timeout: 10s}}\n"
                f"{SCENARIO}{extra}")
    return path


def active(api):
    m = run.metrics(api) or {}
    return run.metric_sum(m, "wsfleet_users_active")


def memory(tmp, sport, mode):
    api = run.free_port()
    path = config(tmp, sport, api, STEPS[0], MODES[mode] + "message_interval: 4s\n")
    with run.process([run.WSFLEET, "run", "-c", path]) as proc:
        points = []
        for i, n in enumerate(STEPS):
            if i:
                run.patch_users(api, n)
            run.wait_until(f"{n} users", 120, lambda: active(api) == n)
            time.sleep(HOLD)  # the hold being measured: every user sends twice or more
            points.append((n, run.rss_kb(proc.pid)))
        return run.slope_kb(points)


def cpu(tmp, sport, mode):
    api = run.free_port()
    path = config(tmp, sport, api, ECHO_USERS, MODES[mode] + f"message_interval: {1000 // ECHO_RATE}ms\n")
    with run.process([run.WSFLEET, "run", "-c", path]) as proc:
        run.wait_until("echo users", 60, lambda: active(api) == ECHO_USERS)
        time.sleep(3)  # past the first messages' random phases

        def sample():
            m = run.metrics(api)
            wire = m.get("wsfleet_deflate_wire_bytes_sent_total", 0) or m.get("wsfleet_bytes_sent_total", 0)
            return run.cpu_seconds(proc.pid), m.get("wsfleet_messages_received_total", 0), \
                m.get("wsfleet_messages_sent_total", 0), wire
        c0, r0, s0, w0 = sample()
        time.sleep(ECHO_SECONDS)  # the measurement window
        c1, r1, s1, w1 = sample()
        return {"cpu_per_100k": (c1 - c0) / max(r1 - r0, 1) * 100_000,
                "rate": (r1 - r0) / ECHO_SECONDS,
                "wire_per_message": (w1 - w0) / max(s1 - s0, 1)}


def main():
    run.WSFLEET = os.environ.get("WSFLEET_BIN")
    if not run.WSFLEET:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
        run.WSFLEET = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")),
                                   "release", "wsfleet")
    results = {mode: {"kb": [], "cpu": [], "rate": [], "wire": []} for mode in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        server, sport = echo_server(tmp)
        with server:
            run.wait_until("the echo server", 30, lambda: connectable(sport))
            for r in range(REPEATS):
                order = list(MODES) if r % 2 == 0 else list(reversed(MODES))
                for mode in order:
                    kb = memory(tmp, sport, mode)
                    c = cpu(tmp, sport, mode)
                    run.log(f"{mode}: {kb:.2f} KB/connection, {c['cpu_per_100k']:.2f} CPU-s/100k at "
                            f"{c['rate']:.0f} msg/s, {c['wire_per_message']:.0f} B/message on the wire")
                    results[mode]["kb"].append(kb)
                    results[mode]["cpu"].append(c["cpu_per_100k"])
                    results[mode]["rate"].append(c["rate"])
                    results[mode]["wire"].append(c["wire_per_message"])
    print(f"\npermessage-deflate, medians of {REPEATS} (wsfleet only; server: Python websockets)")
    print(f"| {'mode':<36} | KB per connection | CPU-s per 100k msgs | msg/s | payload B/msg on the wire |")
    print(f"|{'-' * 38}|------------------:|--------------------:|------:|--------------------------:|")
    for mode, r in results.items():
        print(f"| {mode:<36} | {run.median(r['kb']):>17.2f} | {run.median(r['cpu']):>19.2f} | "
              f"{run.median(r['rate']):>5.0f} | {run.median(r['wire']):>25.0f} |")


if __name__ == "__main__":
    main()

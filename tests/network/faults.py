#!/usr/bin/env python3
"""Network faults, run inside a network namespace of its own by tests/network.rs: starts the
reference target and a wsfleet daemon on the namespace's loopback, breaks the network with
nftables, waits for what each fault must cause (polling /metrics: events, not fixed sleeps,
except the length of a fault window), and prints one JSON object of observations.

The daemon reaches the target through a TCP relay here that can add delay and jitter (order
kept) — this kernel has no `tc netem`; packet loss, blackholes and half-open peers are
nftables rules on the target's port, behind the relay.

usage: faults.py WSFLEET_BINARY WORKDIR
"""
import asyncio
import json
import os
import random
import subprocess
import sys
import threading
import time
import urllib.request

BIN, WORK = sys.argv[1], sys.argv[2]
TARGET, RELAY, API, USERS = "127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9750", 50
# The relay's added delay and jitter each way, seconds; changed while it runs.
DELAY = {"base": 0.0, "jitter": 0.0}


async def pipe(reader, writer):
    """Forwards `reader` to `writer`, each chunk held DELAY (+ jitter) but never overtaking."""
    last = 0.0
    try:
        while data := await reader.read(65536):
            due = time.monotonic() + DELAY["base"] + random.uniform(0, DELAY["jitter"])
            due = max(due, last)
            last = due
            await asyncio.sleep(max(0.0, due - time.monotonic()))  # the delay being added
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def relay_one(client_reader, client_writer):
    host, port = TARGET.split(":")
    try:
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
    except OSError:
        client_writer.close()
        return
    await asyncio.gather(pipe(client_reader, up_writer), pipe(up_reader, client_writer))


def relay():
    async def serve():
        host, port = RELAY.split(":")
        server = await asyncio.start_server(relay_one, host, int(port))
        async with server:
            await server.serve_forever()
    threading.Thread(target=lambda: asyncio.run(serve()), daemon=True).start()


def sh(*args):
    subprocess.run(args, check=True, capture_output=True)


def nft_drop(rule):
    """Drops packets to and from the target's port matching `rule` (nftables)."""
    sh("nft", "add", "table", "inet", "faults")
    for hook in ("input", "output"):
        sh("nft", "add", "chain", "inet", "faults", hook, "{", "type", "filter", "hook", hook, "priority", "0", ";", "}")
        for port in ("dport", "sport"):
            sh("nft", "add", "rule", "inet", "faults", hook, "tcp", port, "9001", *rule.split(), "drop")


def nft_clear():
    subprocess.run(["nft", "delete", "table", "inet", "faults"], capture_output=True)


def metrics():
    out = {}
    with urllib.request.urlopen(f"http://{API}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line and not line.startswith("#"):
                k, _, v = line.rpartition(" ")
                out[k] = float(v)
    return out


def total(m, name):
    return sum(v for k, v in m.items() if k.split("{")[0] == name)


def wait(what, seconds, cond):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            m = metrics()
            if cond(m):
                return m
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"timed out after {seconds}s waiting for {what}")


def rtt_quantile_ms(m0, m1, q):
    """The `q` quantile of the RTT between two scrapes, as its bucket's upper bound."""
    buckets = sorted((float(k.split('le="')[1].split('"')[0]), m1[k] - m0.get(k, 0))
                     for k in m1 if k.startswith("wsfleet_message_rtt_seconds_bucket"))
    n = buckets[-1][1]
    return next(le for le, c in buckets if c >= q * n) * 1000 if n else None


def rtt_p99_ms(m0, m1):
    return rtt_quantile_ms(m0, m1, 0.99)


def target():
    return subprocess.Popen([BIN, "target", "--listen", TARGET], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main():
    sh("ip", "link", "set", "lo", "up")
    config = os.path.join(WORK, "fleet.yaml")
    with open(config, "w") as f:
        f.write(f"target: ws://{RELAY}/ws\nlisten: {API}\nusers: {USERS}\nconnect_rate: 500\n"
                "message_interval: 100ms\nack_timeout: 30s\nloss_grace: 30s\nconnect_timeout: 2s\n"
                "heartbeat: {interval: 1s, timeout: 2s}\nreconnect: {initial: 100ms, max: 1s}\n")
    server = target()
    relay()
    daemon = subprocess.Popen([BIN, "run", "-c", config], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = {}
    try:
        base = wait("all users", 30, lambda m: m.get("wsfleet_users_active") == USERS)
        time.sleep(3)  # a baseline window of the RTT
        clean = metrics()
        out["clean_rtt_p99_ms"] = rtt_p99_ms(base, clean)

        # 50 ms each way, plus up to 30 ms of jitter: the round trip shows it.
        DELAY.update(base=0.05, jitter=0.03)
        time.sleep(5)  # the fault window
        delayed = metrics()
        DELAY.update(base=0.0, jitter=0.0)
        out["delayed_rtt_p50_ms"] = rtt_quantile_ms(clean, delayed, 0.5)
        out["delayed_rtt_p99_ms"] = rtt_p99_ms(clean, delayed)
        time.sleep(2)  # what was delayed drains
        clean = metrics()

        # 5% packet loss both ways: TCP retransmits; nobody disconnects, nothing is lost.
        nft_drop("numgen random mod 100 < 5")
        time.sleep(6)  # the fault window
        lossy = metrics()
        nft_clear()
        out["lossy_rtt_p99_ms"] = rtt_p99_ms(clean, lossy)
        out["lossy_disconnects"] = total(lossy, "wsfleet_disconnects_total") - total(clean, "wsfleet_disconnects_total")
        out["lossy_lost"] = total(lossy, "wsfleet_messages_lost_total")

        # A blackhole: every packet dropped. Heartbeats find it within interval + timeout.
        before = metrics()
        hole = time.monotonic()
        nft_drop("")
        m = wait("heartbeat timeouts", 20, lambda m: m.get('wsfleet_disconnects_total{reason="heartbeat_timeout"}', 0)
                 - before.get('wsfleet_disconnects_total{reason="heartbeat_timeout"}', 0) >= USERS)
        out["blackhole_detected_s"] = time.monotonic() - hole
        time.sleep(4)  # the rest of the blackhole: reconnects fail meanwhile
        during = metrics()
        out["blackhole_connect_timeouts"] = during.get('wsfleet_connects_total{result="timeout"}', 0)
        nft_clear()
        m = wait("recovery after the blackhole", 30, lambda m: m.get("wsfleet_users_active") == USERS)
        out["blackhole_recovered_s"] = time.monotonic() - hole

        # Half-open: the server vanishes without a FIN or RST reaching us (its packets dropped,
        # then the process killed); heartbeats find it; a new server brings everyone back.
        before = metrics()
        nft_drop("")
        server.kill()
        server.wait()
        wait("half-open peers found", 20, lambda m: m.get('wsfleet_disconnects_total{reason="heartbeat_timeout"}', 0)
             - before.get('wsfleet_disconnects_total{reason="heartbeat_timeout"}', 0) >= USERS)
        out["half_open_reset_disconnects"] = (metrics().get('wsfleet_disconnects_total{reason="reset"}', 0)
                                              - before.get('wsfleet_disconnects_total{reason="reset"}', 0))
        nft_clear()
        server = target()
        wait("recovery after the half-open peers", 30, lambda m: m.get("wsfleet_users_active") == USERS)
        out["recovered"] = True
    finally:
        nft_clear()
        daemon.terminate()
        daemon.wait(timeout=30)
        server.kill()
    print(json.dumps(out))


if __name__ == "__main__":
    main()

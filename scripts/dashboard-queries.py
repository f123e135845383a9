"""Runs every PromQL expression of every dashboard panel against a Prometheus, with the
dashboard's variables substituted, and fails while any comes back empty.

usage: dashboard-queries.py PROMETHEUS_URL DASHBOARD.json [TIMEOUT_SECONDS] [GROUP]

With GROUP, the dashboard's $group variable is set to that group of users (default: all).
"""
import json
import sys
import time
import urllib.parse
import urllib.request

SUBSTITUTIONS = {"$__rate_interval": "15s", "$__interval": "5s", "$__range": "1m", "$job": ".*", "$instance": ".*",
                 "$group": ".*"}


def expressions(dashboard):
    for panel in dashboard["panels"]:
        for inner in [panel] + panel.get("panels", []):
            for target in inner.get("targets", []):
                yield inner["title"], target["expr"]


def substitute(expr):
    for name in sorted(SUBSTITUTIONS, key=len, reverse=True):
        expr = expr.replace(name, SUBSTITUTIONS[name])
    return expr


def query(base, expr):
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.load(response)
    if body.get("status") != "success":
        raise RuntimeError(f"query failed: {body}")
    return body["data"]["result"]


def main():
    base, path = sys.argv[1], sys.argv[2]
    timeout = float(sys.argv[3]) if len(sys.argv) > 3 else 120
    if len(sys.argv) > 4:
        SUBSTITUTIONS["$group"] = sys.argv[4]
    with open(path) as f:
        exprs = list(expressions(json.load(f)))
    deadline = time.monotonic() + timeout
    while True:
        empty = []
        for title, expr in exprs:
            try:
                if not query(base, substitute(expr)):
                    empty.append((title, expr))
            except Exception as err:  # a malformed query is a failure, not a retry
                print(f"FAIL {title}: {substitute(expr)}: {err}")
                sys.exit(1)
        if not empty:
            print(f"dashboard-queries: all {len(exprs)} panel queries return data (group {SUBSTITUTIONS['$group']})")
            return
        if time.monotonic() > deadline:
            for title, expr in empty:
                print(f"EMPTY {title}: {substitute(expr)}")
            print(f"dashboard-queries: {len(empty)} of {len(exprs)} panel queries return no data")
            sys.exit(1)
        time.sleep(2)


if __name__ == "__main__":
    main()

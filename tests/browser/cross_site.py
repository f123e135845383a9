#!/usr/bin/env python3
"""A page on another origin attacks the daemon's API from headless Chromium, as a person's
browser would run it: a `no-cors` text/plain POST, a form POST, and a JSON PATCH (which a
browser sends only after a preflight the API does not grant). For tests/hostile.rs; prints
one JSON object of what the page tried and what the daemon reported after.

usage: cross_site.py DAEMON_URL
"""
import http.server
import json
import sys
import threading
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

DAEMON = sys.argv[1].rstrip("/")

ATTACK = """<!doctype html><title>attacking</title>
<form id=f method=post action="%(d)s/api/v1/pause" enctype="text/plain" target=sink>
<input name=x value=y></form><iframe name=sink></iframe>
<script>
(async () => {
  const tried = [];
  for (const [path, init] of [
    ["/api/v1/pause", {method: "POST", mode: "no-cors", body: "x"}],
    ["/api/v1/resume", {method: "POST", mode: "no-cors"}],
    ["/api/v1/load", {method: "PATCH", headers: {"content-type": "application/json"}, body: '{"users": 1}'}],
  ]) {
    try { await fetch("%(d)s" + path, init); tried.push(path + ": sent"); }
    catch (e) { tried.push(path + ": " + e.name); }
  }
  document.getElementById("f").submit();
  document.body.dataset.tried = JSON.stringify(tried);
  setTimeout(() => { document.title = "done"; }, 1000);
})();
</script>""" % {"d": DAEMON}


class Attacker(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ATTACK.encode()
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def status():
    with urllib.request.urlopen(DAEMON + "/api/v1/status", timeout=5) as r:
        return json.load(r)


def main():
    # Another loopback address: another origin, as another site would be.
    server = http.server.ThreadingHTTPServer(("127.0.0.2", 0), Attacker)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    seen = {"users_before": status()["load"]["users"]}
    try:
        driver.get("http://127.0.0.2:%d/" % server.server_address[1])
        WebDriverWait(driver, 30, poll_frequency=0.2).until(lambda d: d.title == "done")
        seen["tried"] = json.loads(driver.execute_script("return document.body.dataset.tried"))
    finally:
        driver.quit()
        server.shutdown()
    after = status()
    seen["paused"] = after["paused"]
    seen["users_after"] = after["load"]["users"]
    print(json.dumps(seen))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Drives the live page and a report in headless Chromium (Debian's chromium and
chromium-driver, through selenium), for tests/page.rs. Prints one JSON object of what it saw.

usage: page.py PAGE_URL TOKEN REPORT_FILE OUT_DIR
"""
import json
import os
import sys
import time
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

URL, TOKEN, REPORT, OUT = (sys.argv[1:5] + [""] * 4)[:4] if __name__ == "__main__" else ("",) * 4


def metrics(url=None):
    """The daemon's /metrics as series -> value (of the page at `url`, by default this run's)."""
    with urllib.request.urlopen((url or URL).rstrip("/") + "/metrics", timeout=5) as r:
        return {k: float(v) for k, _, v in
                (line.rpartition(" ") for line in r.read().decode().splitlines() if line and not line.startswith("#"))}


def browser(network_log=False):
    """Headless Chromium; with `network_log`, its DevTools Network events are kept for
    `driver.get_log("performance")` (what har.py builds a HAR from)."""
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--window-size=1400,2400"):
        options.add_argument(flag)
    if network_log:
        options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def points(driver, chart):
    return int(driver.find_element(By.ID, "chart-" + chart).get_attribute("data-points") or 0)


def main():
    seen = {}
    driver = browser()
    try:
        wait = WebDriverWait(driver, 30, poll_frequency=0.2)
        driver.get(URL)
        # The API asks for its token: given once, at the prompt, kept in the tab.
        # (alert_is_present: a poll before the prompt opens raises NoAlertPresent, which
        # WebDriverWait does not ignore by default.)
        alert = wait.until(expected_conditions.alert_is_present())
        seen["prompt"] = alert.text
        alert.send_keys(TOKEN)
        alert.accept()
        wait.until(lambda d: points(d, "users") >= 3 and points(d, "messages") >= 3)
        seen["chart_points"] = {c: points(driver, c) for c in ("users", "rtt", "messages", "connects")}
        seen["happening"] = driver.find_element(By.ID, "happening").text
        # Change the users in the form: the fleet follows.
        users = int(driver.find_element(By.ID, "users").get_attribute("value"))
        field = driver.find_element(By.ID, "users")
        field.clear()
        field.send_keys(str(users + 5))
        driver.find_element(By.ID, "apply").click()
        wait.until(lambda d: metrics().get("wsfleet_users_active") == users + 5)
        seen["users_before"], seen["users_after"] = users, metrics()["wsfleet_users_active"]
        wait.until(lambda d: "users" in d.find_element(By.ID, "happening").text and "api" in d.find_element(By.ID, "happening").text)
        seen["change_listed"] = "users {} -> {}".format(users, users + 5) in driver.find_element(By.ID, "happening").text
        # Pause: the message counters stop.
        driver.find_element(By.ID, "pause").click()
        wait.until(lambda d: metrics().get("wsfleet_paused") == 1)
        time.sleep(0.5)  # messages already under way arrive
        sent = metrics()["wsfleet_messages_sent_total"]
        time.sleep(2)  # a measurement window, not a wait for an event
        seen["sent_while_paused"] = metrics()["wsfleet_messages_sent_total"] - sent
        driver.find_element(By.ID, "resume").click()
        wait.until(lambda d: metrics().get("wsfleet_paused") == 0)
        driver.save_screenshot(os.path.join(OUT, "page.png"))
        seen["screenshot"] = os.path.getsize(os.path.join(OUT, "page.png"))
        # The report of a --duration run, opened from its file.
        driver.get("file://" + os.path.abspath(REPORT))
        wait.until(lambda d: d.find_element(By.ID, "verdict-text"))
        seen["report_verdict"] = driver.find_element(By.ID, "verdict-text").text
        seen["report_chart_points"] = {c: points(driver, c) for c in ("users", "rtt", "messages")}
        seen["report_text"] = driver.find_element(By.ID, "happening").text
        driver.save_screenshot(os.path.join(OUT, "report.png"))
    finally:
        driver.quit()
    print(json.dumps(seen))


if __name__ == "__main__":
    main()

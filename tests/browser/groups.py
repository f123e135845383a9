#!/usr/bin/env python3
"""Steers one group of a fleet of several from the live page in headless Chromium, for
tests/page.rs, and reads the network links it shows in force. Prints one JSON object of
what it saw.

usage: groups.py PAGE_URL GROUP USERS
"""
import json
import sys

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from page import browser, metrics

URL, GROUP, USERS = sys.argv[1], sys.argv[2], int(sys.argv[3])


def active(group):
    return metrics(URL).get(f'wsfleet_users_active{{group="{group}"}}')


def main():
    seen = {}
    driver = browser()
    try:
        wait = WebDriverWait(driver, 30, poll_frequency=0.2)
        driver.get(URL)
        wait.until(lambda d: d.find_element(By.ID, "groups-section").is_displayed()
                   and d.find_elements(By.CSS_SELECTOR, "#groups tr[data-group]"))
        # The links in force, for a fleet whose groups are shaped.
        wait.until(lambda d: "network in force" in d.find_element(By.ID, "happening").text)
        seen["network"] = next(tr.text for tr in driver.find_elements(By.CSS_SELECTOR, "#happening tr")
                               if tr.text.startswith("network in force"))
        rows = driver.find_elements(By.CSS_SELECTOR, "#groups tr[data-group]")
        seen["groups"] = [row.get_attribute("data-group") for row in rows]
        row = driver.find_element(By.CSS_SELECTOR, f'#groups tr[data-group="{GROUP}"]')
        wait.until(lambda d: row.find_element(By.CLASS_NAME, "g-users").get_attribute("value"))
        seen["users_shown"] = int(row.find_element(By.CLASS_NAME, "g-users").get_attribute("value"))
        others = {g: active(g) for g in seen["groups"] if g != GROUP}
        field = row.find_element(By.CLASS_NAME, "g-users")
        field.clear()
        field.send_keys(str(USERS))
        row.find_element(By.CLASS_NAME, "g-apply").click()
        wait.until(lambda d: active(GROUP) == USERS)
        seen["users_after"] = active(GROUP)
        seen["others_before"], seen["others_after"] = others, {g: active(g) for g in others}
        seen["message"] = driver.find_element(By.ID, "message").text
        # One line per group on the groups' charts.
        wait.until(lambda d: int(d.find_element(By.ID, "chart-g-users").get_attribute("data-points") or 0) >= 2)
        seen["group_chart_points"] = int(driver.find_element(By.ID, "chart-g-users").get_attribute("data-points"))
    finally:
        driver.quit()
    print(json.dumps(seen))


if __name__ == "__main__":
    main()

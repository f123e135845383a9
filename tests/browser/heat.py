#!/usr/bin/env python3
"""Opens a report (or the live page) in headless Chromium and reads its delivery heat map back
from the pixels drawn: which latency-bucket rows are shaded, for tests/page.rs. Saves the heat
map's screenshot as OUT_DIR/heat.png. Prints one JSON object.

usage: heat.py URL OUT_DIR
"""
import json
import os
import sys

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from page import browser

# Each bucket row's mean opacity over the columns that have samples, read from the canvas.
READ_ROWS = """
const c = document.getElementById("chart-heat-delivery");
const rows = +c.dataset.rows, ratio = c.width / c.clientWidth;
const g = c.getContext("2d"), h = c.clientHeight, left = 48, bottom = 18;
const rh = (h - bottom - 2) / rows;
const img = g.getImageData(left * ratio, 0, c.width - left * ratio, c.height).data;
const width = c.width - left * ratio;
const shade = [];
for (let r = 0; r < rows; r++) {
  const y = Math.floor((h - bottom - (r + 0.5) * rh) * ratio);
  let sum = 0, n = 0;
  for (let x = 0; x < width; x++) { sum += img[(y * width + x) * 4 + 3]; n++; }
  shade.push(sum / n / 255);
}
return {shade, bounds: REPORT ? REPORT.history.heat_buckets : null, cells: +c.dataset.cells, columns: +c.dataset.points};
"""


def main():
    url, out = sys.argv[1], sys.argv[2]
    driver = browser()
    try:
        driver.get(url)
        WebDriverWait(driver, 30, poll_frequency=0.2).until(
            lambda d: int(d.find_element(By.ID, "chart-heat-delivery").get_attribute("data-cells") or 0) > 0)
        canvas = driver.find_element(By.ID, "chart-heat-delivery")
        driver.execute_script("arguments[0].scrollIntoView()", canvas)
        canvas.screenshot(os.path.join(out, "heat.png"))
        seen = driver.execute_script(READ_ROWS)
        seen["screenshot"] = os.path.getsize(os.path.join(out, "heat.png"))
        print(json.dumps(seen))
    finally:
        driver.quit()


if __name__ == "__main__":
    main()

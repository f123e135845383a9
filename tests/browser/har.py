#!/usr/bin/env python3
"""Captures a browser session as HAR 1.2 with its WebSocket messages, for tests/record.rs.

Opens URL in headless Chromium (page.py's), waits until the JavaScript expression READY is
true in the page (bounded to 60 s), then builds the HAR from the DevTools protocol's Network
events (webSocketCreated, webSocketWillSendHandshakeRequest, webSocketHandshakeResponseReceived,
webSocketFrameSent/Received) the way devtools' own export does: one entry per WebSocket, its
frames in `_webSocketMessages` as {type: send|receive, time (wall-clock seconds), opcode, data
(base64 when binary)}. Writes it to OUT and prints one JSON object of what it captured.

usage: har.py URL OUT READY
"""
import json
import sys
from datetime import datetime, timezone

from selenium.webdriver.support.ui import WebDriverWait

from page import browser


def har_of(events):
    """A HAR log of the WebSocket sessions in these DevTools events, in the order they opened."""
    sockets, clock = {}, {}
    for event in events:
        method, params = event["method"], event["params"]
        if not method.startswith("Network.webSocket"):
            continue
        rid = params["requestId"]
        if method == "Network.webSocketCreated":
            sockets[rid] = {"url": params["url"], "headers": {}, "status": 0, "messages": [],
                            "started": None}
            continue
        socket = sockets.get(rid)
        if socket is None:
            continue
        if method == "Network.webSocketWillSendHandshakeRequest":
            # Monotonic timestamps become wall-clock time by this offset.
            clock[rid] = params["wallTime"] - params["timestamp"]
            socket["started"] = params["wallTime"]
            socket["headers"] = params["request"]["headers"]
        elif method == "Network.webSocketHandshakeResponseReceived":
            socket["status"] = params["response"]["status"]
        elif method in ("Network.webSocketFrameSent", "Network.webSocketFrameReceived"):
            frame = params["response"]
            socket["messages"].append({
                "type": "send" if method.endswith("Sent") else "receive",
                "time": params["timestamp"] + clock.get(rid, 0.0),
                "opcode": frame["opcode"],
                "data": frame["payloadData"],
            })
    entries = []
    for socket in sockets.values():
        started = datetime.fromtimestamp(socket["started"] or 0, timezone.utc).isoformat()
        entries.append({
            "startedDateTime": started,
            "time": 0,
            "request": {"method": "GET", "url": socket["url"], "httpVersion": "HTTP/1.1",
                        "headers": [{"name": k, "value": v} for k, v in socket["headers"].items()],
                        "queryString": [], "cookies": [], "headersSize": -1, "bodySize": 0},
            "response": {"status": socket["status"], "statusText": "Switching Protocols",
                         "httpVersion": "HTTP/1.1", "headers": [], "cookies": [],
                         "content": {"size": 0, "mimeType": "x-unknown"}, "redirectURL": "",
                         "headersSize": -1, "bodySize": 0},
            "cache": {},
            "timings": {"send": 0, "wait": 0, "receive": 0},
            "_resourceType": "websocket",
            "_webSocketMessages": socket["messages"],
        })
    return {"log": {"version": "1.2", "creator": {"name": "wsfleet tests/browser/har.py", "version": "1"},
                    "pages": [], "entries": entries}}


def main():
    url, out, ready = sys.argv[1:4]
    driver = browser(network_log=True)
    try:
        driver.get(url)
        WebDriverWait(driver, 60, poll_frequency=0.2).until(lambda d: d.execute_script("return (" + ready + ");"))
        events = [json.loads(entry["message"])["message"] for entry in driver.get_log("performance")]
    finally:
        driver.quit()
    har = har_of(events)
    with open(out, "w") as f:
        json.dump(har, f, indent=1)
    print(json.dumps({"sockets": [{"url": e["request"]["url"], "status": e["response"]["status"],
                                   "messages": len(e["_webSocketMessages"])} for e in har["log"]["entries"]]}))


if __name__ == "__main__":
    main()

"""A placeholder webhook receiver for Alertmanager: logs every notification it gets.

Replace it with your pager, chat or ticket integration (see alertmanager/alertmanager.yml).
"""
import http.server
import json
import sys


class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        try:
            note = json.loads(body)
            for alert in note.get("alerts", []):
                print(f"{self.path} {alert['status']} {alert['labels'].get('alertname')} "
                      f"{alert['annotations'].get('summary', '')}", flush=True)
        except (ValueError, KeyError):
            print(f"{self.path} unreadable notification: {body[:200]!r}", flush=True)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 5001
    http.server.ThreadingHTTPServer(("0.0.0.0", port), Receiver).serve_forever()

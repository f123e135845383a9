// What the browser-page test servers share (they `require("./pages")`; NodeServer writes this
// file beside each script): the HTTP server for their page, and the page's own helpers.
const fs = require("fs");
const http = require("http");

// An HTTP server: the chat page at `/client`, each of `files` (`{url: [type, path]}`) at its
// URL, and the server's counters as JSON at every other path (`/stats`).
exports.server = (page, files, stats) => http.createServer((req, res) => {
  if (req.url.startsWith("/client")) {
    res.setHeader("content-type", "text/html");
    return res.end(page);
  }
  const file = files[req.url];
  if (file) {
    res.setHeader("content-type", file[0]);
    return fs.createReadStream(file[1]).pipe(res);
  }
  res.setHeader("content-type", "application/json");
  res.end(JSON.stringify(stats));
});

// A chat page: `head` loads the client library, `body` defines `user(name, watched)` with
// the helpers below; two users chat in one room, and `#status` counts what the watched one
// saw (data-acked, data-delivered, data-pongs: heartbeat answers) for a driver to wait on.
exports.page = (title, head, body) => `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${title}</title>${head}</head>
<body><p id="status" data-acked="0" data-delivered="0" data-pongs="0">connecting</p>
<script>
const query = new URLSearchParams(location.search);
const room = "lobby", every = Number(query.get("every")) || 500;
const status = document.getElementById("status");
const count = (name) => { status.dataset[name] = String(Number(status.dataset[name]) + 1); };
// The n-th chat message of \`name\`: a unique id, its sequence and its send time.
const message = (name, seq) => ({ id: name + "-" + seq + "-" + Math.random().toString(36).slice(2, 8),
                                  from: name, seq, ts: Date.now(), body: "hello from " + name + " #" + seq });
${body}
user("alice", true);
setTimeout(() => user("bob", false), 200);
</script></body></html>`;

// A chat server speaking examples/proto/chat.proto (npm protobufjs, independent of our
// codec), for tests/protocols.rs and tests/record.rs: login (with TOKEN set, a login with
// another token is refused: the socket closed, counted), join, msg -> ack + deliver to the
// room (every DROP_EVERY-th not delivered, counted per receiver), ping -> pong; frames that
// are not an Envelope are counted; `/stats` says what it saw. `/client` is a browser chat
// page on protobufjs (its browser bundle at `/protobuf.min.js`, the .proto at `/chat.proto`):
// two users in one room (`?token=`, `?every=` ms between messages, a ping every second), whose
// counters (data-acked, data-delivered) a driver waits on.
// usage: PROTO=chat.proto node protobuf_chat.js PORT   (prints `listening` when ready)
const fs = require("fs");
const http = require("http");
const path = require("path");
const protobuf = require("protobufjs");
const { WebSocketServer } = require("ws");
const port = Number(process.argv[2]);
const dropEvery = Number(process.env.DROP_EVERY || 0);
const token = process.env.TOKEN || "";
const bundle = path.join(path.dirname(require.resolve("protobufjs/package.json")), "dist", "protobuf.min.js");
const root = new protobuf.Root().loadSync(process.env.PROTO, { keepCase: true });
const Envelope = root.lookupType("chat.Envelope");
const send = (ws, body) => ws.send(Envelope.encode(Envelope.fromObject(body)).finish());
const stats = { messages: 0, dropped_deliveries: 0, invalid: 0, refused: 0 };
const rooms = new Map();
const page = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>protobuf chat</title>
<script src="/protobuf.min.js"></script></head>
<body><p id="status" data-acked="0" data-delivered="0">connecting</p>
<script>
const query = new URLSearchParams(location.search);
const room = "lobby", every = Number(query.get("every")) || 500, token = query.get("token") || "";
const status = document.getElementById("status");
const count = (name) => { status.dataset[name] = String(Number(status.dataset[name]) + 1); };
new protobuf.Root().load("/chat.proto", { keepCase: true }, (err, root) => {
  if (err) { status.textContent = String(err); return; }
  const Envelope = root.lookupType("chat.Envelope");
  function user(name, watched) {
    const ws = new WebSocket("ws://" + location.host + "/ws");
    ws.binaryType = "arraybuffer";
    const send = (body) => ws.send(Envelope.encode(Envelope.fromObject(body)).finish());
    let seq = 0;
    ws.onopen = () => send({ login: { user: name, token } });
    ws.onmessage = (event) => {
      const env = Envelope.decode(new Uint8Array(event.data));
      if (env.login_ok) send({ join: { room } });
      else if (env.joined) {
        status.textContent = "joined";
        setInterval(() => {
          seq += 1;
          send({ msg: { room, id: name + "-" + seq + "-" + Math.random().toString(36).slice(2, 8),
                        seq, ts: Date.now(), body: "hello from " + name + " #" + seq } });
        }, every);
        setInterval(() => send({ ping: { ts: Date.now() } }), 1000);
      } else if (env.ack) { if (watched) count("acked"); }
      else if (env.deliver) { if (watched) count("delivered"); }
    };
  }
  user("alice", true);
  setTimeout(() => user("bob", false), 200);
});
</script></body></html>`;
const server = http.createServer((req, res) => {
  if (req.url.startsWith("/client")) {
    res.setHeader("content-type", "text/html");
    return res.end(page);
  }
  if (req.url === "/protobuf.min.js") {
    res.setHeader("content-type", "text/javascript");
    return fs.createReadStream(bundle).pipe(res);
  }
  if (req.url === "/chat.proto") {
    res.setHeader("content-type", "text/plain");
    return fs.createReadStream(process.env.PROTO).pipe(res);
  }
  res.setHeader("content-type", "application/json");
  res.end(JSON.stringify(stats));
});
const wss = new WebSocketServer({ server });
wss.on("connection", (ws) => {
  let user = null, room = null;
  ws.on("message", (data) => {
    let env;
    try { env = Envelope.decode(data); } catch (e) { stats.invalid++; return; }
    if (env.login) {
      if (token && env.login.token !== token) { stats.refused++; return ws.close(4001, "bad token"); }
      user = env.login.user;
      send(ws, { login_ok: { user } });
    } else if (env.join) {
      room = env.join.room;
      if (!rooms.has(room)) rooms.set(room, new Set());
      rooms.get(room).add(ws);
      send(ws, { joined: { room } });
    } else if (env.msg) {
      stats.messages++;
      send(ws, { ack: { id: env.msg.id } });
      const drop = dropEvery && stats.messages % dropEvery === 0;
      const deliver = Object.assign({}, env.msg, { from: user });
      for (const other of rooms.get(room) || []) {
        if (other === ws) continue;
        if (drop) stats.dropped_deliveries++; else send(other, { deliver });
      }
    } else if (env.ping) { send(ws, { pong: { ts: env.ping.ts } }); }
  });
  ws.on("close", () => { if (room) rooms.get(room).delete(ws); });
});
server.listen(port, "127.0.0.1", () => console.log("listening"));

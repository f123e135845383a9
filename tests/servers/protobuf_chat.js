// A chat server speaking examples/proto/chat.proto (npm protobufjs, independent of our
// codec), for tests/protocols.rs and tests/record.rs: login (with TOKEN set, a login with
// another token is refused: the socket closed, counted), join, msg -> ack + deliver to the
// room (every DROP_EVERY-th not delivered, counted per receiver), ping -> pong; frames that
// are not an Envelope are counted; `/stats` says what it saw. `/client` is a browser chat
// page on protobufjs (its browser bundle at `/protobuf.min.js`, the .proto at `/chat.proto`):
// two users in one room (`?token=`, `?every=` ms between messages, a ping every second), whose
// counters (data-acked, data-delivered) a driver waits on.
// The page and its HTTP routes come from ./pages.js (tests/servers/pages.js).
// usage: PROTO=chat.proto node protobuf_chat.js PORT   (prints `listening` when ready)
const path = require("path");
const pages = require("./pages");
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
const page = pages.page("protobuf chat", '<script src="/protobuf.min.js"></script>', `
const token = query.get("token") || "";
const schema = new Promise((resolve, reject) => new protobuf.Root().load("/chat.proto", { keepCase: true },
  (err, root) => (err ? reject(err) : resolve(root.lookupType("chat.Envelope")))));
schema.catch((err) => { status.textContent = String(err); });
function user(name, watched) {
  schema.then((Envelope) => {
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
          send({ msg: { room, ...message(name, seq) } });
        }, every);
        setInterval(() => send({ ping: { ts: Date.now() } }), 1000);
      } else if (env.pong) { if (watched) count("pongs"); }
      else if (env.ack) { if (watched) count("acked"); }
      else if (env.deliver) { if (watched) count("delivered"); }
    };
  });
}`);
const server = pages.server(page, {
  "/protobuf.min.js": ["text/javascript", bundle],
  "/chat.proto": ["text/plain", process.env.PROTO],
}, stats);
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

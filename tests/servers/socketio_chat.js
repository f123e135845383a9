// A Socket.IO 4 chat server (npm socket.io), for tests/protocols.rs and tests/record.rs:
// auth by token, `join` with an ack, `chat` acked and broadcast to the sender's room (every
// DROP_EVERY-th message not broadcast, counted per receiver missed), pings every second with
// a one-second timeout; `/stats` counts what it saw. `/client` is a browser chat page on the
// socket.io client the server serves (two users in one room, `?token=`, `?every=` ms between
// messages), whose counters (data-acked, data-delivered) a driver waits on.
// usage: node socketio_chat.js PORT   (prints `listening` when ready)
const http = require("http");
const { Server } = require("socket.io");
const port = Number(process.argv[2]);
const dropEvery = Number(process.env.DROP_EVERY || 0);
const stats = { connections: 0, refused: 0, messages: 0, dropped_deliveries: 0, disconnects: {} };
const page = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Socket.IO chat</title>
<script src="/socket.io/socket.io.js"></script></head>
<body><p id="status" data-acked="0" data-delivered="0">connecting</p>
<script>
const query = new URLSearchParams(location.search);
const room = "lobby", every = Number(query.get("every")) || 500, token = query.get("token") || "";
const status = document.getElementById("status");
const count = (name) => { status.dataset[name] = String(Number(status.dataset[name]) + 1); };
function user(name, watched) {
  const socket = io({ transports: ["websocket"], auth: { token } });
  let seq = 0;
  socket.on("connect", () => socket.emit("join", room, () => {
    setInterval(() => {
      seq += 1;
      socket.emit("chat", { room, id: name + "-" + seq + "-" + Math.random().toString(36).slice(2, 8),
                            from: name, seq, ts: Date.now(), body: "hello from " + name + " #" + seq },
                  () => { if (watched) count("acked"); });
    }, every);
  }));
  socket.on("chat", () => { if (watched) count("delivered"); });
}
user("alice", true);
setTimeout(() => user("bob", false), 200);
</script></body></html>`;
const server = http.createServer((req, res) => {
  if (req.url.startsWith("/client")) {
    res.setHeader("content-type", "text/html");
    return res.end(page);
  }
  res.setHeader("content-type", "application/json");
  res.end(JSON.stringify(stats));
});
const io = new Server(server, { pingInterval: 1000, pingTimeout: 1000 });
io.use((socket, next) => {
  if (socket.handshake.auth && socket.handshake.auth.token === "s3cret") return next();
  stats.refused++;
  next(new Error("unauthorized"));
});
io.on("connection", (socket) => {
  stats.connections++;
  socket.on("join", (room, ack) => { socket.join(room); if (typeof ack === "function") ack(); });
  socket.on("chat", (msg, ack) => {
    stats.messages++;
    if (typeof ack === "function") ack({ ok: true });
    if (dropEvery && stats.messages % dropEvery === 0) {
      const members = io.sockets.adapter.rooms.get(msg.room);
      stats.dropped_deliveries += members ? members.size - 1 : 0;
      return;
    }
    socket.to(msg.room).emit("chat", msg);
  });
  socket.on("disconnect", (reason) => {
    stats.disconnects[reason] = (stats.disconnects[reason] || 0) + 1;
  });
});
server.listen(port, "127.0.0.1", () => console.log("listening"));

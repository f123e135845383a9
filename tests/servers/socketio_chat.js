// A Socket.IO 4 chat server (npm socket.io), for tests/protocols.rs and tests/record.rs:
// auth by token, `join` with an ack, `chat` acked and broadcast to the sender's room (every
// DROP_EVERY-th message not broadcast, counted per receiver missed), pings every second with
// a one-second timeout; `/stats` counts what it saw. `/client` is a browser chat page on the
// socket.io client the server serves (two users in one room, `?token=`, `?every=` ms between
// messages), whose counters (data-acked, data-delivered) a driver waits on.
// The page and its HTTP routes come from ./pages.js (tests/servers/pages.js).
// usage: node socketio_chat.js PORT   (prints `listening` when ready)
const pages = require("./pages");
const { Server } = require("socket.io");
const port = Number(process.argv[2]);
const dropEvery = Number(process.env.DROP_EVERY || 0);
const stats = { connections: 0, refused: 0, messages: 0, dropped_deliveries: 0, disconnects: {} };
const page = pages.page("Socket.IO chat", '<script src="/socket.io/socket.io.js"></script>', `
const token = query.get("token") || "";
function user(name, watched) {
  const socket = io({ transports: ["websocket"], auth: { token } });
  let seq = 0;
  socket.on("connect", () => socket.emit("join", room, () => {
    setInterval(() => {
      seq += 1;
      socket.emit("chat", { room, ...message(name, seq) }, () => { if (watched) count("acked"); });
    }, every);
  }));
  socket.on("chat", () => { if (watched) count("delivered"); });
}`);
const server = pages.server(page, {}, stats);
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

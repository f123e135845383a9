// An MQTT broker over WebSocket (npm aedes behind ws, subprotocol `mqtt`), for
// tests/protocols.rs and tests/record.rs: it refuses the username `bad` (and, with PASSWORD
// set, any other password) with CONNACK 5; with DROP_EVERY set it does not forward every
// DROP_EVERY-th message on a `room-` topic, counted per receiver missed; `/stats` counts what
// it saw. `/client` is a browser chat page on mqtt.js (its browser bundle, served at
// `/mqtt.min.js`): two users subscribed to `chat/lobby` at QoS 1 publishing JSON messages at
// QoS 1 (`?password=`, `?every=` ms between messages, keep-alive 2 s), whose counters
// (data-acked, data-delivered) a driver waits on.
// The page and its HTTP routes come from ./pages.js (tests/servers/pages.js).
// usage: node mqtt_broker.js PORT   (prints `listening` when ready)
const path = require("path");
const pages = require("./pages");
const aedes = require("aedes")();
const { WebSocketServer, createWebSocketStream } = require("ws");
const port = Number(process.argv[2]);
const dropEvery = Number(process.env.DROP_EVERY || 0);
const password = process.env.PASSWORD || "";
const bundle = path.join(path.dirname(require.resolve("mqtt/package.json")), "dist", "mqtt.min.js");
const stats = { clients: 0, refused: 0, dropped_deliveries: 0 };
aedes.authenticate = (client, username, given, done) => {
  if (username === "bad" || (password && String(given || "") !== password)) {
    stats.refused++;
    const e = new Error("no");
    e.returnCode = 5;
    return done(e, false);
  }
  done(null, true);
};
aedes.on("client", () => stats.clients++);
aedes.authorizeForward = (client, packet) => {
  if (dropEvery && packet.topic.startsWith("room-")) {
    const msg = JSON.parse(packet.payload.toString());
    if (msg.seq % dropEvery === 0) {
      if (client.id !== msg.from) stats.dropped_deliveries++;
      return null;
    }
  }
  return packet;
};
const page = pages.page("MQTT chat", '<script src="/mqtt.min.js"></script>', `
const topic = "chat/" + room;
function user(name, watched) {
  const client = mqtt.connect("ws://" + location.host + "/mqtt", {
    username: name, password: query.get("password") || "", keepalive: 2,
    reschedulePings: false, protocolVersion: 4, reconnectPeriod: 0 });
  let seq = 0;
  client.on("connect", () => client.subscribe(topic, { qos: 1 }, () => {
    status.textContent = "subscribed";
    setInterval(() => {
      seq += 1;
      client.publish(topic, JSON.stringify(message(name, seq)), { qos: 1 }, () => { if (watched) count("acked"); });
    }, every);
  }));
  client.on("message", () => { if (watched) count("delivered"); });
  client.on("packetreceive", (packet) => { if (watched && packet.cmd === "pingresp") count("pongs"); });
}`);
const server = pages.server(page, { "/mqtt.min.js": ["text/javascript", bundle] }, stats);
const wss = new WebSocketServer({ server, handleProtocols: (p) => (p.has("mqtt") ? "mqtt" : false) });
wss.on("connection", (ws) => aedes.handle(createWebSocketStream(ws)));
server.listen(port, "127.0.0.1", () => console.log("listening"));

"use strict";
// npm socket.io-client against a plain Socket.IO server with several namespaces
// (tests/conat/test_sio.py): one Manager, so one Engine.IO connection, for "/", "/custom"
// and "/gated", each with its own `auth` payload.
//
//   node namespaces.js '<json params: {url}>'
//
// Prints one JSON object with what it observed.

const path = require("path");
const { Manager } = require(path.join(__dirname, "node_modules", "socket.io-client"));

function once(socket, event) {
  return new Promise((resolve) => socket.once(event, (...args) => resolve(args)));
}

// emit with an ack; resolves with all of the ack's arguments
function call(socket, event, ...args) {
  return new Promise((resolve, reject) =>
    socket.timeout(5000).emit(event, ...args, (err, ...answer) => (err ? reject(err) : resolve(answer))));
}

function show(x) {
  if (Buffer.isBuffer(x) || x instanceof ArrayBuffer) return { hex: Buffer.from(x).toString("hex") };
  if (Array.isArray(x)) return x.map(show);
  return x;
}

async function main() {
  const { url } = JSON.parse(process.argv[2]);
  const out = {};
  const manager = new Manager(url, { path: "/conat/", transports: ["websocket"], reconnection: false });
  const engines = new Set();
  manager.on("open", () => engines.add(manager.engine.id));

  const root = manager.socket("/", { auth: { token: "root-token" } });
  const custom = manager.socket("/custom", { auth: { token: "abc", n: 1 } });
  const gated = manager.socket("/gated", { auth: { token: "bad" } });
  const rootAuth = once(root, "auth");
  const customAuth = once(custom, "auth");
  const refused = once(gated, "connect_error");
  await Promise.all([once(root, "connect"), once(custom, "connect")]);
  out.ids_differ = root.id !== custom.id;
  out.auth = { root: (await rootAuth)[0], custom: (await customAuth)[0] };
  const [err] = await refused;
  out.refused = { message: err.message, data: err.data, connected: gated.connected };

  out.echo = {
    root: await call(root, "echo", "r", 1),
    custom: show(await call(custom, "echo", Buffer.from([1, 2, 3]), { k: "v" })),
  };

  // the server asks for an ack on /custom; the answer goes back on /custom only
  custom.on("question", (n, cb) => cb(n * 2, Buffer.from("ok")));
  out.server_ack = await call(custom, "ask", 21);

  // /gated again, with a payload the handler accepts (the client's way to retry)
  gated.auth = { token: "ok" };
  gated.connect();
  await once(gated, "connect");
  out.gated_ok = await call(gated, "echo", "gated");

  // leaving /custom leaves the others (and the connection) as they were
  custom.disconnect();
  out.after_leaving_custom = await call(root, "echo", "still");
  out.engines = engines.size;
  out.root_connected = root.connected;
  gated.disconnect();
  root.disconnect();
  console.log(JSON.stringify(out));
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : e);
  process.exit(1);
});

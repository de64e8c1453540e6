"use strict";
// Conat framing done by hand on top of the npm socket.io-client (no conat library):
// the frames are those of the protocol spec (§1.6, §3.1). Shared by tests/node/interop.js
// and benchmarks/node/bench_conat.js.

const path = require("path");
const { io } = require(path.join(__dirname, "node_modules", "socket.io-client"));

const ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const MAX_HEADER_SIZE = 100000;
const ENGINE_TYPES = { open: "0", close: "1", ping: "2", pong: "3", message: "4", upgrade: "5", noop: "6" };

function randomId(n = 10) {
  let s = "";
  for (let i = 0; i < n; i++) s += ALPHABET[Math.floor(Math.random() * ALPHABET.length)];
  return s;
}

// A websocket message as it travelled: text frames as text, binary frames as "bin:<hex>".
function wire(packet) {
  if (Buffer.isBuffer(packet.data) || packet.data instanceof ArrayBuffer || ArrayBuffer.isView(packet.data)) {
    return "bin:" + Buffer.from(packet.data).toString("hex");
  }
  return ENGINE_TYPES[packet.type] + (packet.data === undefined ? "" : packet.data);
}

// Connect and wait for `info`. Options:
//   cookie      value of the Cookie header (null: no Cookie header at all)
//   basePath    BASE_PATH of the hub ("/" by default)
//   infoAck     "empty" (ack with no argument, like conat), "binary" (ack with a Buffer), "none"
//   record      keep every websocket message in conn.frames.in / conn.frames.out
//   reconnection socket.io-client's option (false unless asked)
// Resolves with the connection object once `info` arrived (signed in or not).
function connect(url, opts = {}) {
  const basePath = opts.basePath || "/";
  const ioPath = (basePath === "/" ? "" : basePath) + "/conat/";
  const options = {
    path: ioPath,
    transports: ["websocket"],
    reconnection: !!opts.reconnection,
    autoConnect: false,
    forceNew: true,
  };
  if (opts.cookie !== null && opts.cookie !== undefined) options.extraHeaders = { Cookie: opts.cookie };
  const sock = io(url, options);
  const conn = {
    sock,
    info: null,
    infoHadAck: null,
    infoCount: 0,
    frames: { in: [], out: [] },
    disconnectReason: null,
    disconnected: null,
  };
  conn.disconnected = new Promise((resolve) => {
    sock.on("disconnect", (reason) => {
      conn.disconnectReason = reason;
      resolve(reason);
    });
  });
  const signedIn = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("no info within 15 s")), 15000);
    sock.on("info", (info, ack) => {
      conn.infoCount += 1;
      conn.info = info;
      conn.infoHadAck = typeof ack === "function";
      if (conn.infoHadAck) {
        if (opts.infoAck === "binary") ack(Buffer.from([1, 2, 3]));
        else if (opts.infoAck !== "none") ack();
      }
      clearTimeout(timer);
      resolve(conn);
    });
    sock.on("connect_error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
  sock.connect();
  if (opts.record) {
    sock.io.engine.on("packet", (p) => conn.frames.in.push(wire(p)));
    sock.io.engine.on("packetCreate", (p) => conn.frames.out.push(wire(p)));
  }
  return signedIn;
}

function call(conn, event, ...args) {
  return conn.sock.timeout(20000).emitWithAck(event, ...args);
}

function subscribe(conn, subject, queue) {
  return call(conn, "subscribe", { subject, queue: queue === undefined ? randomId() : queue });
}

// One chunk: ["publish", [subject, id, seq, done, encoding, raw, headers?]].
function chunkArray(subject, id, seq, done, encoding, raw, headers) {
  const data = [subject, id, seq, done, encoding, raw];
  if (headers) data.push(headers);
  return data;
}

// Publish a whole message; with ack: resolves with the acks of every chunk.
function publish(conn, subject, raw, { headers = null, encoding = 0, ack = true, id = randomId(), maxPayload } = {}) {
  const limit = maxPayload || (conn.info && conn.info.max_payload) || 1e6;
  const size = Math.max(1000, limit - MAX_HEADER_SIZE);
  const chunks = [];
  for (let seq = 0, start = 0; start < raw.length; seq++, start += size) {
    const done = start + size >= raw.length ? 1 : 0;
    chunks.push(chunkArray(subject, id, seq, done, encoding, raw.subarray(start, start + size), done ? headers : null));
  }
  if (!ack) {
    for (const c of chunks) conn.sock.emit("publish", c);
    return Promise.resolve(null);
  }
  return Promise.all(chunks.map((c) => call(conn, "publish", c)));
}

// Receives delivery events for `pattern` and puts chunked messages back together (§3.3):
// per message id the first chunk has seq 0 and each next one seq + 1, else the partial
// message is dropped; on done the parts are joined, headers come from the last chunk.
function listen(conn, pattern, onMessage, onChunk) {
  const partial = new Map();
  const handler = (payload) => {
    const { subject, data } = payload;
    if (onChunk) onChunk(payload);
    const [id, seq, done, encoding, raw] = data;
    const headers = data.length > 5 ? data[5] : null;
    let parts = partial.get(id);
    if (seq === 0) {
      parts = { seq: 0, raws: [raw] };
      partial.set(id, parts);
    } else if (!parts || seq !== parts.seq + 1) {
      partial.delete(id);
      return;
    } else {
      parts.seq = seq;
      parts.raws.push(raw);
    }
    if (done) {
      partial.delete(id);
      onMessage({ pattern, subject, id, encoding, raw: Buffer.concat(parts.raws), headers, chunks: parts.raws.length });
    }
  };
  conn.sock.on(pattern, handler);
  return () => conn.sock.off(pattern, handler);
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// Let `ms` pass: only for a bounded negative check (something that must not happen gets this
// long to show up). To wait for something to happen, use until().
function settle(ms) {
  return sleep(ms);
}

// Wait until `predicate()` is true (polling), or give up after `ms` (generous: the machine may be
// loaded; it returns as soon as the predicate holds).
async function until(predicate, ms = 30000) {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > deadline) return false;
    await sleep(2);
  }
  return true;
}

// `node script.js <scenario> '<json params>'`: run scenarios[scenario] with the params and
// print the one JSON object it returns on stdout (exit 0), or the error on stderr (exit 1).
function runScenario(scenarios) {
  const [name, params] = process.argv.slice(2);
  const run = scenarios[name];
  Promise.resolve()
    .then(() => {
      if (!run) throw new Error(`unknown scenario ${name}`);
      return run(JSON.parse(params || "{}"));
    })
    .then((out) => {
      process.stdout.write(JSON.stringify(out) + "\n");
      process.exit(0);
    })
    .catch((err) => {
      process.stderr.write(`FAILED ${err && err.stack ? err.stack : err}\n`);
      process.exit(1);
    });
}

module.exports = { runScenario, connect, call, subscribe, publish, listen, randomId, settle, sleep, until, chunkArray, MAX_HEADER_SIZE };

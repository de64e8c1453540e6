"use strict";
// Node side of benchmarks/bench_persist.py: a persist client written from the protocol spec
// (§6.3 socket, §6.4 commands) on the npm socket.io-client, the way a CoCalc browser or
// project talks to persist. Prints one JSON line.
//
//   node bench_persist.js write <url> <cookie> <path> <seconds> <in flight>
//
// Opens a persist session for <path> (hub scope: the hub password's identity), then keeps
// <in flight> `set` requests outstanding; a write counts once its reply came back without
// an error header (the persist server answers after the transaction committed).

const path = require("path");
const { connect, subscribe, listen, randomId, sleep } = require(path.join(__dirname, "..", "..", "tests", "node", "conat.js"));
const { measure } = require(path.join(__dirname, "cpu.js"));

const JSON_ENCODING = 1;
const PAYLOAD = Buffer.from(JSON.stringify("x".repeat(98))); // 100 bytes
const WARMUP_MS = 1000;
const TIMEOUT_MS = 30000;

// Requests over one connection: one inbox subscription, replies matched by subject.
function requester(conn) {
  const inbox = `_INBOX.hub-hub.${randomId()}`;
  const waiting = new Map();
  let n = 0;
  listen(conn, `${inbox}.*`, (m) => {
    const w = waiting.get(m.subject);
    if (w) {
      waiting.delete(m.subject);
      clearTimeout(w.timer);
      w.resolve(m);
    }
  });
  const request = (subject, raw, headers) =>
    new Promise((resolve, reject) => {
      const reply = `${inbox}.${n++}`;
      const timer = setTimeout(() => {
        waiting.delete(reply);
        reject(new Error(`timeout: ${subject} ${JSON.stringify(headers)}`));
      }, TIMEOUT_MS);
      waiting.set(reply, { resolve, timer });
      const chunk = [subject, randomId(), 0, 1, JSON_ENCODING, raw, { ...headers, "CN-Reply": reply }];
      conn.sock.emit("publish", chunk, (ack) => {
        if (!ack || ack.error || !ack.count) {
          waiting.delete(reply);
          clearTimeout(timer);
          reject(new Error(`publish to ${subject}: ${JSON.stringify(ack)}`));
        }
      });
    });
  return { inbox, request, ready: subscribe(conn, `${inbox}.*`) };
}

const json = (value) => Buffer.from(JSON.stringify(value));
const parse = (m) => {
  if (m.encoding !== JSON_ENCODING) throw new Error(`expected a JSON reply, got encoding ${m.encoding}`);
  return m.raw.length ? JSON.parse(m.raw.toString()) : null;
};

// A persist session (§6.4): ask the load balancer for a server, connect a conat socket to
// it, send the storage spec as the first data message, wait until the stream is open.
async function openStream(conn, streamPath) {
  const { request, ready } = requester(conn);
  await ready;
  const service = "persist.hub";
  const serverId = parse(await request(`${service}.id`, json(null), {}));
  const clientId = randomId();
  const local = `${service}.client.${clientId}`;
  const peer = `${service}.server.${serverId}.${clientId}`;
  // the server's socket end asks us things (acks of its data, keepalive pings): answer them
  listen(conn, local, (m) => {
    const h = m.headers || {};
    if (!h["CN-Reply"] || !h["CN-SocketCmd"]) return;
    // (their bodies are MessagePack; the server does not read what an ack or pong says)
    conn.sock.emit("publish", [h["CN-Reply"], randomId(), 0, 1, JSON_ENCODING, json(null)]);
  });
  await subscribe(conn, local);
  const connected = parse(await request(peer, json(null), { "CN-SocketCmd": "connect", id: clientId }));
  if (connected !== "connected") throw new Error(`connect: ${JSON.stringify(connected)}`);
  conn.sock.emit("publish", [peer, randomId(), 0, 1, JSON_ENCODING, json({ storage: { path: streamPath }, changefeed: false }),
    { "CN-SocketSeq": 1 }]);
  const inventory = await request(peer, json(null), { cmd: "inventory" });
  if (inventory.headers && inventory.headers.error) throw new Error(`open: ${inventory.headers.error}`);
  return (raw, headers) => request(peer, raw, headers);
}

async function write(url, cookie, streamPath, seconds, inflight) {
  const conn = await connect(url, { cookie });
  const call = await openStream(conn, streamPath);
  let acked = 0;
  let errors = 0;
  let running = true;
  const loop = async () => {
    while (running) {
      const reply = await call(PAYLOAD, { cmd: "set" });
      if (reply.headers && reply.headers.error) errors++;
      else acked++;
    }
  };
  const loops = Array.from({ length: inflight }, loop);
  await sleep(WARMUP_MS);
  const { n, ...m } = await measure(() => acked, seconds);
  running = false;
  await Promise.all(loops);
  // every acknowledged write must be in the stream (nothing else writes to this path)
  const stored = parse(await call(json(null), { cmd: "inventory" })).count;
  process.stdout.write(JSON.stringify({
    acked: n, total_acked: acked, stored, errors, ...m,
  }) + "\n");
  conn.sock.disconnect();
}

async function main() {
  const [mode, url, cookie, streamPath, seconds, inflight] = process.argv.slice(2);
  if (mode === "write") await write(url, cookie, streamPath, Number(seconds), Number(inflight));
  else throw new Error(`unknown mode ${mode}`);
  process.exit(0);
}

main().catch((err) => {
  process.stderr.write(`FAILED ${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});

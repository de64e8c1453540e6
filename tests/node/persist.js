"use strict";
// A persist session (spec §6.3 socket, §6.4 commands) written from the protocol spec on
// tests/node/conat.js, the way a CoCalc browser or project talks to persist. Shared by
// tests/node/persist_order.js and benchmarks/node/bench_persist.js.

const { subscribe, listen, randomId } = require("./conat");

const JSON_ENCODING = 1;
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

// Ask the load balancer for a server, connect a conat socket to it, send the storage spec
// as the first data message, wait until the stream is open. `onData(m)` (optional) gets
// the server's data messages (changefeed updates; MessagePack, not decoded here).
// Resolves with `call(raw, headers)`, a request on the session.
async function openStream(conn, streamPath, { changefeed = false, onData = null } = {}) {
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
    if (!h["CN-SocketCmd"] && h["CN-SocketSeq"] && onData) onData(m);
    if (!h["CN-Reply"] || !h["CN-SocketCmd"]) return;
    // (their bodies are MessagePack; the server does not read what an ack or pong says)
    conn.sock.emit("publish", [h["CN-Reply"], randomId(), 0, 1, JSON_ENCODING, json(null)]);
  });
  await subscribe(conn, local);
  const connected = parse(await request(peer, json(null), { "CN-SocketCmd": "connect", id: clientId }));
  if (connected !== "connected") throw new Error(`connect: ${JSON.stringify(connected)}`);
  conn.sock.emit("publish", [peer, randomId(), 0, 1, JSON_ENCODING, json({ storage: { path: streamPath }, changefeed }),
    { "CN-SocketSeq": 1 }]);
  const inventory = await request(peer, json(null), { cmd: "inventory" });
  if (inventory.headers && inventory.headers.error) throw new Error(`open: ${inventory.headers.error}`);
  return (raw, headers) => request(peer, raw, headers);
}

module.exports = { JSON_ENCODING, json, parse, openStream };

"use strict";
// Read-barrier scenarios for tests/conat/test_barriers.py: npm socket.io-client attaching
// listeners only *after* an ack or a reply has arrived, as the upstream conat client does
// (a subscription's listener after its subscribe ack; the persist changefeed's listener
// after the reply to "changefeed"). socket.io-client drops an event nobody listens to, so a
// delivery that reaches the client in the same read as that ack or reply is lost.
//
//   node barriers.js <scenario> '<json params>'
//
// Each scenario prints one JSON object with its observations on stdout.

const path = require("path");
const { io } = require(path.join(__dirname, "node_modules", "socket.io-client"));
const { chunkArray, randomId, runScenario } = require("./conat");

function open(url, cookie) {
  const sock = io(url, {
    path: "/conat/",
    transports: ["websocket"],
    reconnection: false,
    autoConnect: false,
    forceNew: true,
    extraHeaders: { Cookie: cookie },
  });
  const signedIn = new Promise((resolve, reject) => {
    sock.on("info", (info, ack) => {
      if (typeof ack === "function") ack();
      resolve(info);
    });
    sock.on("connect_error", reject);
  });
  return { sock, signedIn };
}

function text(payload) {
  return Buffer.from(payload.data[4]).toString();
}

// Subscribe and publish to the same subject before the connection exists: socket.io-client
// sends both as soon as it has joined the namespace; the TCP socket is corked meanwhile so
// they leave in one write, and the hub handles both in one reactor turn. The listener goes on only once the subscribe ack is in (like upstream's
// Client.subscribe); the publish ack comes after the delivery, so when it is in, the
// delivery has been handled too: no waiting needed to see whether it was lost.
async function scenarioSubscribeThenPublish({ url, cookie, subject }) {
  const { sock, signedIn } = open(url, cookie);
  sock.io.on("open", () => {
    sock.io.engine.on("packet", (packet) => {
      if (packet.type !== "message" || !String(packet.data).startsWith("0")) return;
      const raw = sock.io.engine.transport.ws._socket;  // the net.Socket under ws
      raw.cork();
      setImmediate(() => raw.uncork());  // after engine.io-client's nextTick writes
    });
  });
  const got = [];
  const subAck = sock.timeout(20000).emitWithAck("subscribe", { subject, queue: randomId() });
  const pubAck = sock.timeout(20000).emitWithAck(
    "publish", chunkArray(subject, randomId(), 0, 1, 1, Buffer.from('"first"')));
  sock.connect();
  await signedIn;
  const sub = await subAck;
  sock.on(subject, (payload) => got.push(text(payload)));
  const pub = await pubAck;
  const gotAtPubAck = got.slice();
  sock.close();
  return { sub, pub, got_at_pub_ack: gotAtPubAck };
}

// Request a service that answers and, in the same breath, publishes to a subject this
// client subscribed to earlier but listens to only once the answer is in (the persist
// changefeed: the reply to "changefeed", then updates on the socket's subject). The
// service then answers a second time on the inbox; when that second answer is in, the
// update has been handled too.
async function scenarioReplyThenFeed({ url, cookie, service, feed }) {
  const { sock, signedIn } = open(url, cookie);
  sock.connect();
  await signedIn;
  const inbox = `_INBOX.hub-hub.${randomId()}`;
  const replies = [];
  let first;
  let second;
  const firstReply = new Promise((resolve) => { first = resolve; });
  const secondReply = new Promise((resolve) => { second = resolve; });
  sock.on(`${inbox}.*`, (payload) => {
    replies.push(text(payload));
    if (replies.length === 1) first();
    if (replies.length === 2) second();
  });
  const call = (event, arg) => sock.timeout(20000).emitWithAck(event, arg);
  const subs = [await call("subscribe", { subject: `${inbox}.*`, queue: randomId() }),
    await call("subscribe", { subject: feed, queue: randomId() })];
  const updates = [];
  const request = chunkArray(service, randomId(), 0, 1, 1, Buffer.from('"start"'),
    { "CN-Reply": `${inbox}.${randomId()}` });
  const count = await call("publish", request);
  await firstReply;
  sock.on(feed, (payload) => updates.push(text(payload)));
  await secondReply;
  const updatesAtSecond = updates.slice();
  sock.close();
  return { subs, count, replies, updates_at_second_reply: updatesAtSecond };
}

const scenarios = {
  "subscribe-then-publish": scenarioSubscribeThenPublish,
  "reply-then-feed": scenarioReplyThenFeed,
};

runScenario(scenarios);

"use strict";
// Interop scenarios for tests/conat/test_interop.py: npm socket.io-client against the
// hub's conat broker, with the conat framing done by hand (tests/node/conat.js).
//
//   node interop.js <scenario> '<json params>'
//
// Each scenario prints exactly one JSON object (its observations) on stdout. Scenarios
// that let the Python test look at the broker while they are still connected write
// "HOLD <json>" to stderr and wait for a line on stdin.

const crypto = require("crypto");
const { connect, call, subscribe, publish, listen, randomId, settle, sleep, until, runScenario } = require("./conat");

function show(x) {
  if (Buffer.isBuffer(x)) return { hex: x.toString("hex") };
  if (Array.isArray(x)) return x.map(show);
  return x;
}

// A delivery event as observed: the event name, the payload with raw shown as hex,
// and whether raw really arrived as binary.
function delivery(event, payload) {
  return { event, subject: payload.subject, data: show(payload.data), binary: Buffer.isBuffer(payload.data[4]) };
}

function record(conn, pattern, list, filter) {
  conn.sock.on(pattern, (payload) => {
    if (!filter || filter(payload)) list.push(delivery(pattern, payload));
  });
}

function hold(what) {
  process.stderr.write("HOLD " + JSON.stringify(what) + "\n");
  return new Promise((resolve) => process.stdin.once("data", () => resolve()));
}

// The frames around the first incoming websocket message that starts with `prefix`.
function framesFrom(frames, prefix, n) {
  const i = frames.findIndex((f) => f.startsWith(prefix));
  return i < 0 ? null : frames.slice(i, i + n);
}

function framesContaining(frames, needle, n) {
  const i = frames.findIndex((f) => f.includes(needle));
  return i < 0 ? null : frames.slice(i, i + n);
}

async function scenarioHub({ url, cookie, tag: T }) {
  const out = {};
  const A = await connect(url, { cookie, record: true });
  out.sids = { A: A.sock.id };
  out.info = A.info;
  out.info_had_ack = A.infoHadAck;
  out.first_frames_in = A.frames.in.slice(0, 3);
  out.first_frames_out = A.frames.out.slice(0, 2);

  // subscribe: single, again, array form, errors; the inbox for request/reply
  const deliveries = [];
  for (const p of [`t.${T}.a`, `t.${T}.*`, `t.${T}.arr1`]) record(A, p, deliveries);
  out.sub_a = await subscribe(A, `t.${T}.a`, "qa");
  out.sub_a_again = await subscribe(A, `t.${T}.a`, "other");
  out.sub_star = await subscribe(A, `t.${T}.*`);
  out.sub_array = await call(A, "subscribe", [{ subject: `t.${T}.arr1`, queue: "q" }, { subject: `t.${T}.a`, queue: "q" }]);
  out.sub_invalid = await call(A, "subscribe", { subject: `t..${T}`, queue: "q" });
  out.sub_no_queue = await call(A, "subscribe", { subject: `t.${T}.noq` });
  const inbox = `_INBOX.hub-hub.${randomId()}`;
  out.inbox = inbox;
  const replies = [];
  record(A, `${inbox}.*`, replies);
  out.sub_inbox = await subscribe(A, `${inbox}.*`);
  out.subscriptions_1 = await call(A, "subscriptions", null);

  // publish: with ack + headers + binary; without ack; JSON encoding; a wildcard subject
  const ids = { headers: randomId(), noack: randomId(), arr1: randomId() };
  out.ids = ids;
  out.pub_headers = await call(A, "publish", [`t.${T}.a`, ids.headers, 0, 1, 0, Buffer.from([0, 1, 2, 255]), { h: "v", n: 1 }]);
  A.sock.emit("publish", [`t.${T}.b`, ids.noack, 0, 1, 1, Buffer.from('{"x":1}')]);
  out.pub_arr1 = await call(A, "publish", [`t.${T}.arr1`, ids.arr1, 0, 1, 0, Buffer.from("hi")]);
  out.pub_wildcard = await call(A, "publish", [`t.${T}.*`, randomId(), 0, 1, 0, Buffer.from("x")]);
  out.pub_empty_subject = await call(A, "publish", ["", randomId(), 0, 1, 0, Buffer.from("x")]);
  await until(() => deliveries.length >= 4);
  await settle(50); // a bounded negative check: no further (duplicate) deliveries
  out.deliveries = deliveries.slice();
  out.delivery_frames = framesFrom(A.frames.in, `451-["t.${T}.a",`, 2);
  out.publish_frames = framesContaining(A.frames.out, ids.headers, 2);
  out.publish_noack_frames = framesContaining(A.frames.out, ids.noack, 2);
  const ackFrame = A.frames.in.find((f) => /^43\d+\[\{"count":2\}\]$/.test(f));
  out.publish_ack_frame = ackFrame || null;

  // count semantics: a `>` subscriber is delivered to but not counted; it is interest
  const B = await connect(url, { cookie });
  out.sids.B = B.sock.id;
  const silent = [];
  record(B, ">", silent, (p) => p.subject.startsWith(`c.${T}.`));
  out.wfi_before_gt = await call(A, "wait-for-interest", { subject: `n.${T}.nobody`, timeout: 0 });
  out.sub_gt = await subscribe(B, ">");
  out.wfi_with_gt = await call(A, "wait-for-interest", { subject: `n.${T}.nobody`, timeout: 0 });
  ids.silent1 = randomId();
  out.pub_only_gt = await call(A, "publish", [`c.${T}.x`, ids.silent1, 0, 1, 0, Buffer.from("s")]);
  const C = await connect(url, { cookie });
  out.sids.C = C.sock.id;
  const counted = [];
  record(C, `c.${T}.*`, counted);
  out.sub_c = await subscribe(C, `c.${T}.*`);
  ids.silent2 = randomId();
  out.pub_gt_and_one = await call(A, "publish", [`c.${T}.x`, ids.silent2, 0, 1, 0, Buffer.from("t")]);
  await until(() => silent.length >= 2 && counted.length >= 1);
  out.unsub_gt = await call(B, "unsubscribe", { subject: ">" });
  out.wfi_after_gt = await call(A, "wait-for-interest", { subject: `n.${T}.nobody`, timeout: 0 });
  await settle(50); // a bounded negative check: no further deliveries
  out.silent_deliveries = silent.slice();
  out.counted_deliveries = counted.slice();

  // queue groups: "0" shared by D1 and D2 (one of them gets each message), E alone in "other"
  const D1 = await connect(url, { cookie });
  const D2 = await connect(url, { cookie });
  const E = await connect(url, { cookie });
  const got = { d1: [], d2: [], e: [] };
  D1.sock.on(`q.${T}.svc`, (p) => got.d1.push(p.data[0]));
  D2.sock.on(`q.${T}.svc`, (p) => got.d2.push(p.data[0]));
  E.sock.on(`q.${T}.svc`, (p) => got.e.push(p.data[0]));
  out.sub_d1 = await subscribe(D1, `q.${T}.svc`, "0");
  out.sub_d2 = await subscribe(D2, `q.${T}.svc`, "0");
  out.sub_e = await subscribe(E, `q.${T}.svc`, "other");
  const queueIds = [];
  const queueAcks = [];
  for (let i = 0; i < 40; i++) {
    const id = randomId();
    queueIds.push(id);
    queueAcks.push(await call(A, "publish", [`q.${T}.svc`, id, 0, 1, 0, Buffer.from(String(i))]));
  }
  await until(() => got.d1.length + got.d2.length >= 40 && got.e.length >= 40);
  await settle(100); // a bounded negative check: no message reaches both queue members
  out.queue = { ids: queueIds, acks: queueAcks, ...got };

  // chunked messages (3 chunks each) to the same queue group: every chunk of one message
  // goes to the same member, so each message arrives whole at exactly one of D1, D2
  const whole = { d1: [], d2: [], e: [] };
  const chunkCounts = { d1: 0, d2: 0, e: 0 };
  for (const [name, conn, queue] of [["d1", D1, "0"], ["d2", D2, "0"], ["e", E, "other"]]) {
    listen(conn, `q.${T}.big`, (m) => whole[name].push({ id: m.id, sha256: sha256(m.raw), chunks: m.chunks }),
      () => chunkCounts[name]++);
    await subscribe(conn, `q.${T}.big`, queue);
  }
  const sentWhole = [];
  const chunkAcks = [];
  for (let i = 0; i < 10; i++) {
    const raw = crypto.randomBytes(2500);
    const id = randomId();
    sentWhole.push({ id, sha256: sha256(raw), chunks: 3 });
    chunkAcks.push(...(await publish(A, `q.${T}.big`, raw, { id, maxPayload: 1 }))); // chunks of 1000 bytes
  }
  await until(() => whole.d1.length + whole.d2.length >= 10 && whole.e.length >= 10);
  await settle(100); // a bounded negative check: no chunk strays to the other member
  out.queue_chunked = { sent: sentWhole, acks: chunkAcks, ...whole, chunk_counts: chunkCounts };

  // unsubscribe: single (ack null) and array (array of nulls)
  out.unsub_a = await call(A, "unsubscribe", { subject: `t.${T}.a` });
  ids.after_unsub = randomId();
  out.pub_after_unsub = await call(A, "publish", [`t.${T}.a`, ids.after_unsub, 0, 1, 0, Buffer.from("u")]);
  out.unsub_array = await call(A, "unsubscribe", [{ subject: `t.${T}.arr1` }, { subject: `t.${T}.never` }]);
  out.subscriptions_2 = await call(A, "subscriptions", null);
  await until(() => deliveries.some((d) => d.data[0] === ids.after_unsub));
  await settle(50); // a bounded negative check: nothing for the unsubscribed pattern
  out.after_unsub_events = deliveries.filter((d) => d.data[0] === ids.after_unsub).map((d) => d.event);

  // request/reply: C answers on r.T.echo (queue "0") to the CN-Reply subject
  const echoAcks = [];
  C.sock.on(`r.${T}.echo`, (p) => {
    const [, , , encoding, raw, headers] = p.data;
    call(C, "publish", [headers["CN-Reply"], randomId(), 0, 1, encoding, Buffer.concat([Buffer.from("re:"), raw]),
      { replied: p.subject }]).then((ack) => echoAcks.push(ack));
  });
  out.sub_echo = await subscribe(C, `r.${T}.echo`, "0");
  out.reply_subject = `${inbox}.${randomId()}`;
  out.request_ack = await call(A, "publish", [`r.${T}.echo`, randomId(), 0, 1, 0, Buffer.from("ping"),
    { "CN-Reply": out.reply_subject }]);
  await until(() => replies.length >= 1 && echoAcks.length >= 1);
  out.replies = replies.slice();
  out.echo_acks = echoAcks.slice();
  out.request_nobody = await call(A, "publish", [`r.${T}.nobody`, randomId(), 0, 1, 0, Buffer.from("x"),
    { "CN-Reply": `${inbox}.${randomId()}` }]);

  // wait-for-interest: false at once, true when someone subscribes later, invalid subject
  const W = await connect(url, { cookie });
  out.wfi_zero = await call(A, "wait-for-interest", { subject: `w.${T}.x`, timeout: 0 });
  const order = [];
  const pending = call(A, "wait-for-interest", { subject: `w.${T}.x`, timeout: 10000 }).then((v) => {
    order.push("answered");
    return v;
  });
  // a round trip after it: the broker handles a connection's events in order, so it holds the wait now
  await call(A, "subscriptions", null);
  order.push("subscribing");
  out.sub_w = await subscribe(W, `w.${T}.>`);
  out.wfi_pending = await pending;
  out.wfi_order = order;
  out.wfi_now = await call(A, "wait-for-interest", { subject: `w.${T}.x`, timeout: 0 });
  out.wfi_invalid = await call(A, "wait-for-interest", { subject: `w.${T}.*`, timeout: 0 });

  out.cluster = await call(A, "cluster");

  // binary ack: `info` acknowledged with a Buffer (socket.io BINARY_ACK, 46…)
  const BA = await connect(url, { cookie, infoAck: "binary", record: true });
  out.sids.BA = BA.sock.id;
  out.binary_ack_frames_out = BA.frames.out.slice(0, 3);
  out.binary_ack_subscriptions = await call(BA, "subscriptions", null);

  await hold(out.sids);
  for (const c of [A, B, C, D1, D2, E, W, BA]) c.sock.disconnect();
  out.connected_after_hold = A.sock.connected;
  return out;
}

// A browser-like account connection: its own subjects work, another account's are refused.
async function scenarioPermission({ url, cookie, me, other, tag: T }) {
  const out = {};
  const P = await connect(url, { cookie });
  out.info = P.info;
  out.info_had_ack = P.infoHadAck;
  const events = [];
  P.sock.on("permission", (m) => events.push({ permission: m }));
  const step = async (name, event, arg) => {
    const ack = await call(P, event, arg);
    events.push({ ack: name, value: ack });
    return ack;
  };
  await step("pub_other", "publish", [`account.${other}.x`, randomId(), 0, 1, 0, Buffer.from("x")]);
  await step("sub_other", "subscribe", { subject: `account.${other}.x`, queue: "q" });
  await step("pub_own", "publish", [`account.${me}.x`, randomId(), 0, 1, 0, Buffer.from("x")]);
  await step("sub_own", "subscribe", { subject: `account.${me}.${T}`, queue: "q" });
  await step("sub_hub_api", "subscribe", { subject: `hub.account.${me}.api`, queue: "q" });
  await step("sub_inbox", "subscribe", { subject: `_INBOX.account-${me}.${T}.*`, queue: "q" });
  await step("pub_other_inbox", "publish", [`_INBOX.account-${other}.${T}.x`, randomId(), 0, 1, 0, Buffer.from("x")]);
  await step("wfi_other", "wait-for-interest", { subject: `account.${other}.x`, timeout: 0 });
  // 500 subscriptions per connection for accounts (2 so far, 498 more in one array, then one too many)
  const many = [];
  for (let i = 0; i < 498; i++) many.push({ subject: `account.${me}.${T}.s${i}`, queue: "q" });
  const results = await call(P, "subscribe", many);
  out.many_added = results.filter((x) => x && x.status === "added").length;
  out.many_results = results.length;
  await step("sub_too_many", "subscribe", { subject: `account.${me}.${T}.last`, queue: "q" });
  await settle(50); // a bounded negative check: no further permission events
  out.events = events;
  P.sock.disconnect();
  return out;
}

// Refused sign-in: `info` without ack carrying user.error, then "io server disconnect"
// (and no reconnection attempt even though reconnection is on).
async function scenarioAuthFailure({ url, cookie }) {
  const out = {};
  for (const [name, c] of [["bad_password", cookie], ["no_cookie", null]]) {
    const conn = await connect(url, { cookie: c, record: true, reconnection: true });
    const t0 = Date.now();
    let attempts = 0;
    conn.sock.io.on("reconnect_attempt", () => attempts++);
    const reason = await Promise.race([conn.disconnected, sleep(10000).then(() => "still connected")]);
    const ms = Date.now() - t0;
    await settle(600); // a bounded negative check: socket.io's first reconnection attempt would come by now
    out[name] = {
      info: conn.info,
      info_had_ack: conn.infoHadAck,
      reason,
      ms,
      reconnect_attempts: attempts,
      active: conn.sock.active,
      frames_in: conn.frames.in.slice(1),
    };
    conn.sock.close();
  }
  return out;
}

function sha256(buf) {
  return crypto.createHash("sha256").update(buf).digest("hex");
}

// Node <-> the Python conat client (which runs in the test).
async function scenarioCross({ url, cookie, tag: T, big_size: bigSize }) {
  const out = { received: [], chunks: [] };
  const N = await connect(url, { cookie });
  const inbox = `_INBOX.hub-hub.${randomId()}`;
  const replies = [];
  listen(N, `${inbox}.*`, (m) => replies.push(m));
  await subscribe(N, `${inbox}.*`);
  out.echoed = [];
  listen(N, `x.${T}.node-echo`, (m) => {
    out.echoed.push({ subject: m.subject, encoding: m.encoding, raw: m.raw.toString("hex"), headers: m.headers });
    publish(N, m.headers["CN-Reply"], m.raw, { encoding: m.encoding, headers: { echo: "node" } });
  });
  await subscribe(N, `x.${T}.node-echo`);
  let done = false;
  N.sock.on(`x.${T}.done`, () => {
    done = true;
  });
  await subscribe(N, `x.${T}.done`);
  listen(N, `x.${T}.to-node`, (m) => {
    out.received.push({
      subject: m.subject,
      encoding: m.encoding,
      headers: m.headers,
      length: m.raw.length,
      sha256: sha256(m.raw),
      hex: m.raw.length <= 64 ? m.raw.toString("hex") : null,
      chunks: m.chunks,
    });
  }, (payload) => out.chunks.push({ seq: payload.data[1], done: payload.data[2], length: payload.data[4].length,
    headers: payload.data.length > 5 ? payload.data[5] : null }));
  await subscribe(N, `x.${T}.to-node`); // the Python side waits for interest in this one

  if (!(await until(() => done, 30000))) throw new Error("the Python side never said done");

  out.to_py_json = await publish(N, `x.${T}.to-py`, Buffer.from(JSON.stringify({ from: "node", n: 1 })),
    { encoding: 1, headers: { k: "v" } });
  out.to_py_msgpack = await publish(N, `x.${T}.to-py`, Buffer.from([0xa2, 0x68, 0x69]), { encoding: 0 });
  const big = crypto.randomBytes(bigSize);
  out.big_sha256 = sha256(big);
  out.to_py_big = await publish(N, `x.${T}.to-py`, big, { encoding: 0, headers: { big: "node" } });

  // a request to the Python client's service: JSON [name, args], reply on our inbox
  const reply = `${inbox}.${randomId()}`;
  out.request_ack = await publish(N, `x.${T}.py-echo`, Buffer.from(JSON.stringify(["upper", ["hello"]])),
    { encoding: 1, headers: { "CN-Reply": reply } });
  await until(() => replies.length >= 1);
  out.reply = replies.length
    ? { subject: replies[0].subject, encoding: replies[0].encoding, raw: replies[0].raw.toString(),
      headers: replies[0].headers }
    : null;
  out.reply_subject = reply;
  N.sock.disconnect();
  return out;
}

// A hub under a BASE_PATH: the socket.io path is <base>/conat/, cookie names are prefixed.
async function scenarioBasePath({ url, basePath, cookies, tag: T }) {
  const out = {};
  for (const [name, cookie] of Object.entries(cookies)) {
    const conn = await connect(url, { cookie, basePath, record: true });
    const got = [];
    const result = { info: conn.info };
    if (!conn.info.user.error) {
      conn.sock.on(`b.${T}.*`, (p) => got.push(delivery(`b.${T}.*`, p)));
      result.subscribe = await subscribe(conn, `b.${T}.*`);
      result.publish = await call(conn, "publish", [`b.${T}.x`, "id1", 0, 1, 0, Buffer.from("base")]);
      await until(() => got.length >= 1);
      result.deliveries = got;
      conn.sock.disconnect();
    } else {
      result.reason = await Promise.race([conn.disconnected, sleep(10000).then(() => "still connected")]);
    }
    out[name] = result;
  }
  return out;
}

const scenarios = {
  basepath: scenarioBasePath,
  hub: scenarioHub,
  permission: scenarioPermission,
  authfail: scenarioAuthFailure,
  cross: scenarioCross,
  headers: scenarioHeaders,
};

// Headers are any JSON value: node publishes with each kind of value, a Python client echoes
// every message back with the headers it received and answers a request with headers "x"
// (as upstream's socket test does with respondSync).
async function scenarioHeaders({ url, cookie, values }) {
  const conn = await connect(url, { cookie });
  const echoed = [];
  listen(conn, "hdr.in", (m) => echoed.push(m.headers));
  await subscribe(conn, "hdr.in");
  const inbox = `_INBOX.hub-hub.${randomId()}`;
  let replied;
  const reply = new Promise((resolve) => { replied = resolve; });
  listen(conn, `${inbox}.*`, (m) => replied({ data: m.raw.toString(), headers: m.headers }));
  await subscribe(conn, `${inbox}.*`);
  const acks = [];
  for (const headers of values) {
    const [ack] = await publish(conn, "hdr.out", Buffer.from("1"), { headers, encoding: 1 });
    acks.push(ack);
  }
  const ok = await until(() => echoed.length === values.length, 20000);
  const [count] = await publish(conn, "hdr.svc", Buffer.from('"foo"'),
    { headers: { "CN-Reply": `${inbox}.${randomId()}` }, encoding: 1 });
  const answer = await reply;
  conn.sock.close();
  return { acks, echoed, all_echoed: ok, request_count: count, reply: answer };
}

runScenario(scenarios);

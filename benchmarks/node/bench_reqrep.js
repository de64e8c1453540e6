"use strict";
// Request/reply with the frame sequence of upstream's conat client (protocol spec §1.6,
// §3.5), written out by hand on npm socket.io-client. Prints one JSON line.
//
//   node bench_reqrep.js <url> <cookie> <requests> <in-flight>
//
// Requester (one connection): subscribes once to its inbox `_INBOX.hub-hub.<id>.*`; each
// request is a `publish` with an ack, 7 elements: [subject, id, 0, 1, 0, raw,
// {"CN-Reply": "<inbox>.<id>"}] (raw a binary attachment), then it waits for the ack
// (count >= 1) and for the delivery on its inbox whose subject is that reply subject.
// Responder (another connection): subscribed to the service subject; on a request it
// answers as `respond()` does, i.e. `publish` *with an ack* of 6 elements to the
// CN-Reply subject (waitForInterest: on count 0, `wait-for-interest`, then publish again).
// `in-flight` requests are outstanding at any time (1: sequential).

const path = require("path");
const { connect, randomId } = require(path.join(__dirname, "..", "..", "tests", "node", "conat.js"));
const { now, cpuMark, cpuSince } = require(path.join(__dirname, "cpu.js"));

const PAYLOAD = Buffer.alloc(100, 0x78);
const TIMEOUT_MS = 30000;

async function ackOf(sock, event, arg) {
  const response = await sock.timeout(TIMEOUT_MS).emitWithAck(event, arg);
  if (response && response.error) throw new Error(`${event}: ${response.error}`);
  return response;
}

// The responder: subscribed to `subject`; answers every request with its own data.
async function responder(url, cookie, subject) {
  const conn = await connect(url, { cookie });
  const sock = conn.sock;
  sock.emit("stats", { recv0: { messages: 0, bytes: 0 } });
  const respond = async (reply, raw) => {
    const chunk = [reply, randomId(), 0, 1, 0, raw];
    let { count } = await ackOf(sock, "publish", chunk);
    if (!count) {
      await ackOf(sock, "wait-for-interest", { subject: reply, timeout: TIMEOUT_MS });
      ({ count } = await ackOf(sock, "publish", [reply, randomId(), 0, 1, 0, raw]));
    }
    return count;
  };
  sock.on(subject, ({ data }) => {
    const headers = data[5];
    const reply = headers && headers["CN-Reply"];
    if (typeof reply === "string") {
      respond(reply, data[4]).catch((err) => {
        process.stderr.write(`respond failed: ${err}\n`);
        process.exit(1);
      });
    }
  });
  await ackOf(sock, "subscribe", { subject, queue: randomId() });
  return conn;
}

// The requester: one inbox subscription; `request()` as upstream's client does it.
async function requester(url, cookie) {
  const conn = await connect(url, { cookie });
  const sock = conn.sock;
  sock.emit("stats", { recv0: { messages: 0, bytes: 0 } });
  const inbox = `_INBOX.hub-hub.${randomId()}`;
  const waiting = new Map(); // reply subject -> resolve
  sock.on(`${inbox}.*`, ({ subject, data }) => {
    const resolve = waiting.get(subject);
    if (resolve && data[2]) {
      waiting.delete(subject);
      resolve(data[4]);
    }
  });
  await ackOf(sock, "subscribe", { subject: `${inbox}.*`, queue: randomId() });
  const request = async (subject, raw) => {
    const reply = `${inbox}.${randomId()}`;
    const answer = new Promise((resolve) => waiting.set(reply, resolve));
    const { count } = await ackOf(sock, "publish", [subject, randomId(), 0, 1, 0, raw, { "CN-Reply": reply }]);
    if (!count) {
      waiting.delete(reply);
      throw new Error(`request -- no subscribers matching '${subject}'`);
    }
    return answer;
  };
  return { conn, request };
}

async function main() {
  const [url, cookie, requestsArg, inFlightArg] = process.argv.slice(2);
  const requests = Number(requestsArg);
  const inFlight = Math.max(1, Number(inFlightArg || 1));
  const subject = `bench.svc.${randomId()}`;
  const server = await responder(url, cookie, subject);
  const { conn, request } = await requester(url, cookie);
  const latencies = [];
  const run = async (total, record) => {
    let next = 0;
    const worker = async () => {
      while (next < total) {
        next++;
        const start = process.hrtime.bigint();
        const answer = await request(subject, PAYLOAD);
        if (answer.length !== PAYLOAD.length) throw new Error("wrong reply");
        if (record) latencies.push(Number(process.hrtime.bigint() - start) / 1e6);
      }
    };
    await Promise.all(Array.from({ length: inFlight }, worker));
  };
  await run(Math.min(500, requests), false); // warm-up
  const mark = cpuMark();
  const t0 = now();
  await run(requests, true);
  const elapsed = now() - t0;
  const cpu = cpuSince(mark);
  latencies.sort((x, y) => x - y);
  const pct = (q) => latencies[Math.min(latencies.length - 1, Math.round(q * (latencies.length - 1)))];
  process.stdout.write(JSON.stringify({
    requests, in_flight: inFlight, seconds: elapsed, rate: requests / elapsed, p50_ms: pct(0.5), p99_ms: pct(0.99), ...cpu,
  }) + "\n");
  conn.sock.disconnect();
  server.sock.disconnect();
  process.exit(0);
}

main().catch((err) => {
  process.stderr.write(`FAILED ${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});

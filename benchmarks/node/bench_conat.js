"use strict";
// Node side of benchmarks/bench_conat.py: npm socket.io-client (from tests/node/node_modules)
// with the conat framing done by hand (tests/node/conat.js). Prints one JSON line.
//
//   node bench_conat.js pubsub <url> <cookie> <seconds> <window>
//   node bench_conat.js reqrep <url> <cookie> <requests>
//   node bench_conat.js fanout <url> <cookie> <seconds> <subscribers> <window>
//   node bench_conat.js idle   <url> <cookie> <connections> <parallel>
//        (prints {"ready":…} once every connection has its info, waits for a line on
//        stdin, closes them all, prints {"closed":…})

const path = require("path");
const { connect, subscribe, randomId, sleep } = require(path.join(__dirname, "..", "..", "tests", "node", "conat.js"));
const { now, cpuMark, cpuSince, measure } = require(path.join(__dirname, "cpu.js"));

const PAYLOAD = Buffer.alloc(100, 0x78);
const WARMUP_MS = 1000;

function print(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

// Fire-and-forget publishes, at most `window` not yet received by the subscriber.
async function pubsub(url, cookie, seconds, window) {
  const pub = await connect(url, { cookie });
  const sub = await connect(url, { cookie });
  const subject = `bench.ps.${randomId()}`;
  let sent = 0;
  let recv = 0;
  let running = true;
  const pump = () => {
    while (running && sent - recv < window) {
      pub.sock.emit("publish", [subject, String(sent), 0, 1, 0, PAYLOAD]);
      sent++;
    }
  };
  sub.sock.on(subject, () => {
    recv++;
    if (sent - recv <= window / 2) pump();
  });
  await subscribe(sub, subject);
  pump();
  await sleep(WARMUP_MS);
  const { n, ...m } = await measure(() => recv, seconds);
  running = false;
  print({ messages: n, ...m });
  pub.sock.disconnect();
  sub.sock.disconnect();
}

// Sequential requests: publish with ack and CN-Reply, wait for the ack and the reply.
async function reqrep(url, cookie, requests) {
  const responder = await connect(url, { cookie });
  const requester = await connect(url, { cookie });
  const subject = `bench.rr.${randomId()}`;
  let n = 0;
  responder.sock.on(subject, (p) => {
    responder.sock.emit("publish", [p.data[5]["CN-Reply"], String(n++), 0, 1, 0, p.data[4]]);
  });
  await subscribe(responder, subject, "0");
  const inbox = `_INBOX.hub-hub.${randomId()}`;
  let waiting = null;
  requester.sock.on(`${inbox}.*`, (p) => {
    if (waiting) waiting(p);
  });
  await subscribe(requester, `${inbox}.*`);
  const latencies = [];
  const warmup = Math.min(500, requests);
  let t0 = 0;
  let mark = null;
  for (let i = 0; i < warmup + requests; i++) {
    if (i === warmup) {
      t0 = now();
      mark = cpuMark();
    }
    const start = process.hrtime.bigint();
    const reply = new Promise((resolve) => {
      waiting = resolve;
    });
    const ack = requester.sock.emitWithAck("publish", [subject, String(i), 0, 1, 0, PAYLOAD, { "CN-Reply": `${inbox}.${i}` }]);
    const [a] = await Promise.all([ack, reply]);
    if (!a || a.count !== 1) throw new Error(`unexpected ack ${JSON.stringify(a)}`);
    if (i >= warmup) latencies.push(Number(process.hrtime.bigint() - start) / 1e6);
  }
  const elapsed = now() - t0;
  const cpu = cpuSince(mark);
  latencies.sort((x, y) => x - y);
  const pct = (q) => latencies[Math.min(latencies.length - 1, Math.round(q * (latencies.length - 1)))];
  print({ requests, seconds: elapsed, rate: requests / elapsed, p50_ms: pct(0.5), p99_ms: pct(0.99), ...cpu });
  requester.sock.disconnect();
  responder.sock.disconnect();
}

// One publisher, `count` subscribers on their own connections; at most `window` messages
// (window × count deliveries) not yet received.
async function fanout(url, cookie, seconds, count, window) {
  const subject = `bench.fo.${randomId()}`;
  const subs = [];
  let recv = 0;
  let sent = 0;
  let running = true;
  const pub = await connect(url, { cookie });
  const pump = () => {
    while (running && sent * count - recv < window * count) {
      pub.sock.emit("publish", [subject, String(sent), 0, 1, 0, PAYLOAD]);
      sent++;
    }
  };
  for (let i = 0; i < count; i++) {
    const s = await connect(url, { cookie });
    s.sock.on(subject, () => {
      recv++;
      if (sent * count - recv <= (window * count) / 2) pump();
    });
    await subscribe(s, subject);
    subs.push(s);
  }
  pump();
  await sleep(WARMUP_MS);
  const { n, ...m } = await measure(() => recv, seconds);
  running = false;
  print({ deliveries: n, ...m });
  for (const s of [pub, ...subs]) s.sock.disconnect();
}

async function idle(url, cookie, total, parallel) {
  const conns = [];
  const t0 = now();
  let next = 0;
  let failed = 0;
  const worker = async () => {
    while (next < total) {
      next++;
      try {
        const c = await connect(url, { cookie });
        if (c.info && c.info.user && c.info.user.error) failed++;
        conns.push(c);
      } catch (err) {
        failed++;
      }
    }
  };
  await Promise.all(Array.from({ length: parallel }, worker));
  const signedIn = conns.filter((c) => c.info && c.info.user && !c.info.user.error && c.sock.connected).length;
  print({ ready: signedIn, failed, seconds: now() - t0 });
  await new Promise((resolve) => process.stdin.once("data", resolve));
  for (const c of conns) c.sock.disconnect();
  await sleep(200);
  print({ closed: conns.length });
}

async function main() {
  const [mode, url, cookie, ...rest] = process.argv.slice(2);
  const nums = rest.map(Number);
  if (mode === "pubsub") await pubsub(url, cookie, nums[0], nums[1]);
  else if (mode === "reqrep") await reqrep(url, cookie, nums[0]);
  else if (mode === "fanout") await fanout(url, cookie, nums[0], nums[1], nums[2]);
  else if (mode === "idle") await idle(url, cookie, nums[0], nums[1]);
  else throw new Error(`unknown mode ${mode}`);
  process.exit(0);
}

main().catch((err) => {
  process.stderr.write(`FAILED ${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});

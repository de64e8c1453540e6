"use strict";
// Node side of benchmarks/bench_barriers.py: what read barriers cost. Prints one JSON line.
//
//   node bench_barriers.js mixed <url> <cookie> <seconds> <inflight>
//        requests (`inflight` at a time) to a responder while the same client also receives
//        a stream of messages on another subject: replies followed by other deliveries,
//        the case that starts holds; prints req/s and the stream's msgs/s
//   node bench_barriers.js subscribe <url> <cookie> <count>
//        sequential subscribe + unsubscribe pairs (each subscribe ack is a barrier)
//   node bench_barriers.js acks <url> <cookie> <seconds> <pairs> <rate>
//        ack latency under load: a probe publishes with ack, one at a time, while `pairs`
//        publisher → subscriber pairs stream `rate` msgs/s each; prints ack p50/p99

const path = require("path");
const { connect, subscribe, call, randomId, sleep } = require(path.join(__dirname, "..", "..", "tests", "node", "conat.js"));
const { now, cpuMark, cpuSince } = require(path.join(__dirname, "cpu.js"));

const PAYLOAD = Buffer.alloc(100, 0x78);

function print(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

async function mixed(url, cookie, seconds, inflight) {
  const responder = await connect(url, { cookie });
  const streamer = await connect(url, { cookie });
  const client = await connect(url, { cookie });
  const service = `bench.bar.svc.${randomId()}`;
  const stream = `bench.bar.stream.${randomId()}`;
  responder.sock.on(service, (p) => {
    responder.sock.emit("publish", [p.data[5]["CN-Reply"], randomId(), 0, 1, 0, PAYLOAD]);
  });
  await subscribe(responder, service, "0");
  const inbox = `_INBOX.hub-hub.${randomId()}`;
  let replies = 0;
  let streamed = 0;
  let running = true;
  let sent = 0;
  const request = () => {
    client.sock.emit("publish", [service, randomId(), 0, 1, 0, PAYLOAD, { "CN-Reply": `${inbox}.${sent++}` }]);
  };
  client.sock.on(`${inbox}.*`, () => {
    replies++;
    if (running) request();
  });
  await subscribe(client, `${inbox}.*`);
  // the stream: fire-and-forget, at most 200 messages not yet received
  let streamSent = 0;
  const pump = () => {
    while (running && streamSent - streamed < 200) {
      streamer.sock.emit("publish", [stream, String(streamSent++), 0, 1, 0, PAYLOAD]);
    }
  };
  client.sock.on(stream, () => {
    streamed++;
    if (streamSent - streamed <= 100) pump();
  });
  await subscribe(client, stream);
  pump();
  for (let i = 0; i < inflight; i++) request();
  await sleep(1000);
  const r0 = replies;
  const s0 = streamed;
  const mark = cpuMark();
  await sleep(seconds * 1000);
  const wall = now() - mark.t;
  const out = { req_rate: (replies - r0) / wall, stream_rate: (streamed - s0) / wall, ...cpuSince(mark) };
  running = false;
  print(out);
  for (const c of [responder, streamer, client]) c.sock.disconnect();
}

async function subscribeChurn(url, cookie, count) {
  const conn = await connect(url, { cookie });
  const t0 = now();
  const mark = cpuMark();
  for (let i = 0; i < count; i++) {
    const subject = `bench.bar.sub.${i}`;
    await subscribe(conn, subject);
    await call(conn, "unsubscribe", { subject });
  }
  const wall = now() - t0;
  print({ rate: count / wall, ...cpuSince(mark) });
  conn.sock.disconnect();
}

async function acks(url, cookie, seconds, pairs, rate) {
  // `pairs` streams of `rate` msgs/s each (in bursts every 5 ms): load the hub without
  // saturating it, so the probe's ack time shows write scheduling, not an overload queue.
  let running = true;
  let loaded = 0;
  const conns = [];
  const timers = [];
  const burst = Math.max(1, Math.round(rate / 200));
  for (let i = 0; i < pairs; i++) {
    const pub = await connect(url, { cookie });
    const sub = await connect(url, { cookie });
    conns.push(pub, sub);
    const subject = `bench.bar.load.${i}.${randomId()}`;
    sub.sock.on(subject, () => {
      loaded++;
    });
    await subscribe(sub, subject);
    let sent = 0;
    timers.push(setInterval(() => {
      for (let k = 0; k < burst && running; k++) pub.sock.emit("publish", [subject, String(sent++), 0, 1, 0, PAYLOAD]);
    }, 5));
  }
  const probe = await connect(url, { cookie });
  const listener = await connect(url, { cookie });
  conns.push(probe, listener);
  const subject = `bench.bar.probe.${randomId()}`;
  await subscribe(listener, subject);
  await sleep(1000);
  const latencies = [];
  const mark = cpuMark();
  const loaded0 = loaded;
  const end = now() + seconds;
  while (now() < end) {
    const start = process.hrtime.bigint();
    await probe.sock.emitWithAck("publish", [subject, randomId(), 0, 1, 0, PAYLOAD]);
    latencies.push(Number(process.hrtime.bigint() - start) / 1e6);
  }
  const cpu = cpuSince(mark);
  const loadRate = (loaded - loaded0) / (now() - mark.t);
  running = false;
  for (const t of timers) clearInterval(t);
  latencies.sort((x, y) => x - y);
  const pct = (q) => latencies[Math.min(latencies.length - 1, Math.round(q * (latencies.length - 1)))];
  print({ load_rate: loadRate, acks: latencies.length, p50_ms: pct(0.5), p90_ms: pct(0.9), p99_ms: pct(0.99), ...cpu });
  for (const c of conns) c.sock.disconnect();
}

async function main() {
  const [mode, url, cookie, a, b, c] = process.argv.slice(2);
  if (mode === "mixed") await mixed(url, cookie, Number(a), Number(b));
  else if (mode === "subscribe") await subscribeChurn(url, cookie, Number(a));
  else if (mode === "acks") await acks(url, cookie, Number(a), Number(b), Number(c));
  else throw new Error(`unknown mode ${mode}`);
  process.exit(0);
}

main().catch((err) => {
  process.stderr.write(`FAILED ${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});

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
const { connect, sleep } = require(path.join(__dirname, "..", "..", "tests", "node", "conat.js"));
const { json, parse, openStream } = require(path.join(__dirname, "..", "..", "tests", "node", "persist.js"));
const { measure } = require(path.join(__dirname, "cpu.js"));

const PAYLOAD = Buffer.from(JSON.stringify("x".repeat(98))); // 100 bytes
const WARMUP_MS = 1000;

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

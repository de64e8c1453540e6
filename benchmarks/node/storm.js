"use strict";
// Node side of benchmarks/bench_storm.py: one client process of a connection storm.
//
//   node storm.js <url> <cookie> <connections>
//
// Prints {"waiting":true}, then on a line on stdin opens every connection at once (npm
// socket.io-client, WebSocket transport, no reconnection, a connect timeout of 10 minutes:
// a connection the hub is slow to accept is measured, not dropped) and prints one JSON line:
// per-connection milliseconds from the start to the conat `info` event, and the failures.
// Then waits for another line on stdin, closes them all and prints {"closed":…}.

const path = require("path");
const { io } = require(path.join(__dirname, "..", "..", "tests", "node", "node_modules", "socket.io-client"));

function print(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

function line() {
  return new Promise((resolve) => {
    let buf = "";
    const on = (chunk) => {
      buf += chunk;
      if (buf.includes("\n")) {
        process.stdin.off("data", on);
        resolve();
      }
    };
    process.stdin.on("data", on);
  });
}

function open(url, cookie, t0) {
  const sock = io(url, {
    path: "/conat/",
    transports: ["websocket"],
    reconnection: false,
    forceNew: true,
    timeout: 600000,
    extraHeaders: { Cookie: cookie },
  });
  return new Promise((resolve) => {
    sock.on("info", (info, ack) => {
      if (typeof ack === "function") ack();
      const ok = !!(info && info.user && !info.user.error);
      resolve({ sock, ms: Number(process.hrtime.bigint() - t0) / 1e6, ok });
    });
    sock.on("connect_error", (err) => resolve({ sock, ms: null, ok: false, error: String(err && err.message) }));
  });
}

async function main() {
  const [url, cookie, count] = process.argv.slice(2);
  const n = Number(count);
  print({ waiting: true });
  await line();
  const t0 = process.hrtime.bigint();
  const results = await Promise.all(Array.from({ length: n }, () => open(url, cookie, t0)));
  const ms = results.filter((r) => r.ok).map((r) => r.ms);
  const errors = {};
  for (const r of results) if (!r.ok) errors[r.error || "not signed in"] = (errors[r.error || "not signed in"] || 0) + 1;
  print({ ms, failed: n - ms.length, errors });
  await line();
  for (const r of results) r.sock.disconnect();
  await new Promise((resolve) => setTimeout(resolve, 200));
  print({ closed: results.length });
  process.exit(0);
}

main().catch((err) => {
  process.stderr.write(`FAILED ${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});

"use strict";
// For tests/conat/test_persist_feed.py: does a changefeed have a change by the time its
// writer's save returned? (issue 14.3)
//
//   node persist_order.js <url> <cookie> <path> <sets>
//
// Two persist sessions on one connection (so one ordered byte stream from the hub, and no
// race between two sockets' reads): B follows <path>'s changefeed, A saves <sets> times in a
// row. When each save's reply is handled, the number of changefeed messages B has had is
// recorded; B must have had that save's update before (the hub's 30 ms changefeed throttle
// would have held it back). Prints {"feed_after_save": [...]}. (Across two connections the
// order is the hub's: tests/conat/test_persist_feed.py checks what the broker writes.)

const { connect } = require("./conat");
const { json, openStream } = require("./persist");

async function main() {
  const [url, cookie, streamPath, sets] = process.argv.slice(2);
  const conn = await connect(url, { cookie });
  // distinct CN-SocketSeq: the server resends data that is not acknowledged (not done here)
  const seen = new Set();
  await openStream(conn, streamPath, { changefeed: true, onData: (m) => seen.add(m.headers["CN-SocketSeq"]) });
  const save = await openStream(conn, streamPath);
  const after = [];
  for (let i = 1; i <= Number(sets); i++) {
    const reply = await save(json(`v${i}`), { cmd: "set", key: "k" });
    if (reply.headers && reply.headers.error) throw new Error(`set: ${reply.headers.error}`);
    after.push(seen.size);
  }
  process.stdout.write(JSON.stringify({ feed_after_save: after }) + "\n");
  conn.sock.disconnect();
  process.exit(0);
}

main().catch((err) => {
  process.stderr.write(`FAILED ${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});

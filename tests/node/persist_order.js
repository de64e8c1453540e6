"use strict";
// For tests/conat/test_persist_feed.py: does a changefeed have a change by the time its
// writer's save returned? (issue 14.3)
//
//   node persist_order.js <url> <cookie> <path> <sets>
//
// Two connections: B follows <path>'s changefeed, A saves <sets> times in a row. After each
// save's reply, B may first read what already reached it (a few setImmediate turns, no
// timer: well under the server's 30 ms changefeed throttle); then the number of changefeed
// messages B has is recorded. Prints {"feed_after_save": [...]}.

const { connect } = require("./conat");
const { json, openStream } = require("./persist");

const TURNS = 5;

const turn = () => new Promise((resolve) => setImmediate(resolve));

async function main() {
  const [url, cookie, streamPath, sets] = process.argv.slice(2);
  const A = await connect(url, { cookie });
  const B = await connect(url, { cookie });
  let feed = 0;
  await openStream(B, streamPath, { changefeed: true, onData: () => feed++ });
  const save = await openStream(A, streamPath);
  const after = [];
  for (let i = 1; i <= Number(sets); i++) {
    const reply = await save(json(`v${i}`), { cmd: "set", key: "k" });
    if (reply.headers && reply.headers.error) throw new Error(`set: ${reply.headers.error}`);
    for (let t = 0; t < TURNS && feed < i; t++) await turn();
    after.push(feed);
  }
  process.stdout.write(JSON.stringify({ feed_after_save: after }) + "\n");
  A.sock.disconnect();
  B.sock.disconnect();
  process.exit(0);
}

main().catch((err) => {
  process.stderr.write(`FAILED ${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});

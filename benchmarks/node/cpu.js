"use strict";
// What the node benchmarks share: a clock, the CPU (in cores) used by this process and by
// the hub (pid in BENCH_HUB_PID) between cpuMark() and cpuSince(mark), and measure().

const fs = require("fs");

function now() {
  return Number(process.hrtime.bigint()) / 1e9;
}

function hubCpu() {
  const pid = process.env.BENCH_HUB_PID;
  if (!pid) return null;
  const fields = fs.readFileSync(`/proc/${pid}/stat`, "utf8").split(")").pop().trim().split(/\s+/);
  return (Number(fields[11]) + Number(fields[12])) / 100; // utime + stime, USER_HZ = 100
}

function cpuMark() {
  return { t: now(), self: process.cpuUsage(), hub: hubCpu() };
}

function cpuSince(mark) {
  const wall = now() - mark.t;
  const self = process.cpuUsage(mark.self);
  const hub = hubCpu();
  return { client_cpu: (self.user + self.system) / 1e6 / wall, hub_cpu: hub === null ? null : (hub - mark.hub) / wall };
}

// What `count()` gained over `seconds`, as a rate, with the CPU used meanwhile.
async function measure(count, seconds) {
  const c0 = count();
  const mark = cpuMark();
  await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
  const n = count() - c0;
  const wall = now() - mark.t;
  return { n, seconds: wall, rate: n / wall, ...cpuSince(mark) };
}

module.exports = { now, cpuMark, cpuSince, measure };

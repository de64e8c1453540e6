"use strict";
// What the node benchmarks share: a clock, and the CPU (in cores) used by this process and
// by the hub (pid in BENCH_HUB_PID) between cpuMark() and cpuSince(mark).

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

module.exports = { now, cpuMark, cpuSince };

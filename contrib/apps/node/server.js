// A visit counter for Shadow: Node.js's standard library only.
//
// GET /         counts the visit and answers "visits: N"
// GET /healthz  answers "ok" without counting (use it as the task's health.path)
//
// The count lives in $DATA_DIR/visits (default /data, where Shadow mounts the task's volume), so
// it survives the container being stopped when idle and started again, on this node or another.
// Listens on $PORT (default 8000, the port Shadow expects).
"use strict";

const fs = require("node:fs");
const http = require("node:http");
const path = require("node:path");

const DATA_DIR = process.env.DATA_DIR || "/data";
const PORT = Number(process.env.PORT || 8000);
const COUNTER = path.join(DATA_DIR, "visits");

function readCount() {
  try {
    return Number.parseInt(fs.readFileSync(COUNTER, "ascii").trim(), 10) || 0;
  } catch (err) {
    if (err.code === "ENOENT") return 0;
    throw err;
  }
}

// Write a new file and rename it over the old one: a stop at any moment leaves either the old
// count or the new one, never a torn file. Synchronous calls, so two requests never interleave.
function writeCount(n) {
  const tmp = `${COUNTER}.${process.pid}.tmp`;
  const fd = fs.openSync(tmp, "w", 0o644);
  try {
    fs.writeSync(fd, `${n}\n`);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, COUNTER);
}

function answer(res, status, body) {
  res.writeHead(status, {
    "Content-Type": "text/plain; charset=utf-8",
    "Content-Length": Buffer.byteLength(body),
  });
  res.end(body);
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, "http://localhost");
  if (req.method !== "GET" && req.method !== "HEAD") {
    answer(res, 405, "method not allowed\n");
  } else if (url.pathname === "/healthz") {
    answer(res, 200, "ok\n");
  } else if (url.pathname === "/") {
    try {
      const n = readCount() + 1;
      writeCount(n);
      answer(res, 200, `visits: ${n}\n`);
    } catch (err) {
      console.error(`cannot count the visit: ${err.message}`);
      answer(res, 500, "cannot store the count\n");
    }
  } else {
    answer(res, 404, "not found\n");
  }
});

fs.mkdirSync(DATA_DIR, { recursive: true });
server.listen(PORT, "0.0.0.0", () => {
  console.error(`listening on :${PORT}, data in ${DATA_DIR}`);
});

// As PID 1 in a container, SIGTERM has no default action: without a handler, `docker stop` would
// wait for the grace period and then SIGKILL.
for (const sig of ["SIGTERM", "SIGINT"]) {
  process.on(sig, () => {
    server.close(() => process.exit(0));
    server.closeIdleConnections();
    setTimeout(() => process.exit(0), 5000).unref();
  });
}

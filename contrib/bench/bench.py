#!/usr/bin/env python3
"""Small helpers for contrib/bench/run.sh (standard library only).

  bench.py register MASTER TOKEN COUNT PREFIX IMAGE [CONCURRENCY]
      registers COUNT tasks named PREFIX-<i> (domain PREFIX-<i>.bench.test) through the
      master's API, CONCURRENCY keep-alive connections at once; prints the seconds it took.
  bench.py herd ADDR HOST COUNT [PATH]
      opens COUNT connections to ADDR at once, sends each one GET with Host: HOST, and prints
      JSON: {"answers": {status: n}, "errors": n, "last_s": seconds to the last answer}.
  bench.py stats N...
      prints "median max" of the numbers.
"""

import asyncio
import http.client
import json
import statistics
import sys
import threading
import time


def register(master, token, count, prefix, image, concurrency=16):
    host, port = master.replace("http://", "").split(":")
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    next_i = iter(range(count))
    lock = threading.Lock()
    failures = []

    def worker():
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        while True:
            with lock:
                i = next(next_i, None)
            if i is None or failures:
                return
            body = json.dumps({
                "name": f"{prefix}-{i}",
                "domains": [f"{prefix}-{i}.bench.test"],
                "image": image,
                "volume": {"kind": "none"},
                "idle_timeout_s": 600,
            })
            conn.request("POST", "/tasks/", body, headers)
            r = conn.getresponse()
            r.read()
            if r.status not in (200, 201):
                failures.append(f"{prefix}-{i}: HTTP {r.status}")

    began = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        sys.exit(f"registration failed: {failures[0]}")
    print(f"{time.monotonic() - began:.2f}")


async def one_request(addr, host, path, began):
    h, p = addr.split(":")
    reader, writer = await asyncio.open_connection(h, int(p))
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    status_line = await reader.readline()
    await reader.read()  # the rest, until the server closes
    writer.close()
    return int(status_line.split()[1]), time.monotonic() - began


async def herd_async(addr, host, count, path):
    began = time.monotonic()
    results = await asyncio.gather(
        *(one_request(addr, host, path, began) for _ in range(count)), return_exceptions=True
    )
    answers, errors, last = {}, 0, 0.0
    for r in results:
        if isinstance(r, BaseException):
            errors += 1
            continue
        status, at = r
        answers[str(status)] = answers.get(str(status), 0) + 1
        last = max(last, at)
    print(json.dumps({"answers": answers, "errors": errors, "last_s": round(last, 3)}))


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "register":
        register(args[0], args[1], int(args[2]), args[3], args[4],
                 int(args[5]) if len(args) > 5 else 16)
    elif cmd == "herd":
        asyncio.run(herd_async(args[0], args[1], int(args[2]), args[3] if len(args) > 3 else "/"))
    elif cmd == "stats":
        xs = [float(x) for x in args]
        print(f"{statistics.median(xs):g} {max(xs):g}")
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()

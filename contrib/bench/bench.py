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
  bench.py ttfb ADDR HOST [PATH]
      one GET on a new connection; prints the ms to the first byte of the answer (non-200 fails).
  bench.py unpause-ttfb CONTAINER PORT
      thaws a paused container through Docker's API, then GETs / on 127.0.0.1:PORT; prints the ms
      from the unpause call to the first byte of the answer.
  bench.py memory CONTAINER
      prints the container's memory use (MiB) as its cgroup counts it (Docker's one-shot stats).
  bench.py busy-cost CONTAINER N
      what one busy-check sample costs: N reads of the container's cgroup CPU counter (what the
      node reads) and N one-shot Docker stats calls (its fallback); prints
      "cgroup_read_us docker_wall_ms dockerd_cpu_ms_per_call" (medians; cgroup "nan" if unseen).
"""

import socket

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


DOCKER_SOCK = "/var/run/docker.sock"


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost")
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


def docker(method, path):
    c = UnixHTTPConnection(DOCKER_SOCK)
    c.request(method, path)
    r = c.getresponse()
    body = r.read()
    c.close()
    if r.status >= 300:
        sys.exit(f"docker {method} {path}: {r.status} {body[:200]!r}")
    return body


def first_byte(addr, host, path="/"):
    """GET on a new connection; returns the seconds to the answer's first byte."""
    h, p = addr.split(":")
    began = time.perf_counter()
    c = http.client.HTTPConnection(h, int(p), timeout=30)
    c.request("GET", path, headers={"Host": host})
    r = c.getresponse()
    at = time.perf_counter() - began
    r.read()
    c.close()
    if r.status != 200:
        sys.exit(f"GET {path} with Host {host} on {addr}: {r.status}")
    return at


def dockerd_cpu_s():
    for pid in filter(str.isdigit, __import__("os").listdir("/proc")):
        try:
            if open(f"/proc/{pid}/comm").read().strip() == "dockerd":
                f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
                return (int(f[11]) + int(f[12])) / __import__("os").sysconf("SC_CLK_TCK")
        except OSError:
            continue
    return float("nan")


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "register":
        register(args[0], args[1], int(args[2]), args[3], args[4],
                 int(args[5]) if len(args) > 5 else 16)
    elif cmd == "herd":
        asyncio.run(herd_async(args[0], args[1], int(args[2]), args[3] if len(args) > 3 else "/"))
    elif cmd == "ttfb":
        print(f"{first_byte(args[0], args[1], args[2] if len(args) > 2 else '/') * 1000:.1f}")
    elif cmd == "unpause-ttfb":
        began = time.perf_counter()
        docker("POST", f"/containers/{args[0]}/unpause")
        unpaused = time.perf_counter()
        at = unpaused + first_byte(f"127.0.0.1:{args[1]}", "localhost")
        print(f"{(at - began) * 1000:.1f}")
    elif cmd == "memory":
        stats = json.loads(docker("GET", f"/containers/{args[0]}/stats?stream=false&one-shot=true"))
        print(f"{stats['memory_stats'].get('usage', 0) / 1048576:.1f}")
    elif cmd == "busy-cost":
        cid, n = args[0], int(args[1])
        cid = json.loads(docker("GET", f"/containers/{cid}/json"))["Id"]
        paths = [f"/sys/fs/cgroup/{d}/docker/{cid}/cpuacct.usage" for d in ("cpuacct", "cpu,cpuacct")]
        paths += [f"/sys/fs/cgroup/{d}/system.slice/docker-{cid}.scope/cpuacct.usage"
                  for d in ("cpuacct", "cpu,cpuacct")]
        paths += [f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/cpu.stat",
                  f"/sys/fs/cgroup/docker/{cid}/cpu.stat"]
        path = next((p for p in paths if __import__("os").path.exists(p)), None)
        reads = []
        for _ in range(n if path else 0):
            t = time.perf_counter()
            with open(path) as f:
                f.read()
            reads.append((time.perf_counter() - t) * 1e6)
        walls = []
        cpu0 = dockerd_cpu_s()
        for _ in range(n):
            t = time.perf_counter()
            docker("GET", f"/containers/{cid}/stats?stream=false&one-shot=true")
            walls.append((time.perf_counter() - t) * 1000)
        cpu = (dockerd_cpu_s() - cpu0) * 1000 / n
        read = f"{statistics.median(reads):.1f}" if reads else "nan"
        print(f"{read} {statistics.median(walls):.2f} {cpu:.2f}")
    elif cmd == "stats":
        xs = [float(x) for x in args]
        print(f"{statistics.median(xs):g} {max(xs):g}")
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Two masters on one PostgreSQL database: how fast a change through one reaches a watcher of
the other, and lease grants and renewals per second with clients spread over both.

Start two masters on the same database (same token), e.g.:
  SHADOW_API_TOKEN=$T SHADOW_DATABASE_URL=postgres://... shadow-master --listen 127.0.0.1:7811 &
  SHADOW_API_TOKEN=$T SHADOW_DATABASE_URL=postgres://... shadow-master --listen 127.0.0.1:7812 &
then: SHADOW_API_TOKEN=$T contrib/bench/masters.py 7811 7812

Watch latency: 100 times, a task is created through A while a long poll waits on B; the time
from sending the create to B's answer carrying it. Throughput: 4 s per figure, 8 clients on
keep-alive connections, half on each master (grants of new named locks; renewals of one held
lease each).
"""
import http.client
import json
import os
import statistics
import sys
import threading
import time

TOKEN = os.environ["SHADOW_API_TOKEN"]
H = {"Authorization": "Bearer " + TOKEN, "Content-Type": "application/json"}
SECS = 4


def call(c, method, path, body=None):
    c.request(method, path, json.dumps(body) if body is not None else None, H)
    r = c.getresponse()
    data = r.read()
    assert 200 <= r.status < 300, (r.status, data)
    return json.loads(data) if data else None


def watch_latency(a, b, rounds=100):
    ca, cb = http.client.HTTPConnection("127.0.0.1", a), http.client.HTTPConnection("127.0.0.1", b)
    first = call(cb, "GET", "/watch?since=0&timeout_ms=0")
    epoch, rev = first["epoch"], first["revision"]
    out = []
    run = time.time_ns()
    for i in range(rounds):
        got = {}

        def wait(since=rev):
            c = http.client.HTTPConnection("127.0.0.1", b)
            while True:
                r = call(c, "GET", f"/watch?epoch={epoch}&since={since}&timeout_ms=5000")
                since = r["revision"]
                if any(e["type"] == "task_put" and e["task"]["name"] == f"w{run}-{i}" for e in r["events"]):
                    got["at"] = time.perf_counter()
                    got["rev"] = since
                    return

        t = threading.Thread(target=wait)
        t.start()
        time.sleep(0.02)  # the long poll is waiting on B
        sent = time.perf_counter()
        call(ca, "POST", "/tasks/", {"name": f"w{run}-{i}", "domains": [f"w{run}-{i}.bench.test"], "image": "x"})
        t.join()
        out.append((got["at"] - sent) * 1e3)
        rev = got["rev"]
    out.sort()
    return statistics.median(out), out[int(len(out) * 0.9)], out[-1]


def worker(port, kind, out, wid):
    c = http.client.HTTPConnection("127.0.0.1", port)
    name = f"_m{wid}-{kind}-{time.time_ns()}"
    token = call(c, "POST", f"/leases/{name}-r", {"node": f"w{wid}", "ttl_ms": 60000})["token"]
    n, i, end = 0, 0, time.time() + SECS
    while time.time() < end:
        if kind == "grant":
            call(c, "POST", f"/leases/{name}-{i}", {"node": f"w{wid}", "ttl_ms": 60000})
            i += 1
        else:
            call(c, "PUT", f"/leases/{name}-r", {"token": token, "ttl_ms": 60000})
        n += 1
    out.append(n)


a, b = int(sys.argv[1]), int(sys.argv[2])
med, p90, mx = watch_latency(a, b)
print(f"watch latency A -> B: median {med:.1f} ms, p90 {p90:.1f} ms, max {mx:.1f} ms")
for kind in ["grant", "renew"]:
    out = []
    ts = [threading.Thread(target=worker, args=([a, b][w % 2], kind, out, w)) for w in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    print(f"| two masters | {kind} | 8 (4 + 4) | {sum(out) / SECS:.0f} |")

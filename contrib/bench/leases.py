#!/usr/bin/env python3
"""Lease grants and renewals per second that one master sustains, per store.

Start the masters first (same token), e.g. one on SQLite and one on PostgreSQL:
  SHADOW_API_TOKEN=$T shadow-master --data-dir /tmp/m1 --listen 127.0.0.1:7801 &
  SHADOW_API_TOKEN=$T SHADOW_DATABASE_URL=postgres://... shadow-master --listen 127.0.0.1:7802 &
then: SHADOW_API_TOKEN=$T contrib/bench/leases.py sqlite=7801 postgres=7802

A grant takes a new named lock (a row written, and with it the fencing token, before the
answer); a renewal extends one held lease (memory only on SQLite; one row update on PostgreSQL,
which several masters share). Each figure runs 4 s, with 1 and 8
clients on keep-alive connections.
"""
import http.client
import json
import os
import sys
import threading
import time

TOKEN = os.environ["SHADOW_API_TOKEN"]
SECS = 4


def worker(port, kind, out, wid):
    c = http.client.HTTPConnection("127.0.0.1", port)
    h = {"Authorization": "Bearer " + TOKEN, "Content-Type": "application/json"}
    name = f"_bench{wid}-{kind}-{time.time_ns()}"
    c.request("POST", f"/leases/{name}-r", json.dumps({"node": f"w{wid}", "ttl_ms": 60000}), h)
    token = json.loads(c.getresponse().read())["token"]
    n, i, end = 0, 0, time.time() + SECS
    while time.time() < end:
        if kind == "grant":
            body = json.dumps({"node": f"w{wid}", "ttl_ms": 60000})
            c.request("POST", f"/leases/{name}-{i}", body, h)
            i += 1
        else:
            c.request("PUT", f"/leases/{name}-r", json.dumps({"token": token, "ttl_ms": 60000}), h)
        r = c.getresponse()
        r.read()
        assert r.status == 200, r.status
        n += 1
    out.append(n)


for arg in sys.argv[1:]:
    store, port = arg.split("=")
    for kind in ["grant", "renew"]:
        for clients in [1, 8]:
            out = []
            ts = [threading.Thread(target=worker, args=(int(port), kind, out, w)) for w in range(clients)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            print(f"| {store} | {kind} | {clients} | {sum(out) / SECS:.0f} |")

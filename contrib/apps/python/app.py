"""A visit counter for Shadow: Python's standard library only.

GET /         counts the visit and answers "visits: N"
GET /healthz  answers "ok" without counting (use it as the task's health.path)

The count lives in $DATA_DIR/visits (default /data, where Shadow mounts the task's volume), so it
survives the container being stopped when idle and started again, on this node or another.
Listens on $PORT (default 8000, the port Shadow expects).
"""

import os
import signal
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DATA_DIR = os.environ.get("DATA_DIR", "/data")
PORT = int(os.environ.get("PORT", "8000"))
COUNTER = os.path.join(DATA_DIR, "visits")
LOCK = threading.Lock()


def read_count() -> int:
    try:
        with open(COUNTER, encoding="ascii") as f:
            return int(f.read().strip() or 0)
    except FileNotFoundError:
        return 0


def write_count(n: int) -> None:
    # Write a new file and rename it over the old one: a stop at any moment leaves either the old
    # count or the new one, never a torn file.
    fd, tmp = tempfile.mkstemp(dir=DATA_DIR, prefix=".visits.")
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(f"{n}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, COUNTER)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def visit() -> int:
    with LOCK:
        n = read_count() + 1
        write_count(n)
        return n


class Handler(BaseHTTPRequestHandler):
    server_version = "shadow-python-example/1"

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self.answer(200, "ok\n")
        elif self.path == "/":
            self.answer(200, f"visits: {visit()}\n")
        else:
            self.answer(404, "not found\n")

    def answer(self, status: int, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt: str, *args) -> None:
        sys.stderr.write("%s %s\n" % (self.address_string(), fmt % args))


def main() -> None:
    os.makedirs(DATA_DIR, exist_ok=True)
    server = ThreadingHTTPServer(("0.0.0.0", PORT), Handler)
    server.daemon_threads = True

    # As PID 1 in a container, SIGTERM has no default action: without a handler, `docker stop`
    # would wait for the grace period and then SIGKILL.
    def stop(_sig, _frame):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"listening on :{PORT}, data in {DATA_DIR}", file=sys.stderr, flush=True)
    server.serve_forever()
    server.server_close()


if __name__ == "__main__":
    main()

"""Real servers on 127.0.0.1 for the object-storage tests: moto's S3 server (the server s3fs
itself tests against), a TCP proxy in front of it that a test can cut, and an HTTP file server
that honours Range requests and counts the bytes it sends."""

from __future__ import annotations

import collections
import http.server
import os
import re
import socket
import subprocess
import sys
import threading
import time

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen | None = None,
                  deadline: float = 30.0) -> None:
    """Return once something accepts connections on ``port``; fail after ``deadline`` s."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with status {process.returncode}")
        try:
            socket.create_connection((HOST, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {HOST}:{port} after {deadline} s")


def stop_process(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


class S3Server:
    """``moto_server`` in a subprocess; it keeps every bucket in memory, so it is never
    restarted while a test needs its data."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://{HOST}:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_port(self.port, self.process)
        except BaseException:
            stop_process(self.process)
            raise

    def client(self):
        """A boto3 client talking to the server directly (never through a proxy)."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")

    def stop(self) -> None:
        stop_process(self.process)


class Proxy:
    """A TCP proxy ``127.0.0.1:port`` -> ``127.0.0.1:target``.

    Client data matching ``hold`` (a request line) is forwarded ``hold_after`` times; later
    matches are held back, the request never reaching the server, until `stop`, which cuts
    every connection and stops listening.  `start` listens again on the same port.
    """

    def __init__(self, target: int, hold: bytes | None = None, hold_after: int = 0) -> None:
        self.port, self.target = free_port(), target
        self.hold = re.compile(hold) if hold else None
        self.hold_after, self.matched = hold_after, 0
        self.holding = threading.Event()
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        self._stopped.clear()
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((HOST, self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        self._stopped.set()
        with self._lock:
            sockets = [self._listener, *self._sockets] if self._listener else list(self._sockets)
            self._sockets.clear()
            self._listener = None
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in accept or recv
            except OSError:
                pass
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection((HOST, self.target))
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._stopped.is_set():
                    client.close()
                    upstream.close()
                    return
                self._sockets |= {client, upstream}
            for src, dst, outbound in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pump, args=(src, dst, outbound),
                                 daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, outbound: bool) -> None:
        try:
            while not self._stopped.is_set():
                data = src.recv(1 << 16)
                if not data:
                    break
                if outbound and self.hold is not None and self.hold.search(data):
                    with self._lock:
                        self.matched += 1
                        held = self.matched > self.hold_after
                    if held:
                        self.holding.set()
                        self._stopped.wait()
                        break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class FileServer:
    """An HTTP/1.1 server (a thread) serving ``files`` (URL path -> bytes) with Range support.

    ``fail[path]`` lists statuses answered (one per request, HEAD included) before the file is
    served; ``sent[path]`` counts body bytes sent; with ``ranges`` false, Range is ignored
    (the whole file is sent, as by python's own http.server).
    """

    ranges = True

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.fail: dict[str, list[int]] = collections.defaultdict(list)
        self.sent: collections.Counter = collections.Counter()
        self.requests: collections.Counter = collections.Counter()
        self.lock = threading.Lock()
        self.httpd = http.server.ThreadingHTTPServer((HOST, 0), _RangeHandler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self
        self.url = f"http://{HOST}:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        owner: FileServer = self.server.owner
        path = self.path.split("?", 1)[0]
        with owner.lock:
            owner.requests[path] += 1
            status = owner.fail[path].pop(0) if owner.fail.get(path) else None
        data = owner.files.get(path)
        if status is None and data is None:
            status = 404
        if status is not None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start, end, code = 0, len(data), 200
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match and owner.ranges:
            start = int(match[1])
            end = min(len(data), int(match[2]) + 1) if match[2] else len(data)
            code = 206
        self.send_response(code)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start))
        if code == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        self.end_headers()
        if body:
            self.wfile.write(data[start:end])
            with owner.lock:
                owner.sent[path] += end - start

    def log_message(self, *args) -> None:
        pass


def aws_environment(endpoint: str | None = None) -> dict[str, str]:
    """Credentials for the test server, and no lookup of instance metadata (169.254.169.254)."""
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
           "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
    if endpoint:
        env["AWS_ENDPOINT_URL"] = endpoint
    return env


class Refuser:
    """A TCP server on 127.0.0.1 that accepts every connection and closes it at once (a
    store behind a failing load balancer), counting the connections: one per attempt."""

    def __init__(self) -> None:
        self.port, self.connections = free_port(), 0
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((HOST, self.port))
        self._listener.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            client.close()

    def stop(self) -> None:
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()


class ReadOnlyStore:
    """An S3 endpoint on 127.0.0.1 where every object is missing (404 NoSuchKey) and every
    write fails with 503 (a store degraded for writes): reads work, writes never do."""

    def __init__(self) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # answers botocore's "Expect: 100-continue"

            def _answer(self, status: int, code: str) -> None:
                body = f"<Error><Code>{code}</Code><Message>{code}</Message></Error>".encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 - http.server's names
                self._answer(404, "NoSuchKey")

            do_HEAD = do_GET

            def do_PUT(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                self._answer(503, "ServiceUnavailable")

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((HOST, 0), Handler)
        self.endpoint = f"http://{HOST}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

"""Helpers that start `airavata serve` on 127.0.0.1 and talk to it.

The server is started with --port 0; the port it picked is read from its
"listening on http://127.0.0.1:PORT" log line, so parallel test runs never
race for a port.
"""
import json
import re
import signal
import socket
import subprocess
import time

import requests

LISTEN_RE = re.compile(rb"listening on http://127\.0\.0\.1:(\d+)")


class Server:
    """A running `airavata serve` process and its log file."""

    def __init__(self, binary, model_dir, log_path, *args, env=None, wait_ready=True):
        self.log_path = log_path
        self.log = open(log_path, "wb")
        cmd = [binary, "serve", "-m", str(model_dir), "--host", "127.0.0.1", "--port", "0",
               *map(str, args)]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.port = self._wait_port()
        self.url = f"http://127.0.0.1:{self.port}"
        if wait_ready:
            self._wait_ready()

    def _wait_port(self, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            match = LISTEN_RE.search(self.log_path.read_bytes())
            if match:
                return int(match.group(1))
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}:\n{self.log_text()}")
            time.sleep(0.05)
        raise AssertionError(f"server did not start listening:\n{self.log_text()}")

    def _wait_ready(self, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if requests.get(self.url + "/health", timeout=5).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}:\n{self.log_text()}")
            time.sleep(0.05)
        raise AssertionError(f"server did not become healthy:\n{self.log_text()}")

    def log_text(self):
        self.log.flush()
        return self.log_path.read_bytes().decode(errors="replace")

    def metrics(self):
        """Returns /metrics as {series: value}."""
        text = requests.get(self.url + "/metrics", timeout=10).text
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        return values

    def stop(self, timeout=30):
        """Sends SIGTERM and returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"server did not stop after SIGTERM:\n{self.log_text()}")
        self.log.close()
        return code


def post_raw(port, path, body, headers=None, timeout=30):
    """Sends a POST with an exact byte body; returns (status, parsed JSON)."""
    head = {"Content-Type": "application/json"}
    head.update(headers or {})
    resp = requests.post(f"http://127.0.0.1:{port}{path}", data=body, headers=head,
                         timeout=timeout)
    return resp.status_code, resp.json()


def read_sse(resp):
    """Parses a server-sent event stream into a list of data payloads; the
    closing "[DONE]" is kept as the string "[DONE]"."""
    events = []
    for line in resp.iter_lines():
        if not line:
            continue
        assert line.startswith(b"data: "), line
        payload = line[len(b"data: "):]
        events.append("[DONE]" if payload == b"[DONE]" else json.loads(payload))
    return events


def open_stream_socket(port, path, body):
    """Sends a streaming POST over a raw socket and returns the socket after
    the response headers and first event have arrived."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    data = json.dumps(body).encode()
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    received = b""
    while b"data: " not in received:
        chunk = sock.recv(4096)
        assert chunk, "connection closed before the first event"
        received += chunk
    return sock, received

"""A real `redis-server` on 127.0.0.1 for tests: a free port, no persistence, stopped (and restartable on the
same port) by the test. `.ci/run` installs it from Debian's `redis-server` package; without it the tests
that need it skip with the reason (`require_redis_server`)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests.servers import free_port

SKIP_REASON = ("redis-server is not installed (.ci/run installs Debian's redis-server package; locally: "
               "apt-get install redis-server)")


def redis_server_path() -> str | None:
    return shutil.which("redis-server")


def ping(port: int, timeout: float = 0.2) -> bool:
    """PING in the raw protocol (no client library needed)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """`redis-server` on 127.0.0.1:<free port>, with no RDB or AOF file, in its own working folder."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        exe = redis_server_path()
        if exe is None:
            raise RuntimeError(SKIP_REASON)
        self.exe = exe
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start (again, on the same port) and wait until it answers PING."""
        for attempt in range(3):
            self.proc = subprocess.Popen(
                [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(self.workdir), "--protected-mode", "yes", "--loglevel", "warning"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            deadline = time.time() + 10
            while time.time() < deadline and self.proc.poll() is None:
                if ping(self.port):
                    return
                time.sleep(0.02)
            out = self._kill()
            if attempt < 2 and b"Address already in use" in out:
                time.sleep(0.2)
                continue
            raise RuntimeError(f"redis-server did not start on port {self.port}: {out[-500:].decode(errors='replace')}")

    def stop(self) -> None:
        self._kill()

    def _kill(self) -> bytes:
        if self.proc is None:
            return b""
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.terminate()
        try:
            out, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        deadline = time.time() + 5
        while ping(self.port) and time.time() < deadline:  # the port is closed once it is gone
            time.sleep(0.02)
        return out or b""

    def client_list(self) -> list[dict[str, str]]:
        """CLIENT LIST: one dict per connection (name, cmd, addr …)."""
        import redis

        with redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2) as client:
            return [{k: str(v) for k, v in row.items()} for row in client.client_list()]

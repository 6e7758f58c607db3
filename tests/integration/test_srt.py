"""SRT on real nodes with real clients: ffmpeg publishes (every stream id form), GStreamer and
a libsrt caller read (from an origin and an edge), refusals carry SRT reject reasons, garbage
does no harm, and 2 % loss each way is repaired by retransmission."""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from arcly.engine import FrameKind
from arcly.media.tsdemux import TsDemuxer
from tests.conftest import HEIGHT, WIDTH
from tests.support.processes import FfmpegPublisher, Node, RedisServer
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

try:
    from arcly.protocols.srt import libsrt

    LIB: libsrt.Lib | None = libsrt.load()
except RuntimeError as exc:  # SrtUnavailable
    LIB, WHY = None, str(exc)
else:
    WHY = ""
needs_srt = pytest.mark.skipif(LIB is None, reason=f"no libsrt ({WHY}); make test installs it")
GST = shutil.which("gst-launch-1.0")
NodeFactory = Callable[..., Node]


def srt_url(node: Node, streamid: str, **options: Any) -> str:
    query = "&".join([f"streamid={streamid.replace('#', '%23')}", "pkt_size=1316",
                      *(f"{k}={v}" for k, v in options.items())])
    return f"srt://127.0.0.1:{node.srt}?{query}"


class SrtPublisher:
    """ffmpeg replaying the source FLV as MPEG-TS over SRT, in real time."""

    def __init__(self, ffmpeg: str, source: Path, url: str) -> None:
        self.proc = subprocess.Popen(
            [ffmpeg, "-hide_banner", "-loglevel", "error", "-re", "-stream_loop", "-1",
             "-i", str(source), "-c", "copy", "-f", "mpegts", url],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True)

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=5)
        return err or ""


@pytest.fixture
def srt_publish(ffmpeg: str, source_flv: Path) -> Iterator[Callable[[str], SrtPublisher]]:
    publishers: list[SrtPublisher] = []

    def start(url: str) -> SrtPublisher:
        publisher = SrtPublisher(ffmpeg, source_flv, url)
        publishers.append(publisher)
        return publisher

    try:
        yield start
    finally:
        for publisher in publishers:
            publisher.stop()


def probe(ffprobe: str, url: str) -> set[str]:
    result = subprocess.run([ffprobe, "-v", "error", "-show_entries",
                             "stream=codec_name,width,height", "-of", "csv=p=0", url],
                            capture_output=True, text=True, timeout=30)
    return set(result.stdout.split())


def decodes_cleanly(ffmpeg: str, ffprobe: str, url: str, tmp_path: Path) -> float:
    """Record 6 s of ``url`` as FLV, decode all of it; the recorded duration (no errors)."""
    recorded = tmp_path / f"rec-{time.monotonic_ns()}.flv"
    subprocess.run([ffmpeg, "-v", "error", "-i", url, "-t", "6", "-c", "copy", "-y",
                    str(recorded)], check=True, timeout=40, capture_output=True)
    decoded = subprocess.run([ffmpeg, "-v", "error", "-i", str(recorded), "-f", "null", "-"],
                             capture_output=True, text=True, timeout=30)
    assert decoded.returncode == 0 and decoded.stderr.strip() == "", decoded.stderr
    return float(subprocess.run(
        [ffprobe, "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0",
         str(recorded)], capture_output=True, text=True, check=True).stdout)


EXPECTED = {f"h264,{WIDTH},{HEIGHT}", "aac"}


@needs_srt
def test_ffmpeg_publishes_with_every_stream_id_form_and_every_protocol_reads(
        node_factory: NodeFactory, srt_publish: Callable[[str], SrtPublisher], ffmpeg: str,
        ffprobe: str, tmp_path: Path) -> None:
    node = node_factory("--hls-on-publish", "--hls-segment-seconds", "1")
    forms = {"live/mtx": "publish:live/mtx", "live/cred": "publish:live/cred:alice:pw",
             "live/acl": "#!::r=live/acl,m=publish"}
    for streamid in forms.values():
        srt_publish(srt_url(node, streamid))
    for key in forms:
        node.wait_for_stream(key, frames=30, timeout=20)
    http = f"http://127.0.0.1:{node.http}"
    for key in forms:
        assert probe(ffprobe, f"{http}/{key}.flv") == EXPECTED, key
    key = "live/acl"
    assert probe(ffprobe, f"rtmp://127.0.0.1:{node.rtmp}/{key}") == EXPECTED
    wait_until(lambda: "#EXTINF" in _get(f"{http}/{key}/index.m3u8"), 15)
    assert probe(ffprobe, f"{http}/{key}/index.m3u8") == EXPECTED
    assert decodes_cleanly(ffmpeg, ffprobe, f"{http}/{key}.flv", tmp_path) >= 5.0
    stats = node.api("/srt")["connections"]
    assert sorted(c["stream"] for c in stats) == sorted(forms)
    assert all(c["mode"] == "publish" and c["packets_received"] > 0 for c in stats)


def _get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def gstreamer_frames(node: Node, key: str, want: int = 90,
                     timeout: float = 30.0) -> tuple[int, float]:
    """GStreamer's srtsrc + avdec_h264 reading ``key`` until it has decoded ``want`` frames (or
    ``timeout`` passes: on a fresh machine its first start also builds the plugin registry):
    (frames, seconds since the first one)."""
    assert GST is not None
    proc = subprocess.Popen(
        [GST, "-v", "srtsrc", f"uri=srt://127.0.0.1:{node.srt}?streamid=read:{key}", "!",
         "tsdemux", "!", "h264parse", "!", "avdec_h264", "!", "fakesink", "silent=false",
         "sync=false"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    frames = 0
    first = 0.0
    timer = threading.Timer(timeout, os.killpg, args=(proc.pid, 15))
    timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "fakesink0" in line and "chain" in line:
                frames += 1
                if frames == 1:
                    first = time.monotonic()
                if frames >= want:
                    break
    finally:
        timer.cancel()
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
        proc.communicate(timeout=5)
    return frames, (time.monotonic() - first if frames else 0.0)


@needs_srt
@pytest.mark.skipif(GST is None, reason="GStreamer is not installed (make test installs it)")
def test_gstreamer_reads_an_rtmp_stream_over_srt_from_origin_and_edge(
        node_factory: NodeFactory, redis_server: RedisServer,
        publish: Callable[[Node, str], FfmpegPublisher]) -> None:
    env = {"ARCLY_RELAY_TOKEN": "srt-relay"}
    origin = node_factory("--redis-url", redis_server.url, "--node-id", "o1", role="origin",
                          env=env)
    edge = node_factory("--redis-url", redis_server.url, "--node-id", "e1", role="edge",
                        env=env)
    publish(origin, "live/gst")
    for where, node in (("origin", origin), ("edge", edge)):
        frames, seconds = gstreamer_frames(node, "live/gst")
        print(f"\nGStreamer srtsrc from the {where}: {frames} frames decoded, the last "
              f"{seconds:.1f} s after the first")
        assert frames >= 90


def _caller(node: Node, streamid: str, passphrase: str = "") -> int:
    assert LIB is not None
    sock = LIB.create_socket()
    LIB.setsockflag(sock, libsrt.SockOpt.STREAMID, streamid)
    if passphrase:
        LIB.setsockflag(sock, libsrt.SockOpt.PASSPHRASE, passphrase)
    try:
        LIB.connect(sock, "127.0.0.1", node.srt)
    except libsrt.SrtError:
        LIB.close(sock)
        raise
    return sock


def _refusal(node: Node, streamid: str, passphrase: str = "") -> int:
    with pytest.raises(libsrt.SrtError) as caught:
        LIB.close(_caller(node, streamid, passphrase))  # type: ignore[union-attr]
    return int(caught.value.reject_reason or 0)


@needs_srt
def test_a_reader_joining_mid_gop_starts_on_a_keyframe(
        node: Node, publish: Callable[[Node, str], FfmpegPublisher]) -> None:
    assert LIB is not None
    publish(node, "live/gop")
    time.sleep(1.0)  # mid-GOP (2 s GOPs)
    started = time.monotonic()
    sock = _caller(node, "read:live/gop")
    LIB.setsockflag(sock, libsrt.SockOpt.RCVSYN, False)  # connected: read without blocking
    demuxer = TsDemuxer()
    first = None
    try:
        eid = LIB.epoll_create()
        LIB.epoll_add_usock(eid, sock, libsrt.EpollFlag.IN)
        deadline = time.monotonic() + 10
        while first is None and time.monotonic() < deadline:
            LIB.epoll_wait(eid, 200)
            while True:
                try:
                    data = LIB.recvmsg(sock)
                except libsrt.SrtError as exc:
                    assert exc.would_block, exc
                    break
                for frame in demuxer.feed(data):
                    if frame.kind is FrameKind.VIDEO and not frame.config and first is None:
                        first = frame
        LIB.epoll_release(eid)
    finally:
        LIB.close(sock)
    assert first is not None and first.keyframe
    print(f"\nSRT read joined mid-GOP: first frame (a keyframe) after "
          f"{(time.monotonic() - started) * 1000:.0f} ms")


@needs_srt
def test_refusals_are_srt_rejections_with_a_reason(
        node_factory: NodeFactory, tmp_path: Path, srt_publish: Callable[[str], SrtPublisher],
        publish: Callable[[Node, str], FfmpegPublisher]) -> None:
    auth = tmp_path / "auth.toml"
    auth.write_text('[default]\nprovider = "allow-all"\n\n[apps.keyed]\nprovider = "static"\n'
                    'publish_keys = ["pk"]\n')
    node = node_factory("--auth-config", str(auth), "--srt-passphrase", "correct horse")
    publish(node, "live/taken")
    X = libsrt.RejectReason
    good = "correct horse"
    assert _refusal(node, "read:live/nobody", good) == X.X_NOTFOUND
    assert _refusal(node, "publish:live/taken", good) == X.X_CONFLICT
    assert _refusal(node, "publish:keyed/cam", good) == X.X_UNAUTHORIZED
    assert _refusal(node, "publish:keyed/cam:u:wrong", good) == X.X_FORBIDDEN
    assert _refusal(node, "#!::r=keyed/cam,m=publish,key=wrong", good) == X.X_FORBIDDEN
    assert _refusal(node, "look at me", good) == X.X_BAD_REQUEST
    assert _refusal(node, "read:live/taken", "wrong horse") == X.BADSECRET
    # ...and the right ones are let in.
    LIB.close(_caller(node, "#!::r=keyed/cam,m=publish,key=pk", good))  # type: ignore[union-attr]
    LIB.close(_caller(node, "read:live/taken", good))  # type: ignore[union-attr]
    for line in ("reason=live/nobody is not being published", "is already being published"):
        node.wait_for_log(line)
    assert node.proc.poll() is None


@needs_srt
def test_garbage_and_truncated_streams_harm_nobody(
        node: Node, publish: Callable[[Node, str], FfmpegPublisher], ffprobe: str) -> None:
    assert LIB is not None
    publish(node, "live/fine")
    rng = random.Random(7)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:  # not even SRT
        for _ in range(500):
            raw.sendto(rng.randbytes(rng.randrange(1, 1500)), ("127.0.0.1", node.srt))
    sock = _caller(node, "publish:live/junk")  # SRT, but the payload is junk and cut TS
    try:
        for index in range(200):
            chunk = rng.randbytes(1316) if index % 2 else (b"\x47" + rng.randbytes(187)) * 3
            LIB.sendmsg(sock, chunk[:rng.randrange(1, len(chunk) + 1)])
            time.sleep(0.002)
    finally:
        LIB.close(sock)
    assert node.proc.poll() is None
    assert probe(ffprobe, f"http://127.0.0.1:{node.http}/live/fine.flv") == EXPECTED
    node.wait_for_log(r"srt publish end stream=live/junk ")


class LossyRelay:
    """A UDP relay that drops ``loss`` of the datagrams each way (no netem here)."""

    def __init__(self, target: int, loss: float) -> None:
        self.target = ("127.0.0.1", target)
        self.loss = loss
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.front.bind(("127.0.0.1", 0))
        self.back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.back.bind(("127.0.0.1", 0))
        self.port = self.front.getsockname()[1]
        self.client: tuple[str, int] | None = None
        self.dropped = [0, 0]
        self.stopping = False
        self.rng = random.Random(1)
        self.threads = [threading.Thread(target=self._pump, args=(up,), daemon=True)
                        for up in (True, False)]
        for thread in self.threads:
            thread.start()

    def _pump(self, up: bool) -> None:
        source = self.front if up else self.back
        source.settimeout(0.2)
        while not self.stopping:
            try:
                data, sender = source.recvfrom(65536)
            except (TimeoutError, OSError):
                continue
            if up:
                self.client = sender
            if self.rng.random() < self.loss:
                self.dropped[0 if up else 1] += 1
                continue
            try:
                if up:
                    self.back.sendto(data, self.target)
                elif self.client is not None:
                    self.front.sendto(data, self.client)
            except OSError:
                pass

    def stop(self) -> None:
        self.stopping = True
        for thread in self.threads:
            thread.join(2)
        self.front.close()
        self.back.close()


@needs_srt
def test_two_percent_loss_each_way_is_repaired(
        node: Node, srt_publish: Callable[[str], SrtPublisher], ffmpeg: str, ffprobe: str,
        tmp_path: Path) -> None:
    relay = LossyRelay(node.srt, 0.02)
    try:
        url = (f"srt://127.0.0.1:{relay.port}?streamid=publish:live/lossy&pkt_size=1316"
               "&latency=200000")  # µs: ffmpeg's unit
        publisher = srt_publish(url)
        node.wait_for_stream("live/lossy", frames=30, timeout=20)
        time.sleep(2)
        duration = decodes_cleanly(ffmpeg, ffprobe,
                                   f"http://127.0.0.1:{node.http}/live/lossy.flv", tmp_path)
        assert duration >= 5.0
        (conn,) = node.api("/srt")["connections"]
        print(f"\n2 % loss each way: relay dropped {relay.dropped} datagrams (up, down); "
              f"node SRT stats {json.dumps({k: v for k, v in conn.items() if k != 'demux'})}")
        assert conn["packets_lost_received"] > 0
        assert conn["packets_retransmitted_received"] > 0
        assert conn["latency_ms"] >= 200
        assert conn["demux"]["cc_errors"] == 0  # every loss was repaired before the demuxer
        assert publisher.proc.poll() is None
    finally:
        relay.stop()


def test_srt_settings_are_checked(node_factory: NodeFactory) -> None:
    from arcly.node.config import load_config

    with pytest.raises(SystemExit):
        load_config(["--srt-passphrase", "short"])
    assert load_config(["--srt-listen", "off"]).srt_listen is None


"""WebRTC benchmark: the node's CPU per WHEP viewer and the latency it adds, beside RTMP.

    make bench-webrtc            # or: .venv/bin/python bench/webrtc.py --viewers 10,50

One node (``arcly serve``, loopback, WebRTC candidates on 127.0.0.1) and one ffmpeg publisher
replaying the 720p30 H.264 + AAC source of ``streaming.py`` (cached in ~/.cache/arcly-bench).

CPU: after 5 s with the publisher alone (the idle figure), for each viewer count N a load
process opens N WHEP sessions (this script's ``load`` mode: aiortc peer connections, recvonly
video + audio, ICE on 127.0.0.1, no STUN server) and, for comparison, ``loadclient.py`` opens
N RTMP viewers of the same stream. All connected, a 2 s settle, then a 10 s window: the node's
CPU seconds (utime + stime from /proc, all its threads), the bytes the viewers counted and, for
WHEP, the frames each viewer received. aiortc's receiver always decodes (in a thread per
track); the load process replaces that worker with one that counts the encoded frames and
drops them, so one process can hold 50 viewers.

Latency: in this process, an RTMP publisher (the project's test client) replays the source and
stamps each video frame's send time; one WHEP viewer stamps the first RTP packet of each frame
(a wrapper around ``RTCRtpReceiver._handle_rtp_packet``) and one RTMP viewer each frame's
message. The node keeps the publisher's timestamp spacing on the 90 kHz RTP clock once the
GOP-cache burst is out, so each frame's RTP timestamp, counted from the keyframe before it,
names the publisher's frame. Over loopback, arrival - send is what the node adds.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import os
import queue
import resource
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

import loadclient
from streaming import source

from tests import tools
from tests.support.processes import FfmpegPublisher, Node

APP = "live"
KEY = f"{APP}/bench"
LATENCY_STREAM = "latency"
SDP = "application/sdp"
VIDEO_CLOCK_PER_MS = 90  # the H.264 RTP clock is 90 kHz


# --- the load process: N WHEP viewers that count frames and never decode ---------------------

class Counts:
    """Encoded frames one receiver handed to its (replaced) decoder thread."""

    __slots__ = ("bytes", "first", "frames")

    def __init__(self) -> None:
        self.frames = 0
        self.bytes = 0
        self.first = 0.0


_COUNTS: dict[Any, Counts] = {}  # by the receiver track's queue, which the worker is given


def counting_worker(loop: asyncio.AbstractEventLoop, input_q: queue.Queue[Any],
                    output_q: asyncio.Queue[Any], decode_error: threading.Event) -> None:
    """``aiortc.rtcrtpreceiver.decoder_worker`` without the decoder: counts the encoded frames
    the jitter buffer completed and drops them (``None``: the receiver stopped)."""
    counts = _COUNTS.setdefault(output_q, Counts())
    while True:
        task = input_q.get()
        if task is None:
            try:
                loop.call_soon_threadsafe(output_q.put_nowait, None)
            except RuntimeError:  # the loop is closed: nobody reads the track any more
                pass
            return
        _codec, encoded = task
        if not counts.frames:
            counts.first = time.monotonic()
        counts.frames += 1
        counts.bytes += len(encoded.data)


def undecoded_loopback_receivers() -> None:
    """In this process: aiortc receivers count instead of decoding, and ICE gathers host
    candidates on 127.0.0.1 only (aioice skips loopback by default and would use every other
    interface)."""
    import aioice.ice
    import aiortc.rtcrtpreceiver

    aiortc.rtcrtpreceiver.decoder_worker = counting_worker
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]


async def http_request(port: int, method: str, path: str, body: bytes = b"",
                       content_type: str = "", timeout: float = 15.0
                       ) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request to 127.0.0.1:``port`` on its own connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n"
                f"Content-Length: {len(body)}\r\n")
        if content_type:
            head += f"Content-Type: {content_type}\r\n"
        writer.write(head.encode() + b"\r\n" + body)
        async with asyncio.timeout(timeout):
            raw = await reader.readuntil(b"\r\n\r\n")
            lines = raw.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name:
                    headers[name.strip().lower()] = value.strip()
            if "content-length" in headers:
                data = await reader.readexactly(int(headers["content-length"]))
            else:
                data = await reader.read()
        return status, headers, data
    finally:
        writer.close()


class WhepViewer:
    """One WHEP session from an aiortc peer connection (recvonly video + audio)."""

    def __init__(self, port: int, path: str) -> None:
        self.port = port
        self.path = path
        self.pc: Any = None
        self.location = ""
        self.error = ""
        self.requested = 0.0
        self.connected_at = 0.0

    async def open(self, timeout: float) -> None:
        from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

        pc = self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        connected = asyncio.Event()

        def state_changed() -> None:
            if pc.connectionState == "connected":
                connected.set()

        pc.on("connectionstatechange", state_changed)
        for kind in ("video", "audio"):
            pc.addTransceiver(kind, direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        self.requested = time.monotonic()
        status, headers, body = await http_request(
            self.port, "POST", self.path, pc.localDescription.sdp.encode(), SDP)
        if status != 201:
            raise ConnectionError(f"WHEP answered {status}: {body[:200].decode(errors='replace')}")
        self.location = headers.get("location", "")
        await pc.setRemoteDescription(RTCSessionDescription(body.decode(), "answer"))
        await asyncio.wait_for(connected.wait(), timeout)
        self.connected_at = time.monotonic()

    def counts(self, kind: str) -> Counts:
        if self.pc is not None:
            for transceiver in self.pc.getTransceivers():
                track = transceiver.receiver.track
                if transceiver.kind == kind and track is not None:
                    return _COUNTS.setdefault(track._queue, Counts())
        return Counts()

    @property
    def live(self) -> bool:
        return self.pc is not None and self.pc.connectionState == "connected"

    async def packets_lost(self) -> int:
        if not self.live:
            return 0
        lost = 0
        for transceiver in self.pc.getTransceivers():
            report = await transceiver.receiver.getStats()
            lost += sum(getattr(s, "packetsLost", 0) or 0 for s in report.values()
                        if s.type == "inbound-rtp")
        return lost

    async def close(self) -> int:
        """DELETE the session (its status, 0 when it never started) and close the peer."""
        status = 0
        if self.location:
            try:
                status, _, _ = await http_request(self.port, "DELETE", self.location)
            except (OSError, TimeoutError) as exc:
                self.error = self.error or f"DELETE failed: {exc!r}"[:200]
        if self.pc is not None:
            await self.pc.close()
        return status


async def harness_done(timeout: float) -> None:
    """Wait for a line (or EOF) on stdin: the harness has sampled the window's end."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                                sys.stdin)
    try:
        async with asyncio.timeout(timeout):
            await reader.readline()
    except TimeoutError:
        pass
    finally:
        transport.close()


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def whep_load(args: argparse.Namespace) -> None:
    """The ``load`` mode: the same event lines as ``loadclient.py play`` (started,
    window_start, window_end, summary), then ``closed`` once every session was DELETEd."""
    undecoded_loopback_receivers()
    url = urlsplit(args.url)
    viewers = [WhepViewer(url.port or 80, url.path) for _ in range(args.count)]

    async def one(viewer: WhepViewer) -> None:
        try:
            await viewer.open(args.start_timeout)
        except Exception as exc:
            viewer.error = f"{type(exc).__name__}: {exc}"[:200]

    began = time.monotonic()
    tasks = []
    for index, viewer in enumerate(viewers):
        delay = began + index / args.rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(viewer)))
    await asyncio.gather(*tasks)
    loadclient.emit("started", viewers=args.count, ok=sum(1 for v in viewers if v.live),
                    seconds=round(time.monotonic() - began, 2))

    def snapshot(event: str) -> list[int]:
        video = [v.counts("video") for v in viewers]
        audio = [v.counts("audio") for v in viewers]
        loadclient.emit(event, bytes=sum(c.bytes for c in video + audio), cpu=_own_cpu(),
                        connected=sum(1 for v in viewers if v.live),
                        video_frames=sum(c.frames for c in video),
                        audio_frames=sum(c.frames for c in audio))
        return [c.frames for c in video]

    await asyncio.sleep(args.settle)
    t0, at_start = time.monotonic(), snapshot("window_start")
    await asyncio.sleep(args.window)
    t1, at_end = time.monotonic(), snapshot("window_end")
    await harness_done(10.0)  # it reads the node's figures while the sessions still run
    fps = sorted(round((b - a) / (t1 - t0), 2) for a, b in zip(at_start, at_end, strict=True))
    first = [round((v.counts("video").first - v.requested) * 1000, 1) for v in viewers
             if v.counts("video").first]
    setup = [round((v.connected_at - v.requested) * 1000, 1) for v in viewers if v.connected_at]
    errors: dict[str, int] = {}
    for v in viewers:
        if v.error:
            errors[v.error] = errors.get(v.error, 0) + 1
    lost = sum([await v.packets_lost() for v in viewers])
    loadclient.emit("summary", viewers=args.count, fps=fps, setup_ms=sorted(setup),
                    first_frame_ms=sorted(first), packets_lost=lost, errors=errors)
    statuses = await asyncio.gather(*(v.close() for v in viewers), return_exceptions=True)
    deletes: dict[str, int] = {}
    for status in statuses:
        name = str(status) if isinstance(status, int) else type(status).__name__
        deletes[name] = deletes.get(name, 0) + 1
    loadclient.emit("closed", deletes=deletes)


# --- the harness: node, publisher, load processes, /proc ---------------------------------------

def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    total = sum(fields)
    return total - fields[3] - fields[4], total  # idle and iowait are not busy


class Child:
    """A load process in its own session: its JSON event lines, its stderr, stopped by pid."""

    def __init__(self, command: list[str]) -> None:
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.PIPE, text=True, cwd=REPO,
                                     start_new_session=True)
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.stderr: list[str] = []
        self._threads = [threading.Thread(target=self._read_events, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for thread in self._threads:
            thread.start()

    def _read_events(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                self.events.put(json.loads(line))
        self.events.put(None)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line.rstrip("\n"))

    def release(self) -> None:
        """Tell the load process the window's end was sampled (it may close its viewers)."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write("\n")
            self.proc.stdin.close()
        except OSError:  # it exited already
            pass

    def next_event(self, timeout: float) -> dict[str, Any]:
        try:
            event = self.events.get(timeout=max(timeout, 0.1))
        except queue.Empty:
            raise RuntimeError(f"load process silent for {timeout:.0f} s") from None
        if event is None:
            self.proc.wait(5)
            tail = "\n".join(self.stderr[-15:])
            raise RuntimeError(f"load process exited ({self.proc.returncode}):\n{tail}")
        return event

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
            except ProcessLookupError:
                pass
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        for thread in self._threads:
            thread.join(2)


def load_command(node: Node, protocol: str, viewers: int, opts: argparse.Namespace) -> list[str]:
    timing = ["--count", str(viewers), "--rate", str(opts.rate), "--settle", str(opts.settle),
              "--window", str(opts.window)]
    if protocol == "webrtc":
        return [sys.executable, str(Path(__file__).resolve()), "load", "--url",
                f"http://127.0.0.1:{node.http}/{KEY}/whep", *timing]
    return [sys.executable, str(BENCH / "loadclient.py"), "play", "--url",
            f"rtmp://127.0.0.1:{node.rtmp}/{KEY}", *timing]


def run_level(node: Node, protocol: str, viewers: int, idle: float,
              opts: argparse.Namespace) -> dict[str, Any]:
    """N viewers of one protocol: the node's CPU over the load process's window."""
    child = Child(load_command(node, protocol, viewers, opts))
    marks: dict[str, dict[str, Any]] = {}
    try:
        deadline = time.monotonic() + viewers / opts.rate + 30 + opts.settle + opts.window
        while "summary" not in marks:
            event = child.next_event(deadline - time.monotonic())
            if event["event"] in ("window_start", "window_end"):
                event["node_cpu"] = cpu_seconds(node.pid)
                event["t"] = time.monotonic()
                event["machine"] = machine_cpu()
                if protocol == "webrtc":  # frames handed to the senders, the Opus thread's CPU
                    document = node.api("/webrtc")
                    event["node_frames"] = sum(s.get("video_frames", 0)
                                               for s in document["sessions"])
                    event["opus_cpu"] = sum(t.get("cpu_seconds", 0.0)
                                            for t in document["audio_transcoders"].values())
                if event["event"] == "window_end":
                    child.release()
            marks[event["event"]] = event
        if protocol == "webrtc":
            marks["closed"] = child.next_event(30)
        child.proc.wait(30)
    finally:
        child.stop()
    start, end, summary = marks["window_start"], marks["window_end"], marks["summary"]
    seconds = end["t"] - start["t"]
    cpu = (end["node_cpu"] - start["node_cpu"]) / seconds
    above = cpu - idle
    per_viewer_ms = above * 1000 / viewers
    result: dict[str, Any] = {
        "protocol": protocol, "viewers": viewers, "window_s": round(seconds, 2),
        "started": marks["started"]["ok"], "connected_at_end": end["connected"],
        "node_cpu_pct": round(100 * cpu, 1), "above_idle_pct": round(100 * above, 1),
        "cpu_ms_per_viewer_s": round(per_viewer_ms, 2),
        "viewers_per_core": round(1000 / per_viewer_ms) if per_viewer_ms > 0 else None,
        "mbps": round((end["bytes"] - start["bytes"]) * 8 / seconds / 1e6, 1),
        "client_cpu_pct": round(100 * (end["cpu"] - start["cpu"]) / seconds, 1),
        # every core of the machine, busy: near 100 the run was short of CPU (2 cores here)
        "machine_busy_pct": round(100 * (end["machine"][0] - start["machine"][0]) /
                                  max(1, end["machine"][1] - start["machine"][1]), 1),
        "errors": summary["errors"],
    }
    if protocol == "webrtc":
        fps = summary["fps"] or [0.0]
        result.update({
            "fps_p50": round(statistics.median(fps), 2), "fps_min": fps[0],
            # the stream's one AAC -> Opus transcoder: in the figures above, shared by all
            "opus_transcoder_cpu_pct": round(
                100 * (end["opus_cpu"] - start["opus_cpu"]) / seconds, 1),
            "node_fps_per_viewer": round(
                (end["node_frames"] - start["node_frames"]) / seconds / viewers, 2),
            "audio_packets_per_viewer_s": round(
                (end["audio_frames"] - start["audio_frames"]) / seconds / viewers, 1),
            "setup_ms_p50": percentile(summary["setup_ms"], 50),
            "setup_ms_p95": percentile(summary["setup_ms"], 95),
            "first_frame_ms_p50": percentile(summary["first_frame_ms"], 50),
            "packets_lost": summary["packets_lost"], "deletes": marks["closed"]["deletes"],
        })
        result.update(sessions_left(node))
    result["node_runtime_after"] = node.api("/node")["runtime"]  # tasks, threads: leaks show
    if child.stderr:
        result["load_stderr_tail"] = child.stderr[-5:]
    return result


def sessions_left(node: Node, wait: float = 10.0) -> dict[str, int]:
    """WebRTC sessions and Opus transcoders the node still holds after every DELETE."""
    deadline = time.monotonic() + wait
    while True:
        document = node.api("/webrtc")
        left = {"sessions_left": len(document["sessions"]),
                "transcoders_left": len(document["audio_transcoders"])}
        if not any(left.values()) or time.monotonic() > deadline:
            return left
        time.sleep(0.25)


def percentile(values: list[float], pct: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))], 1)


# --- added latency (in this process) -----------------------------------------------------------

def h264_keyframe_packet(payload: bytes) -> bool:
    """Whether an RTP payload (RFC 6184) carries an SPS or an IDR slice's start."""
    if not payload:
        return False
    nal = payload[0] & 0x1F
    if nal == 24:  # STAP-A: 16-bit size + NAL unit, repeated
        pos = 1
        while pos + 2 < len(payload):
            if payload[pos + 2] & 0x1F in (5, 7):
                return True
            pos += 2 + int.from_bytes(payload[pos:pos + 2], "big")
        return False
    if nal == 28:  # FU-A
        return len(payload) > 1 and bool(payload[1] & 0x80) and payload[1] & 0x1F == 5
    return nal in (5, 7)


class RtpProbe:
    """Arrival of the first RTP packet of each H.264 frame (by RTP timestamp) at every aiortc
    receiver of this process, whether the frame is a keyframe, and when its last packet (the
    marker bit) arrived."""

    def __init__(self) -> None:
        # RTP timestamp -> [first packet's arrival, keyframe, last packet's arrival]
        self.frames: dict[int, list[Any]] = {}
        self.order: list[int] = []
        self._original: Any = None

    def install(self) -> None:
        from aiortc import RTCRtpReceiver

        original = self._original = RTCRtpReceiver._handle_rtp_packet
        probe = self

        async def handle(receiver: Any, packet: Any, arrival_time_ms: int) -> None:
            # The receiver's negotiated codecs (a private attribute of aiortc 1.16): RTX
            # retransmissions and audio are not the first packet of a video frame.
            codec = receiver._RTCRtpReceiver__codecs.get(packet.payload_type)
            if codec is not None and codec.name == "H264":
                probe.packet(packet.timestamp, packet.payload, packet.marker)
            await original(receiver, packet, arrival_time_ms)

        RTCRtpReceiver._handle_rtp_packet = handle  # type: ignore[method-assign]

    def uninstall(self) -> None:
        from aiortc import RTCRtpReceiver

        if self._original is not None:
            RTCRtpReceiver._handle_rtp_packet = self._original  # type: ignore[method-assign]

    def packet(self, timestamp: int, payload: bytes, marker: bool) -> None:
        now = time.monotonic()
        entry = self.frames.get(timestamp)
        if entry is None:
            entry = self.frames[timestamp] = [now, False, None]
            self.order.append(timestamp)
        if not entry[1] and h264_keyframe_packet(payload):
            entry[1] = True
        if marker:
            entry[2] = now


def webrtc_latencies(probe: RtpProbe, sent: dict[int, tuple[float, bool]], live_from: float,
                     t0: float, t1: float
                     ) -> tuple[list[float], list[float], dict[str, int]]:
    """Arrival - send of the frames sent within [t0, t1]. Only frames that arrived after
    ``live_from`` count: the GOP-cache burst at the start is squeezed to 1 ms steps, after it
    the RTP clock follows the publisher's milliseconds. Each RTP keyframe is the publisher's
    keyframe sent last before it arrived (GOPs are 2 s apart, the node adds far less); every
    other frame is its nearest keyframe's publisher timestamp + RTP distance / 90. Returns the
    latencies of first and of last (marker) packets."""
    keys = sorted((when, ts) for ts, (when, key) in sent.items() if key)
    key_times = [when for when, _ in keys]
    live: list[tuple[int, float, bool, float | None]] = []  # (unwrapped RTP ts, arrivals..)
    last_raw: int | None = None
    ext = 0
    for raw in probe.order:
        if last_raw is not None:
            ext += (raw - last_raw + 2**31) % 2**32 - 2**31
        last_raw = raw
        arrival, key, last = probe.frames[raw]
        if arrival >= live_from:
            live.append((ext, arrival, key, last))
    anchors: list[tuple[int, int]] = []  # (unwrapped RTP timestamp, publisher ms)
    issues = {"unmatched": 0, "anchor_mismatch": 0, "negative": 0}
    for ext, arrival, key, _ in live:
        index = bisect.bisect_right(key_times, arrival) - 1
        if key and index >= 0:
            if anchors and anchors[-1][1] + (ext - anchors[-1][0]) // VIDEO_CLOCK_PER_MS \
                    != keys[index][1]:
                issues["anchor_mismatch"] += 1
            anchors.append((ext, keys[index][1]))
    if not anchors:
        issues["unmatched"] = len(live)
        return [], [], issues
    anchor_exts = [a[0] for a in anchors]
    firsts: list[float] = []
    lasts: list[float] = []
    for ext, arrival, _, last in live:
        anchor_ext, anchor_ms = anchors[max(0, bisect.bisect_right(anchor_exts, ext) - 1)]
        delta = ext - anchor_ext
        hit = sent.get(anchor_ms + delta // VIDEO_CLOCK_PER_MS)
        if delta % VIDEO_CLOCK_PER_MS or hit is None:
            issues["unmatched"] += 1
            continue
        if t0 <= hit[0] <= t1:
            if arrival < hit[0]:
                issues["negative"] += 1
            firsts.append(arrival - hit[0])
            if last is not None:
                lasts.append(last - hit[0])
    return firsts, lasts, issues


async def replay(publisher: Any, tags: list[tuple[int, int, bytes]],
                 sent: dict[int, tuple[float, bool]]) -> None:
    """The source in real time, configuration once, timestamps continued across loops; each
    video frame's send time (after its bytes were written) by its timestamp."""
    span = tags[-1][1] + 33
    offset = 0
    began = time.monotonic()
    while True:
        for kind, ts, body in tags:
            if offset and loadclient.is_config(kind, body):
                continue
            delay = began + (offset + ts) / 1000 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            payload = loadclient.amf_string("@setDataFrame") + body \
                if kind == loadclient.DATA_AMF0 else body
            publisher.send_media(kind, offset + ts, payload)
            if kind == loadclient.VIDEO and not loadclient.is_config(kind, body):
                sent[offset + ts] = (time.monotonic(), loadclient.video_is_keyframe(body))
        offset += span


async def answer_pings(client: Any) -> None:
    """Read (and drop) what the node sends a client that only writes; the client answers
    pings and acknowledgement windows while reading."""
    while True:
        await client.read_message(None)


async def rtmp_arrivals(client: Any, arrivals: dict[int, float]) -> None:
    while True:
        msg = await client.read_message(None)
        if msg.type_id == loadclient.VIDEO and not loadclient.video_is_config(msg.payload):
            arrivals.setdefault(msg.timestamp, time.monotonic())


async def added_latency(node: Node, src: Path, settle: float, seconds: float
                        ) -> dict[str, Any]:
    from tests.support.rtmp_client import RtmpClient

    undecoded_loopback_receivers()
    tags = loadclient.read_flv(src)
    sent: dict[int, tuple[float, bool]] = {}
    arrivals: dict[int, float] = {}
    probe = RtpProbe()
    probe.install()
    publisher = await RtmpClient.connect("127.0.0.1", node.rtmp, APP)
    status = await publisher.publish(LATENCY_STREAM)
    if status.code != "NetStream.Publish.Start":
        raise RuntimeError(f"publish refused: {status}")
    tasks = [asyncio.create_task(replay(publisher, tags, sent)),
             asyncio.create_task(answer_pings(publisher))]
    whep = WhepViewer(node.http, f"/{APP}/{LATENCY_STREAM}/whep")
    viewer: Any = None
    try:
        await asyncio.sleep(2.5)  # a keyframe in the GOP cache
        await whep.open(15)
        viewer = await RtmpClient.connect("127.0.0.1", node.rtmp, APP)
        status = await viewer.play(LATENCY_STREAM)
        if "Play.Start" not in status.code:
            raise RuntimeError(f"play refused: {status}")
        tasks.append(asyncio.create_task(rtmp_arrivals(viewer, arrivals)))
        t0 = time.monotonic() + settle
        t1 = t0 + seconds
        await asyncio.sleep(settle + seconds + 0.5)  # the window's last frames arrive
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        delete = await whep.close()
        for client in (viewer, publisher):
            if client is not None:
                await client.close()
        probe.uninstall()
    in_window = sum(1 for when, _ in sent.values() if t0 <= when <= t1)
    webrtc, complete, issues = webrtc_latencies(probe, sent, whep.connected_at + 0.5, t0, t1)
    rtmp = [arrivals[ts] - when for ts, (when, _) in sent.items()
            if t0 <= when <= t1 and ts in arrivals]
    return {"frames_sent": in_window, "webrtc": latency_figures(webrtc),
            "webrtc_last_packet": latency_figures(complete),
            "rtmp": latency_figures(rtmp), "webrtc_mapping_issues": issues,
            "whep_delete_status": delete}


def latency_figures(values: list[float]) -> dict[str, Any]:
    ms = sorted(v * 1000 for v in values)
    return {"frames": len(ms), "p50_ms": percentile(ms, 50), "p95_ms": percentile(ms, 95),
            "max_ms": round(ms[-1], 1) if ms else None}


# --- report -----------------------------------------------------------------------------------

def _fmt(value: Any, width: int) -> str:
    return f"{'-' if value is None else value:>{width}}"


def report(idle: float, levels: list[dict[str, Any]], latency: dict[str, Any] | None) -> None:
    print(f"\nidle (publisher, no viewers): node CPU {100 * idle:.1f}%\n")
    head = (f"{'protocol':8} {'n':>4} {'node CPU%':>9} {'above idle':>10} "
            f"{'CPU ms/viewer-s':>15} {'viewers/core':>12} {'Mbps':>7} {'node fps':>8} "
            f"{'fps p50':>7} {'fps min':>7} {'connected':>9} {'client CPU%':>11} "
            f"{'machine%':>8}")
    print(head)
    print("-" * len(head))
    for r in levels:
        print(f"{r['protocol']:8} {r['viewers']:4d} {r['node_cpu_pct']:9.1f} "
              f"{r['above_idle_pct']:10.1f} {r['cpu_ms_per_viewer_s']:15.2f} "
              f"{_fmt(r['viewers_per_core'], 12)} {r['mbps']:7.1f} "
              f"{_fmt(r.get('node_fps_per_viewer'), 8)} {_fmt(r.get('fps_p50'), 7)} "
              f"{_fmt(r.get('fps_min'), 7)} {r['connected_at_end']:4d}/{r['viewers']:<4d} "
              f"{r['client_cpu_pct']:11.1f} {r['machine_busy_pct']:8.1f}")
    print("(CPU ms/viewer-s and viewers/core: above idle. Mbps: what the viewers counted, WHEP "
          "as RTP payload. node fps: frames the node handed to each viewer's RTP sender per "
          "second; fps: frames each WHEP viewer completed. machine%: all cores busy.)")
    for r in levels:
        notes = []
        if r["protocol"] == "webrtc":
            notes.append(f"setup p50 {r['setup_ms_p50']} ms p95 {r['setup_ms_p95']} ms, "
                         f"first frame p50 {r['first_frame_ms_p50']} ms, audio "
                         f"{r['audio_packets_per_viewer_s']} pkt/s/viewer, Opus transcoder "
                         f"{r['opus_transcoder_cpu_pct']}% CPU, packets lost "
                         f"{r['packets_lost']}, DELETE {r['deletes']}, left after: "
                         f"{r['sessions_left']} sessions, {r['transcoders_left']} transcoders, "
                         f"node {r['node_runtime_after']}")
        if r["errors"]:
            notes.append(f"errors {r['errors']}")
        if r["client_cpu_pct"] >= 85 or r["machine_busy_pct"] >= 90:
            notes.append(f"SHORT OF CPU (load client {r['client_cpu_pct']}% of a core, machine "
                         f"{r['machine_busy_pct']}% busy): this level's figures are not the "
                         "node's alone")
        for note in notes:
            print(f"  {r['protocol']} n={r['viewers']}: {note}")
    by = {(r["protocol"], r["viewers"]): r for r in levels}
    for protocol in ("webrtc", "rtmp"):
        counts = sorted(n for p, n in by if p == protocol)
        if len(counts) >= 2:
            low, high = by[(protocol, counts[0])], by[(protocol, counts[-1])]
            extra = (high["above_idle_pct"] - low["above_idle_pct"]) * 10 / \
                (counts[-1] - counts[0])
            print(f"  {protocol}: marginal CPU per viewer from {counts[0]} to {counts[-1]}: "
                  f"{extra:.2f} ms per viewer-second")
    if latency is None:
        return
    print(f"\nadded latency over loopback (publisher write -> viewer arrival, "
          f"{latency['frames_sent']} video frames sent in the window)")
    print(f"{'':8} {'frames':>6} {'p50 ms':>7} {'p95 ms':>7} {'max ms':>7}")
    for protocol, what in (("webrtc", "first RTP packet of the frame"),
                           ("webrtc_last_packet", "its last RTP packet: the frame complete"),
                           ("rtmp", "the frame's RTMP message")):
        f = latency[protocol]
        print(f"{protocol.split('_')[0]:8} {f['frames']:6d} {_fmt(f['p50_ms'], 7)} "
              f"{_fmt(f['p95_ms'], 7)} {_fmt(f['max_ms'], 7)}  ({what})")
    issues = latency["webrtc_mapping_issues"]
    if any(issues.values()):
        print(f"  RTP -> publisher frame mapping: {issues}")


def node_problems(node: Node) -> list[str]:
    """Warnings, errors and tracebacks the node logged."""
    return [line for line in node.lines
            if any(word in line for word in ("WARNING", "ERROR", "level=warning",
                                             "level=error", "Traceback", "Exception"))]


def main(opts: argparse.Namespace) -> None:
    found = tools.find()
    if found is None:
        raise SystemExit("no ffmpeg: run 'make tools' once (it installs one)")
    src = source()
    started = time.monotonic()
    levels: list[dict[str, Any]] = []
    latency: dict[str, Any] | None = None
    node = Node("--webrtc-advertise-ip", "127.0.0.1", "--idle-timeout", "off",
                "--max-connections", "5000", "--max-connections-per-ip", "5000",
                "--max-viewers-per-stream", "5000")
    publisher = None
    try:
        publisher = FfmpegPublisher(found[0], src, f"rtmp://127.0.0.1:{node.rtmp}/{KEY}")
        node.wait_for_stream(KEY, frames=8)
        time.sleep(3.0)  # a full GOP in the cache
        cpu0, t0 = cpu_seconds(node.pid), time.monotonic()
        time.sleep(opts.idle)
        idle = (cpu_seconds(node.pid) - cpu0) / (time.monotonic() - t0)
        runtime_idle = node.api("/node")["runtime"]
        print(f"idle: node CPU {100 * idle:.1f}% (ingest of one 720p30 stream), node "
              f"{runtime_idle}", flush=True)
        for viewers in [int(n) for n in opts.viewers.split(",") if int(n) > 0]:
            for protocol in opts.protocols.split(","):
                if not publisher.alive():
                    raise RuntimeError("the ffmpeg publisher exited")
                result = run_level(node, protocol, viewers, idle, opts)
                levels.append(result)
                print(f"{protocol:6} n={viewers:<3} node CPU {result['node_cpu_pct']}% "
                      f"({result['cpu_ms_per_viewer_s']} ms per viewer-second above idle) "
                      f"{result['mbps']} Mbps fps p50 {result.get('fps_p50', '-')} "
                      f"connected {result['connected_at_end']}/{viewers}", flush=True)
                time.sleep(1.0)
        if opts.latency_seconds > 0:
            latency = asyncio.run(added_latency(node, src, opts.settle, opts.latency_seconds))
            latency.update(sessions_left(node))
    finally:
        if publisher is not None:
            publisher.stop()
        node.stop()
    report(idle, levels, latency)
    problems = node_problems(node)
    ends = sum(1 for line in node.lines if "webrtc whep end" in line)
    starts = sum(1 for line in node.lines if "webrtc whep start" in line)
    print(f"\nnode log: {starts} WHEP sessions started, {ends} ended, "
          f"{len(problems)} warning/error lines")
    for line in problems[:10]:
        print(f"  {line[:200]}")
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps({
        "benchmark": "webrtc", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": os.cpu_count(), "source": src.name, "settle_s": opts.settle,
        "window_s": opts.window, "idle_cpu_pct": round(100 * idle, 1),
        "node_runtime_idle": runtime_idle, "levels": levels,
        "latency": latency, "node_log": {"whep_starts": starts, "whep_ends": ends,
                                         "problems": problems[:50]},
        "runtime_s": round(time.monotonic() - started, 1),
    }, indent=2))
    print(f"wrote {opts.out} ({time.monotonic() - started:.0f} s)")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("mode", nargs="?", default="run", choices=("run", "load"),
                        help="load: the WHEP load process (started by run)")
    parser.add_argument("--viewers", default="10,50", help="viewer counts (0: latency only)")
    parser.add_argument("--protocols", default="webrtc,rtmp")
    parser.add_argument("--rate", type=float, default=25.0, help="sessions opened per second")
    parser.add_argument("--settle", type=float, default=2.0)
    parser.add_argument("--window", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of the idle figure")
    parser.add_argument("--latency-seconds", type=float, default=10.0,
                        help="frames measured for added latency (0: skip)")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / time.strftime(
        "webrtc-%Y%m%dT%H%M%S.json"))
    parser.add_argument("--url", help="load: the WHEP endpoint")
    parser.add_argument("--count", type=int, default=10, help="load: sessions")
    parser.add_argument("--start-timeout", type=float, default=20.0)
    opts = parser.parse_args()
    if opts.mode == "load":
        asyncio.run(whep_load(opts))
    else:
        main(opts)


if __name__ == "__main__":
    cli()

"""Audio for WebRTC: AAC ↔ Opus, transcoded once per stream, off the event loop.

Browsers take Opus over WebRTC and RTMP publishers send AAC; WHIP publishers send Opus and the
rest of the node (FLV, HLS, recording) wants AAC. Video passes through, audio cannot. So each
stream with WebRTC viewers gets one :class:`AacToOpus`, whose packets every viewer shares, and
each WHIP publisher one :class:`OpusToAac`. Decoding, resampling and encoding cost about 1% of a
core per stream for AAC → Opus and 4% for Opus → AAC (FFmpeg's AAC encoder is the dear part):
little, but far too much for the thread that runs the event loop and its fan-out. A
:class:`StreamTranscoder` runs the converter in a thread of its own (FFmpeg drops the GIL while
it codes), fed through a bounded queue that never blocks the loop, and hands the results back
with ``call_soon_threadsafe``::

    opus = AacToOpus(asc)
    worker = StreamTranscoder(opus.transcode, track.push_packets, name=f"opus-{app}/{stream}")
    worker.submit(raw_aac, timestamp_ms)  # from the loop, per audio frame
    worker.close()                        # when the stream ends

Output timestamps count samples, anchored on the first input timestamp (see :class:`_Timeline`).
They leave out the encoders' lookahead (6.5 ms for Opus, 21 ms for AAC): the audio plays that
much late, well inside lip-sync tolerance.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from typing import TYPE_CHECKING, Generic, TypeVar

import av

from arcly.engine.errors import ProtocolError
from arcly.media.codecs import AacConfig, parse_aac_config

if TYPE_CHECKING:
    from av.audio.codeccontext import AudioCodecContext
    from av.audio.frame import AudioFrame
    from av.stream import Stream

log = logging.getLogger("arcly.webrtc")

SAMPLE_RATE = 48_000  # Opus always runs at 48 kHz; we make the AAC of WHIP publishers match
OPUS_TIME_BASE = Fraction(1, SAMPLE_RATE)
OPUS_FRAME_SAMPLES = 960  # 20 ms, what browsers send and expect
AAC_FRAME_SAMPLES = 1024
REANCHOR_MS = 500  # input timestamps further than this from the sample count start a new timeline
LOG_EVERY = 100  # of a converter's errors, log the first and then one in this many

T = TypeVar("T")


class _Timeline:
    """Output timestamps in samples at 48 kHz that follow the input's millisecond clock.

    Output time advances by the samples encoded, not by the input's timestamps (FLV's are whole
    milliseconds and jitter); it starts at the first input timestamp. Decoded samples predict
    where the next input timestamp should be: when one lands further than ``REANCHOR_MS`` from
    that (a publisher restarting, a gap) the timeline starts again from it."""

    __slots__ = ("_input_ms", "_next_pts", "reanchors")

    def __init__(self) -> None:
        self._input_ms: float | None = None  # where the samples decoded so far reach
        self._next_pts = 0
        self.reanchors = 0

    def observe(self, timestamp_ms: int) -> bool:
        """Take an input timestamp; True when it starts a new timeline (not the first one)."""
        if self._input_ms is not None and abs(timestamp_ms - self._input_ms) <= REANCHOR_MS:
            return False
        restart = self._input_ms is not None
        if restart:
            self.reanchors += 1
        self._input_ms = float(timestamp_ms)
        self._next_pts = timestamp_ms * SAMPLE_RATE // 1000
        return restart

    def decoded(self, samples: int, rate: int) -> None:
        if self._input_ms is not None:
            self._input_ms += samples * 1000 / rate

    def take(self, samples: int) -> int:
        """The pts of the next ``samples`` of output."""
        pts = self._next_pts
        self._next_pts += samples
        return pts


class _Reframer:
    """Resample to 48 kHz stereo ``sample_format`` and cut frames of ``frame_size`` samples.

    FFmpeg's resampler keeps the format, layout and rate of its first input and refuses any
    other, so a change (a publisher switching mono → stereo) starts a new one, as does
    ``reset()``; the partial frame held by the old one (under one frame) is lost."""

    __slots__ = ("_frame_size", "_input", "_resampler", "_sample_format")

    def __init__(self, sample_format: str, frame_size: int) -> None:
        self._sample_format = sample_format
        self._frame_size = frame_size
        self._input: tuple[str, str, int] | None = None
        self._resampler = self._new()

    def _new(self) -> av.AudioResampler:
        return av.AudioResampler(format=self._sample_format, layout="stereo", rate=SAMPLE_RATE,
                                 frame_size=self._frame_size)

    def reset(self) -> None:
        self._input = None
        self._resampler = self._new()

    def __call__(self, frame: AudioFrame) -> list[AudioFrame]:
        if frame.layout.name == "mono" and frame.format.is_planar:
            frame = _mono_as_stereo(frame)
        shape = (frame.format.name, frame.layout.name, frame.sample_rate)
        if self._input is not None and shape != self._input:
            self._resampler = self._new()
        self._input = shape
        return self._resampler.resample(frame)


def _mono_as_stereo(frame: AudioFrame) -> AudioFrame:
    """The same samples in both channels. FFmpeg's upmix puts mono at -3 dB in each (equal
    power): quieter than a browser plays the same AAC from HLS, copied to both speakers."""
    stereo = av.AudioFrame(format=frame.format.name, layout="stereo", samples=frame.samples)
    samples = bytes(frame.planes[0])[:frame.samples * frame.format.bytes]
    for plane in stereo.planes:
        plane.update(samples)
    stereo.sample_rate = frame.sample_rate
    return stereo


class _ErrorCount:
    """Bad input is dropped, counted, and logged at debug for the first and every LOG_EVERY-th."""

    __slots__ = ("_what", "count")

    def __init__(self, what: str) -> None:
        self._what = what
        self.count = 0

    def add(self, error: Exception) -> None:
        self.count += 1
        if self.count % LOG_EVERY == 1:
            log.debug("%s dropped errors=%d error=%s", self._what, self.count, error)


def _decode(decoder: AudioCodecContext, payload: bytes,
            errors: _ErrorCount) -> list[AudioFrame]:
    # An empty packet is FFmpeg's signal to drain: the decoder would refuse everything after it.
    if not payload:
        errors.add(ValueError("empty payload"))
        return []
    try:
        return decoder.decode(av.Packet(payload))
    except av.FFmpegError as exc:
        errors.add(exc)
        return []


class _Converter:
    """What both directions share: decode a payload, follow its timeline, cut the decoded audio
    into the encoder's frame size. Subclasses set the four parts and encode the chunks."""

    _decoder: AudioCodecContext
    _reframe: _Reframer
    _timeline: _Timeline
    _errors: _ErrorCount

    @property
    def errors(self) -> int:
        """Payloads the decoder refused (dropped)."""
        return self._errors.count

    @property
    def reanchors(self) -> int:
        """Times the input's timestamps jumped and the output timeline started again."""
        return self._timeline.reanchors

    def _chunks(self, payload: bytes, timestamp_ms: int) -> Iterator[AudioFrame]:
        if self._timeline.observe(timestamp_ms):
            self._reframe.reset()
        for frame in _decode(self._decoder, payload, self._errors):
            self._timeline.decoded(frame.samples, frame.sample_rate)
            yield from self._reframe(frame)


class AacToOpus(_Converter):
    """Raw AAC frames (FLV audio tag bodies after the header) → 20 ms Opus packets, 48 kHz stereo.

    Synchronous and single-threaded: one instance per stream, called from its worker thread.
    Packet ``pts`` are samples at 48 kHz (``time_base`` 1/48000) on the input's timeline."""

    def __init__(self, asc: bytes, *, bit_rate: int = 64_000) -> None:
        self.config: AacConfig = parse_aac_config(asc)
        self._decoder = av.CodecContext.create("aac", "r")
        self._decoder.extradata = bytes(asc)
        try:
            self._decoder.open()
        except av.FFmpegError as exc:
            raise ProtocolError(f"AAC decoder refuses AudioSpecificConfig {asc.hex()}: "
                                f"{exc}") from exc
        self._encoder = av.CodecContext.create("libopus", "w")
        self._encoder.sample_rate = SAMPLE_RATE
        self._encoder.layout = "stereo"
        self._encoder.format = "s16"
        self._encoder.bit_rate = bit_rate
        self._encoder.time_base = OPUS_TIME_BASE
        self._encoder.options = {"application": "lowdelay"}
        self._encoder.open()
        self._reframe = _Reframer("s16", OPUS_FRAME_SAMPLES)
        self._timeline = _Timeline()
        self._errors = _ErrorCount("AAC frame")

    def transcode(self, raw_aac: bytes, timestamp_ms: int) -> list[av.Packet[Stream]]:
        """Opus packets for one AAC frame: none while the encoder fills its first 20 ms."""
        packets: list[av.Packet[Stream]] = []
        for chunk in self._chunks(raw_aac, timestamp_ms):
            for packet in self._encoder.encode(chunk):
                packet.pts = packet.dts = self._timeline.take(OPUS_FRAME_SAMPLES)
                packet.duration = OPUS_FRAME_SAMPLES
                packet.time_base = OPUS_TIME_BASE
                packets.append(packet)
        return packets


class OpusToAac(_Converter):
    """Opus packets (RTP payloads of a WHIP publisher) → raw AAC-LC frames, 48 kHz stereo.

    The encoder opens at construction, so :attr:`audio_specific_config` exists before the first
    frame (the FLV sequence header goes out first). Output timestamps are milliseconds on the
    input's timeline, counted in samples like :class:`AacToOpus`'s."""

    def __init__(self, *, bit_rate: int = 128_000) -> None:
        # FFmpeg's own Opus decoder gives planar float, what its AAC encoder takes.
        self._decoder = av.CodecContext.create("opus", "r")
        self._decoder.sample_rate = SAMPLE_RATE
        self._decoder.layout = "stereo"
        self._encoder = av.CodecContext.create("aac", "w")
        self._encoder.sample_rate = SAMPLE_RATE
        self._encoder.layout = "stereo"
        self._encoder.format = "fltp"
        self._encoder.bit_rate = bit_rate
        self._encoder.time_base = OPUS_TIME_BASE
        self._encoder.open()
        if not self._encoder.extradata:
            raise RuntimeError("FFmpeg's AAC encoder opened without an AudioSpecificConfig")
        self._asc = bytes(self._encoder.extradata)
        self._reframe = _Reframer("fltp", AAC_FRAME_SAMPLES)
        self._timeline = _Timeline()
        self._errors = _ErrorCount("Opus packet")

    @property
    def audio_specific_config(self) -> bytes:
        return self._asc

    def transcode(self, opus_payload: bytes, timestamp_ms: int) -> list[tuple[bytes, int]]:
        """``(raw AAC frame, timestamp in ms)`` for one Opus packet; often none, as an AAC frame
        (21.3 ms) is longer than an Opus one (usually 20 ms)."""
        frames: list[tuple[bytes, int]] = []
        for chunk in self._chunks(opus_payload, timestamp_ms):
            for packet in self._encoder.encode(chunk):
                pts = self._timeline.take(AAC_FRAME_SAMPLES)
                frames.append((bytes(packet), pts * 1000 // SAMPLE_RATE))
        return frames


class StreamTranscoder(Generic[T]):
    """Runs one stream's converter in a daemon thread of its own, off the event loop.

    ``submit`` (on the loop) queues a payload and never blocks: when ``max_pending`` are already
    waiting the oldest goes (a live listener wants the newest) and ``dropped`` counts it. Each
    non-empty result reaches ``deliver`` on the loop, in order, until ``close``. An exception out
    of ``convert`` is counted in ``errors`` and logged (the first, then one in ``LOG_EVERY``); the
    thread carries on. Decoders' own errors stay on the converter (``AacToOpus.errors``).

    ``cpu_seconds`` is the CPU time the thread has used, as of its last payload."""

    def __init__(self, convert: Callable[[bytes, int], list[T]],
                 deliver: Callable[[list[T]], None], *, name: str,
                 loop: asyncio.AbstractEventLoop | None = None, max_pending: int = 200) -> None:
        self._convert = convert
        self._deliver = deliver
        self._loop = loop or asyncio.get_running_loop()
        self._queue: queue.Queue[tuple[bytes, int] | None] = queue.Queue(max_pending)
        self._closed = False
        self.frames_in = 0
        self.packets_out = 0
        self.dropped = 0
        self.errors = 0
        self.cpu_seconds = 0.0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def name(self) -> str:
        return self._thread.name

    @property
    def closed(self) -> bool:
        return self._closed

    def submit(self, payload: bytes, timestamp_ms: int) -> None:
        """Queue one payload for conversion; a no-op once closed. Call from the loop only."""
        if self._closed:
            return
        self.frames_in += 1
        try:
            self._queue.put_nowait((payload, timestamp_ms))
        except queue.Full:
            try:
                self._queue.get_nowait()
                self.dropped += 1
            except queue.Empty:  # the worker took one meanwhile
                pass
            # Only this thread puts, so the slot just freed is still free.
            self._queue.put_nowait((payload, timestamp_ms))

    def close(self, timeout: float = 2.0) -> None:
        """Stop the thread: what is still queued is discarded, nothing more is delivered.

        Waits for the payload being converted, if any (milliseconds); closing twice is fine."""
        if self._closed:
            return
        self._closed = True
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._queue.put_nowait(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("transcoder thread did not stop thread=%s timeout_s=%.1f",
                        self._thread.name, timeout)

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            try:
                out = self._convert(*job)
            except Exception as exc:
                self.errors += 1
                if self.errors % LOG_EVERY == 1:
                    log.warning("transcoder error thread=%s errors=%d error=%r",
                                self._thread.name, self.errors, exc, exc_info=True)
                continue
            finally:
                self.cpu_seconds = time.thread_time()
            if not out:
                continue
            self.packets_out += len(out)
            try:
                self._loop.call_soon_threadsafe(self._hand_over, out)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                return

    def _hand_over(self, out: list[T]) -> None:
        if not self._closed:
            self._deliver(out)

"""AAC ↔ Opus for WebRTC, with real codecs: AAC and Opus encoded here by PyAV (FFmpeg's ``aac``
and ``libopus``), transcoded, then decoded again to check length, layout, timing and that the
sine wave survived; and the per-stream worker thread that runs a converter off the loop."""

from __future__ import annotations

import asyncio
import functools
import math
import threading
import time
from array import array
from collections.abc import Callable
from fractions import Fraction
from itertools import pairwise
from typing import TYPE_CHECKING, Literal

import av
import pytest
from av.audio.frame import AudioFrame

from arcly.engine import ProtocolError
from arcly.media.codecs import parse_aac_config
from arcly.protocols.webrtc.audio import AacToOpus, OpusToAac, StreamTranscoder

if TYPE_CHECKING:
    from av.stream import Stream

AMPLITUDE = 0.25  # of full scale
SINE_RMS = AMPLITUDE / math.sqrt(2)
MIN_RMS = 0.05


def sine_frames(rate: int, layout: str, seconds: float, frame_samples: int) -> list[AudioFrame]:
    """A 440 Hz sine as s16 frames, the same in every channel."""
    channels = 1 if layout == "mono" else 2
    total = int(rate * seconds)
    frames = []
    for start in range(0, total, frame_samples):
        pcm = array("h")
        for i in range(start, start + frame_samples):
            value = int(32767 * AMPLITUDE * math.sin(2 * math.pi * 440 * i / rate))
            pcm.extend([value] * channels)
        frame = AudioFrame(format="s16", layout=layout, samples=frame_samples)
        frame.planes[0].update(pcm.tobytes())
        frame.sample_rate = rate
        frames.append(frame)
    return frames


@functools.cache
def encode_aac(rate: int, layout: str, seconds: float) -> tuple[bytes, tuple[bytes, ...]]:
    """(AudioSpecificConfig, raw AAC frames) from FFmpeg's AAC encoder."""
    encoder = av.CodecContext.create("aac", "w")
    encoder.sample_rate = rate
    encoder.layout = layout
    encoder.format = "fltp"
    encoder.bit_rate = 96_000
    encoder.time_base = Fraction(1, rate)
    encoder.open()
    assert encoder.extradata is not None
    resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate, frame_size=1024)
    packets = []
    for frame in sine_frames(rate, layout, seconds, 1024):
        for chunk in resampler.resample(frame):
            packets += encoder.encode(chunk)
    return bytes(encoder.extradata), tuple(bytes(packet) for packet in packets)


@functools.cache
def encode_opus(seconds: float) -> tuple[bytes, ...]:
    """20 ms Opus packets, 48 kHz stereo, from libopus."""
    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate = 48_000
    encoder.layout = "stereo"
    encoder.format = "s16"
    encoder.bit_rate = 64_000
    encoder.time_base = Fraction(1, 48_000)
    packets = []
    for frame in sine_frames(48_000, "stereo", seconds, 960):
        packets += encoder.encode(frame)
    return tuple(bytes(packet) for packet in packets)


def aac_timestamps(count: int, rate: int, start_ms: int) -> list[int]:
    """FLV-style whole-millisecond timestamps of consecutive AAC frames."""
    return [start_ms + k * 1024 * 1000 // rate for k in range(count)]


def decode(codec: Literal["aac", "opus"], payloads: list[bytes],
           extradata: bytes | None = None) -> list[AudioFrame]:
    decoder = av.CodecContext.create(codec, "r")
    decoder.sample_rate = 48_000
    decoder.layout = "stereo"
    if extradata is not None:
        decoder.extradata = extradata
    frames: list[AudioFrame] = []
    for payload in payloads:
        out = decoder.decode(av.Packet(payload))
        assert len(out) == 1
        frames += out
    return frames


def channel_rms(frames: list[AudioFrame]) -> list[float]:
    """RMS of each channel over planar float frames (what FFmpeg's Opus and AAC decoders give)."""
    assert all(frame.format.name == "fltp" for frame in frames)
    sums = [0.0] * len(frames[0].planes)
    count = 0
    for frame in frames:
        for index, plane in enumerate(frame.planes):
            samples = array("f", bytes(plane)[:frame.samples * 4])
            sums[index] += sum(value * value for value in samples)
        count += frame.samples
    return [math.sqrt(total / count) for total in sums]


def transcode_all(converter: AacToOpus, frames: tuple[bytes, ...],
                  timestamps: list[int]) -> list[av.Packet[Stream]]:
    packets: list[av.Packet[Stream]] = []
    for raw, timestamp in zip(frames, timestamps, strict=True):
        packets += converter.transcode(raw, timestamp)
    return packets


def assert_contiguous(pts: list[int]) -> None:
    assert all(later - earlier == 960 for earlier, later in pairwise(pts)), pts


@pytest.mark.parametrize("layout", ["mono", "stereo"])
def test_aac_becomes_20ms_48k_stereo_opus_on_the_input_timeline(layout: str) -> None:
    asc, aac = encode_aac(44_100, layout, 1.0)
    converter = AacToOpus(asc)
    packets = transcode_all(converter, aac, aac_timestamps(len(aac), 44_100, 1_000))

    assert converter.errors == 0
    assert all(packet.time_base == Fraction(1, 48_000) for packet in packets)
    pts = [packet.pts for packet in packets if packet.pts is not None]
    assert len(pts) == len(packets)
    assert abs(pts[0] - 1_000 * 48) <= 960
    assert_contiguous(pts)
    input_s = len(aac) * 1024 / 44_100
    assert abs(len(packets) * 960 / 48_000 - input_s) < 0.05

    frames = decode("opus", [bytes(packet) for packet in packets])
    assert {(f.samples, f.sample_rate, f.layout.name) for f in frames} == {(960, 48_000, "stereo")}
    # Past the codecs' start-up, the sine at its level in both channels: mono is copied to
    # each, not mixed down 3 dB (that would be 0.125).
    left, right = channel_rms(frames[5:])
    assert left == pytest.approx(SINE_RMS, rel=0.1)
    assert right == pytest.approx(SINE_RMS, rel=0.1)


def test_a_bad_aac_frame_is_dropped_and_counted_and_the_stream_goes_on() -> None:
    asc, aac = encode_aac(44_100, "stereo", 1.0)
    frames = list(aac)
    frames[20:20] = [b"\xde\xad\xbe\xef" * 8, b""]  # garbage, and an empty frame
    timestamps = aac_timestamps(len(aac), 44_100, 0)
    timestamps[20:20] = [timestamps[20]] * 2
    converter = AacToOpus(asc)

    before = transcode_all(converter, tuple(frames[:22]), timestamps[:22])
    after = transcode_all(converter, tuple(frames[22:]), timestamps[22:])

    assert converter.errors == 2
    assert converter.reanchors == 0
    assert len(after) > 20
    assert_contiguous([packet.pts or 0 for packet in before + after])
    assert channel_rms(decode("opus", [bytes(packet) for packet in after[5:]]))[0] > MIN_RMS


def test_a_timestamp_jump_starts_the_timeline_again_and_jitter_does_not() -> None:
    asc, aac = encode_aac(44_100, "stereo", 1.0)
    timestamps = aac_timestamps(len(aac), 44_100, 0)
    # FLV timestamps jitter by a few tens of milliseconds: sample counting absorbs that.
    jittered = [ts + (30 if k % 3 == 0 else -25) for k, ts in enumerate(timestamps[:20])]
    forward = [ts + 10_000 for ts in timestamps[20:30]]  # a 10 s gap
    restarted = timestamps[30:]  # the publisher started again from zero
    restarted = [ts - restarted[0] for ts in restarted]
    converter = AacToOpus(asc)

    first = transcode_all(converter, aac[:20], jittered)
    second = transcode_all(converter, aac[20:30], forward)
    third = transcode_all(converter, aac[30:], restarted)

    assert converter.reanchors == 2
    for part, start_ms in ((first, jittered[0]), (second, forward[0]), (third, restarted[0])):
        pts = [packet.pts or 0 for packet in part]
        assert abs(pts[0] - start_ms * 48) <= 960, (pts[0], start_ms)
        assert_contiguous(pts)


def test_an_asc_ffmpeg_cannot_decode_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        AacToOpus(b"\x00\x00")  # object type 0: parses, but no decoder takes it
    with pytest.raises(ProtocolError):
        AacToOpus(b"\x12")


def test_opus_becomes_aac_lc_48k_stereo_with_its_config_up_front() -> None:
    opus = encode_opus(1.0)
    converter = OpusToAac()
    asc = converter.audio_specific_config  # before the first packet
    config = parse_aac_config(asc)
    assert (config.object_type, config.sample_rate, config.channels) == (2, 48_000, 2)

    out: list[tuple[bytes, int]] = []
    for k, payload in enumerate(opus):
        out += converter.transcode(payload, 500 + k * 20)

    assert converter.errors == 0
    timestamps = [timestamp for _, timestamp in out]
    assert abs(timestamps[0] - 500) <= 21
    assert all(earlier < later for earlier, later in pairwise(timestamps))
    assert abs(len(out) * 1024 / 48_000 - len(opus) * 0.02) < 0.05
    raw = [frame for frame, _ in out]
    assert not any(frame[0] == 0xFF and frame[1] >> 4 == 0xF for frame in raw)  # no ADTS
    frames = decode("aac", raw, extradata=asc)
    assert {(f.samples, f.sample_rate, f.layout.name) for f in frames} == {(1024, 48_000, "stereo")}
    left, right = channel_rms(frames[5:])
    assert left > MIN_RMS
    assert right > MIN_RMS


def test_a_bad_opus_packet_is_dropped_and_counted() -> None:
    opus = list(encode_opus(0.5))
    opus[10:10] = [b"\xff" * 5, b""]
    converter = OpusToAac()

    out: list[tuple[bytes, int]] = []
    for k, payload in enumerate(opus):
        out += converter.transcode(payload, k * 20)

    assert converter.errors == 2
    assert len(out) > 15
    timestamps = [timestamp for _, timestamp in out]
    assert all(earlier < later for earlier, later in pairwise(timestamps))


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


def opus_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("opus-")]


async def test_stream_transcoder_delivers_on_the_loop_and_close_joins_its_thread() -> None:
    asc, aac = encode_aac(44_100, "stereo", 0.5)
    timestamps = aac_timestamps(len(aac), 44_100, 0)
    expected = [packet.pts for packet in transcode_all(AacToOpus(asc), aac, timestamps)]
    loop_thread = threading.get_ident()
    delivered: list[tuple[int, list[av.Packet[Stream]]]] = []
    worker = StreamTranscoder(AacToOpus(asc).transcode,
                              lambda packets: delivered.append((threading.get_ident(), packets)),
                              name="opus-live/test")
    assert [thread.name for thread in opus_threads()] == ["opus-live/test"]

    for raw, timestamp in zip(aac, timestamps, strict=True):
        worker.submit(raw, timestamp)
    await until(lambda: sum(len(packets) for _, packets in delivered) == len(expected))

    assert {ident for ident, _ in delivered} == {loop_thread}
    assert [packet.pts for _, packets in delivered for packet in packets] == expected
    assert (worker.frames_in, worker.packets_out) == (len(aac), len(expected))
    assert (worker.dropped, worker.errors) == (0, 0)
    assert worker.cpu_seconds > 0

    worker.close()
    assert opus_threads() == []
    worker.close()
    worker.submit(aac[0], 0)
    assert worker.frames_in == len(aac)


async def test_a_full_queue_drops_the_oldest_and_submit_never_blocks() -> None:
    busy = threading.Event()
    release = threading.Event()

    def convert(payload: bytes, timestamp_ms: int) -> list[int]:
        if timestamp_ms == 0:
            busy.set()
            release.wait(5)
        return [timestamp_ms]

    delivered: list[int] = []
    worker = StreamTranscoder(convert, delivered.extend, name="opus-test/full", max_pending=4)
    worker.submit(b"", 0)
    assert busy.wait(5)

    started = time.monotonic()
    for timestamp in range(1, 11):
        worker.submit(b"", timestamp)
    assert time.monotonic() - started < 0.1
    assert (worker.frames_in, worker.dropped) == (11, 6)

    release.set()
    await until(lambda: len(delivered) == 5)
    assert delivered == [0, 7, 8, 9, 10]
    worker.close()
    assert opus_threads() == []


async def test_a_converter_exception_is_counted_and_the_thread_carries_on(
        caplog: pytest.LogCaptureFixture) -> None:
    def convert(payload: bytes, timestamp_ms: int) -> list[int]:
        if payload == b"bad":
            raise ValueError("boom")
        return [timestamp_ms]

    delivered: list[int] = []
    worker = StreamTranscoder(convert, delivered.extend, name="opus-test/errors")
    for payload, timestamp in ((b"ok", 1), (b"bad", 2), (b"ok", 3)):
        worker.submit(payload, timestamp)
    await until(lambda: len(delivered) == 2)
    worker.close()

    assert delivered == [1, 3]
    assert worker.errors == 1
    assert "transcoder error thread=opus-test/errors" in caplog.text


async def test_nothing_is_delivered_after_close() -> None:
    converted = threading.Event()

    def convert(payload: bytes, timestamp_ms: int) -> list[int]:
        converted.set()
        return [timestamp_ms]

    delivered: list[int] = []
    worker = StreamTranscoder(convert, delivered.extend, name="opus-test/late")
    worker.submit(b"", 1)
    assert converted.wait(5)
    worker.close()  # the result is already on its way to the loop
    for _ in range(3):
        await asyncio.sleep(0)

    assert delivered == []

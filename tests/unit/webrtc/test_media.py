"""The media side of WebRTC, sans network: H.264 for viewers (Annex-B, start burst squeezed,
B-frames refused) and from WHIP publishers (access units → FLV frames)."""

from __future__ import annotations

import struct

import pytest
from aiortc.mediastreams import MediaStreamError

from arcly.engine import Engine, Frame, FrameKind, StreamKey
from arcly.media import codecs, flv
from arcly.protocols.webrtc.tracks import AudioTrack, VideoTrack, has_reordering, video_codec
from arcly.protocols.webrtc.whip import H264ToFlv

SPS = bytes.fromhex("6764001facd9405005bb011000000300100000030320f18319")
PPS = bytes.fromhex("68ebe3cb22c0")
KEY = StreamKey("live", "rtc")


def video(timestamp: int, nal: bytes, *, key: bool = False, cts: int = 0) -> Frame:
    body = bytes([0x17 if key else 0x27, 1]) + struct.pack(">i", cts)[1:] + \
        codecs.length_prefixed([nal])
    return flv.make_frame(FrameKind.VIDEO, timestamp, body)


def sequence_header() -> Frame:
    return flv.make_frame(FrameKind.VIDEO, 0, b"\x17\x00\x00\x00\x00" +
                          codecs.avc_config_record(SPS, PPS))


def test_reordering_is_seen_in_presentation_times() -> None:
    plain = [video(0, b"\x65\x01", key=True), video(33, b"\x41\x02"), video(66, b"\x41\x03")]
    assert not has_reordering(plain)
    # I P B B: decode order 0, 33, 66, 100; presentation 66, 166, 100, 133
    bframes = [video(0, b"\x65\x01", key=True, cts=66), video(33, b"\x41\x02", cts=133),
               video(66, b"\x01\x03", cts=33), video(100, b"\x01\x04", cts=33)]
    assert has_reordering(bframes)
    assert video_codec(sequence_header()) == codecs.H264


async def test_a_viewer_starts_on_the_cached_keyframe_then_follows_the_stream() -> None:
    engine = Engine()
    handle = await engine.start_publish(KEY)
    handle.publish_frame(sequence_header())
    handle.publish_frame(video(1000, b"\x65\xaa", key=True))
    handle.publish_frame(video(1033, b"\x41\xbb"))
    handle.publish_frame(video(1066, b"\x41\xcc"))
    track = VideoTrack(await engine.subscribe(KEY))
    burst = [await track.recv() for _ in range(3)]
    # The keyframe carries SPS/PPS (the SDP has none), no access unit delimiters.
    assert codecs.split_annexb(bytes(burst[0])) == [SPS, PPS, b"\x65\xaa"]
    assert codecs.split_annexb(bytes(burst[1])) == [b"\x41\xbb"]
    # The cached GOP goes out at once, squeezed to 1 ms steps: the browser is at live at once.
    assert [p.pts for p in burst] == [0, 90, 180]
    handle.publish_frame(video(1100, b"\x41\xdd"))
    handle.publish_frame(video(1133, b"\x41\xee"))
    live = [await track.recv() for _ in range(2)]
    assert [p.pts for p in live] == [180 + 34 * 90, 180 + 67 * 90]  # the publisher's spacing
    assert track.frames_sent == 5


async def test_a_viewer_joining_without_a_cached_gop_waits_for_a_keyframe() -> None:
    engine = Engine()
    handle = await engine.start_publish(KEY)
    handle.publish_frame(sequence_header())
    track = VideoTrack(await engine.subscribe(KEY))
    handle.publish_frame(video(0, b"\x41\x01"))  # inter frames of a GOP it missed
    handle.publish_frame(video(33, b"\x41\x02"))
    handle.publish_frame(video(66, b"\x65\x03", key=True))
    first = await track.recv()
    assert codecs.split_annexb(bytes(first))[-1] == b"\x65\x03"


async def test_b_frames_appearing_mid_stream_end_the_viewer() -> None:
    engine = Engine()
    handle = await engine.start_publish(KEY)
    handle.publish_frame(sequence_header())
    handle.publish_frame(video(0, b"\x65\x01", key=True, cts=66))
    track = VideoTrack(await engine.subscribe(KEY))
    await track.recv()
    handle.publish_frame(video(33, b"\x41\x02", cts=133))
    handle.publish_frame(video(66, b"\x01\x03", cts=0))  # presented before the previous one
    await track.recv()
    with pytest.raises(MediaStreamError):
        await track.recv()
    assert track.end_reason == "B-frames appeared"


async def test_the_end_of_the_stream_ends_the_track() -> None:
    engine = Engine()
    handle = await engine.start_publish(KEY)
    handle.publish_frame(sequence_header())
    handle.publish_frame(video(0, b"\x65\x01", key=True))
    track = VideoTrack(await engine.subscribe(KEY))
    await track.recv()
    await engine.end_publish(KEY, "unpublished")
    with pytest.raises(MediaStreamError):
        await track.recv()
    assert "unpublished" in track.end_reason


async def test_a_slow_audio_viewer_loses_the_oldest_packets() -> None:
    track = AudioTrack(capacity=2)
    for pts in range(4):
        track.offer(pts)  # type: ignore[arg-type]
    assert [await track.recv(), await track.recv()] == [2, 3]


def annexb(*units: bytes) -> bytes:
    return b"".join(b"\x00\x00\x00\x01" + u for u in units)


def test_whip_access_units_become_flv_frames() -> None:
    h264 = H264ToFlv()
    assert h264.convert(annexb(b"\x41\x01")) == []  # nothing before a keyframe and its sets
    out = h264.convert(annexb(b"\x09\xf0", SPS, PPS, b"\x65\x02"))
    (config, _, is_config), (body, keyframe, _) = out
    assert is_config and codecs.parse_avc_config(config[5:]).parameter_sets == (SPS, PPS)
    frame = flv.make_frame(FrameKind.VIDEO, 0, body)
    assert keyframe and frame.keyframe and not frame.config
    assert codecs.parse_video(body).data == codecs.length_prefixed([b"\x65\x02"])  # no AUD
    (inter, keyframe, _), = h264.convert(annexb(b"\x41\x03"))
    assert not keyframe and not flv.make_frame(FrameKind.VIDEO, 33, inter).keyframe
    # The same parameter sets again: no new sequence header; new ones: a new header first.
    assert len(h264.convert(annexb(SPS, PPS, b"\x65\x04"))) == 1
    other = SPS[:-1] + b"\x20"
    assert h264.convert(annexb(other, PPS, b"\x65\x05"))[0][2] is True

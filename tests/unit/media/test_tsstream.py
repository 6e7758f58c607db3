"""A continuous transport stream for SRT readers: starts on a keyframe, tables before every
keyframe, counters that never restart, and ffprobe reads it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from arcly.engine import FrameKind
from arcly.media import codecs, flv
from arcly.media.mpegts import PACKET
from arcly.media.tsstream import MESSAGE, TsStreamWriter, messages
from tests.support.media import load_tags


def _stream(source: Path) -> tuple[bytes, TsStreamWriter]:
    writer = TsStreamWriter()
    out = b"".join(writer.write(flv.make_frame(FrameKind(t.tag_type), t.timestamp, t.body))
                   for t in load_tags(source) if t.tag_type in (8, 9, 18))
    return out, writer


def test_the_stream_is_whole_packets_with_unbroken_counters(source_flv: Path) -> None:
    data, writer = _stream(source_flv)
    assert data and len(data) % PACKET == 0 and writer.skipped == 0
    counters: dict[int, int] = {}
    pat = 0
    for pos in range(0, len(data), PACKET):
        packet = data[pos:pos + PACKET]
        assert packet[0] == 0x47
        pid = ((packet[1] & 0x1F) << 8) | packet[2]
        pat += pid == 0
        if packet[3] & 0x10:  # carries payload: the counter steps
            cc = packet[3] & 0x0F
            if pid in counters:
                assert cc == (counters[pid] + 1) & 0x0F, f"pid {pid} at {pos}"
            counters[pid] = cc
    assert pat >= 6  # tables before every keyframe (12 s, a keyframe every 2 s)
    assert all(len(m) <= MESSAGE and len(m) % PACKET == 0 for m in messages(data))


def test_ffprobe_reads_the_stream(source_flv: Path, ffprobe: str, tmp_path: Path) -> None:
    data, _ = _stream(source_flv)
    out = tmp_path / "stream.ts"
    out.write_bytes(data)
    probe = subprocess.run([ffprobe, "-v", "error", "-show_entries",
                            "stream=codec_name,width,height", "-of", "csv=p=0", str(out)],
                           capture_output=True, text=True, check=True)
    assert set(probe.stdout.split()) == {"h264,640,360", "aac"}, probe.stdout


def test_a_reader_starts_on_a_keyframe() -> None:
    writer = TsStreamWriter()
    sps = bytes.fromhex("6764001facd9405005bb011000000300100000030320f18319")
    config = flv.make_frame(FrameKind.VIDEO, 0, b"\x17\x00\x00\x00\x00" +
                            codecs.avc_config_record(sps, bytes.fromhex("68ebe3cb22c0")))
    assert writer.write(config) == b""
    inter = flv.make_frame(FrameKind.VIDEO, 0, b"\x27\x01\x00\x00\x00\x00\x00\x00\x02\x41\x01")
    assert writer.write(inter) == b""  # no keyframe yet
    key = flv.make_frame(FrameKind.VIDEO, 33, b"\x17\x01\x00\x00\x00\x00\x00\x00\x02\x65\x01")
    first = writer.write(key)
    assert first[:4] == b"\x47\x40\x00\x10"  # PAT first
    assert writer.write(inter)  # inter frames follow now

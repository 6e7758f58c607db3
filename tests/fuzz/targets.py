"""atheris fuzz targets, one per parser. A target may raise only ``ProtocolError`` (the
parsers' way of saying "malformed"); anything else is a crash.

    python tests/fuzz/targets.py TARGET [atheris/libFuzzer flags, e.g. -max_total_time=30]
    make fuzz FUZZ_SECONDS=30          # every target in turn
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import atheris

with atheris.instrument_imports():
    from arcly.engine import FrameKind, ProtocolError
    from arcly.media import amf0, codecs, flv
    from arcly.media.mpegts import TsMuxer
    from arcly.media.tsdemux import TsDemuxer
    from arcly.protocols.http.request import parse_request
    from arcly.protocols.rtmp.chunk import ChunkDecoder
    from arcly.protocols.rtmp.connection import RtmpConnection

_C0C1 = b"\x03" + b"\x00" * 1536


def amf(data: bytes) -> None:
    amf0.decode(data)


def rtmp_chunks(data: bytes) -> None:
    decoder = ChunkDecoder(max_message_size=65536, max_buffered=131072)
    cut = data[0] if data else 0
    decoder.feed(data[1:cut + 1])
    decoder.feed(data[cut + 1:])


def rtmp_connection(data: bytes) -> None:
    conn = RtmpConnection()
    conn.receive_data(_C0C1)
    conn.receive_data(b"\x00" * 1536)  # C2
    for piece in (data[: len(data) // 2], data[len(data) // 2:]):
        conn.receive_data(piece)
        conn.data_to_send()


def flv_file(data: bytes) -> None:
    tags, _ = flv.parse_tags(data, flv.parse_header(data))
    for tag in tags:
        if tag.tag_type in (8, 9, 18):
            flv.make_frame(FrameKind(tag.tag_type), tag.timestamp, tag.body)


def codec_config(data: bytes) -> None:
    selector, body = (data[0], data[1:]) if data else (0, b"")
    if selector % 4 == 0:
        config = codecs.parse_avc_config(body)
        codecs.to_annexb(body, config, keyframe=True)
    elif selector % 4 == 1:
        codecs.parse_hevc_config(body)
    elif selector % 4 == 2:
        codecs.parse_aac_config(body).adts_header(len(body))
    else:
        codecs.parse_video(body)


def http_request(data: bytes) -> None:
    parse_request(data)


_TS_PIDS = (0x0000, 0x1000, 0x0100, 0x0101)  # PAT, PMT, video, audio as TsMuxer writes them


def _ts_packets(data: bytes) -> bytes:
    """Each 185 bytes → one packet: a control byte (PID, payload_unit_start, a counter skip)
    and 184 bytes of payload, after a valid PAT and PMT: past the sync and PSI layers at once."""
    out = [TsMuxer(video="h264", audio=True).tables()]
    counters: dict[int, int] = {}
    for pos in range(0, len(data), 185):
        control, payload = data[pos], data[pos + 1:pos + 185]
        pid = _TS_PIDS[control & 3]
        cc = (counters.get(pid, 0) + (2 if control & 8 else 1)) & 0x0F
        counters[pid] = cc
        out.append(bytes((0x47, (0x40 if control & 4 else 0) | pid >> 8, pid & 0xFF, 0x10 | cc))
                   + payload.ljust(184, b"\xff"))
    return b"".join(out)


def _ts_muxed(data: bytes, video: str) -> bytes:
    """The bytes as one video access unit and one ADTS payload in well-formed PES: straight
    into Annex-B splitting, the configuration records and ADTS parsing."""
    muxer = TsMuxer(video=video, audio=True)
    return (muxer.tables() + muxer.video_frame(data, 0, 0, True) + muxer.audio_frame(data, 0)
            + muxer.video_frame(b"\x00\x00\x01\x09\xf0", 40, 0, False))


def mpegts_demux(data: bytes) -> None:
    selector, body = (data[0], data[1:]) if data else (0, b"")
    if selector % 4 == 1:
        body = _ts_packets(body)
    elif selector % 4 >= 2:
        body = _ts_muxed(body, "h264" if selector % 4 == 2 else "hevc")
    demuxer = TsDemuxer()
    cut = (selector * 7) % (len(body) + 1)
    try:
        demuxer.feed(body[:cut])
        demuxer.feed(body[cut:])
        demuxer.flush()
    except ProtocolError as exc:  # the demuxer counts malformed input: even this is a crash
        raise AssertionError("TsDemuxer raised on malformed input") from exc


TARGETS: dict[str, Callable[[bytes], None]] = {
    "amf0": amf, "rtmp_chunks": rtmp_chunks, "rtmp_connection": rtmp_connection,
    "flv": flv_file, "codecs": codec_config, "http": http_request,
    "mpegts_demux": mpegts_demux,
}


def _guarded(target: Callable[[bytes], None]) -> Callable[[bytes], None]:
    def run(data: bytes) -> None:
        try:
            target(data)
        except ProtocolError:
            pass
    return run


if __name__ == "__main__":
    name = sys.argv[1] if len(sys.argv) > 1 else ""
    if name not in TARGETS:
        sys.exit(f"usage: targets.py {{{'|'.join(TARGETS)}}} [libFuzzer flags]")
    atheris.Setup([sys.argv[0], *sys.argv[2:]], _guarded(TARGETS[name]))
    atheris.Fuzz()

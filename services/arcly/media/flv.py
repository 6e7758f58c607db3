"""FLV: the file header, tags, and the codec facts a tag body tells (keyframe, sequence header).

RTMP audio/video message bodies are FLV tag bodies, so this module also classifies RTMP media.
Enhanced RTMP (HEVC, AV1, VP9 in FourCC form) is recognised well enough to find keyframes and
sequence starts; payloads pass through untouched.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from arcly.engine.errors import ProtocolError
from arcly.engine.frame import AUDIO, VIDEO, Frame, FrameKind

TAG_AUDIO = 8
TAG_VIDEO = 9
TAG_SCRIPT = 18

# Video codec ids (legacy FLV) and frame types.
VIDEO_AVC = 7
VIDEO_HEVC_LEGACY = 12  # the unofficial "CodecID 12" HEVC some Chinese CDNs use
FRAME_KEY = 1
# Enhanced RTMP video packet types.
EX_SEQUENCE_START = 0
EX_SEQUENCE_END = 2
EX_MPEG2TS_SEQUENCE_START = 5
# Audio
AUDIO_AAC = 10
AUDIO_EX_HEADER = 9  # enhanced RTMP v2 multitrack/FourCC audio

_PREV = struct.Struct(">I")


def file_header(*, audio: bool = True, video: bool = True) -> bytes:
    """The 9-byte FLV header followed by PreviousTagSize0."""
    flags = (4 if audio else 0) | (1 if video else 0)
    return b"FLV\x01" + bytes([flags]) + b"\x00\x00\x00\x09" + b"\x00\x00\x00\x00"


def tag_header(tag_type: int, timestamp: int, size: int) -> bytes:
    """The 11-byte tag header: type, 24-bit size, 24-bit timestamp + 8-bit extension, stream id."""
    if size > 0xFFFFFF:
        raise ValueError(f"FLV tag body of {size} bytes exceeds 16 MiB")
    ts = timestamp & 0xFFFFFFFF
    return struct.pack(">BHBHBB", tag_type, size >> 8, size & 0xFF, (ts >> 8) & 0xFFFF,
                       ts & 0xFF, ts >> 24) + b"\x00\x00\x00"


def encode_tag(tag_type: int, timestamp: int, body: bytes) -> bytes:
    """One complete tag: header + body + PreviousTagSize."""
    return b"".join((tag_header(tag_type, timestamp, len(body)), body,
                     _PREV.pack(11 + len(body))))


def frame_tag(frame: Frame) -> bytes:
    """The FLV tag of ``frame``, built once and shared by every viewer."""
    tag = frame.encodings.get("flv")
    if tag is None:
        tag = encode_tag(int(frame.kind), frame.timestamp, frame.payload)
        frame.encodings["flv"] = tag
    return tag


@dataclass(frozen=True, slots=True)
class Tag:
    tag_type: int
    timestamp: int
    body: bytes


def parse_header(data: bytes) -> int:
    """Check an FLV file header; return the offset of the first tag (after PreviousTagSize0)."""
    if len(data) < 9 or data[:3] != b"FLV":
        raise ProtocolError("FLV: missing 'FLV' signature")
    offset: int = _PREV.unpack(data[5:9])[0]
    if offset < 9:
        raise ProtocolError(f"FLV: header size {offset} < 9")
    return offset + 4


def tag_head(data: bytes | bytearray | memoryview, offset: int = 0) -> tuple[int, int, int]:
    """The type, body size and timestamp of the tag whose 11-byte header starts at ``offset``
    (the caller checked that the 11 bytes are there)."""
    return (data[offset] & 0x1F, int.from_bytes(data[offset + 1:offset + 4], "big"),
            int.from_bytes(data[offset + 4:offset + 7], "big") | (data[offset + 7] << 24))


def parse_tags(data: bytes, offset: int = 0) -> tuple[list[Tag], int]:
    """Parse complete tags from ``data[offset:]``; return them and the offset of the rest."""
    tags = []
    while offset + 11 <= len(data):
        tag_type, size, ts = tag_head(data, offset)
        end = offset + 11 + size + 4
        if end > len(data):
            break
        if tag_type not in (TAG_AUDIO, TAG_VIDEO, TAG_SCRIPT):
            raise ProtocolError(f"FLV: unknown tag type {tag_type} at byte {offset}")
        tags.append(Tag(tag_type, ts, data[offset + 11:offset + 11 + size]))
        offset = end
    return tags, offset


def is_video_keyframe(body: bytes) -> bool:
    """A keyframe that carries picture data (not a sequence header or end-of-sequence)."""
    if not body or (body[0] >> 4) & 0x7 != FRAME_KEY:
        return False
    if body[0] & 0x80:  # enhanced RTMP: CodedFrames or CodedFramesX
        return body[0] & 0x0F in (1, 3)
    if body[0] & 0x0F in (VIDEO_AVC, VIDEO_HEVC_LEGACY):
        return len(body) > 1 and body[1] == 1
    return True


def is_video_config(body: bytes) -> bool:
    """AVC/legacy-HEVC sequence header, or an enhanced-RTMP SequenceStart."""
    if len(body) < 2:
        return False
    if body[0] & 0x80:  # enhanced RTMP: IsExHeader, PacketType in the low nibble
        return body[0] & 0x0F in (EX_SEQUENCE_START, EX_MPEG2TS_SEQUENCE_START)
    codec = body[0] & 0x0F
    return codec in (VIDEO_AVC, VIDEO_HEVC_LEGACY) and body[1] == 0


def is_audio_config(body: bytes) -> bool:
    """AAC AudioSpecificConfig, or an enhanced-RTMP audio SequenceStart."""
    if len(body) < 2:
        return False
    fmt = body[0] >> 4
    if fmt == AUDIO_AAC:
        return body[1] == 0
    if fmt == AUDIO_EX_HEADER:
        return body[0] & 0x0F == EX_SEQUENCE_START
    return False


def make_frame(kind: FrameKind, timestamp: int, body: bytes) -> Frame:
    """Classify an FLV tag body into a ``Frame`` (keyframe / configuration flags)."""
    if kind is VIDEO:
        return Frame(kind, timestamp, body, keyframe=is_video_keyframe(body),
                     config=is_video_config(body))
    if kind is AUDIO:
        return Frame(kind, timestamp, body, config=is_audio_config(body))
    return Frame(kind, timestamp, body, config=is_metadata(body))


def is_metadata(body: bytes) -> bool:
    return body.startswith(b"\x02\x00\x0aonMetaData")

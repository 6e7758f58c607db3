"""Codec configuration: AVC/HEVC decoder configuration records and the AAC AudioSpecificConfig,
and the conversions MPEG-TS needs (length-prefixed NAL units → Annex-B, raw AAC → ADTS)."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from arcly.engine.errors import ProtocolError

START_CODE = b"\x00\x00\x00\x01"
AUD_H264 = START_CODE + b"\x09\xf0"
AUD_HEVC = START_CODE + b"\x46\x01\x50"

# Video codecs as they appear in FLV: legacy codec ids and enhanced-RTMP FourCCs.
H264 = "h264"
HEVC = "hevc"
_FOURCC = {b"avc1": H264, b"hvc1": HEVC}


@dataclass(frozen=True, slots=True)
class VideoPacket:
    """A video tag body taken apart: codec, packet kind, composition offset, NAL data."""

    codec: str | None
    is_config: bool
    is_frame: bool
    cts: int
    data: bytes


def parse_video(body: bytes) -> VideoPacket:
    """Split an FLV video tag body (legacy AVC/HEVC or enhanced RTMP)."""
    if len(body) < 2:
        raise ProtocolError("video tag shorter than 2 bytes")
    if body[0] & 0x80:  # enhanced RTMP
        packet_type = body[0] & 0x0F
        codec = _FOURCC.get(body[1:5])
        if packet_type == 1:  # CodedFrames: 24-bit composition offset
            return VideoPacket(codec, False, True, _s24(body[5:8]), body[8:])
        if packet_type == 3:  # CodedFramesX: no composition offset
            return VideoPacket(codec, False, True, 0, body[5:])
        return VideoPacket(codec, packet_type == 0, False, 0, body[5:])
    codec_id = body[0] & 0x0F
    codec = H264 if codec_id == 7 else HEVC if codec_id == 12 else None
    if len(body) < 5:
        raise ProtocolError("AVC video tag shorter than 5 bytes")
    return VideoPacket(codec, body[1] == 0, body[1] == 1, _s24(body[2:5]), body[5:])


def _s24(raw: bytes) -> int:
    if len(raw) < 3:
        raise ProtocolError("truncated composition time offset")
    value = int.from_bytes(raw, "big")
    return value - (1 << 24) if value & 0x800000 else value


@dataclass(frozen=True, slots=True)
class VideoConfig:
    """Parameter sets (SPS/PPS, plus VPS for HEVC) and the NAL length size of a stream.

    ``record`` is the decoder configuration record they came from, verbatim: fMP4 carries it
    as the ``avcC``/``hvcC`` box. Equality ignores it (the fields above are what it says)."""

    codec: str
    parameter_sets: tuple[bytes, ...]
    nal_length_size: int
    record: bytes = field(default=b"", compare=False, repr=False)

    def annexb_parameter_sets(self) -> bytes:
        return b"".join(START_CODE + ps for ps in self.parameter_sets)


def parse_avc_config(record: bytes) -> VideoConfig:
    """AVCDecoderConfigurationRecord (ISO 14496-15 §5.3.3.1)."""
    if len(record) < 7 or record[0] != 1:
        raise ProtocolError("AVC configuration record malformed")
    nal_length_size = (record[4] & 0x03) + 1
    pos = 5
    sets: list[bytes] = []
    for count_mask in (0x1F, 0xFF):
        if pos >= len(record):
            raise ProtocolError("AVC configuration record truncated")
        count = record[pos] & count_mask
        pos += 1
        for _ in range(count):
            if pos + 2 > len(record):
                raise ProtocolError("AVC configuration record truncated")
            (size,) = struct.unpack(">H", record[pos:pos + 2])
            sets.append(record[pos + 2:pos + 2 + size])
            pos += 2 + size
            if pos > len(record):
                raise ProtocolError("AVC configuration record truncated")
    return VideoConfig(H264, tuple(sets), nal_length_size, bytes(record))


def parse_hevc_config(record: bytes) -> VideoConfig:
    """HEVCDecoderConfigurationRecord (ISO 14496-15 §8.3.3.1)."""
    if len(record) < 23:
        raise ProtocolError("HEVC configuration record truncated")
    nal_length_size = (record[21] & 0x03) + 1
    arrays = record[22]
    pos = 23
    sets: list[bytes] = []
    for _ in range(arrays):
        if pos + 3 > len(record):
            raise ProtocolError("HEVC configuration record truncated")
        (count,) = struct.unpack(">H", record[pos + 1:pos + 3])
        pos += 3
        for _ in range(count):
            if pos + 2 > len(record):
                raise ProtocolError("HEVC configuration record truncated")
            (size,) = struct.unpack(">H", record[pos:pos + 2])
            if pos + 2 + size > len(record):
                raise ProtocolError("HEVC configuration record truncated")
            sets.append(record[pos + 2:pos + 2 + size])
            pos += 2 + size
    return VideoConfig(HEVC, tuple(sets), nal_length_size, bytes(record))


def parse_video_config(packet: VideoPacket) -> VideoConfig | None:
    if packet.codec == H264:
        return parse_avc_config(packet.data)
    if packet.codec == HEVC:
        return parse_hevc_config(packet.data)
    return None


def to_annexb(data: bytes, config: VideoConfig, *, keyframe: bool,
              delimiter: bool = True) -> bytes:
    """Length-prefixed NAL units → Annex-B: an access unit delimiter first (MPEG-TS needs one;
    ``delimiter=False`` for RTP, which marks access units itself), the parameter sets before
    every keyframe, in-band delimiters dropped (ours replace them)."""
    hevc = config.codec == HEVC
    out = [AUD_HEVC if hevc else AUD_H264] if delimiter else []
    if keyframe:
        out.append(config.annexb_parameter_sets())
    size_len = config.nal_length_size
    pos = 0
    end = len(data)
    while pos + size_len <= end:
        size = int.from_bytes(data[pos:pos + size_len], "big")
        pos += size_len
        if size == 0 or pos + size > end:
            raise ProtocolError(f"NAL unit of {size} bytes overruns the frame")
        nal = data[pos:pos + size]
        pos += size
        nal_type = (nal[0] >> 1) & 0x3F if hevc else nal[0] & 0x1F
        if nal_type == (35 if hevc else 9):
            continue
        out.append(START_CODE)
        out.append(nal)
    return b"".join(out)


def split_annexb(data: bytes) -> list[bytes]:
    """Annex-B → its NAL units (start codes of 3 or 4 bytes removed, empty units dropped)."""
    units: list[bytes] = []
    start = -1
    pos = 0
    end = len(data)
    while True:
        found = data.find(b"\x00\x00\x01", pos)
        if found < 0:
            break
        if start >= 0:
            unit_end = found - 1 if found > 0 and data[found - 1] == 0 else found
            if unit_end > start:
                units.append(data[start:unit_end])
        start = pos = found + 3
    if start >= 0 and start < end:
        units.append(data[start:])
    return units


def avc_config_record(sps: bytes, pps: bytes) -> bytes:
    """An AVCDecoderConfigurationRecord (ISO 14496-15 §5.3.3.1) for one SPS and one PPS, with
    4-byte NAL lengths: what an RTMP publisher sends as its AVC sequence header."""
    if len(sps) < 4 or len(pps) < 1:
        raise ProtocolError("SPS or PPS too short for an AVC configuration record")
    return (bytes((1, sps[1], sps[2], sps[3], 0xFF, 0xE1)) + struct.pack(">H", len(sps)) + sps
            + b"\x01" + struct.pack(">H", len(pps)) + pps)


def length_prefixed(units: list[bytes]) -> bytes:
    """NAL units → 4-byte length-prefixed (AVCC) form."""
    return b"".join(struct.pack(">I", len(unit)) + unit for unit in units)


# Sampling frequencies by samplingFrequencyIndex (ISO 14496-3 §1.6.3.3).
AAC_SAMPLE_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000,
                    11025, 8000, 7350)


@dataclass(frozen=True, slots=True)
class AacConfig:
    """The AudioSpecificConfig fields we use; ``asc`` is the config itself, verbatim (fMP4
    carries it in ``esds``). Equality ignores ``asc`` (the fields are what it says)."""

    object_type: int
    frequency_index: int
    channels: int
    asc: bytes = field(default=b"", compare=False, repr=False)

    @property
    def sample_rate(self) -> int:
        """The (core) sampling rate in Hz: one AAC frame is 1024 samples at this rate."""
        return AAC_SAMPLE_RATES[self.frequency_index]

    def adts_header(self, payload_len: int) -> bytes:
        """The 7-byte ADTS header for one raw AAC frame (ISO 14496-3 §1.A.2)."""
        # HE-AAC (SBR, 5) and HE-AACv2 (PS, 29) travel as AAC-LC at the core rate: decoders
        # find the SBR/PS data themselves (implicit signalling, what ffmpeg writes too).
        core = 2 if self.object_type in (5, 29) else self.object_type
        profile = min(max(core, 1), 4) - 1
        length = payload_len + 7
        if length > 0x1FFF:
            raise ProtocolError(f"AAC frame of {payload_len} bytes too large for ADTS")
        return bytes((
            0xFF, 0xF1,
            (profile << 6) | (self.frequency_index << 2) | (self.channels >> 2),
            ((self.channels & 0x3) << 6) | (length >> 11),
            (length >> 3) & 0xFF,
            ((length & 0x7) << 5) | 0x1F,
            0xFC,
        ))


def parse_aac_config(asc: bytes) -> AacConfig:
    """AudioSpecificConfig: object type, sampling frequency index, channel configuration."""
    if len(asc) < 2:
        raise ProtocolError("AudioSpecificConfig shorter than 2 bytes")
    bits = int.from_bytes(asc[:5].ljust(5, b"\x00"), "big")
    object_type = bits >> 35
    shift = 35
    if object_type == 31:
        object_type = 32 + ((bits >> 29) & 0x3F)
        shift = 29
    frequency_index = (bits >> (shift - 4)) & 0x0F
    shift -= 4
    if frequency_index == 15:
        raise ProtocolError("AudioSpecificConfig with an explicit sampling rate is unsupported")
    channels = (bits >> (shift - 4)) & 0x0F
    if frequency_index > 12:
        raise ProtocolError(f"AAC sampling frequency index {frequency_index} is reserved")
    return AacConfig(object_type, frequency_index, channels, bytes(asc))

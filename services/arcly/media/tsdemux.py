"""An MPEG-2 transport stream demuxer (ISO 13818-1), sans-I/O, for SRT ingest.

SRT publishers (ffmpeg, OBS, hardware encoders) send MPEG-TS, seven 188-byte packets to a
datagram. ``TsDemuxer`` turns those bytes, cut wherever the network cut them, into the kernel's
frames: FLV tag bodies exactly as an RTMP publisher sends them (an AVC sequence header or an
enhanced-RTMP ``hvc1`` SequenceStart, then length-prefixed access units; an AAC
AudioSpecificConfig, then raw AAC frames). Everything after ingest — GOP cache, HLS, HTTP-FLV,
WebRTC — therefore cannot tell an SRT publisher from an RTMP one.

    demuxer = TsDemuxer()
    for datagram in datagrams:
        for frame in demuxer.feed(datagram):
            publish(frame)
    for frame in demuxer.flush():  # end of stream: the last video PES has no successor
        publish(frame)

A live ingest must outlive a lossy link and a sloppy encoder, so ``feed`` never raises: each
problem costs as little as it must (a few bytes while resynchronising, a PSI section, one PES,
the rest of one PES's ADTS frames) and is counted in ``stats``. Buffers are capped, so hostile
input cannot make the demuxer allocate without bound. The parsers underneath (``parse_pes``,
``read_adts``, ``parse_pat``, ``parse_pmt``, ``hevc_config_record``) raise ``ProtocolError``
like every other parser of ours; the demuxer turns that into a counter.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from arcly.engine.errors import ProtocolError
from arcly.engine.frame import Frame, FrameKind

from . import codecs
from .flv import make_frame
from .fmp4 import _Bits, hevc_sps_chroma_format, unescape
from .mpegts import PACKET, PID_PAT, STREAM_TYPE, crc32_mpeg2

SYNC = 0x47
PID_NULL = 0x1FFF
# The stream types we demux (ISO 13818-1 Table 2-34): H.264, HEVC, AAC in ADTS.
VIDEO_STREAM_TYPES = {STREAM_TYPE["h264"]: codecs.H264, STREAM_TYPE[codecs.HEVC]: codecs.HEVC}
AAC_STREAM_TYPE = STREAM_TYPE["aac"]
# One PES holds a whole access unit: 8 MiB is beyond any sane 4K keyframe. AAC PES carry a few
# frames of at most 8 KiB each: 64 KiB, and room for the largest bounded PES (6 + 0xFFFF).
MAX_VIDEO_PES = 8 << 20
MAX_AUDIO_PES = 6 + 0xFFFF
# PSI sections are at most 1024 bytes (§2.4.4.11: section_length ≤ 1021).
MAX_SECTION_LENGTH = 1021
# A jump in the program clock this far back or forward is a new timeline (an encoder restart,
# a splice), not a late or early packet: re-base so the output stays monotonic.
MAX_BACKWARD_TICKS = 10 * 90_000
MAX_FORWARD_TICKS = 30 * 90_000
AAC_FRAME_SAMPLES = 1024

_MASK33 = (1 << 33) - 1
_HALF33 = 1 << 32
# Stream ids whose PES carry no optional header, so no timestamps (§2.4.3.7, Table 2-22).
_NO_PES_HEADER = frozenset((0xBC, 0xBE, 0xBF, 0xF0, 0xF1, 0xF2, 0xF8, 0xFF))
_FOURCC_HEVC = b"hvc1"


@dataclass(slots=True)
class TsDemuxStats:
    """What the demuxer has seen and what it threw away, since it was made.

    Mutable counters rather than events: an operator graphs them per publisher to tell a lossy
    link (``cc_errors``, ``skipped_bytes``) from a broken encoder (``bad_pes``, ``bad_adts``,
    ``crc_errors``)."""

    packets: int = 0  # 188-byte packets read
    skipped_bytes: int = 0  # bytes thrown away while looking for the 0x47 sync byte
    sync_losses: int = 0  # times a packet did not start with 0x47 where one was due
    transport_errors: int = 0  # packets with transport_error_indicator set, ignored
    bad_packets: int = 0  # reserved adaptation_field_control, impossible adaptation length
    scrambled: int = 0  # scrambled packets (we have no keys): their PES is dropped
    cc_errors: int = 0  # continuity counter gaps: packets lost on the way
    duplicates: int = 0  # repeated packets (same counter twice), ignored as §2.4.3.3 allows
    discontinuity_flags: int = 0  # adaptation fields announcing a counter/timebase break
    unknown_pids: int = 0  # packets on PIDs we do not demux (SDT, other streams)
    ignored_streams: int = 0  # PMT entries of stream types we do not demux, per PMT read
    table_updates: int = 0  # PAT/PMT contents that changed what is demuxed
    bad_sections: int = 0  # malformed PSI sections, ignored
    crc_errors: int = 0  # PSI sections whose CRC_32 does not check, ignored
    dropped_pes: int = 0  # partial PES thrown away after a loss: no corrupt frame goes out
    oversized_pes: int = 0  # PES over the size cap, thrown away
    bad_pes: int = 0  # malformed PES headers, PES without a usable timestamp
    bad_adts: int = 0  # malformed ADTS frames: the rest of their PES is dropped
    bad_parameter_sets: int = 0  # SPS/PPS/VPS no configuration record can be built from
    skipped_frames: int = 0  # video before the first configuration and keyframe
    rebases: int = 0  # timestamp jumps treated as a new timeline
    video_frames: int = 0  # video frames emitted (configuration frames not counted)
    audio_frames: int = 0  # audio frames emitted (configuration frames not counted)


# -- PSI ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ElementaryStream:
    stream_type: int
    pid: int


@dataclass(frozen=True, slots=True)
class Pmt:
    """A program map section: the program it describes and its elementary streams in order."""

    program: int
    current: bool
    streams: tuple[ElementaryStream, ...]


def _check_section(section: bytes, table_id: int, minimum: int) -> None:
    if len(section) < minimum:
        raise ProtocolError(f"PSI section of {len(section)} bytes is shorter than {minimum}")
    if section[0] != table_id:
        raise ProtocolError(f"PSI table_id {section[0]:#04x} where {table_id:#04x} was due")
    if not section[1] & 0x80:
        raise ProtocolError("PSI section without section_syntax_indicator")


def parse_pat(section: bytes) -> tuple[bool, list[tuple[int, int]]]:
    """A PAT section (§2.4.4.3), CRC already checked: current_next_indicator and the
    (program_number, program_map_PID) pairs, the network PID (program 0) left out."""
    _check_section(section, 0x00, 12)
    programs = []
    entries = section[8:-4]
    for pos in range(0, len(entries) - 3, 4):
        program = int.from_bytes(entries[pos:pos + 2], "big")
        if program:
            programs.append((program, int.from_bytes(entries[pos + 2:pos + 4], "big") & 0x1FFF))
    return bool(section[5] & 1), programs


def parse_pmt(section: bytes) -> Pmt:
    """A PMT section (§2.4.4.8), CRC already checked."""
    _check_section(section, 0x02, 16)
    info_len = int.from_bytes(section[10:12], "big") & 0x0FFF
    pos = 12 + info_len
    end = len(section) - 4
    if pos > end:
        raise ProtocolError(f"PMT program_info_length {info_len} overruns the section")
    streams = []
    while pos + 5 <= end:
        es_info_len = int.from_bytes(section[pos + 3:pos + 5], "big") & 0x0FFF
        pid = int.from_bytes(section[pos + 1:pos + 3], "big") & 0x1FFF
        streams.append(ElementaryStream(section[pos], pid))
        pos += 5 + es_info_len
    if pos != end:
        raise ProtocolError(f"PMT stream loop ends at byte {pos}, not at the CRC ({end})")
    return Pmt(int.from_bytes(section[3:5], "big"), bool(section[5] & 1), tuple(streams))


class _SectionReader:
    """Reassembles the PSI sections of one PID (§2.4.4): pointer_field, sections spanning
    packets, several sections in one packet, 0xFF stuffing after the last."""

    def __init__(self, stats: TsDemuxStats) -> None:
        self._stats = stats
        self._buf = bytearray()
        self._active = False

    def reset(self) -> None:
        self._buf.clear()
        self._active = False

    def push(self, payload: bytes, start: bool) -> list[bytes]:
        sections: list[bytes] = []
        if start:
            pointer = payload[0] if payload else 0
            if 1 + pointer > len(payload):
                self._stats.bad_sections += 1
                self.reset()
                return sections
            if self._active:  # the bytes before the pointer end the section under way
                self._buf += payload[1:1 + pointer]
                self._drain(sections)
            self._buf = bytearray(payload[1 + pointer:])
            self._active = True
        elif self._active:
            self._buf += payload
        self._drain(sections)
        return sections

    def _drain(self, sections: list[bytes]) -> None:
        buf = self._buf
        while self._active and len(buf) >= 3:
            if buf[0] == 0xFF:  # stuffing: no more sections in this packet
                self.reset()
                return
            length = ((buf[1] & 0x0F) << 8) | buf[2]
            if length > MAX_SECTION_LENGTH:
                self._stats.bad_sections += 1
                self.reset()
                return
            if len(buf) < 3 + length:
                return
            sections.append(bytes(buf[:3 + length]))
            del buf[:3 + length]


# -- PES ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pes:
    """One PES packet taken apart: 33-bit 90 kHz timestamps (``None`` when absent)."""

    stream_id: int
    pts: int | None
    dts: int | None
    payload: bytes


def _timestamp(raw: bytes) -> int:
    """A 33-bit PTS/DTS spread over 5 bytes with marker bits (§2.4.3.7); markers not checked,
    since encoders that get them wrong still mean the value."""
    return (((raw[0] >> 1) & 0x07) << 30) | (raw[1] << 22) | ((raw[2] >> 1) << 15) \
        | (raw[3] << 7) | (raw[4] >> 1)


def parse_pes(data: bytes) -> Pes:
    """A complete PES packet (§2.4.3.6). A non-zero PES_packet_length bounds the payload."""
    if len(data) < 9 or data[:3] != b"\x00\x00\x01":
        raise ProtocolError("PES without its 00 00 01 start code prefix")
    stream_id = data[3]
    if stream_id in _NO_PES_HEADER:
        raise ProtocolError(f"PES stream_id {stream_id:#04x} carries no timestamps")
    length = int.from_bytes(data[4:6], "big")
    end = 6 + length if length else len(data)
    if end > len(data):
        raise ProtocolError(f"PES of {len(data)} bytes is shorter than its length {end}")
    if data[6] & 0xC0 != 0x80:
        raise ProtocolError("PES header without its '10' marker bits")
    flags = data[7] >> 6
    header_end = 9 + data[8]
    if header_end > end:
        raise ProtocolError(f"PES header of {data[8]} bytes overruns the packet")
    if flags == 1:
        raise ProtocolError("PES PTS_DTS_flags '01' is forbidden")
    pts = dts = None
    if flags & 2:
        if data[8] < 5 * (flags - 1):
            raise ProtocolError("PES header too short for its PTS/DTS")
        pts = _timestamp(data[9:14])
        if flags == 3:
            dts = _timestamp(data[14:19])
    return Pes(stream_id, pts, dts, bytes(data[header_end:end]))


class _PesAssembler:
    """Collects one PID's packets into PES packets: a PES starts at payload_unit_start and ends
    at the next one, or as soon as its PES_packet_length is reached (audio; video PES are
    usually unbounded, length 0, so they end only when the next one starts)."""

    def __init__(self, limit: int, stats: TsDemuxStats) -> None:
        self._limit = limit
        self._stats = stats
        self._buf: bytearray | None = None
        self._end: int | None = None  # total size once known; 0: unbounded

    def lose(self) -> None:
        """Packets were lost: whatever is under way cannot be trusted any more."""
        if self._buf is not None:
            self._stats.dropped_pes += 1
        self._buf = None

    def push(self, payload: bytes, start: bool) -> list[bytes]:
        done: list[bytes] = []
        if start:
            self._finish(done)
            self._buf = bytearray(payload)
            self._end = None
        elif self._buf is None:
            return done  # the rest of a PES already dropped, or joined mid-PES
        else:
            self._buf += payload
        buf = self._buf
        if len(buf) > self._limit:
            self._stats.oversized_pes += 1
            self._buf = None
            return done
        if self._end is None and len(buf) >= 6:
            length = int.from_bytes(buf[4:6], "big")
            self._end = 6 + length if length else 0
        if self._end and len(buf) >= self._end:
            done.append(bytes(buf[:self._end]))
            self._buf = None
        return done

    def flush(self) -> list[bytes]:
        done: list[bytes] = []
        self._finish(done)
        self._buf = None
        return done

    def _finish(self, done: list[bytes]) -> None:
        if self._buf is None:
            return
        if self._end:  # bounded and not complete: cut short
            self._stats.bad_pes += 1
        else:
            done.append(bytes(self._buf))


# -- timestamps ---------------------------------------------------------------------------------


def _unwrap(raw: int, near: int) -> int:
    """The 33-bit ``raw`` timestamp as the tick closest to ``near`` on the unwrapped clock."""
    delta = (raw - near) & _MASK33
    if delta >= _HALF33:
        delta -= 1 << 33
    return near + delta


def _s24(value: int) -> bytes:
    value = max(-(1 << 23), min((1 << 23) - 1, value))
    return value.to_bytes(3, "big", signed=True)


class _Timeline:
    """The program clock, shared by both tracks so A/V sync survives: 33-bit 90 kHz PTS/DTS
    unwrapped past their 26.5 h wrap, mapped to milliseconds from the first timestamp seen.

    A jump further than ``MAX_BACKWARD_TICKS``/``MAX_FORWARD_TICKS`` from the previous
    timestamp re-bases the mapping to just after the latest millisecond emitted, so output
    never runs backwards nor leaps ahead."""

    def __init__(self, stats: TsDemuxStats) -> None:
        self._stats = stats
        self._last: int | None = None  # the last tick placed: the reference for unwrapping
        self._origin = 0  # the tick that maps to 0 ms
        self._high_ms = 0  # the latest millisecond emitted on either track

    def place(self, raw: int) -> int:
        """Unwrap ``raw`` against the previous timestamp; re-base on a jump."""
        if self._last is None:
            self._last = self._origin = raw
            return raw
        tick = _unwrap(raw, self._last)
        step = tick - self._last
        if step < -MAX_BACKWARD_TICKS or step > MAX_FORWARD_TICKS:
            self._origin = tick - (self._high_ms + 1) * 90
            self._stats.rebases += 1
        self._last = tick
        return tick

    def ms(self, tick: int) -> int:
        return (tick - self._origin) // 90

    def emitted(self, ms: int) -> None:
        self._high_ms = max(self._high_ms, ms)


# -- video --------------------------------------------------------------------------------------


def hevc_config_record(vps: bytes, sps: bytes, pps: bytes) -> bytes:
    """An HEVCDecoderConfigurationRecord (ISO 14496-15 §8.3.3.1) for one VPS, SPS and PPS with
    4-byte NAL lengths: what an enhanced-RTMP publisher sends as its ``hvc1`` SequenceStart.
    Profile, tier, level, chroma format and bit depths come from the SPS (H.265 §7.3.2.2);
    segmentation, parallelism and frame rate are written as "unknown", as ffmpeg does."""
    rbsp = unescape(sps)
    if len(rbsp) < 15 or not vps or not pps:
        raise ProtocolError("VPS, SPS or PPS too short for an HEVC configuration record")
    bits = _Bits(rbsp[2:])
    bits.u(4)  # sps_video_parameter_set_id
    sub_layers = bits.u(3)  # sps_max_sub_layers_minus1
    if sub_layers > 6:
        raise ProtocolError(f"HEVC SPS with sps_max_sub_layers_minus1 {sub_layers} > 6")
    nested = bits.u(1)  # sps_temporal_id_nesting_flag
    general = rbsp[3:15]  # profile_space/tier/profile_idc, compatibility, constraints, level
    chroma_format_idc = hevc_sps_chroma_format(bits, sub_layers)
    if chroma_format_idc == 3:
        bits.u(1)  # separate_colour_plane_flag
    bits.ue()  # pic_width_in_luma_samples
    bits.ue()  # pic_height_in_luma_samples
    if bits.u(1):  # conformance_window_flag
        for _ in range(4):
            bits.ue()
    depth_luma, depth_chroma = bits.ue(), bits.ue()
    if chroma_format_idc > 3 or depth_luma > 7 or depth_chroma > 7:
        raise ProtocolError("HEVC SPS with an impossible chroma format or bit depth")
    head = (b"\x01" + general
            + struct.pack(">HBBBBHB", 0xF000, 0xFC, 0xFC | chroma_format_idc,
                          0xF8 | depth_luma, 0xF8 | depth_chroma, 0,
                          ((sub_layers + 1) << 3) | (nested << 2) | 0x03))
    arrays = b"".join(bytes((0x80 | nal_type,)) + struct.pack(">HH", 1, len(unit)) + unit
                      for nal_type, unit in ((32, vps), (33, sps), (34, pps)))
    return head + b"\x03" + arrays


@dataclass(frozen=True, slots=True)
class _NalRules:
    """What a codec's NAL unit types mean to us: parameter sets (in config record order),
    units dropped (delimiters and filler: ours are length-prefixed), keyframe types."""

    parameter_sets: tuple[int, ...]
    dropped: frozenset[int]
    keyframes: frozenset[int]
    hevc: bool

    def nal_type(self, unit: bytes) -> int:
        return (unit[0] >> 1) & 0x3F if self.hevc else unit[0] & 0x1F


_H264_RULES = _NalRules((7, 8), frozenset((9, 12)), frozenset((5,)), hevc=False)
# HEVC: VPS 32, SPS 33, PPS 34; AUD 35, FD 38; IRAP pictures (BLA, IDR, CRA) 16 to 23.
_HEVC_RULES = _NalRules((32, 33, 34), frozenset((35, 38)), frozenset(range(16, 24)), hevc=True)


class _VideoTrack:
    """Access units → FLV video tag bodies, legacy AVC or enhanced-RTMP ``hvc1``.

    Parameter sets leave the picture data for the configuration frame, which goes out before
    the first keyframe and again whenever they change; nothing goes out before that first
    configuration and keyframe, since no decoder could start from it. The record holds the
    latest set of each kind: a stream that switches between several PPS ids is not served.
    A keyframe is an IDR (H.264) or IRAP (HEVC) picture: intra-refresh streams, which have
    none, never start."""

    def __init__(self, codec: str, timeline: _Timeline, stats: TsDemuxStats) -> None:
        self.codec = codec
        self._rules = _HEVC_RULES if codec == codecs.HEVC else _H264_RULES
        self._timeline = timeline
        self._stats = stats
        self._sets: dict[int, bytes] = {}
        self._emitted: tuple[bytes, ...] | None = None
        self._started = False
        self._last_ms = 0

    def on_pes(self, pes: Pes, out: list[Frame]) -> None:
        if pes.pts is None:
            self._stats.bad_pes += 1  # an access unit with no place on the timeline
            return
        timeline = self._timeline
        dts = timeline.place(pes.pts if pes.dts is None else pes.dts)
        cts = timeline.ms(_unwrap(pes.pts, dts)) - timeline.ms(dts)
        ms = max(timeline.ms(dts), self._last_ms)
        pictures, keyframe = self._split(pes.payload)
        can_start = self._started or keyframe
        sets = tuple(self._sets.get(t, b"") for t in self._rules.parameter_sets)
        if can_start and all(sets) and sets != self._emitted:
            try:
                config = self._config_body(sets)
            except ProtocolError:
                self._stats.bad_parameter_sets += 1
                return
            out.append(make_frame(FrameKind.VIDEO, ms, config))
            self._emitted = sets
            self._sent(ms)
        if not pictures:
            return
        if not can_start or self._emitted is None:
            self._stats.skipped_frames += 1
            return
        self._started = True
        out.append(make_frame(FrameKind.VIDEO, ms, self._frame_body(keyframe, cts, pictures)))
        self._stats.video_frames += 1
        self._sent(ms)

    def _sent(self, ms: int) -> None:
        self._last_ms = ms
        self._timeline.emitted(ms)

    def _split(self, annexb: bytes) -> tuple[list[bytes], bool]:
        rules = self._rules
        pictures: list[bytes] = []
        keyframe = False
        for unit in codecs.split_annexb(annexb):
            if len(unit) < (2 if rules.hevc else 1):  # shorter than its NAL header
                continue
            nal_type = rules.nal_type(unit)
            if nal_type in rules.parameter_sets:
                self._sets[nal_type] = unit
            elif nal_type not in rules.dropped:
                keyframe = keyframe or nal_type in rules.keyframes
                pictures.append(unit)
        return pictures, keyframe

    def _config_body(self, sets: tuple[bytes, ...]) -> bytes:
        if self._rules.hevc:
            vps, sps, pps = sets
            # Enhanced RTMP: IsExHeader | FrameType 1 << 4 | PacketType SequenceStart (0).
            return b"\x90" + _FOURCC_HEVC + hevc_config_record(vps, sps, pps)
        sps, pps = sets
        return b"\x17\x00\x00\x00\x00" + codecs.avc_config_record(sps, pps)

    def _frame_body(self, keyframe: bool, cts: int, pictures: list[bytes]) -> bytes:
        data = codecs.length_prefixed(pictures)
        if self._rules.hevc:  # PacketType CodedFrames (1): a 24-bit composition offset
            return bytes((0x91 if keyframe else 0xA1,)) + _FOURCC_HEVC + _s24(cts) + data
        return bytes((0x17 if keyframe else 0x27, 0x01)) + _s24(cts) + data


# -- audio --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AdtsFrame:
    """One ADTS frame (ISO 14496-3 §1.A.2): the header fields we use and its raw AAC data."""

    object_type: int  # profile + 1: 1 Main, 2 LC, 3 SSR, 4 LTP
    frequency_index: int
    channels: int
    blocks: int  # raw data blocks in the frame, 1024 samples each
    raw: bytes
    end: int  # where the next frame starts

    @property
    def sample_rate(self) -> int:
        return codecs.AAC_SAMPLE_RATES[self.frequency_index]

    def audio_specific_config(self) -> bytes:
        """The 2-byte AudioSpecificConfig (§1.6.2.1) an RTMP publisher would send."""
        return bytes(((self.object_type << 3) | (self.frequency_index >> 1),
                      ((self.frequency_index & 1) << 7) | (self.channels << 3)))


def read_adts(data: bytes, pos: int = 0) -> AdtsFrame:
    """The ADTS frame at ``data[pos:]``: 7-byte header, or 9 with its CRC."""
    if pos + 7 > len(data):
        raise ProtocolError(f"ADTS header truncated at byte {pos}")
    b1, b2, b3 = data[pos + 1], data[pos + 2], data[pos + 3]
    if data[pos] != 0xFF or b1 & 0xF6 != 0xF0:
        raise ProtocolError(f"no ADTS syncword (layer 0) at byte {pos}")
    header = 7 if b1 & 1 else 9  # protection_absent
    frequency_index = (b2 >> 2) & 0x0F
    if frequency_index >= len(codecs.AAC_SAMPLE_RATES):
        raise ProtocolError(f"ADTS sampling_frequency_index {frequency_index} is reserved")
    length = ((b3 & 0x03) << 11) | (data[pos + 4] << 3) | (data[pos + 5] >> 5)
    if length <= header or pos + length > len(data):
        raise ProtocolError(f"ADTS frame_length {length} at byte {pos} does not fit")
    return AdtsFrame((b2 >> 6) + 1, frequency_index, ((b2 & 1) << 2) | (b3 >> 6),
                     (data[pos + 6] & 0x03) + 1, bytes(data[pos + header:pos + length]),
                     pos + length)


class _AudioTrack:
    """ADTS → FLV AAC tag bodies: the AudioSpecificConfig when new or changed, then one frame
    per ADTS frame, each at the PES PTS plus the samples before it in the PES."""

    def __init__(self, timeline: _Timeline, stats: TsDemuxStats) -> None:
        self._timeline = timeline
        self._stats = stats
        self._asc = b""
        self._next: int | None = None  # the tick right after the last frame
        self._last_ms = 0

    def on_pes(self, pes: Pes, out: list[Frame]) -> None:
        if pes.pts is not None:
            start = self._timeline.place(pes.pts)
        elif self._next is not None:  # PTS may be left out (§2.7.4): carry on from the last
            start = self._next
        else:
            self._stats.bad_pes += 1
            return
        samples, rate, pos, payload = 0, 0, 0, pes.payload
        while pos < len(payload):
            try:
                frame = read_adts(payload, pos)
            except ProtocolError:
                self._stats.bad_adts += 1  # where the next frame starts is anyone's guess
                break
            pos = frame.end
            rate = frame.sample_rate
            ms = max(self._timeline.ms(start + samples * 90_000 // rate), self._last_ms)
            samples += frame.blocks * AAC_FRAME_SAMPLES
            if frame.blocks != 1:  # FLV carries one raw data block per tag
                self._stats.bad_adts += 1
                continue
            self._emit(frame, ms, out)
        if rate:
            self._next = start + samples * 90_000 // rate

    def _emit(self, frame: AdtsFrame, ms: int, out: list[Frame]) -> None:
        asc = frame.audio_specific_config()
        if asc != self._asc:
            out.append(make_frame(FrameKind.AUDIO, ms, b"\xaf\x00" + asc))
            self._asc = asc
        out.append(make_frame(FrameKind.AUDIO, ms, b"\xaf\x01" + frame.raw))
        self._stats.audio_frames += 1
        self._last_ms = ms
        self._timeline.emitted(ms)


# -- the demuxer --------------------------------------------------------------------------------


@dataclass(slots=True)
class _Stream:
    """One elementary stream PID: its PES assembler and the track its PES go to."""

    stream_type: int
    assembler: _PesAssembler
    track: _VideoTrack | _AudioTrack


class TsDemuxer:
    """MPEG-TS bytes in any chunking → frames. One program (the PAT's first), its first H.264
    or HEVC stream and its first AAC (ADTS) stream; other programs and streams are counted
    and ignored.

    Frames come out in the order their PES complete: an audio PES (bounded) as soon as its
    last packet arrives, a video PES (usually unbounded) when the next one starts — one frame
    of latency inherent to MPEG-TS."""

    def __init__(self, *, max_video_pes: int = MAX_VIDEO_PES,
                 max_audio_pes: int = MAX_AUDIO_PES) -> None:
        self.stats = TsDemuxStats()
        self._max_video_pes = max_video_pes
        self._max_audio_pes = max_audio_pes
        self._buf = bytearray()
        self._synced = False
        self._cc: dict[int, int] = {}
        self._pat = _SectionReader(self.stats)
        self._pat_raw = b""
        self._program: int | None = None
        self._pmt_pid: int | None = None
        self._pmt = _SectionReader(self.stats)
        self._pmt_raw = b""
        self._streams: dict[int, _Stream] = {}
        self._timeline = _Timeline(self.stats)
        self._video: _VideoTrack | None = None
        self._audio: _AudioTrack | None = None

    @property
    def video_codec(self) -> str | None:
        """``"h264"`` or ``"hevc"`` once a PMT has named a video stream we demux."""
        return self._video.codec if self._video else None

    def feed(self, data: bytes) -> list[Frame]:
        """Take the next bytes of the stream; return the frames they complete."""
        out: list[Frame] = []
        buf = self._buf
        buf += data
        pos, end = 0, len(buf)
        while True:
            if self._synced:
                if end - pos < PACKET:
                    break
                if buf[pos] == SYNC:
                    self._packet(bytes(buf[pos:pos + PACKET]), out)
                    pos += PACKET
                    continue
                self._synced = False
                self.stats.sync_losses += 1
            # Hunting: a 0x47 counts as a packet start only if another follows 188 bytes on.
            found = buf.find(SYNC, pos)
            if found < 0:
                found = end
            self.stats.skipped_bytes += found - pos
            pos = found
            if pos + PACKET >= end:
                break  # wait for the byte that confirms (or refutes) this candidate
            if buf[pos + PACKET] == SYNC:
                self._synced = True
            else:
                self.stats.skipped_bytes += 1
                pos += 1
        del buf[:pos]
        return out

    def flush(self) -> list[Frame]:
        """End of stream: the PES still being assembled (the last video frame, whose end no
        next PES marks) go out — cut short if the connection was."""
        out: list[Frame] = []
        for stream in list(self._streams.values()):
            for pes in stream.assembler.flush():
                self._on_pes(stream, pes, out)
        return out

    # -- packets --

    def _packet(self, packet: bytes, out: list[Frame]) -> None:
        stats = self.stats
        stats.packets += 1
        b1, b3 = packet[1], packet[3]
        if b1 & 0x80:  # transport_error_indicator: even the PID may be wrong
            stats.transport_errors += 1
            return
        pid = ((b1 & 0x1F) << 8) | packet[2]
        if pid == PID_NULL:
            return
        control = (b3 >> 4) & 0x03
        offset = 4
        if control & 2:
            af_len = packet[4]
            if af_len > (183 if control == 2 else 182):
                stats.bad_packets += 1
                return
            if af_len and packet[5] & 0x80:  # discontinuity_indicator: the counter restarts
                stats.discontinuity_flags += 1
                self._cc.pop(pid, None)
            offset = 5 + af_len
        if not control & 1:  # reserved (0) or adaptation field only: no payload
            if not control:
                stats.bad_packets += 1
            return
        if not self._known(pid):
            stats.unknown_pids += 1
            return
        cc = b3 & 0x0F
        last = self._cc.get(pid)
        lost = False
        if last is not None:
            if cc == last:
                stats.duplicates += 1
                return
            if cc != (last + 1) & 0x0F:
                stats.cc_errors += 1
                lost = True
        self._cc[pid] = cc
        if b3 & 0xC0:  # transport_scrambling_control: we cannot read it, so it is lost
            stats.scrambled += 1
            lost = True
            self._route(pid, b"", False, True, out)
            return
        self._route(pid, packet[offset:], bool(b1 & 0x40), lost, out)

    def _known(self, pid: int) -> bool:
        return pid in (PID_PAT, self._pmt_pid) or pid in self._streams

    def _route(self, pid: int, payload: bytes, start: bool, lost: bool,
               out: list[Frame]) -> None:
        if pid == PID_PAT:
            if lost:
                self._pat.reset()
            for section in self._pat.push(payload, start):
                self._on_pat(section)
        elif pid == self._pmt_pid:
            if lost:
                self._pmt.reset()
            for section in self._pmt.push(payload, start):
                self._on_pmt(section)
        else:
            stream = self._streams[pid]
            if lost:
                stream.assembler.lose()
            for pes in stream.assembler.push(payload, start):
                self._on_pes(stream, pes, out)

    def _on_pes(self, stream: _Stream, data: bytes, out: list[Frame]) -> None:
        try:
            pes = parse_pes(data)
        except ProtocolError:
            self.stats.bad_pes += 1
            return
        stream.track.on_pes(pes, out)

    # -- tables --

    def _checked(self, section: bytes, last: bytes) -> bool:
        """A section worth reading: changed since the last one applied, CRC intact."""
        if section == last:  # tables repeat every ~100 ms: the same bytes change nothing
            return False
        if crc32_mpeg2(section):  # over the whole section, CRC included, the residue is 0
            self.stats.crc_errors += 1
            return False
        return True

    def _on_pat(self, section: bytes) -> None:
        if not self._checked(section, self._pat_raw):
            return
        try:
            current, programs = parse_pat(section)
        except ProtocolError:
            self.stats.bad_sections += 1
            return
        programs = [(n, pid) for n, pid in programs if pid not in (PID_PAT, PID_NULL)]
        if not current or not programs:
            return
        self._pat_raw = section
        program, pmt_pid = programs[0]
        if (program, pmt_pid) == (self._program, self._pmt_pid):
            return
        self.stats.table_updates += 1
        if self._pmt_pid is not None:
            self._cc.pop(self._pmt_pid, None)
        self._program, self._pmt_pid = program, pmt_pid
        self._pmt.reset()
        self._pmt_raw = b""
        self._set_streams({})

    def _on_pmt(self, section: bytes) -> None:
        if not self._checked(section, self._pmt_raw):
            return
        try:
            pmt = parse_pmt(section)
        except ProtocolError:
            self.stats.bad_sections += 1
            return
        if not pmt.current or pmt.program != self._program:
            return  # not yet in force, or another program's map sharing the PID
        self._pmt_raw = section
        streams: dict[int, _Stream] = {}
        video = audio = False
        for es in pmt.streams:
            usable = es.pid not in (PID_PAT, PID_NULL, self._pmt_pid) and es.pid not in streams
            if usable and not video and es.stream_type in VIDEO_STREAM_TYPES:
                streams[es.pid] = self._video_stream(es)
                video = True
            elif usable and not audio and es.stream_type == AAC_STREAM_TYPE:
                streams[es.pid] = self._audio_stream(es)
                audio = True
            else:
                self.stats.ignored_streams += 1
        if {pid: s.stream_type for pid, s in streams.items()} != \
                {pid: s.stream_type for pid, s in self._streams.items()}:
            self.stats.table_updates += 1
        self._set_streams(streams)

    def _set_streams(self, streams: dict[int, _Stream]) -> None:
        for pid in self._streams.keys() - streams.keys():
            self._cc.pop(pid, None)
        self._streams = streams

    def _video_stream(self, es: ElementaryStream) -> _Stream:
        """Keep the stream (and its PES under way) if the PMT still says the same; keep the
        track (its configuration) if the codec is the same."""
        kept = self._streams.get(es.pid)
        if kept is not None and kept.stream_type == es.stream_type:
            return kept
        codec = VIDEO_STREAM_TYPES[es.stream_type]
        if self._video is None or self._video.codec != codec:
            self._video = _VideoTrack(codec, self._timeline, self.stats)
        return _Stream(es.stream_type, _PesAssembler(self._max_video_pes, self.stats),
                       self._video)

    def _audio_stream(self, es: ElementaryStream) -> _Stream:
        kept = self._streams.get(es.pid)
        if kept is not None and kept.stream_type == es.stream_type:
            return kept
        if self._audio is None:
            self._audio = _AudioTrack(self._timeline, self.stats)
        return _Stream(es.stream_type, _PesAssembler(self._max_audio_pes, self.stats),
                       self._audio)

"""A fragmented MP4 (ISO 14496-12) writer, sans-I/O, for Low-Latency HLS segments and parts.

``Fmp4Writer`` turns FLV-timeline samples into an init segment (``ftyp`` + ``moov``) and
fragments (``moof`` + ``mdat``). A fragment's bytes are a pure function of the codec
configuration and the fragment's own arguments — no counters, no clock — so every node of the
cluster, including one that joined mid-stream, writes byte-identical parts of the same frames.

    writer = Fmp4Writer(video_config, aac_config)
    init = writer.init_segment()
    part = writer.fragment(7, samples, end=next_part_start_ms)
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from arcly.engine.errors import ProtocolError

from . import codecs

VIDEO_TIMESCALE = 90_000
AAC_FRAME_SAMPLES = 1024
# A video track's only sample, when nothing tells how long it lasts: one frame at 30 fps.
DEFAULT_FRAME_TICKS = VIDEO_TIMESCALE // 30
# The picture size written when the SPS cannot be parsed (tkhd and the sample entry only:
# decoders take the real size from the SPS in avcC/hvcC).
FALLBACK_SIZE = (1280, 720)

# Sample flags (ISO 14496-12 §8.8.3.1): sample_depends_on = 2 (an I picture) for sync samples;
# sample_depends_on = 1 plus sample_is_non_sync_sample for the rest.
SYNC_SAMPLE = 0x0200_0000
NON_SYNC_SAMPLE = 0x0101_0000

_TFHD_DEFAULT_BASE_IS_MOOF = 0x02_0000
_TRUN_DATA_OFFSET = 0x001
_TRUN_DURATION = 0x100
_TRUN_SIZE = 0x200
_TRUN_FLAGS = 0x400
_TRUN_CTS = 0x800
_MATRIX = struct.pack(">9I", 0x0001_0000, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000)


@dataclass(frozen=True, slots=True)
class Sample:
    """One access unit on the FLV timeline (milliseconds).

    ``data``: video — the length-prefixed NAL units of the FLV video tag body after its header
    (the same framing as MP4 samples); audio — one raw AAC frame."""

    video: bool
    dts: int
    cts: int
    keyframe: bool
    data: bytes


# -- boxes --------------------------------------------------------------------------------------


def box(kind: bytes, *payload: bytes) -> bytes:
    body = b"".join(payload)
    return struct.pack(">I", 8 + len(body)) + kind + body


def full_box(kind: bytes, version: int, flags: int, *payload: bytes) -> bytes:
    return box(kind, struct.pack(">I", (version << 24) | flags), *payload)


def _descriptor(tag: int, payload: bytes) -> bytes:
    """An MPEG-4 descriptor (ISO 14496-1 §8.3.3): tag, size in 7-bit groups, payload."""
    size = len(payload)
    groups = [size & 0x7F]
    size >>= 7
    while size:
        groups.append(0x80 | (size & 0x7F))
        size >>= 7
    return bytes((tag, *reversed(groups))) + payload


# -- SPS: the picture size ----------------------------------------------------------------------


class _Bits:
    """An MSB-first bit reader with the exp-Golomb codes of H.264/HEVC (§9.1 / §9.2)."""

    def __init__(self, rbsp: bytes) -> None:
        self._value = int.from_bytes(rbsp, "big")
        self._size = len(rbsp) * 8
        self._pos = 0

    def u(self, bits: int) -> int:
        end = self._pos + bits
        if end > self._size:
            raise ProtocolError(f"SPS truncated at bit {self._pos} (wanted {bits} more)")
        self._pos = end
        return (self._value >> (self._size - end)) & ((1 << bits) - 1)

    def ue(self) -> int:
        zeros = 0
        while not self.u(1):
            zeros += 1
            if zeros > 31:
                raise ProtocolError(f"SPS exp-Golomb code longer than 32 bits at {self._pos}")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        code = self.ue()
        return (code + 1) // 2 if code & 1 else -(code // 2)


def unescape(nal: bytes) -> bytes:
    """Drop the emulation prevention bytes: 00 00 03 → 00 00 (H.264 §7.4.1, HEVC §7.4.2)."""
    return nal.replace(b"\x00\x00\x03", b"\x00\x00")


_AVC_HIGH_PROFILES = frozenset((100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135))


def avc_sps_size(sps: bytes) -> tuple[int, int]:
    """Width and height of an H.264 SPS NAL unit (ITU-T H.264 §7.3.2.1.1), cropping applied."""
    bits = _Bits(unescape(sps)[1:])
    profile_idc = bits.u(8)
    bits.u(16)  # constraint flags, level_idc
    bits.ue()  # seq_parameter_set_id
    chroma_format_idc, separate_planes = 1, 0
    if profile_idc in _AVC_HIGH_PROFILES:
        chroma_format_idc = bits.ue()
        if chroma_format_idc == 3:
            separate_planes = bits.u(1)
        bits.ue()  # bit_depth_luma_minus8
        bits.ue()  # bit_depth_chroma_minus8
        bits.u(1)  # qpprime_y_zero_transform_bypass_flag
        if bits.u(1):  # seq_scaling_matrix_present_flag
            for i in range(12 if chroma_format_idc == 3 else 8):
                if bits.u(1):
                    _skip_scaling_list(bits, 16 if i < 6 else 64)
    bits.ue()  # log2_max_frame_num_minus4
    poc_type = bits.ue()
    if poc_type == 0:
        bits.ue()  # log2_max_pic_order_cnt_lsb_minus4
    elif poc_type == 1:
        bits.u(1)  # delta_pic_order_always_zero_flag
        bits.se()  # offset_for_non_ref_pic
        bits.se()  # offset_for_top_to_bottom_field
        for _ in range(bits.ue()):
            bits.se()  # offset_for_ref_frame[i]
    bits.ue()  # max_num_ref_frames
    bits.u(1)  # gaps_in_frame_num_value_allowed_flag
    width_mbs = bits.ue() + 1
    height_map_units = bits.ue() + 1
    frame_mbs_only = bits.u(1)
    if not frame_mbs_only:
        bits.u(1)  # mb_adaptive_frame_field_flag
    bits.u(1)  # direct_8x8_inference_flag
    width = width_mbs * 16
    height = (2 - frame_mbs_only) * height_map_units * 16
    if bits.u(1):  # frame_cropping_flag: offsets in crop units (§7.4.2.1.1, Table 6-1)
        left, right, top, bottom = bits.ue(), bits.ue(), bits.ue(), bits.ue()
        chroma_array_type = 0 if separate_planes else chroma_format_idc
        unit_x = 2 if chroma_array_type in (1, 2) else 1
        unit_y = (2 if chroma_array_type == 1 else 1) * (2 - frame_mbs_only)
        width -= unit_x * (left + right)
        height -= unit_y * (top + bottom)
    return _checked_size(width, height)


def _skip_scaling_list(bits: _Bits, size: int) -> None:
    last = following = 8
    for _ in range(size):
        if following:
            following = (last + bits.se() + 256) % 256
        last = following or last


def hevc_sps_chroma_format(bits: _Bits, sub_layers: int) -> int:
    """From after sps_temporal_id_nesting_flag: skip profile_tier_level(1, sub_layers)
    (H.265 §7.3.3: 96 bits of general fields, then the sub-layers') and the SPS id; the
    chroma_format_idc that follows."""
    bits.u(48)
    bits.u(48)
    present = [(bits.u(1), bits.u(1)) for _ in range(sub_layers)]
    if sub_layers:
        bits.u(2 * (8 - sub_layers))  # reserved_zero_2bits
    for profile_present, level_present in present:
        bits.u(88 * profile_present + 8 * level_present)
    bits.ue()  # sps_seq_parameter_set_id
    return bits.ue()


def hevc_sps_size(sps: bytes) -> tuple[int, int]:
    """Width and height of an HEVC SPS NAL unit (ITU-T H.265 §7.3.2.2), conformance window
    applied."""
    bits = _Bits(unescape(sps)[2:])
    bits.u(4)  # sps_video_parameter_set_id
    sub_layers = bits.u(3)  # sps_max_sub_layers_minus1
    bits.u(1)  # sps_temporal_id_nesting_flag
    chroma_format_idc = hevc_sps_chroma_format(bits, sub_layers)
    separate_planes = bits.u(1) if chroma_format_idc == 3 else 0
    width, height = bits.ue(), bits.ue()
    if bits.u(1):  # conformance_window_flag: offsets in chroma samples (§7.4.3.2.1)
        left, right, top, bottom = bits.ue(), bits.ue(), bits.ue(), bits.ue()
        chroma_array_type = 0 if separate_planes else chroma_format_idc
        sub_width = 2 if chroma_array_type in (1, 2) else 1
        sub_height = 2 if chroma_array_type == 1 else 1
        width -= sub_width * (left + right)
        height -= sub_height * (top + bottom)
    return _checked_size(width, height)


def _checked_size(width: int, height: int) -> tuple[int, int]:
    if not (0 < width <= 0xFFFF and 0 < height <= 0xFFFF):
        raise ProtocolError(f"SPS gives an impossible picture size {width}x{height}")
    return width, height


def video_size(config: codecs.VideoConfig) -> tuple[int, int]:
    """The picture size from the config's first SPS; ``FALLBACK_SIZE`` if it cannot be parsed."""
    hevc = config.codec == codecs.HEVC
    parse = hevc_sps_size if hevc else avc_sps_size
    for ps in config.parameter_sets:
        if ps and ((ps[0] >> 1) & 0x3F == 33 if hevc else ps[0] & 0x1F == 7):
            try:
                return parse(ps)
            except ProtocolError:
                return FALLBACK_SIZE
    return FALLBACK_SIZE


# -- the writer ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Track:
    track_id: int
    video: bool
    timescale: int
    sample_entry: bytes
    width: int = 0
    height: int = 0


class Fmp4Writer:
    """Writes one video (H.264 ``avc1`` or HEVC ``hvc1``) and/or one AAC track.

    Video runs at 90 kHz, audio at its sampling rate; decode times are the FLV milliseconds
    converted, so parts written anywhere line up on one timeline."""

    def __init__(self, video: codecs.VideoConfig | None, audio: codecs.AacConfig | None) -> None:
        if video is None and audio is None:
            raise ValueError("an fMP4 writer needs a video or an audio track")
        # An empty avcC/hvcC or esds would make an init segment no decoder can use.
        if video is not None and not video.record:
            raise ValueError("VideoConfig without its decoder configuration record")
        if audio is not None and not audio.asc:
            raise ValueError("AacConfig without its AudioSpecificConfig bytes")
        self._video = _video_track(video) if video is not None else None
        self._audio = (_audio_track(audio, 2 if video is not None else 1)
                       if audio is not None else None)

    def init_segment(self) -> bytes:
        """ftyp + moov: mvhd, one trak per present track (video first, track_ID 1; audio
        track_ID 2, or 1 if no video), mvex with trex per track."""
        tracks = [t for t in (self._video, self._audio) if t is not None]
        ftyp = box(b"ftyp", b"iso6", struct.pack(">I", 0), b"iso6", b"iso5", b"mp41")
        mvhd = full_box(b"mvhd", 0, 0, struct.pack(">IIII", 0, 0, 1000, 0),
                        struct.pack(">IH10x", 0x0001_0000, 0x0100), _MATRIX, bytes(24),
                        struct.pack(">I", len(tracks) + 1))
        trex = [full_box(b"trex", 0, 0, struct.pack(">5I", t.track_id, 1, 0, 0, 0))
                for t in tracks]
        return ftyp + box(b"moov", mvhd, *(_trak(t) for t in tracks), box(b"mvex", *trex))

    def fragment(self, sequence: int, samples: Sequence[Sample], *, end: int) -> bytes:
        """One moof + mdat holding ``samples`` (arrival order, both tracks mixed; split per
        track, order kept within a track). ``sequence`` is the mfhd sequence number; ``end``
        the dts (ms) where the fragment ends — the first frame of the next one, or the end of
        the stream. A video track's last sample lasts until ``end``; if ``end`` is not after
        it, as long as the sample before it (or one frame at 30 fps). AAC frames last 1024
        samples. The mdat holds the video samples, then the audio samples."""
        if not samples:
            raise ValueError("an fMP4 fragment needs at least one sample")
        video = [s for s in samples if s.video]
        audio = [s for s in samples if not s.video]
        runs: list[_Run] = []
        for track, track_samples in ((self._video, video), (self._audio, audio)):
            if not track_samples:
                continue
            if track is None:
                kind = "video" if track_samples[0].video else "audio"
                raise ValueError(f"{kind} sample, but the writer has no {kind} track")
            runs.append(_run(track, track_samples, end))
        # Data offsets count from the start of the moof, whose size does not depend on them:
        # the size of a moof with zero offsets places each track's data in the mdat.
        moof_size = len(_moof(sequence, runs, [0] * len(runs)))
        offsets = [moof_size + 8 + sum(r.data_size for r in runs[:i]) for i in range(len(runs))]
        return (_moof(sequence, runs, offsets)
                + box(b"mdat", *(s.data for r in runs for s in r.samples)))


@dataclass(frozen=True, slots=True)
class _Run:
    """One track's part of a fragment: its samples and their trun table."""

    track: _Track
    samples: list[Sample]
    base: int  # tfdt baseMediaDecodeTime, in the track's timescale
    version: int
    flags: int
    entries: bytes
    data_size: int


def _run(track: _Track, samples: list[Sample], end: int) -> _Run:
    size = sum(len(s.data) for s in samples)
    if track.video:
        ticks = VIDEO_TIMESCALE // 1000
        entries = b"".join(
            struct.pack(">IIIi", duration, len(s.data),
                        SYNC_SAMPLE if s.keyframe else NON_SYNC_SAMPLE, s.cts * ticks)
            for s, duration in zip(samples, _video_durations(samples, end), strict=True))
        # Version 1: signed composition offsets.
        return _Run(track, samples, samples[0].dts * ticks, 1,
                    _TRUN_DATA_OFFSET | _TRUN_DURATION | _TRUN_SIZE | _TRUN_FLAGS | _TRUN_CTS,
                    entries, size)
    entries = b"".join(struct.pack(">III", AAC_FRAME_SAMPLES, len(s.data), SYNC_SAMPLE)
                       for s in samples)
    return _Run(track, samples, round(samples[0].dts * track.timescale / 1000), 0,
                _TRUN_DATA_OFFSET | _TRUN_DURATION | _TRUN_SIZE | _TRUN_FLAGS, entries, size)


def _moof(sequence: int, runs: list[_Run], offsets: list[int]) -> bytes:
    mfhd = full_box(b"mfhd", 0, 0, struct.pack(">I", sequence & 0xFFFF_FFFF))
    return box(b"moof", mfhd, *(_traf(r, offset) for r, offset in zip(runs, offsets,
                                                                       strict=True)))


def _traf(run: _Run, data_offset: int) -> bytes:
    tfhd = full_box(b"tfhd", 0, _TFHD_DEFAULT_BASE_IS_MOOF, struct.pack(">I", run.track.track_id))
    tfdt = full_box(b"tfdt", 1, 0, struct.pack(">Q", run.base))
    trun = full_box(b"trun", run.version, run.flags,
                    struct.pack(">Ii", len(run.samples), data_offset), run.entries)
    return box(b"traf", tfhd, tfdt, trun)


def _video_durations(run: list[Sample], end: int) -> list[int]:
    """Ticks from each sample to the next; the last one's to ``end``. Decode times that go
    backwards give zero-length samples rather than a negative (unrepresentable) duration."""
    ticks = VIDEO_TIMESCALE // 1000
    durations = [max(0, (b.dts - a.dts) * ticks) for a, b in itertools.pairwise(run)]
    last = run[-1].dts
    if end > last:
        durations.append((end - last) * ticks)
    else:
        durations.append(durations[-1] if durations else DEFAULT_FRAME_TICKS)
    return durations


def _video_track(config: codecs.VideoConfig) -> _Track:
    width, height = video_size(config)
    hevc = config.codec == codecs.HEVC
    entry_kind, config_kind = (b"hvc1", b"hvcC") if hevc else (b"avc1", b"avcC")
    entry = box(entry_kind, bytes(6), struct.pack(">H", 1), bytes(16),
                struct.pack(">HHIIIH", width, height, 0x0048_0000, 0x0048_0000, 0, 1),
                bytes(32), struct.pack(">Hh", 0x0018, -1), box(config_kind, config.record))
    return _Track(1, True, VIDEO_TIMESCALE, entry, width, height)


def _audio_track(config: codecs.AacConfig, track_id: int) -> _Track:
    rate = config.sample_rate
    channels = 8 if config.channels == 7 else config.channels or 2
    # ES_Descriptor → DecoderConfigDescriptor (MPEG-4 audio, stream type 5) → the ASC, then
    # the SLConfigDescriptor MP4 files always carry (ISO 14496-14 §3.1.2).
    decoder_config = _descriptor(0x04, bytes((0x40, 0x15)) + bytes(11)
                                 + _descriptor(0x05, config.asc))
    es = _descriptor(0x03, struct.pack(">HB", track_id, 0) + decoder_config
                     + _descriptor(0x06, b"\x02"))
    # samplerate is 16.16 fixed point: rates above 65535 Hz do not fit; 0 then, as ffmpeg.
    entry = box(b"mp4a", bytes(6), struct.pack(">H", 1), bytes(8),
                struct.pack(">HHHHI", channels, 16, 0, 0, rate << 16 if rate <= 0xFFFF else 0),
                full_box(b"esds", 0, 0, es))
    return _Track(track_id, False, rate, entry)


def _trak(track: _Track) -> bytes:
    tkhd = full_box(b"tkhd", 0, 0x3, struct.pack(">IIIII", 0, 0, track.track_id, 0, 0),
                    bytes(8), struct.pack(">hhhH", 0, 0, 0 if track.video else 0x0100, 0),
                    _MATRIX, struct.pack(">II", track.width << 16, track.height << 16))
    mdhd = full_box(b"mdhd", 0, 0, struct.pack(">IIIIHH", 0, 0, track.timescale, 0,
                                               0x55C4, 0))  # language "und"
    handler, name = (b"vide", b"VideoHandler\x00") if track.video else (b"soun",
                                                                         b"SoundHandler\x00")
    hdlr = full_box(b"hdlr", 0, 0, bytes(4), handler, bytes(12), name)
    media_header = (full_box(b"vmhd", 0, 1, bytes(8)) if track.video
                    else full_box(b"smhd", 0, 0, bytes(4)))
    dinf = box(b"dinf", full_box(b"dref", 0, 0, struct.pack(">I", 1), full_box(b"url ", 0, 1)))
    stbl = box(b"stbl",
               full_box(b"stsd", 0, 0, struct.pack(">I", 1), track.sample_entry),
               full_box(b"stts", 0, 0, bytes(4)),
               full_box(b"stsc", 0, 0, bytes(4)),
               full_box(b"stsz", 0, 0, bytes(8)),
               full_box(b"stco", 0, 0, bytes(4)))
    minf = box(b"minf", media_header, dinf, stbl)
    return box(b"trak", tkhd, box(b"mdia", mdhd, hdlr, minf))

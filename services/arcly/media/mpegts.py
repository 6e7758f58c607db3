"""An MPEG-2 transport stream muxer (ISO 13818-1), sans-I/O, for HLS segments.

One ``TsMuxer`` writes one self-contained segment: PAT and PMT first, continuity counters from
zero with the discontinuity indicator set on each PID's first packet, a PCR on every video PES.
A segment's bytes therefore depend only on its own frames and the codec configuration — which
is what lets two nodes produce byte-identical segments of the same stream.
"""

from __future__ import annotations

import struct

from .codecs import HEVC

PACKET = 188
PID_PAT = 0x0000
PID_PMT = 0x1000
PID_VIDEO = 0x0100
PID_AUDIO = 0x0101
STREAM_TYPE = {"h264": 0x1B, HEVC: 0x24, "aac": 0x0F}
STREAM_ID_VIDEO = 0xE0
STREAM_ID_AUDIO = 0xC0
# PTS/DTS run this far ahead of the PCR, as a decoder buffer allowance (ffmpeg uses 1.4 s too).
DELAY = 126_000
_MASK33 = (1 << 33) - 1


def _crc32_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else (crc << 1)
        table.append(crc & 0xFFFFFFFF)
    return table


_CRC = _crc32_table()


def crc32_mpeg2(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _CRC[((crc >> 24) ^ byte) & 0xFF]
    return crc


def _timestamp(marker: int, value: int) -> bytes:
    value &= _MASK33
    return bytes((
        (marker << 4) | ((value >> 29) & 0x0E) | 1,
        (value >> 22) & 0xFF,
        ((value >> 14) & 0xFE) | 1,
        (value >> 7) & 0xFF,
        ((value << 1) & 0xFE) | 1,
    ))


_PLAIN: dict[int, tuple[bytes, ...]] = {}


def _plain_headers(pid: int) -> tuple[bytes, ...]:
    """The 4-byte header of a payload-only packet of ``pid`` (no PES start, no adaptation
    field), by continuity counter."""
    headers = _PLAIN.get(pid)
    if headers is None:
        headers = _PLAIN[pid] = tuple(bytes((0x47, pid >> 8, pid & 0xFF, 0x10 | cc))
                                      for cc in range(16))
    return headers


class TsMuxer:
    """Packetizes PES for one video (H.264 or HEVC) and one AAC audio elementary stream."""

    def __init__(self, *, video: str | None, audio: bool) -> None:
        self.video = video
        self.audio = audio
        self.pcr_pid = PID_VIDEO if video else PID_AUDIO
        self._cc: dict[int, int] = {}

    def _header(self, pid: int, start: bool) -> tuple[bytes, bool]:
        cc = self._cc.get(pid)
        first = cc is None
        cc = 0 if cc is None else (cc + 1) & 0x0F
        self._cc[pid] = cc
        return bytes((0x47, (0x40 if start else 0) | (pid >> 8), pid & 0xFF)), first

    def _section(self, pid: int, table: bytes) -> bytes:
        head, _ = self._header(pid, True)
        body = b"\x00" + table + struct.pack(">I", crc32_mpeg2(table))
        return head + bytes((0x10 | self._cc[pid],)) + body.ljust(PACKET - 4, b"\xff")

    def tables(self) -> bytes:
        """PAT + PMT, written at the start of every segment."""
        pat = bytes((0x00, 0xB0, 0x0D, 0x00, 0x01, 0xC1, 0x00, 0x00, 0x00, 0x01,
                     0xE0 | (PID_PMT >> 8), PID_PMT & 0xFF))
        streams = b""
        if self.video:
            streams += bytes((STREAM_TYPE[self.video], 0xE0 | (PID_VIDEO >> 8), PID_VIDEO & 0xFF,
                              0xF0, 0x00))
        if self.audio:
            streams += bytes((STREAM_TYPE["aac"], 0xE0 | (PID_AUDIO >> 8), PID_AUDIO & 0xFF,
                              0xF0, 0x00))
        length = 13 + len(streams)
        pmt = (bytes((0x02, 0xB0 | (length >> 8), length & 0xFF, 0x00, 0x01, 0xC1, 0x00, 0x00,
                      0xE0 | (self.pcr_pid >> 8), self.pcr_pid & 0xFF, 0xF0, 0x00)) + streams)
        return self._section(PID_PAT, pat) + self._section(PID_PMT, pmt)

    def video_frame(self, annexb: bytes, dts_ms: int, cts_ms: int, keyframe: bool) -> bytes:
        dts = dts_ms * 90 + DELAY
        pts = dts + cts_ms * 90
        return self._pes(PID_VIDEO, STREAM_ID_VIDEO, annexb, pts, dts,
                         pcr=dts - DELAY if self.pcr_pid == PID_VIDEO else None,
                         random_access=keyframe, bounded=False)

    def audio_frame(self, adts: bytes, ts_ms: int) -> bytes:
        pts = ts_ms * 90 + DELAY
        return self._pes(PID_AUDIO, STREAM_ID_AUDIO, adts, pts, pts,
                         pcr=pts - DELAY if self.pcr_pid == PID_AUDIO else None,
                         random_access=self.pcr_pid == PID_AUDIO, bounded=True)

    def _pes(self, pid: int, stream_id: int, payload: bytes, pts: int, dts: int, *,
             pcr: int | None, random_access: bool, bounded: bool) -> bytes:
        if pts != dts:
            header = b"\x80\xc0\x0a" + _timestamp(3, pts) + _timestamp(1, dts)
        else:
            header = b"\x80\x80\x05" + _timestamp(2, pts)
        length = len(header) + len(payload)
        pes_length = length if bounded and length <= 0xFFFF else 0
        data = b"\x00\x00\x01" + bytes((stream_id,)) + struct.pack(">H", pes_length) + header \
            + payload
        out = bytearray()
        pos = 0
        total = len(data)
        first_packet = True
        while pos < total:
            if not first_packet and total - pos >= PACKET - 4:
                # The packets between a PES's first and its last: no adaptation field, a whole
                # payload each (most of a video frame's packets), headers by counter.
                plain = _plain_headers(pid)
                cc = self._cc[pid]
                view = memoryview(data)
                while total - pos >= PACKET - 4:
                    cc = (cc + 1) & 0x0F
                    out += plain[cc]
                    out += view[pos:pos + PACKET - 4]
                    pos += PACKET - 4
                self._cc[pid] = cc
                continue
            head, first_of_pid = self._header(pid, first_packet)
            flags = 0
            if first_of_pid:
                flags |= 0x80  # discontinuity indicator: counters restart in every segment
            if first_packet and random_access:
                flags |= 0x40
            af = b""
            if first_packet and pcr is not None:
                flags |= 0x10
                base = pcr & _MASK33
                af = bytes((base >> 25 & 0xFF, base >> 17 & 0xFF, base >> 9 & 0xFF,
                            base >> 1 & 0xFF, (base & 1) << 7 | 0x7E, 0x00))
            remaining = total - pos
            space = PACKET - 4
            need_af = flags != 0
            af_len = (2 + len(af)) if need_af else 0
            if remaining < space - af_len:
                af_len = space - remaining  # stuff with an adaptation field
                need_af = True
            take = space - af_len
            if need_af:
                if af_len == 1:
                    adaptation = b"\x00"
                else:
                    adaptation = bytes((af_len - 1, flags)) + af
                    adaptation += b"\xff" * (af_len - len(adaptation))
                out += head + bytes((0x30 | self._cc[pid],)) + adaptation
            else:
                out += head + bytes((0x10 | self._cc[pid],))
            out += data[pos:pos + take]
            pos += take
            first_packet = False
        return bytes(out)

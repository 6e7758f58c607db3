"""WHIP ingest without decoding: aiortc's receivers hand us encoded frames.

aiortc's ``RTCRtpReceiver`` reassembles RTP into encoded frames (H.264 access units in Annex-B,
Opus packets) and then always decodes them in a thread of its own (``decoder_worker``). A
server relaying media has no use for pixels: this module swaps in a worker that passes the
encoded frames through for the receivers marked with ``pass_through`` and leaves every other
receiver in the process alone. It leans on aiortc 1.16's internals (the module-level
``decoder_worker`` and its arguments, ``RemoteStreamTrack._queue``, ``_send_rtcp_pli``);
``tests/unit/webrtc/test_aiortc_pins.py`` pins them.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import aiortc.rtcrtpreceiver as _receiver_module
from aiortc import RTCRtpReceiver


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    """One encoded frame as it came off the wire: ``codec`` is the RTP codec name (``H264``,
    ``opus``), ``timestamp`` in units of ``clock_rate`` from the receiver's first frame."""

    codec: str
    clock_rate: int
    data: bytes
    timestamp: int


_marked: weakref.WeakSet[asyncio.Queue[Any]] = weakref.WeakSet()
_original_worker = _receiver_module.decoder_worker


def _worker(loop: asyncio.AbstractEventLoop, input_q: queue.Queue[Any],
            output_q: asyncio.Queue[Any], decode_error: threading.Event) -> None:
    if output_q not in _marked:
        _original_worker(loop, input_q, output_q, decode_error)
        return
    while True:
        task = input_q.get()
        if task is None:  # the receiver stopped: end the track
            loop.call_soon_threadsafe(output_q.put_nowait, None)
            return
        codec, encoded = task
        frame = EncodedFrame(codec.name, codec.clockRate, bytes(encoded.data),
                             encoded.timestamp)
        try:
            loop.call_soon_threadsafe(output_q.put_nowait, frame)
        except RuntimeError:  # the loop is closed: nobody reads any more
            return


_receiver_module.decoder_worker = _worker


def pass_through(receiver: RTCRtpReceiver) -> None:
    """Make ``receiver``'s track yield ``EncodedFrame``s instead of decoded frames. Call
    before the connection starts (that is when the receiver's worker thread starts)."""
    _marked.add(receiver.track._queue)  # type: ignore[attr-defined]


async def request_keyframe(receiver: RTCRtpReceiver) -> bool:
    """Ask the sender for a keyframe (RTCP PLI, RFC 4585 §6.3.1); False before any RTP came.

    The PLI goes to every SSRC heard from: the receiver counts a retransmission (RTX) SSRC as a
    source too, and browsers send RTX padding first when they probe bandwidth. A PLI naming
    the RTX SSRC is ignored (Chromium's ``HandlePli`` compares the media SSRC), so asking only
    the first source heard from would often ask nobody."""
    sources = receiver.getSynchronizationSources()
    for source in sources:
        await receiver._send_rtcp_pli(source.source)
    return bool(sources)

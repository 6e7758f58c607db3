"""Delivering a subscription to a socket: shared by every playback protocol.

Every frame's wire bytes are built once per protocol (and chunk size) and shared; a viewer's
pending frames go to its transport in one ``writelines`` call. How often that happens is the
``coalesce`` interval:

* ``coalesce > 0`` (the default, 100 ms): the first batch — sequence headers and the cached GOP —
  is written the moment the viewer subscribes, so start-up is not delayed. After that one timer
  per event loop and interval (a :class:`Pacer`) walks every paced viewer each ``coalesce``
  seconds and writes what accumulated since the last tick. Paced viewers read the stream's
  shared frame log through a cursor (``Subscription.pace``), so publishing costs nothing per
  viewer, and viewers in step get the same span of it, encoded and joined once per tick: one
  ``write`` of one shared buffer per viewer per tick, no coroutine wake-up, future or timer of
  their own. Added latency is at most one interval; a viewer's start is never delayed. This is
  SRS's merged writes (``mw_latency``, 350 ms by default there) with a tighter bound. On
  loopback the kernel's cost per ``send`` dominates (see bench/README.md): 20 ms costs about
  2.7x the CPU per GB of 100 ms at 1000 viewers.
* The interval grows with the number of paced viewers on the loop, up to ``coalesce_max``:
  ``coalesce`` up to ``GROW_FROM`` viewers, ``coalesce_max`` from ``GROW_TO`` on, linear between
  (``interval_for``). A node with a thousand viewers writes each a third as often (the kernel's
  per-``send`` cost is what fan-out spends, see bench/README.md); only steady-state latency pays,
  start-up is never delayed, and a node with few viewers keeps the short interval.
* ``coalesce == 0``: each viewer's own loop wakes per published frame and writes at once —
  lowest latency, most CPU.

Either way a viewer's loop only awaits the socket when the kernel-side buffer is above its
high-water mark; a socket that stays blocked longer than ``stall_timeout`` is a dead viewer and
is cut.
"""

from __future__ import annotations

import asyncio
import socket
import weakref
from collections.abc import Callable

from arcly.engine import CloseReason, Frame, Subscription

DEFAULT_COALESCE = 0.100
DEFAULT_COALESCE_MAX = 0.300  # SRS merges 350 ms; start-up is never delayed either way
GROW_FROM = 100   # paced viewers on the loop from which the interval grows ...
GROW_TO = 1000    # ... to its ceiling, reached here


def interval_for(base: float, ceiling: float, paced: int) -> float:
    """The pacer's interval for ``paced`` viewers: ``base`` up to ``GROW_FROM``, ``ceiling`` from
    ``GROW_TO`` on, linear between (a ceiling below the base: the base, fixed).

    >>> [round(interval_for(0.1, 0.3, paced), 3) for paced in (50, 550, 5000)]
    [0.1, 0.2, 0.3]
    """
    if ceiling <= base or paced <= GROW_FROM:
        return base
    return base + (ceiling - base) * min(1.0, (paced - GROW_FROM) / (GROW_TO - GROW_FROM))


def limit_send_buffer(writer: asyncio.StreamWriter, size: int) -> None:
    """Cap the kernel send buffer of a viewer's socket. Left alone, Linux autotunes it to
    megabytes on fast links, hiding a stalled viewer (and its memory) from our backlog caps."""
    sock = writer.get_extra_info("socket")
    if sock is not None and size > 0:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
        except OSError:
            pass


class _Paced:
    """One viewer under a pacer: what the tick needs, nothing more."""

    __slots__ = ("encode", "high", "share", "sub", "transport", "wake")

    def __init__(self, sub: Subscription, transport: asyncio.WriteTransport,
                 encode: Callable[[Frame], bytes], share: object, high: int) -> None:
        self.sub = sub
        self.transport = transport
        self.encode = encode
        self.share = share
        self.high = high
        self.wake: asyncio.Future[str] | None = None


class Pacer:
    """Writes the pending frames of many viewers on one timer (see the module docstring)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float,
                 ceiling: float | None = None) -> None:
        self.loop = loop
        self.interval = interval
        self.ceiling = interval if ceiling is None else ceiling
        self._members: dict[_Paced, None] = {}  # insertion-ordered set
        self._timer: asyncio.TimerHandle | None = None
        self._next = 0.0

    def __len__(self) -> int:
        return len(self._members)

    @property
    def current_interval(self) -> float:
        return interval_for(self.interval, self.ceiling, len(self._members))

    def add(self, member: _Paced) -> None:
        self._members[member] = None
        if self._timer is None:
            self._next = self.loop.time() + self.current_interval
            self._timer = self.loop.call_at(self._next, self._tick)

    def discard(self, member: _Paced) -> None:
        self._members.pop(member, None)
        if not self._members and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        self._timer = None
        # Viewers in step with their stream get equal spans of its log: each span is encoded
        # and joined once per tick and protocol, and written as one shared buffer.
        spans: dict[tuple[object, object, int, int], bytes] = {}
        for member in tuple(self._members):
            why = self._flush(member, spans)
            if why:
                self._members.pop(member, None)
                wake = member.wake
                if wake is not None and not wake.done():
                    wake.set_result(why)
        if self._members:
            # Fixed rate, not fixed delay; a tick that ran late does not push later ones back.
            now = self.loop.time()
            step = self.current_interval
            self._next = max(self._next + step, now + step / 4)
            self._timer = self.loop.call_at(self._next, self._tick)

    @staticmethod
    def _flush(member: _Paced, spans: dict[tuple[object, object, int, int], bytes]) -> str:
        """Write what ``member`` has due; say why it must leave the pacer, or ''."""
        transport = member.transport
        if transport.is_closing():
            return "closed"
        sub = member.sub
        span = sub.take_span()
        if span is None:
            batch = sub.take()
            if batch:
                encode = member.encode
                transport.writelines([encode(frame) for frame in batch])
            elif sub.finished:
                return "end"
        elif span[1] > span[0]:
            log = sub.stream.log
            key = (log, member.share, span[0], span[1])
            data = spans.get(key)
            if data is None:
                encode = member.encode
                data = spans[key] = b"".join([encode(f) for f in log.span(*span)])
            transport.write(data)
        elif sub.finished:
            return "end"
        if transport.get_write_buffer_size() > member.high:
            return "drain"
        return ""


_pacers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop,
                                   dict[tuple[float, float], Pacer]] = weakref.WeakKeyDictionary()


def pacer(interval: float, ceiling: float | None = None) -> Pacer:
    """The running loop's pacer for ``interval`` growing up to ``ceiling`` (one timer per loop
    and setting: RTMP and HTTP-FLV viewers share it, and count together)."""
    loop = asyncio.get_running_loop()
    by_interval = _pacers.setdefault(loop, {})
    setting = (interval, interval if ceiling is None else ceiling)
    found = by_interval.get(setting)
    if found is None:
        found = by_interval[setting] = Pacer(loop, *setting)
    return found


async def deliver(sub: Subscription, writer: asyncio.StreamWriter,
                  encode: Callable[[Frame], bytes], *, stall_timeout: float,
                  coalesce: float = DEFAULT_COALESCE, coalesce_max: float | None = None,
                  share: object = None) -> str:
    """Write ``sub``'s frames to ``writer`` until the stream ends, the viewer falls behind or
    goes away. Returns the reason delivery stopped.

    ``coalesce_max``: the interval's ceiling as viewers grow (None: fixed at ``coalesce``).
    ``share``: viewers whose ``encode`` gives the same bytes for the same frame pass equal
    ``share`` keys (e.g. protocol, chunk size, message stream id); paced viewers with equal keys
    then share one buffer per tick. ``None``: ``encode`` itself is the key."""
    transport = writer.transport
    _, high = transport.get_write_buffer_limits()
    if coalesce <= 0:
        return await _deliver_each(sub, writer, encode, stall_timeout, high)
    # The start burst goes out now: time to first frame is never paced.
    reason = await _write_next(sub, transport, encode)
    if reason:
        return reason
    loop = asyncio.get_running_loop()
    timer = pacer(coalesce, coalesce_max)
    member = _Paced(sub, transport, encode, encode if share is None else share, high)
    sub.pace()
    try:
        while True:
            if transport.get_write_buffer_size() > high:
                reason = await _drain(writer, stall_timeout)
                if reason:
                    return reason
            member.wake = loop.create_future()
            timer.add(member)
            why = await member.wake
            if why == "end":
                return sub.close_reason or "ended"
            if why == "closed":
                return CloseReason.CLIENT_CLOSED
    finally:
        timer.discard(member)


async def _deliver_each(sub: Subscription, writer: asyncio.StreamWriter,
                        encode: Callable[[Frame], bytes], stall_timeout: float,
                        high: int) -> str:
    transport = writer.transport
    while True:
        reason = await _write_next(sub, transport, encode)
        if not reason and transport.get_write_buffer_size() > high:
            reason = await _drain(writer, stall_timeout)
        if reason:
            return reason


async def _write_next(sub: Subscription, transport: asyncio.WriteTransport,
                      encode: Callable[[Frame], bytes]) -> str:
    """Wait for ``sub``'s next batch and write it; the reason to stop, or ''."""
    batch = await sub.next_batch()
    if not batch:
        return sub.close_reason or "ended"
    if transport.is_closing():
        return CloseReason.CLIENT_CLOSED
    transport.writelines([encode(frame) for frame in batch])
    return ""


async def _drain(writer: asyncio.StreamWriter, stall_timeout: float) -> str:
    try:
        await asyncio.wait_for(writer.drain(), timeout=stall_timeout)
    except TimeoutError:
        return CloseReason.SLOW_VIEWER
    except ConnectionError:
        return CloseReason.CLIENT_CLOSED
    return ""

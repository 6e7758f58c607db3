"""The libsrt binding against the real library (Debian's 1.5.1) on 127.0.0.1; ffmpeg as a peer."""

from __future__ import annotations

import ctypes
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from arcly.protocols.srt import libsrt
from arcly.protocols.srt.libsrt import (
    EpollFlag,
    EpollSetting,
    ErrorCode,
    Incoming,
    KmState,
    Lib,
    Reject,
    RejectReason,
    SockOpt,
    SockStatus,
    SrtError,
    TraceBStats,
    TransType,
)
from tests import tools

try:
    libsrt.load()
except libsrt.SrtUnavailable as exc:
    pytest.skip(f"libsrt unavailable: {exc}", allow_module_level=True)

STREAMID = "#!::r=live/x,m=publish"
PASSPHRASE = "correct horse battery"

# offsetof() of every SRT_TRACEBSTATS field, as gcc (x86_64) computes it for srtcore/srt.h v1.5.1.
C_OFFSETS = """
msTimeStamp:0 pktSentTotal:8 pktRecvTotal:16 pktSndLossTotal:24 pktRcvLossTotal:28
pktRetransTotal:32 pktSentACKTotal:36 pktRecvACKTotal:40 pktSentNAKTotal:44 pktRecvNAKTotal:48
usSndDurationTotal:56 pktSndDropTotal:64 pktRcvDropTotal:68 pktRcvUndecryptTotal:72
byteSentTotal:80 byteRecvTotal:88 byteRcvLossTotal:96 byteRetransTotal:104 byteSndDropTotal:112
byteRcvDropTotal:120 byteRcvUndecryptTotal:128 pktSent:136 pktRecv:144 pktSndLoss:152
pktRcvLoss:156 pktRetrans:160 pktRcvRetrans:164 pktSentACK:168 pktRecvACK:172 pktSentNAK:176
pktRecvNAK:180 mbpsSendRate:184 mbpsRecvRate:192 usSndDuration:200 pktReorderDistance:208
pktRcvAvgBelatedTime:216 pktRcvBelated:224 pktSndDrop:232 pktRcvDrop:236 pktRcvUndecrypt:240
byteSent:248 byteRecv:256 byteRcvLoss:264 byteRetrans:272 byteSndDrop:280 byteRcvDrop:288
byteRcvUndecrypt:296 usPktSndPeriod:304 pktFlowWindow:312 pktCongestionWindow:316
pktFlightSize:320 msRTT:328 mbpsBandwidth:336 byteAvailSndBuf:344 byteAvailRcvBuf:348
mbpsMaxBW:352 byteMSS:360 pktSndBuf:364 byteSndBuf:368 msSndBuf:372 msSndTsbPdDelay:376
pktRcvBuf:380 byteRcvBuf:384 msRcvBuf:388 msRcvTsbPdDelay:392 pktSndFilterExtraTotal:396
pktRcvFilterExtraTotal:400 pktRcvFilterSupplyTotal:404 pktRcvFilterLossTotal:408
pktSndFilterExtra:412 pktRcvFilterExtra:416 pktRcvFilterSupply:420 pktRcvFilterLoss:424
pktReorderTolerance:428 pktSentUniqueTotal:432 pktRecvUniqueTotal:440 byteSentUniqueTotal:448
byteRecvUniqueTotal:456 pktSentUnique:464 pktRecvUnique:472 byteSentUnique:480
byteRecvUnique:488
"""
C_SIZEOF = 496


@dataclass
class Srt:
    """The library plus every socket and epoll a test opened, closed at teardown."""

    lib: Lib
    sockets: list[int] = field(default_factory=list)
    epolls: list[int] = field(default_factory=list)

    def socket(self, **options: int | bool | str) -> int:
        sock = self.lib.create_socket()
        self.sockets.append(sock)
        self.lib.setsockflag(sock, SockOpt.TRANSTYPE, TransType.LIVE)
        for name, value in options.items():
            self.lib.setsockflag(sock, SockOpt[name.upper()], value)
        return sock

    def listener(self, handler: Callable[[Incoming], int] | None = None, host: str = "127.0.0.1",
                 **options: int | bool | str) -> tuple[int, int, int]:
        """A non-blocking listener on an ephemeral port, already in a fresh epoll (a listener
        added after callers arrived would not report them): (socket, port, epoll)."""
        sock = self.socket(rcvsyn=False, sndsyn=False, **options)
        if handler is not None:
            self.lib.set_listen_callback(sock, handler)
        self.lib.bind(sock, host, 0)
        eid = self.epoll()
        self.lib.epoll_add_usock(eid, sock, EpollFlag.IN | EpollFlag.ERR)
        self.lib.listen(sock, 8)
        return sock, self.lib.getsockname(sock)[1], eid

    def caller(self, port: int, host: str = "127.0.0.1", streamid: str = STREAMID,
               **options: int | bool | str) -> int:
        """A blocking caller, connected (``SrtError`` when refused)."""
        sock = self.socket(conntimeo=3000, streamid=streamid, **options)
        self.lib.connect(sock, host, port)
        return sock

    def epoll(self) -> int:
        eid = self.lib.epoll_create()
        self.epolls.append(eid)
        return eid

    def accept(self, listener: int, eid: int, timeout: float = 5.0) -> tuple[int, tuple[str, int]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(fd == listener for fd, _ in self.lib.epoll_uwait(eid, 100)):
                sock, peer = self.lib.accept(listener)
                self.sockets.append(sock)
                return sock, peer
        raise AssertionError("no connection to accept")

    def receive(self, sock: int, count: int, timeout: float = 5.0) -> list[bytes]:
        """Up to ``count`` messages through an epoll, until the connection ends or time runs out."""
        eid = self.epoll()
        self.lib.epoll_add_usock(eid, sock, EpollFlag.IN | EpollFlag.ERR)
        messages: list[bytes] = []
        deadline = time.monotonic() + timeout
        while len(messages) < count and time.monotonic() < deadline:
            for _fd, _events in self.lib.epoll_uwait(eid, 100):
                try:
                    while len(messages) < count:
                        messages.append(self.lib.recvmsg(sock))
                except SrtError as exc:
                    if not exc.would_block:
                        return messages
        return messages

    def close_all(self) -> None:
        for sock in reversed(self.sockets):
            self.lib.close(sock)
        for eid in self.epolls:
            self.lib.epoll_release(eid)


@pytest.fixture
def srt() -> Iterator[Srt]:
    kit = Srt(libsrt.load())
    try:
        yield kit
    finally:
        kit.close_all()


def refused(srt: Srt, port: int, **options: int | bool | str) -> SrtError:
    with pytest.raises(SrtError) as caught:
        srt.caller(port, **options)
    assert caught.value.code == ErrorCode.ECONNREJ
    return caught.value


# -- the binding matches the 1.5.1 headers ------------------------------------------------------


def test_trace_bstats_has_every_field_at_the_offset_the_c_header_gives() -> None:
    expected = dict(item.split(":") for item in C_OFFSETS.split())
    assert [name for name, _ in TraceBStats._fields_] == list(expected)
    for name, offset in expected.items():
        assert getattr(TraceBStats, name).offset == int(offset), name
    assert ctypes.sizeof(TraceBStats) == C_SIZEOF


def test_option_numbers_read_back_libsrt_live_defaults(srt: Srt) -> None:
    sock = srt.socket()
    lib = srt.lib
    assert lib.version.startswith("1.5.")
    assert lib.getsockflag_int(sock, SockOpt.MSS) == 1500
    assert lib.getsockflag_int(sock, SockOpt.PAYLOADSIZE) == libsrt.LIVE_DEF_PLSIZE
    assert lib.getsockflag_int(sock, SockOpt.LATENCY) == libsrt.LIVE_DEF_LATENCY_MS
    assert lib.getsockflag_int(sock, SockOpt.PEERLATENCY) == 0
    assert lib.getsockflag_int(sock, SockOpt.PBKEYLEN) == 0
    assert lib.getsockflag_int(sock, SockOpt.KMSTATE) == KmState.UNSECURED
    assert lib.getsockflag_int(sock, SockOpt.CONNTIMEO) == 3000
    assert lib.getsockflag_int(sock, SockOpt.MAXBW) == -1  # int64_t
    assert lib.getsockflag_bool(sock, SockOpt.RCVSYN) is True
    assert lib.getsockflag_bool(sock, SockOpt.TSBPDMODE) is True
    assert lib.getsockflag_str(sock, SockOpt.CONGESTION) == "live"
    assert lib.getsockstate(sock) == SockStatus.INIT


def test_reject_codes_are_the_ones_libsrt_names() -> None:
    lib = libsrt.load()
    assert lib.rejectreason_str(RejectReason.BADSECRET) == "Incorrect passphrase"
    assert lib.rejectreason_str(RejectReason.UNSECURE) == "Password required or unexpected"
    assert lib.rejectreason_str(RejectReason.TIMEOUT) == "Connection timeout"
    assert RejectReason.X_FORBIDDEN == libsrt.REJC_PREDEFINED + 403
    assert EpollFlag.ET == 1 << 31


def test_options_round_trip_with_their_c_types(srt: Srt) -> None:
    sock = srt.socket()
    lib = srt.lib
    lib.setsockflag(sock, SockOpt.RCVLATENCY, 250)
    lib.setsockflag(sock, SockOpt.PEERLATENCY, 300)
    lib.setsockflag(sock, SockOpt.PAYLOADSIZE, 1128)
    lib.setsockflag(sock, SockOpt.PBKEYLEN, 32)
    lib.setsockflag(sock, SockOpt.IPV6ONLY, 1)
    lib.setsockflag(sock, SockOpt.SNDSYN, False)
    lib.setsockflag(sock, SockOpt.MAXBW, 5_000_000_000)
    lib.setsockflag(sock, SockOpt.STREAMID, "publish:live/ünïcode")
    lib.setsockflag(sock, SockOpt.PASSPHRASE, PASSPHRASE)
    assert lib.getsockflag_int(sock, SockOpt.RCVLATENCY) == 250
    assert lib.getsockflag_int(sock, SockOpt.PEERLATENCY) == 300
    assert lib.getsockflag_int(sock, SockOpt.PAYLOADSIZE) == 1128
    assert lib.getsockflag_int(sock, SockOpt.PBKEYLEN) == 32
    assert lib.getsockflag_int(sock, SockOpt.IPV6ONLY) == 1
    assert lib.getsockflag_bool(sock, SockOpt.SNDSYN) is False
    assert lib.getsockflag_int(sock, SockOpt.MAXBW) == 5_000_000_000
    assert lib.streamid(sock) == "publish:live/ünïcode"
    with pytest.raises(TypeError):
        lib.setsockflag(sock, SockOpt.STREAMID, 1)
    with pytest.raises(TypeError):
        lib.setsockflag(sock, SockOpt.LATENCY, "120")
    with pytest.raises(SrtError) as caught:
        lib.setsockflag(sock, SockOpt.PASSPHRASE, "too short")  # 10 to 79 characters
    assert caught.value.code == ErrorCode.EINVPARAM


def test_errors_carry_the_srt_code_and_text(srt: Srt) -> None:
    listener, _port, _eid = srt.listener()
    with pytest.raises(SrtError) as caught:
        srt.lib.accept(listener)
    assert caught.value.code == ErrorCode.EASYNCRCV
    assert caught.value.would_block
    assert "no data available" in str(caught.value)
    sock = srt.lib.create_socket()
    srt.lib.close(sock)
    srt.lib.close(sock)  # srt_close is idempotent
    with pytest.raises(SrtError) as caught:
        srt.lib.setsockflag(sock, SockOpt.LATENCY, 200)
    assert caught.value.code == ErrorCode.EINVSOCK
    assert isinstance(caught.value, OSError)


def test_load_without_the_library_says_what_to_install() -> None:
    code = ("from arcly.protocols.srt import libsrt\n"
            "try:\n    libsrt.load()\nexcept libsrt.SrtUnavailable as exc:\n    print(exc)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, env={"ARCLY_LIBSRT": "/nonexistent/libsrt.so",
                                             "PYTHONPATH": ":".join(sys.path)})
    assert "ARCLY_LIBSRT=/nonexistent/libsrt.so" in result.stdout
    assert "apt-get install libsrt1.5-openssl" in result.stdout


# -- a listener and a caller in this process ----------------------------------------------------


def test_listener_sees_the_streamid_accepts_and_receives_ten_messages(srt: Srt) -> None:
    seen: list[tuple[Incoming, str]] = []

    def admit(request: Incoming) -> int:
        seen.append((request, threading.current_thread().name))
        return 0

    listener, port, eid = srt.listener(admit)
    caller = srt.caller(port)
    accepted, peer = srt.accept(listener, eid)

    (request, thread), = seen
    assert request.streamid == STREAMID
    assert request.hsversion == 5
    assert request.sock == accepted  # the callback configures the socket accept returns
    assert request.peer == peer == ("127.0.0.1", srt.lib.getsockname(caller)[1])
    assert thread != threading.main_thread().name  # libsrt's receive thread
    assert srt.lib.streamid(accepted) == STREAMID
    assert srt.lib.getsockstate(accepted) == SockStatus.CONNECTED
    assert srt.lib.getpeername(accepted) == peer

    payloads = [bytes([i]) * libsrt.LIVE_DEF_PLSIZE for i in range(10)]
    for payload in payloads:
        assert srt.lib.sendmsg(caller, payload) == len(payload)
    assert srt.receive(accepted, 10) == payloads

    stats = srt.lib.stats(accepted)
    assert stats.pkt_recv_total >= 10
    assert stats.byte_recv_total >= 10 * libsrt.LIVE_DEF_PLSIZE
    assert stats.pkt_recv_unique_total == 10
    assert stats.ms_rcv_tsbpd_delay == libsrt.LIVE_DEF_LATENCY_MS
    assert srt.lib.stats(caller).pkt_sent_unique_total == 10


def test_a_closed_caller_breaks_the_accepted_socket(srt: Srt) -> None:
    listener, port, eid = srt.listener(lambda request: 0)
    caller = srt.caller(port)
    accepted, _peer = srt.accept(listener, eid)
    watch = srt.epoll()  # before the break: a socket added once broken reports nothing
    srt.lib.epoll_add_usock(watch, accepted, EpollFlag.IN | EpollFlag.ERR)
    srt.lib.close(caller)
    deadline = time.monotonic() + 5
    events = EpollFlag.NONE
    while not events & EpollFlag.ERR and time.monotonic() < deadline:
        for _fd, flags in srt.lib.epoll_uwait(watch, 100):
            events |= flags
    assert events == EpollFlag.IN | EpollFlag.OUT | EpollFlag.ERR
    # level-triggered: reported again until the socket is closed
    assert srt.lib.epoll_uwait(watch, 0) == [(accepted, events)]
    with pytest.raises(SrtError) as caught:
        srt.lib.recvmsg(accepted)
    assert caught.value.code == ErrorCode.ECONNLOST
    assert srt.lib.getsockstate(accepted) == SockStatus.BROKEN


def test_sendmsg_from_two_threads_while_another_receives(srt: Srt) -> None:
    listener, port, eid = srt.listener(lambda request: 0)
    caller = srt.caller(port)
    accepted, _peer = srt.accept(listener, eid)
    failures: list[BaseException] = []

    def send(tag: int) -> None:
        try:
            for i in range(50):
                srt.lib.sendmsg(caller, bytes([tag, i]) * 658)
        except BaseException as exc:
            failures.append(exc)

    senders = [threading.Thread(target=send, args=(tag,)) for tag in (1, 2)]
    for sender in senders:
        sender.start()
    messages = srt.receive(accepted, 100, timeout=10)
    for sender in senders:
        sender.join(10)
    assert not failures
    assert sorted(messages) == sorted(bytes([tag, i]) * 658 for tag in (1, 2) for i in range(50))


def test_ipv6_loopback(srt: Srt) -> None:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    listener, port, eid = srt.listener(lambda request: 0, host="::1", ipv6only=1)
    caller = srt.caller(port, host="::1")
    _accepted, peer = srt.accept(listener, eid)
    assert peer == ("::1", srt.lib.getsockname(caller)[1])


# -- access control -----------------------------------------------------------------------------


def test_a_callback_refusal_reaches_the_caller_as_1403(srt: Srt) -> None:
    def forbid(request: Incoming) -> int:
        srt.lib.setrejectreason(request.sock, RejectReason.X_FORBIDDEN)
        return -1

    _listener, port, _eid = srt.listener(forbid)
    assert refused(srt, port).reject_reason == RejectReason.X_FORBIDDEN


@pytest.mark.parametrize(("verdict", "reason"), [
    (RejectReason.X_NOTFOUND, RejectReason.X_NOTFOUND),  # a code as the return value
    (Reject(RejectReason.X_CONFLICT), RejectReason.X_CONFLICT),  # raised
    (-1, RejectReason.X_FALLBACK),  # no reason set: libsrt alone would say ROGUE
    (7, RejectReason.X_FALLBACK),  # not a code an application may send
    (ZeroDivisionError("bug"), RejectReason.X_ISE),  # a crash refuses, never accepts
])
def test_every_refusal_reaches_the_caller_with_a_reason(
        srt: Srt, verdict: int | BaseException, reason: RejectReason,
        caplog: pytest.LogCaptureFixture) -> None:
    def decide(request: Incoming) -> int:
        if isinstance(verdict, BaseException):
            raise verdict
        return verdict

    _listener, port, _eid = srt.listener(decide)
    with caplog.at_level(logging.ERROR, logger="arcly.srt"):
        assert refused(srt, port).reject_reason == reason
    crashed = [record for record in caplog.records if "listen callback failed" in record.message]
    assert bool(crashed) == (reason == RejectReason.X_ISE)


def test_a_closed_listener_forgets_its_callback(srt: Srt) -> None:
    listener, _port, _eid = srt.listener(lambda request: 0)
    srt.lib.close(listener)
    assert listener not in srt.lib._handlers


@pytest.mark.parametrize(("listener_secret", "caller_secret", "reason"), [
    (PASSPHRASE, "wrong horse battery", RejectReason.BADSECRET),
    (PASSPHRASE, None, RejectReason.UNSECURE),
    (None, PASSPHRASE, RejectReason.UNSECURE),
])
def test_a_passphrase_mismatch_is_refused(srt: Srt, listener_secret: str | None,
                                          caller_secret: str | None,
                                          reason: RejectReason) -> None:
    _listener, port, _eid = srt.listener(
        **({"passphrase": listener_secret} if listener_secret else {}))
    options = {"passphrase": caller_secret} if caller_secret else {}
    assert refused(srt, port, **options).reject_reason == reason


def test_a_matching_passphrase_encrypts(srt: Srt) -> None:
    listener, port, eid = srt.listener(lambda request: 0, passphrase=PASSPHRASE, pbkeylen=32)
    caller = srt.caller(port, passphrase=PASSPHRASE, pbkeylen=32)
    accepted, _peer = srt.accept(listener, eid)
    assert srt.lib.getsockflag_int(accepted, SockOpt.KMSTATE) == KmState.SECURED
    srt.lib.sendmsg(caller, b"G" * 188)
    assert srt.receive(accepted, 1) == [b"G" * 188]


def test_a_per_stream_passphrase_set_in_the_callback(srt: Srt) -> None:
    def per_stream(request: Incoming) -> int:
        srt.lib.setsockflag(request.sock, SockOpt.PASSPHRASE, PASSPHRASE)
        return 0

    listener, port, eid = srt.listener(per_stream)
    assert refused(srt, port).reject_reason == RejectReason.UNSECURE
    srt.caller(port, passphrase=PASSPHRASE)
    accepted, _peer = srt.accept(listener, eid)
    assert srt.lib.getsockflag_int(accepted, SockOpt.KMSTATE) == KmState.SECURED


def test_forwarded_libsrt_logs_reach_python_logging(srt: Srt,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    srt.lib.forward_logs(logging.getLogger("arcly.srt.test"))
    _listener, port, _eid = srt.listener(lambda request: -1)
    with caplog.at_level(logging.WARNING, logger="arcly.srt.test"):
        refused(srt, port)
        deadline = time.monotonic() + 2
        while not caplog.records and time.monotonic() < deadline:
            time.sleep(0.01)
    assert any("libsrt area=" in record.message and "reject" in record.message.lower()
               for record in caplog.records)


# -- epoll --------------------------------------------------------------------------------------


def test_epoll_wait_wakes_on_a_system_socket(srt: Srt) -> None:
    listener, _port, _ = srt.listener()
    eid = srt.epoll()
    srt.lib.epoll_add_usock(eid, listener, EpollFlag.IN)
    wake_r, wake_w = socket.socketpair()
    with wake_r, wake_w:
        srt.lib.epoll_add_ssock(eid, wake_r.fileno(), EpollFlag.IN)
        assert srt.lib.epoll_wait(eid, 50) == libsrt.EpollReady()
        timer = threading.Timer(0.2, wake_w.send, args=(b"!",))
        timer.start()
        started = time.monotonic()
        ready = srt.lib.epoll_wait(eid, 5000)
        waited = time.monotonic() - started
        timer.join()
        assert ready.sys_readable == (wake_r.fileno(),)
        assert ready.readable == ()
        assert 0.15 < waited < 1.0
        with pytest.raises(SrtError) as caught:  # uwait serves SRT sockets only
            srt.lib.epoll_uwait(eid, 0)
        assert caught.value.code == ErrorCode.EINVPARAM
        srt.lib.epoll_remove_ssock(eid, wake_r.fileno())
        assert srt.lib.epoll_uwait(eid, 0) == []


def test_an_empty_epoll_waits_only_when_allowed(srt: Srt) -> None:
    eid = srt.epoll()
    with pytest.raises(SrtError) as caught:
        srt.lib.epoll_uwait(eid, 0)
    assert caught.value.code == ErrorCode.EPOLLEMPTY
    srt.lib.epoll_set(eid, EpollSetting.ENABLE_EMPTY)
    assert srt.lib.epoll_uwait(eid, 20) == []


def test_epoll_does_not_report_callers_that_arrived_before_the_listener_was_added(
        srt: Srt) -> None:
    """libsrt 1.5.1 quirk the server must respect: add the listener before ``listen``."""
    listener = srt.socket(rcvsyn=False)
    srt.lib.bind(listener, "127.0.0.1", 0)
    srt.lib.listen(listener, 8)
    probe = srt.epoll()  # watching from the start: tells when the caller is queued
    srt.lib.epoll_add_usock(probe, listener, EpollFlag.IN)
    srt.caller(srt.lib.getsockname(listener)[1])
    # The caller's connect returns when it has the listener's conclusion; the listener queues
    # the accepted socket (and signals the epolls watching) on its own receive thread, a
    # moment later. The epoll under test is added once that has happened.
    assert srt.lib.epoll_uwait(probe, 5000) == [(listener, EpollFlag.IN)]
    eid = srt.epoll()
    srt.lib.epoll_add_usock(eid, listener, EpollFlag.IN)
    assert srt.lib.epoll_uwait(eid, 300) == []
    sock, _peer = srt.lib.accept(listener)  # yet it is there
    srt.sockets.append(sock)


# -- ffmpeg as the publisher --------------------------------------------------------------------


def ffmpeg_with_srt() -> str:
    found = tools.find()
    if found is None:
        pytest.skip("no ffmpeg")
    protocols = subprocess.run([found[0], "-hide_banner", "-protocols"], capture_output=True,
                               text=True, timeout=30).stdout
    if "srt" not in protocols.split():
        pytest.skip("this ffmpeg has no srt:// protocol")
    return found[0]


def test_ffmpeg_publishes_mpegts_the_listener_receives(srt: Srt) -> None:
    ffmpeg = ffmpeg_with_srt()
    seen: list[str] = []
    listener, port, eid = srt.listener(lambda request: seen.append(request.streamid) or 0)
    command = [ffmpeg, "-hide_banner", "-loglevel", "error", "-re",
               "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25", "-t", "1",
               "-c:v", "libx264", "-preset", "ultrafast", "-f", "mpegts",
               f"srt://127.0.0.1:{port}?streamid=publish:live/x"]
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as ffmpeg_run:
        try:
            accepted, _peer = srt.accept(listener, eid, timeout=20)
            messages = srt.receive(accepted, 10_000, timeout=20)
            assert ffmpeg_run.wait(20) == 0
        finally:
            ffmpeg_run.kill()
    assert seen == ["publish:live/x"]
    assert len(messages) >= 10
    assert all(len(message) % 188 == 0 and len(message) <= libsrt.LIVE_DEF_PLSIZE
               for message in messages)
    stream = b"".join(messages)
    assert all(stream[i] == 0x47 for i in range(0, len(stream), 188))


def test_ffmpeg_refused_by_the_callback_exits_with_an_error(srt: Srt) -> None:
    ffmpeg = ffmpeg_with_srt()
    _listener, port, _eid = srt.listener(lambda request: RejectReason.X_FORBIDDEN)
    result = subprocess.run([ffmpeg, "-hide_banner", "-f", "lavfi", "-i", "testsrc", "-t", "1",
                             "-f", "mpegts", f"srt://127.0.0.1:{port}?streamid=publish:live/x"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    # ffmpeg 6 says "Input/output error"; the 1403 itself never reaches its message.
    assert f"srt://127.0.0.1:{port}" in result.stderr

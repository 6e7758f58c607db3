"""A thin, typed ctypes binding of libsrt's C API (``srt/srt.h`` of libsrt 1.5.1), no asyncio.

There is no maintained Python binding for SRT, and Debian ships the library (``libsrt1.5-openssl``,
``libsrt1.5-gnutls``) without a ``libsrt.so`` dev symlink, so ``load()`` opens the versioned soname.
Every value here (option numbers, flags, reject codes, struct layouts) is copied from the 1.5.1
headers (``srtcore/srt.h``, ``srtcore/access_control.h``); ``tests/unit/srt/test_libsrt.py`` pins
the ``SRT_TRACEBSTATS`` layout against offsets a C compiler gave for that header. Linux only (the
``sockaddr`` structures have no BSD ``sin_len``).

Threads, as libsrt 1.5.1 runs them: every call here releases the GIL while libsrt works, the
listen callback runs on libsrt's receive-queue thread for the listener's port (it stalls every
handshake and data packet on that port while it runs: decide from memory, never block in it),
and a socket's send and receive may be called from different threads. ``srt_epoll_uwait``
refuses an epoll that holds a system socket; only ``srt_epoll_wait`` reports system sockets,
and it polls them every 10 ms rather than waking at once. A listener must be in the epoll
before callers arrive: ``srt_epoll_add_usock`` does not report connections already waiting.

Example::

    lib = load()
    listener = lib.create_socket()
    lib.setsockflag(listener, SockOpt.TRANSTYPE, TransType.LIVE)
    lib.setsockflag(listener, SockOpt.RCVSYN, False)
    lib.set_listen_callback(listener, lambda request: 0 if request.streamid else -1)
    lib.bind(listener, "0.0.0.0", 9000)
    lib.listen(listener, 16)
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import enum
import functools
import ipaddress
import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

log = logging.getLogger("arcly.srt")
_E = TypeVar("_E", bound=enum.IntEnum)

SONAMES = ("libsrt.so.1.5", "libsrt-openssl.so.1.5", "libsrt-gnutls.so.1.5", "libsrt.so.1")
INSTALL_HINT = (
    "install it with `apt-get install libsrt1.5-openssl` on Debian/Ubuntu, "
    "or set ARCLY_LIBSRT=/path/to/libsrt.so"
)

INVALID_SOCK = -1
ERROR = -1
LIVE_DEF_PLSIZE = 1316  # 7 MPEG-TS packets: libsrt's default payload in live mode
LIVE_MAX_PLSIZE = 1456  # MTU 1500 - UDP/IP 28 - SRT header 16
LIVE_DEF_LATENCY_MS = 120
MAX_SID_LENGTH = 512  # CSrtConfig::MAX_SID_LENGTH: longest streamid a handshake carries
MSGTTL_INF = -1


class SrtUnavailable(RuntimeError):
    """libsrt cannot be loaded; the message says what to install."""


class SockStatus(enum.IntEnum):
    """``SRT_SOCKSTATUS``, as ``srt_getsockstate`` reports it."""

    INIT = 1
    OPENED = 2
    LISTENING = 3
    CONNECTING = 4
    CONNECTED = 5
    BROKEN = 6
    CLOSING = 7
    CLOSED = 8
    NONEXIST = 9


class SockOpt(enum.IntEnum):
    """``SRT_SOCKOPT`` (the ``SRTO_*`` numbers of libsrt 1.5.1)."""

    MSS = 0
    SNDSYN = 1
    RCVSYN = 2
    ISN = 3
    FC = 4
    SNDBUF = 5
    RCVBUF = 6
    LINGER = 7
    UDP_SNDBUF = 8
    UDP_RCVBUF = 9
    RENDEZVOUS = 12
    SNDTIMEO = 13
    RCVTIMEO = 14
    REUSEADDR = 15
    MAXBW = 16
    STATE = 17
    EVENT = 18
    SNDDATA = 19
    RCVDATA = 20
    SENDER = 21
    TSBPDMODE = 22
    LATENCY = 23
    INPUTBW = 24
    OHEADBW = 25
    PASSPHRASE = 26
    PBKEYLEN = 27
    KMSTATE = 28
    IPTTL = 29
    IPTOS = 30
    TLPKTDROP = 31
    SNDDROPDELAY = 32
    NAKREPORT = 33
    VERSION = 34
    PEERVERSION = 35
    CONNTIMEO = 36
    DRIFTTRACER = 37
    MININPUTBW = 38
    SNDKMSTATE = 40
    RCVKMSTATE = 41
    LOSSMAXTTL = 42
    RCVLATENCY = 43
    PEERLATENCY = 44
    MINVERSION = 45
    STREAMID = 46
    CONGESTION = 47
    MESSAGEAPI = 48
    PAYLOADSIZE = 49
    TRANSTYPE = 50
    KMREFRESHRATE = 51
    KMPREANNOUNCE = 52
    ENFORCEDENCRYPTION = 53
    IPV6ONLY = 54
    PEERIDLETIMEO = 55
    BINDTODEVICE = 56
    GROUPCONNECT = 57
    GROUPMINSTABLETIMEO = 58
    GROUPTYPE = 59
    PACKETFILTER = 60
    RETRANSMITALGO = 61


# libsrt checks the option length: bool options take a bool or an int, these three an int64_t,
# strings their bytes, everything else exactly an int.
_INT64_OPTIONS = frozenset({SockOpt.MAXBW, SockOpt.INPUTBW, SockOpt.MININPUTBW})
_STRING_OPTIONS = frozenset({SockOpt.PASSPHRASE, SockOpt.STREAMID, SockOpt.CONGESTION,
                             SockOpt.PACKETFILTER, SockOpt.BINDTODEVICE})


class TransType(enum.IntEnum):
    """``SRT_TRANSTYPE``, the value of ``SockOpt.TRANSTYPE``."""

    LIVE = 0
    FILE = 1


class KmState(enum.IntEnum):
    """``SRT_KM_STATE``: the encryption state (``SockOpt.KMSTATE``, ``SNDKMSTATE``, ...)."""

    UNSECURED = 0
    SECURING = 1
    SECURED = 2
    NOSECRET = 3
    BADSECRET = 4


class EpollFlag(enum.IntFlag):
    """``SRT_EPOLL_OPT``: the events of an epoll subscription and of a readiness report."""

    NONE = 0
    IN = 0x1
    OUT = 0x4
    ERR = 0x8
    UPDATE = 0x10
    ET = 1 << 31
    ACCEPT = IN
    CONNECT = OUT


class EpollSetting(enum.IntFlag):
    """``SRT_EPOLL_FLAGS`` for ``srt_epoll_set``."""

    NONE = 0
    ENABLE_EMPTY = 1  # an empty epoll may be waited on (sockets are added by another thread)
    ENABLE_OUTPUTCHECK = 2


class ErrorCode(enum.IntEnum):
    """``SRT_ERRNO``: 1000 x major + minor, as ``srt_getlasterror`` returns it."""

    EUNKNOWN = -1
    SUCCESS = 0
    ECONNSETUP = 1000
    ENOSERVER = 1001
    ECONNREJ = 1002
    ESOCKFAIL = 1003
    ESECFAIL = 1004
    ESCLOSED = 1005
    ECONNFAIL = 2000
    ECONNLOST = 2001
    ENOCONN = 2002
    ERESOURCE = 3000
    ETHREAD = 3001
    ENOBUF = 3002
    ESYSOBJ = 3003
    EFILE = 4000
    EINVRDOFF = 4001
    ERDPERM = 4002
    EINVWROFF = 4003
    EWRPERM = 4004
    EINVOP = 5000
    EBOUNDSOCK = 5001
    ECONNSOCK = 5002
    EINVPARAM = 5003
    EINVSOCK = 5004
    EUNBOUNDSOCK = 5005
    ENOLISTEN = 5006
    ERDVNOSERV = 5007
    ERDVUNBOUND = 5008
    EINVALMSGAPI = 5009
    EINVALBUFFERAPI = 5010
    EDUPLISTEN = 5011
    ELARGEMSG = 5012
    EINVPOLLID = 5013
    EPOLLEMPTY = 5014
    EBINDCONFLICT = 5015
    EASYNCFAIL = 6000
    EASYNCSND = 6001
    EASYNCRCV = 6002
    ETIMEOUT = 6003
    ECONGEST = 6004
    EPEERERR = 7000


class RejectReason(enum.IntEnum):
    """Why a connection was refused: libsrt's own ``SRT_REJ_*`` (below 1000) and the
    application's ``SRT_REJX_*`` (1000 + an HTTP status, ``access_control.h``).

    A listen callback may only set codes from 1000 up (``srt_setrejectreason`` refuses the rest).
    """

    UNKNOWN = 0
    SYSTEM = 1
    PEER = 2
    RESOURCE = 3
    ROGUE = 4
    BACKLOG = 5
    IPE = 6
    CLOSE = 7
    VERSION = 8
    RDVCOOKIE = 9
    BADSECRET = 10
    UNSECURE = 11
    MESSAGEAPI = 12
    CONGESTION = 13
    FILTER = 14
    GROUP = 15
    TIMEOUT = 16
    # SRT_REJC_PREDEFINED (1000) + ...
    X_FALLBACK = 1000
    X_KEY_NOTSUP = 1001
    X_FILEPATH = 1002
    X_HOSTNOTFOUND = 1003
    X_BAD_REQUEST = 1400
    X_UNAUTHORIZED = 1401
    X_OVERLOAD = 1402
    X_FORBIDDEN = 1403
    X_NOTFOUND = 1404
    X_BAD_MODE = 1405
    X_UNACCEPTABLE = 1406
    X_CONFLICT = 1409
    X_NOTSUP_MEDIA = 1415
    X_LOCKED = 1423
    X_FAILED_DEPEND = 1424
    X_ISE = 1500
    X_UNIMPLEMENTED = 1501
    X_GW = 1502
    X_DOWN = 1503
    X_VERSION = 1505
    X_NOROOM = 1507


REJC_PREDEFINED = 1000  # SRT_REJC_PREDEFINED: first code an application may set
REJC_USERDEFINED = 2000  # SRT_REJC_USERDEFINED: free for the application's own meanings


class SrtError(OSError):
    """A libsrt call failed. ``code`` is the ``SRT_ERRNO`` (an ``ErrorCode`` when known),
    ``errno`` the system errno libsrt saw (or None), ``reject_reason`` set when a connect was
    refused (``code == ErrorCode.ECONNREJ``)."""

    def __init__(self, code: int, message: str, sys_errno: int = 0,
                 reject_reason: int | None = None) -> None:
        text = f"{message} (srt error {code})"
        if sys_errno:
            super().__init__(sys_errno, text)
        else:
            super().__init__(text)
        self.code = _known(ErrorCode, code)
        self.reject_reason = reject_reason

    @property
    def would_block(self) -> bool:
        """A non-blocking call has nothing to do now (``SRT_EASYNC*``): wait on the epoll."""
        return self.code in (ErrorCode.EASYNCFAIL, ErrorCode.EASYNCSND, ErrorCode.EASYNCRCV)


class Reject(Exception):
    """Raise from a listen callback to refuse the caller with ``code`` (1000 and up)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


# -- C structures ---------------------------------------------------------------------------


class SockaddrIn(ctypes.Structure):
    """Linux ``struct sockaddr_in``; ``sin_port`` in network order."""

    _fields_ = [
        ("sin_family", ctypes.c_uint16),
        ("sin_port", ctypes.c_uint16),
        ("sin_addr", ctypes.c_ubyte * 4),
        ("sin_zero", ctypes.c_ubyte * 8),
    ]


class SockaddrIn6(ctypes.Structure):
    """Linux ``struct sockaddr_in6``; ``sin6_port`` in network order."""

    _fields_ = [
        ("sin6_family", ctypes.c_uint16),
        ("sin6_port", ctypes.c_uint16),
        ("sin6_flowinfo", ctypes.c_uint32),
        ("sin6_addr", ctypes.c_ubyte * 16),
        ("sin6_scope_id", ctypes.c_uint32),
    ]


class SockaddrStorage(ctypes.Structure):
    """``struct sockaddr_storage``: room for any address libsrt hands back."""

    _fields_ = [("ss_family", ctypes.c_uint16), ("_data", ctypes.c_ubyte * 118),
                ("_align", ctypes.c_uint64)]


class EpollEvent(ctypes.Structure):
    """``SRT_EPOLL_EVENT``: one ready socket of ``srt_epoll_uwait``."""

    _fields_ = [("fd", ctypes.c_int32), ("events", ctypes.c_int)]


class TraceBStats(ctypes.Structure):
    """``SRT_TRACEBSTATS`` (``struct CBytePerfMon``) of libsrt 1.5.1, every field in order.

    libsrt only ever appends fields, so an older library fills a prefix (the rest stays zero);
    ``srt_bistats`` writes the whole struct of the library it comes from, so a newer library
    must not be given this one: ``load()`` is meant for the 1.5 series.
    """

    _fields_ = [
        # global measurements
        ("msTimeStamp", ctypes.c_int64),
        ("pktSentTotal", ctypes.c_int64),
        ("pktRecvTotal", ctypes.c_int64),
        ("pktSndLossTotal", ctypes.c_int),
        ("pktRcvLossTotal", ctypes.c_int),
        ("pktRetransTotal", ctypes.c_int),
        ("pktSentACKTotal", ctypes.c_int),
        ("pktRecvACKTotal", ctypes.c_int),
        ("pktSentNAKTotal", ctypes.c_int),
        ("pktRecvNAKTotal", ctypes.c_int),
        ("usSndDurationTotal", ctypes.c_int64),
        ("pktSndDropTotal", ctypes.c_int),
        ("pktRcvDropTotal", ctypes.c_int),
        ("pktRcvUndecryptTotal", ctypes.c_int),
        ("byteSentTotal", ctypes.c_uint64),
        ("byteRecvTotal", ctypes.c_uint64),
        ("byteRcvLossTotal", ctypes.c_uint64),
        ("byteRetransTotal", ctypes.c_uint64),
        ("byteSndDropTotal", ctypes.c_uint64),
        ("byteRcvDropTotal", ctypes.c_uint64),
        ("byteRcvUndecryptTotal", ctypes.c_uint64),
        # local measurements (since the last clear)
        ("pktSent", ctypes.c_int64),
        ("pktRecv", ctypes.c_int64),
        ("pktSndLoss", ctypes.c_int),
        ("pktRcvLoss", ctypes.c_int),
        ("pktRetrans", ctypes.c_int),
        ("pktRcvRetrans", ctypes.c_int),
        ("pktSentACK", ctypes.c_int),
        ("pktRecvACK", ctypes.c_int),
        ("pktSentNAK", ctypes.c_int),
        ("pktRecvNAK", ctypes.c_int),
        ("mbpsSendRate", ctypes.c_double),
        ("mbpsRecvRate", ctypes.c_double),
        ("usSndDuration", ctypes.c_int64),
        ("pktReorderDistance", ctypes.c_int),
        ("pktRcvAvgBelatedTime", ctypes.c_double),
        ("pktRcvBelated", ctypes.c_int64),
        ("pktSndDrop", ctypes.c_int),
        ("pktRcvDrop", ctypes.c_int),
        ("pktRcvUndecrypt", ctypes.c_int),
        ("byteSent", ctypes.c_uint64),
        ("byteRecv", ctypes.c_uint64),
        ("byteRcvLoss", ctypes.c_uint64),
        ("byteRetrans", ctypes.c_uint64),
        ("byteSndDrop", ctypes.c_uint64),
        ("byteRcvDrop", ctypes.c_uint64),
        ("byteRcvUndecrypt", ctypes.c_uint64),
        # instant measurements
        ("usPktSndPeriod", ctypes.c_double),
        ("pktFlowWindow", ctypes.c_int),
        ("pktCongestionWindow", ctypes.c_int),
        ("pktFlightSize", ctypes.c_int),
        ("msRTT", ctypes.c_double),
        ("mbpsBandwidth", ctypes.c_double),
        ("byteAvailSndBuf", ctypes.c_int),
        ("byteAvailRcvBuf", ctypes.c_int),
        ("mbpsMaxBW", ctypes.c_double),
        ("byteMSS", ctypes.c_int),
        ("pktSndBuf", ctypes.c_int),
        ("byteSndBuf", ctypes.c_int),
        ("msSndBuf", ctypes.c_int),
        ("msSndTsbPdDelay", ctypes.c_int),
        ("pktRcvBuf", ctypes.c_int),
        ("byteRcvBuf", ctypes.c_int),
        ("msRcvBuf", ctypes.c_int),
        ("msRcvTsbPdDelay", ctypes.c_int),
        ("pktSndFilterExtraTotal", ctypes.c_int),
        ("pktRcvFilterExtraTotal", ctypes.c_int),
        ("pktRcvFilterSupplyTotal", ctypes.c_int),
        ("pktRcvFilterLossTotal", ctypes.c_int),
        ("pktSndFilterExtra", ctypes.c_int),
        ("pktRcvFilterExtra", ctypes.c_int),
        ("pktRcvFilterSupply", ctypes.c_int),
        ("pktRcvFilterLoss", ctypes.c_int),
        ("pktReorderTolerance", ctypes.c_int),
        # new in 1.5.0
        ("pktSentUniqueTotal", ctypes.c_int64),
        ("pktRecvUniqueTotal", ctypes.c_int64),
        ("byteSentUniqueTotal", ctypes.c_uint64),
        ("byteRecvUniqueTotal", ctypes.c_uint64),
        ("pktSentUnique", ctypes.c_int64),
        ("pktRecvUnique", ctypes.c_int64),
        ("byteSentUnique", ctypes.c_uint64),
        ("byteRecvUnique", ctypes.c_uint64),
    ]


@dataclass(frozen=True, slots=True)
class Stats:
    """The counters a server shows and exports, from ``SRT_TRACEBSTATS`` (C name in brackets).

    ``*_total`` count since the connection started; ``pkt_rcv_retrans`` and the rates count
    since the last ``clear`` (1.5.1 has no ``pktRcvRetransTotal``). Packet totals include
    retransmissions; ``*_unique_total`` do not.
    """

    ms_timestamp: int  # msTimeStamp: ms since the socket started
    pkt_sent_total: int  # pktSentTotal
    pkt_recv_total: int  # pktRecvTotal
    pkt_snd_loss_total: int  # pktSndLossTotal
    pkt_rcv_loss_total: int  # pktRcvLossTotal
    pkt_retrans_total: int  # pktRetransTotal
    pkt_rcv_retrans: int  # pktRcvRetrans
    pkt_snd_drop_total: int  # pktSndDropTotal: too late to send
    pkt_rcv_drop_total: int  # pktRcvDropTotal: too late to play
    pkt_rcv_undecrypt_total: int  # pktRcvUndecryptTotal
    byte_sent_total: int  # byteSentTotal
    byte_recv_total: int  # byteRecvTotal
    byte_rcv_loss_total: int  # byteRcvLossTotal
    pkt_sent_unique_total: int  # pktSentUniqueTotal
    pkt_recv_unique_total: int  # pktRecvUniqueTotal
    byte_sent_unique_total: int  # byteSentUniqueTotal
    byte_recv_unique_total: int  # byteRecvUniqueTotal
    mbps_send_rate: float  # mbpsSendRate
    mbps_recv_rate: float  # mbpsRecvRate
    ms_rtt: float  # msRTT
    mbps_bandwidth: float  # mbpsBandwidth
    pkt_flight_size: int  # pktFlightSize
    ms_snd_buf: int  # msSndBuf: unacknowledged span of the sender buffer
    ms_rcv_buf: int  # msRcvBuf: undelivered span of the receiver buffer
    ms_snd_tsbpd_delay: int  # msSndTsbPdDelay: the latency the peer applies
    ms_rcv_tsbpd_delay: int  # msRcvTsbPdDelay: the latency we apply

    @classmethod
    def from_struct(cls, perf: TraceBStats) -> Stats:
        return cls(**{name: getattr(perf, c_name) for name, c_name in _STATS_FIELDS.items()})


_STATS_FIELDS = {
    "ms_timestamp": "msTimeStamp",
    "pkt_sent_total": "pktSentTotal",
    "pkt_recv_total": "pktRecvTotal",
    "pkt_snd_loss_total": "pktSndLossTotal",
    "pkt_rcv_loss_total": "pktRcvLossTotal",
    "pkt_retrans_total": "pktRetransTotal",
    "pkt_rcv_retrans": "pktRcvRetrans",
    "pkt_snd_drop_total": "pktSndDropTotal",
    "pkt_rcv_drop_total": "pktRcvDropTotal",
    "pkt_rcv_undecrypt_total": "pktRcvUndecryptTotal",
    "byte_sent_total": "byteSentTotal",
    "byte_recv_total": "byteRecvTotal",
    "byte_rcv_loss_total": "byteRcvLossTotal",
    "pkt_sent_unique_total": "pktSentUniqueTotal",
    "pkt_recv_unique_total": "pktRecvUniqueTotal",
    "byte_sent_unique_total": "byteSentUniqueTotal",
    "byte_recv_unique_total": "byteRecvUniqueTotal",
    "mbps_send_rate": "mbpsSendRate",
    "mbps_recv_rate": "mbpsRecvRate",
    "ms_rtt": "msRTT",
    "mbps_bandwidth": "mbpsBandwidth",
    "pkt_flight_size": "pktFlightSize",
    "ms_snd_buf": "msSndBuf",
    "ms_rcv_buf": "msRcvBuf",
    "ms_snd_tsbpd_delay": "msSndTsbPdDelay",
    "ms_rcv_tsbpd_delay": "msRcvTsbPdDelay",
}


@dataclass(frozen=True, slots=True)
class Incoming:
    """A caller's handshake, as the listen callback sees it, before ``srt_accept``.

    ``sock`` is the socket the connection will be accepted as: options set on it now (a
    per-stream ``SockOpt.PASSPHRASE``, a latency) apply to this connection.
    """

    sock: int
    hsversion: int  # 5 for every caller since SRT 1.3; 4 callers carry no streamid
    peer: tuple[str, int]
    streamid: str  # "" when the caller sent none


@dataclass(frozen=True, slots=True)
class EpollReady:
    """What ``srt_epoll_wait`` found ready: SRT sockets and system file descriptors."""

    readable: tuple[int, ...] = ()
    writable: tuple[int, ...] = ()
    sys_readable: tuple[int, ...] = ()
    sys_writable: tuple[int, ...] = ()


ListenHandler = Callable[[Incoming], int]
"""Returns 0 to accept; -1 to refuse with the reason set by ``setrejectreason(request.sock,
code)``; a code of 1000 and up (``RejectReason.X_*``) to refuse with it. Raising
``Reject(code)`` does the same; any other value refuses too, with ``X_FALLBACK``."""

# int (*)(void* opaq, SRTSOCKET ns, int hsversion, const struct sockaddr* peeraddr,
#         const char* streamid)
ListenCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int32, ctypes.c_int,
                                  ctypes.c_void_p, ctypes.c_char_p)

# void (*)(void* opaque, int level, const char* file, int line, const char* area,
#          const char* message)
LogHandler = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
                              ctypes.c_char_p, ctypes.c_char_p)
LOGF_DISABLE_TIME = 1
LOGF_DISABLE_THREADNAME = 2
LOGF_DISABLE_SEVERITY = 4
LOGF_DISABLE_EOL = 8
_SYSLOG_LEVELS = {2: logging.CRITICAL, 3: logging.ERROR, 4: logging.WARNING, 5: logging.INFO,
                  6: logging.INFO, 7: logging.DEBUG}

_SOCK = ctypes.c_int32
_INT_P = ctypes.POINTER(ctypes.c_int)
_PROTOTYPES: dict[str, tuple[Any, tuple[Any, ...]]] = {
    "srt_startup": (ctypes.c_int, ()),
    "srt_cleanup": (ctypes.c_int, ()),
    "srt_getversion": (ctypes.c_uint32, ()),
    "srt_create_socket": (_SOCK, ()),
    "srt_bind": (ctypes.c_int, (_SOCK, ctypes.c_void_p, ctypes.c_int)),
    "srt_listen": (ctypes.c_int, (_SOCK, ctypes.c_int)),
    "srt_accept": (_SOCK, (_SOCK, ctypes.c_void_p, _INT_P)),
    "srt_connect": (ctypes.c_int, (_SOCK, ctypes.c_void_p, ctypes.c_int)),
    "srt_close": (ctypes.c_int, (_SOCK,)),
    "srt_getpeername": (ctypes.c_int, (_SOCK, ctypes.c_void_p, _INT_P)),
    "srt_getsockname": (ctypes.c_int, (_SOCK, ctypes.c_void_p, _INT_P)),
    "srt_getsockflag": (ctypes.c_int, (_SOCK, ctypes.c_int, ctypes.c_void_p, _INT_P)),
    "srt_setsockflag": (ctypes.c_int, (_SOCK, ctypes.c_int, ctypes.c_void_p, ctypes.c_int)),
    "srt_getsockstate": (ctypes.c_int, (_SOCK,)),
    "srt_epoll_create": (ctypes.c_int, ()),
    "srt_epoll_set": (ctypes.c_int32, (ctypes.c_int, ctypes.c_int32)),
    "srt_epoll_add_usock": (ctypes.c_int, (ctypes.c_int, _SOCK, _INT_P)),
    "srt_epoll_update_usock": (ctypes.c_int, (ctypes.c_int, _SOCK, _INT_P)),
    "srt_epoll_remove_usock": (ctypes.c_int, (ctypes.c_int, _SOCK)),
    "srt_epoll_add_ssock": (ctypes.c_int, (ctypes.c_int, ctypes.c_int, _INT_P)),
    "srt_epoll_remove_ssock": (ctypes.c_int, (ctypes.c_int, ctypes.c_int)),
    "srt_epoll_uwait": (ctypes.c_int, (ctypes.c_int, ctypes.POINTER(EpollEvent), ctypes.c_int,
                                       ctypes.c_int64)),
    "srt_epoll_wait": (ctypes.c_int, (ctypes.c_int, ctypes.POINTER(_SOCK), _INT_P,
                                      ctypes.POINTER(_SOCK), _INT_P, ctypes.c_int64,
                                      _INT_P, _INT_P, _INT_P, _INT_P)),
    "srt_epoll_release": (ctypes.c_int, (ctypes.c_int,)),
    "srt_recvmsg": (ctypes.c_int, (_SOCK, ctypes.c_void_p, ctypes.c_int)),
    "srt_sendmsg": (ctypes.c_int, (_SOCK, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                                   ctypes.c_int)),
    "srt_bstats": (ctypes.c_int, (_SOCK, ctypes.POINTER(TraceBStats), ctypes.c_int)),
    "srt_bistats": (ctypes.c_int, (_SOCK, ctypes.POINTER(TraceBStats), ctypes.c_int,
                                   ctypes.c_int)),
    "srt_getlasterror": (ctypes.c_int, (_INT_P,)),
    "srt_getlasterror_str": (ctypes.c_char_p, ()),
    "srt_strerror": (ctypes.c_char_p, (ctypes.c_int, ctypes.c_int)),
    "srt_clearlasterror": (None, ()),
    "srt_listen_callback": (ctypes.c_int, (_SOCK, ListenCallback, ctypes.c_void_p)),
    "srt_setrejectreason": (ctypes.c_int, (_SOCK, ctypes.c_int)),
    "srt_getrejectreason": (ctypes.c_int, (_SOCK,)),
    "srt_rejectreason_str": (ctypes.c_char_p, (ctypes.c_int,)),
    "srt_setloglevel": (None, (ctypes.c_int,)),
    "srt_setlogflags": (None, (ctypes.c_int,)),
    "srt_setloghandler": (None, (ctypes.c_void_p, LogHandler)),
}


def _known(kind: type[_E], value: int) -> _E | int:
    """The enum member for ``value``, or the plain int when a newer libsrt sent another."""
    try:
        return kind(value)
    except ValueError:
        return value


def _c_int(flags: int) -> int:
    """An unsigned flag set (``SRT_EPOLL_ET`` is bit 31) as the C ``int`` libsrt reads."""
    flags &= 0xFFFFFFFF
    return flags - (1 << 32) if flags >= 1 << 31 else flags


def make_sockaddr(host: str, port: int) -> tuple[SockaddrIn | SockaddrIn6, int]:
    """A ``sockaddr_in`` or ``sockaddr_in6`` for an IP literal (or a name, resolved here, which
    may block) and its length, for ``srt_bind``/``srt_connect``."""
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(host or "0.0.0.0")
    except ValueError:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        ip = ipaddress.ip_address(infos[0][4][0])
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port out of range: {port}")
    if isinstance(ip, ipaddress.IPv4Address):
        v4 = SockaddrIn(sin_family=socket.AF_INET, sin_port=socket.htons(port))
        v4.sin_addr[:] = list(ip.packed)
        return v4, ctypes.sizeof(v4)
    v6 = SockaddrIn6(sin6_family=socket.AF_INET6, sin6_port=socket.htons(port))
    v6.sin6_addr[:] = list(ip.packed)
    return v6, ctypes.sizeof(v6)


def parse_sockaddr(address: int | None) -> tuple[str, int]:
    """``(host, port)`` of the ``struct sockaddr`` at ``address``; an IPv4-mapped IPv6 peer (a
    dual-stack ``::`` listener) comes back as its IPv4 address; no address: ``("", 0)``."""
    if not address:
        return "", 0
    family = ctypes.c_uint16.from_address(address).value
    if family == socket.AF_INET:
        v4 = SockaddrIn.from_address(address)
        return socket.inet_ntop(socket.AF_INET, bytes(v4.sin_addr)), socket.ntohs(v4.sin_port)
    if family == socket.AF_INET6:
        v6 = SockaddrIn6.from_address(address)
        ip = ipaddress.IPv6Address(bytes(v6.sin6_addr))
        host = str(ip.ipv4_mapped) if ip.ipv4_mapped else str(ip)
        return host, socket.ntohs(v6.sin6_port)
    return "", 0


class Lib:
    """libsrt, opened and started (``srt_startup``). Get it from ``load()``.

    Methods keep the C names without ``srt_`` for the plain calls, raise ``SrtError`` where C
    returns ``SRT_ERROR``, and take ``SockOpt``/``EpollFlag`` values; ``dll`` is the raw
    ``ctypes.CDLL`` (prototypes declared) for anything not wrapped.
    """

    def __init__(self, dll: ctypes.CDLL, path: str) -> None:
        for name, (restype, argtypes) in _PROTOTYPES.items():
            try:
                function = getattr(dll, name)
            except AttributeError:
                raise SrtUnavailable(f"{path} has no {name}: libsrt 1.5 is needed; "
                                     f"{INSTALL_HINT}") from None
            function.restype = restype
            function.argtypes = argtypes
        self.dll = dll
        self.path = path
        raw = int(dll.srt_getversion())
        self.version = f"{raw >> 16}.{(raw >> 8) & 0xFF}.{raw & 0xFF}"
        self._handlers: dict[int, ListenHandler] = {}
        # One C entry point for the library's life: libsrt may still call it while a listener
        # closes, so it must never be freed; the opaque pointer names the listener's handler.
        self._trampoline = ListenCallback(self._on_listen)
        self._log_target = log
        self._log_trampoline = LogHandler(self._on_log)
        self.check(int(dll.srt_startup()))

    def __repr__(self) -> str:
        return f"<libsrt {self.version} {self.path}>"

    # -- errors -------------------------------------------------------------------------

    def check(self, result: int) -> int:
        """``result`` unless it is ``SRT_ERROR`` (-1), then ``SrtError`` with libsrt's text.

        libsrt keeps the last error per thread: call this on the thread that made the call.
        """
        if result != ERROR:
            return result
        raise self.last_error()

    def last_error(self) -> SrtError:
        """The calling thread's last libsrt error, as an exception (not raised)."""
        sys_errno = ctypes.c_int(0)
        code = int(self.dll.srt_getlasterror(ctypes.byref(sys_errno)))
        text = self.dll.srt_getlasterror_str()
        message = text.decode(errors="replace") if text else "unknown error"
        return SrtError(code, message, sys_errno.value)

    def clearlasterror(self) -> None:
        self.dll.srt_clearlasterror()

    def strerror(self, code: int, sys_errno: int = 0) -> str:
        text = self.dll.srt_strerror(code, sys_errno)
        return text.decode(errors="replace") if text else ""

    def setloglevel(self, level: int) -> None:
        """What libsrt logs: a syslog level (2 critical, 3 errors, 4 warnings, the default
        of 1.5.1, 5 notices, 7 debug). Process-wide."""
        self.dll.srt_setloglevel(level)

    def forward_logs(self, logger: logging.Logger = log, level: int = 4) -> None:
        """Send libsrt's log lines (by default to stderr, one per refused caller at warning
        level) to ``logger`` instead, from whatever libsrt thread logs. Process-wide."""
        self._log_target = logger
        self.dll.srt_setloglevel(level)
        self.dll.srt_setlogflags(LOGF_DISABLE_TIME | LOGF_DISABLE_THREADNAME
                                 | LOGF_DISABLE_SEVERITY | LOGF_DISABLE_EOL)
        self.dll.srt_setloghandler(None, self._log_trampoline)

    # -- sockets ------------------------------------------------------------------------

    def create_socket(self) -> int:
        sock = int(self.dll.srt_create_socket())
        if sock == INVALID_SOCK:
            raise self.last_error()
        return sock

    def bind(self, sock: int, host: str, port: int) -> None:
        """Bind to ``host`` (IPv4 or IPv6 literal; ``::`` is dual-stack unless
        ``SockOpt.IPV6ONLY`` is set first) and ``port`` (0: any; read it with ``getsockname``)."""
        address, length = make_sockaddr(host, port)
        self.check(int(self.dll.srt_bind(sock, ctypes.byref(address), length)))

    def listen(self, sock: int, backlog: int) -> None:
        self.check(int(self.dll.srt_listen(sock, backlog)))

    def accept(self, sock: int) -> tuple[int, tuple[str, int]]:
        """The next connection and its peer; on a non-blocking listener with none pending,
        ``SrtError`` with ``would_block``."""
        address = SockaddrStorage()
        length = ctypes.c_int(ctypes.sizeof(address))
        new = int(self.dll.srt_accept(sock, ctypes.byref(address), ctypes.byref(length)))
        if new == INVALID_SOCK:
            raise self.last_error()
        return new, parse_sockaddr(ctypes.addressof(address))

    def connect(self, sock: int, host: str, port: int) -> None:
        """Connect as a caller. Blocking (the default) waits up to ``SockOpt.CONNTIMEO``
        (3 s); a refusal raises ``SrtError`` with ``code == ECONNREJ`` and ``reject_reason``."""
        address, length = make_sockaddr(host, port)
        if int(self.dll.srt_connect(sock, ctypes.byref(address), length)) != ERROR:
            return
        error = self.last_error()
        if error.code == ErrorCode.ECONNREJ:
            error.reject_reason = _known(RejectReason, self.getrejectreason(sock))
        raise error

    def close(self, sock: int) -> None:
        """Close a socket and forget its listen callback. libsrt makes this idempotent: a
        closed or unknown socket is no error."""
        self._handlers.pop(sock, None)
        self.check(int(self.dll.srt_close(sock)))

    def getsockstate(self, sock: int) -> SockStatus:
        return SockStatus(int(self.dll.srt_getsockstate(sock)))

    def getpeername(self, sock: int) -> tuple[str, int]:
        """The peer of a connected socket. libsrt 1.5.1 knows it only on accepted sockets:
        on a caller's own socket this is ``("", 0)``."""
        return self._name(self.dll.srt_getpeername, sock)

    def getsockname(self, sock: int) -> tuple[str, int]:
        return self._name(self.dll.srt_getsockname, sock)

    def _name(self, function: Any, sock: int) -> tuple[str, int]:
        address = SockaddrStorage()
        length = ctypes.c_int(ctypes.sizeof(address))
        self.check(int(function(sock, ctypes.byref(address), ctypes.byref(length))))
        return parse_sockaddr(ctypes.addressof(address))

    # -- options ------------------------------------------------------------------------

    def setsockflag(self, sock: int, opt: SockOpt, value: int | bool | str | bytes) -> None:
        """Set an option; the C type follows ``opt`` (int, int64_t, bool or a string).

        Options that shape the connection (``TRANSTYPE`` first, then latency, payload size,
        passphrase) must be set before ``connect``/``listen``; accepted sockets inherit the
        listener's.
        """
        buffer: ctypes.Array[ctypes.c_char] | ctypes.c_int | ctypes.c_int64
        if opt in _STRING_OPTIONS:
            if not isinstance(value, str | bytes):
                raise TypeError(f"{opt.name} takes a string, not {type(value).__name__}")
            data = value.encode() if isinstance(value, str) else value
            buffer = ctypes.create_string_buffer(data, len(data))
            length = len(data)
        elif isinstance(value, str | bytes):
            raise TypeError(f"{opt.name} takes a number, not {type(value).__name__}")
        elif opt in _INT64_OPTIONS:
            buffer, length = ctypes.c_int64(int(value)), 8
        else:  # int and bool options alike: libsrt reads a bool option from an int too
            buffer, length = ctypes.c_int(int(value)), ctypes.sizeof(ctypes.c_int)
        self.check(int(self.dll.srt_setsockflag(sock, opt, ctypes.byref(buffer), length)))

    def getsockflag_int(self, sock: int, opt: SockOpt) -> int:
        """A numeric or bool option (whatever width libsrt writes) as an int."""
        buffer = ctypes.c_int64(0)  # libsrt writes without checking the length: give it room
        length = ctypes.c_int(ctypes.sizeof(buffer))
        self.check(int(self.dll.srt_getsockflag(sock, opt, ctypes.byref(buffer),
                                                ctypes.byref(length))))
        raw = ctypes.string_at(ctypes.addressof(buffer), length.value)
        return int.from_bytes(raw, "little", signed=length.value > 1)

    def getsockflag_bool(self, sock: int, opt: SockOpt) -> bool:
        return self.getsockflag_int(sock, opt) != 0

    def getsockflag_bytes(self, sock: int, opt: SockOpt) -> bytes:
        """A string option (``STREAMID``, ``CONGESTION``, ``PACKETFILTER``); ``PASSPHRASE``
        cannot be read back."""
        buffer = ctypes.create_string_buffer(MAX_SID_LENGTH + 1)
        length = ctypes.c_int(len(buffer))
        self.check(int(self.dll.srt_getsockflag(sock, opt, buffer, ctypes.byref(length))))
        return buffer.raw[: length.value]

    def getsockflag_str(self, sock: int, opt: SockOpt) -> str:
        return self.getsockflag_bytes(sock, opt).decode(errors="replace")

    def streamid(self, sock: int) -> str:
        """The streamid the caller sent (on an accepted socket) or the one set (on a caller)."""
        return self.getsockflag_str(sock, SockOpt.STREAMID)

    # -- epoll --------------------------------------------------------------------------

    def epoll_create(self) -> int:
        return self.check(int(self.dll.srt_epoll_create()))

    def epoll_set(self, eid: int, flags: EpollSetting) -> EpollSetting:
        """Set the epoll's ``SRT_EPOLL_FLAGS`` (``EpollSetting.ENABLE_EMPTY``: waiting on an
        empty epoll is not an error); returns the previous ones."""
        return EpollSetting(self.check(int(self.dll.srt_epoll_set(eid, flags))))

    def epoll_add_usock(self, eid: int, sock: int, events: EpollFlag) -> None:
        events_c = ctypes.c_int(_c_int(events))
        self.check(int(self.dll.srt_epoll_add_usock(eid, sock, ctypes.byref(events_c))))

    def epoll_update_usock(self, eid: int, sock: int, events: EpollFlag) -> None:
        events_c = ctypes.c_int(_c_int(events))
        self.check(int(self.dll.srt_epoll_update_usock(eid, sock, ctypes.byref(events_c))))

    def epoll_remove_usock(self, eid: int, sock: int) -> None:
        self.check(int(self.dll.srt_epoll_remove_usock(eid, sock)))

    def epoll_add_ssock(self, eid: int, fd: int, events: EpollFlag) -> None:
        """Watch a system file descriptor (a socketpair end to wake the poller). Only
        ``epoll_wait`` reports it: ``epoll_uwait`` then fails (``EINVPARAM``, or
        ``EPOLLEMPTY`` when the epoll holds no SRT socket)."""
        events_c = ctypes.c_int(_c_int(events))
        self.check(int(self.dll.srt_epoll_add_ssock(eid, fd, ctypes.byref(events_c))))

    def epoll_remove_ssock(self, eid: int, fd: int) -> None:
        self.check(int(self.dll.srt_epoll_remove_ssock(eid, fd)))

    def epoll_uwait(self, eid: int, timeout_ms: int,
                    max_events: int = 64) -> list[tuple[int, EpollFlag]]:
        """Ready SRT sockets and their events, ``[]`` on timeout (-1: wait for ever).

        libsrt re-checks every 10 ms, so a socket added from another thread is seen
        within 10 ms. ``EpollFlag.ERR`` comes with ``IN``/``OUT`` on a broken connection.
        """
        events = (EpollEvent * max_events)()
        count = self.check(int(self.dll.srt_epoll_uwait(eid, events, max_events, timeout_ms)))
        return [(events[i].fd, EpollFlag(events[i].events & 0xFFFFFFFF)) for i in range(count)]

    def epoll_wait(self, eid: int, timeout_ms: int, max_fds: int = 64) -> EpollReady:
        """Ready SRT sockets and system descriptors; an empty ``EpollReady`` on timeout.

        A broken SRT socket is reported both readable and writable. System descriptors are
        polled, not waited on: one becomes visible within ~10 ms.
        """
        arrays = [(_SOCK * max_fds)() for _ in range(2)] + [(ctypes.c_int * max_fds)()
                                                            for _ in range(2)]
        counts = [ctypes.c_int(max_fds) for _ in range(4)]
        result = int(self.dll.srt_epoll_wait(
            eid, arrays[0], ctypes.byref(counts[0]), arrays[1], ctypes.byref(counts[1]),
            timeout_ms, arrays[2], ctypes.byref(counts[2]), arrays[3], ctypes.byref(counts[3])))
        if result == ERROR:
            error = self.last_error()
            if error.code == ErrorCode.ETIMEOUT:
                return EpollReady()
            raise error
        found = [tuple(array[: count.value]) for array, count in zip(arrays, counts, strict=True)]
        return EpollReady(*found)

    def epoll_release(self, eid: int) -> None:
        self.check(int(self.dll.srt_epoll_release(eid)))

    # -- data ---------------------------------------------------------------------------

    def recvmsg(self, sock: int, size: int = LIVE_MAX_PLSIZE) -> bytes:
        """One message (in live mode one packet's payload, at most 1456 bytes). Non-blocking
        and nothing ready: ``SrtError`` with ``would_block``; connection gone: ``ECONNLOST``."""
        buffer = ctypes.create_string_buffer(size)
        count = self.check(int(self.dll.srt_recvmsg(sock, buffer, size)))
        return buffer.raw[:count]

    def recvmsg_into(self, sock: int, buffer: bytearray | memoryview) -> int:
        """``recvmsg`` into a caller's writable buffer; returns the message length."""
        size = len(buffer)
        target = (ctypes.c_char * size).from_buffer(buffer)
        return self.check(int(self.dll.srt_recvmsg(sock, target, size)))

    def sendmsg(self, sock: int, data: bytes | bytearray | memoryview, ttl_ms: int = MSGTTL_INF,
                inorder: bool = False) -> int:
        """Send one message (live mode: at most the payload size, 1316 by default). Safe from
        a thread other than the receiving one. Non-blocking and the buffer is full:
        ``SrtError`` with ``would_block``."""
        source: bytes | ctypes.Array[ctypes.c_char]
        if isinstance(data, bytes):
            source = data
        elif isinstance(data, bytearray) or (isinstance(data, memoryview) and not data.readonly):
            source = (ctypes.c_char * len(data)).from_buffer(data)
        else:
            source = bytes(data)
        return self.check(int(self.dll.srt_sendmsg(sock, source, len(data), ttl_ms,
                                                   int(inorder))))

    # -- statistics ---------------------------------------------------------------------

    def bistats(self, sock: int, clear: bool = False, instantaneous: bool = False) -> TraceBStats:
        """The whole ``SRT_TRACEBSTATS``; ``clear`` resets the local (interval) counters."""
        perf = TraceBStats()
        self.check(int(self.dll.srt_bistats(sock, ctypes.byref(perf), int(clear),
                                            int(instantaneous))))
        return perf

    def stats(self, sock: int, clear: bool = False) -> Stats:
        return Stats.from_struct(self.bistats(sock, clear))

    # -- access control -----------------------------------------------------------------

    def set_listen_callback(self, sock: int, handler: ListenHandler) -> None:
        """Call ``handler`` for every caller's handshake on listener ``sock``, before accept.

        It runs on libsrt's receive thread for the port, which waits for it: decide from
        memory. An exception in ``handler`` is logged and refuses the caller (``X_ISE``).
        Calling again replaces the handler; ``close`` forgets it.
        """
        self._handlers[sock] = handler
        self.check(int(self.dll.srt_listen_callback(sock, self._trampoline, sock)))

    def setrejectreason(self, sock: int, code: int) -> None:
        """The reason a listen callback's refusal sends (1000 and up: ``RejectReason.X_*``)."""
        self.check(int(self.dll.srt_setrejectreason(sock, code)))

    def getrejectreason(self, sock: int) -> int:
        return int(self.dll.srt_getrejectreason(sock))

    def rejectreason_str(self, code: int) -> str:
        """libsrt's text for a reason; every ``X_*`` code reads as one generic text."""
        text = self.dll.srt_rejectreason_str(code)
        return text.decode(errors="replace") if text else ""

    def _on_listen(self, opaque: int | None, ns: int, hsversion: int, peeraddr: int | None,
                   streamid: bytes | None) -> int:
        # Called from C: nothing may escape (ctypes would print it and accept the caller).
        try:
            handler = self._handlers.get(opaque or 0)
            if handler is None:
                self.setrejectreason(ns, RejectReason.X_DOWN)
                return -1
            request = Incoming(ns, hsversion, parse_sockaddr(peeraddr),
                               (streamid or b"").decode(errors="replace"))
            try:
                verdict = handler(request)
            except Reject as refusal:
                verdict = refusal.code
            if verdict == 0:
                return 0
            if verdict >= REJC_PREDEFINED:
                self.setrejectreason(ns, verdict)
            elif verdict != -1 or self.getrejectreason(ns) < REJC_PREDEFINED:
                # Refused with no reason, libsrt 1.5.1 sends one the caller reads as ROGUE.
                self.setrejectreason(ns, RejectReason.X_FALLBACK)
            return -1
        except BaseException:  # the C boundary: anything at all refuses, never propagates
            log.exception("srt listen callback failed listener=%s sock=%s", opaque, ns)
            try:
                self.setrejectreason(ns, RejectReason.X_ISE)
            except SrtError:
                pass
            return -1

    def _on_log(self, _opaque: int | None, level: int, _file: bytes | None, _line: int,
                area: bytes | None, message: bytes | None) -> None:
        try:
            text = (message or b"").decode(errors="replace").strip()
            self._log_target.log(_SYSLOG_LEVELS.get(level, logging.DEBUG), "libsrt area=%s %s",
                                 (area or b"").decode(errors="replace"), text)
        except BaseException:  # the C boundary: a log line is not worth a crash
            pass

    def _cleanup(self) -> None:
        self.dll.srt_cleanup()


_load_lock = threading.Lock()


def load() -> Lib:
    """libsrt, opened once per process: ``$ARCLY_LIBSRT`` if set, else the versioned sonames
    (Debian ships no unversioned ``libsrt.so``), else ``find_library("srt")``.

    Raises ``SrtUnavailable`` saying what to install (and tries again on the next call).
    """
    with _load_lock:
        return _load_once()


@functools.cache
def _load_once() -> Lib:
    dll, path = _open()
    lib = Lib(dll, path)
    # Stop libsrt's threads while the interpreter can still run a listen callback.
    atexit.register(lib._cleanup)
    return lib


def _open() -> tuple[ctypes.CDLL, str]:
    explicit = os.environ.get("ARCLY_LIBSRT")
    if explicit:
        try:
            return ctypes.CDLL(explicit), explicit
        except OSError as exc:
            raise SrtUnavailable(f"cannot load ARCLY_LIBSRT={explicit}: {exc}; "
                                 f"{INSTALL_HINT}") from exc
    found = ctypes.util.find_library("srt")
    for name in (*SONAMES, *([found] if found else [])):
        try:
            return ctypes.CDLL(name), name
        except OSError:
            continue
    raise SrtUnavailable(f"libsrt not found (tried {', '.join(SONAMES)} and "
                         f"find_library('srt')): {INSTALL_HINT}")

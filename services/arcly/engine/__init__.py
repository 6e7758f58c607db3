"""The arcly media kernel: standard library only.

Publish frames into a stream, fan them out to subscribers without copying, start new
viewers at once from the GOP cache, and run protocol handlers with coordinated teardown.
Redis, gRPC, OpenTelemetry and uvloop live in adapters around this package.
"""

from .config import EngineConfig
from .engine import FALLBACK, Engine
from .errors import (
    ArclyError,
    AuthError,
    HandlerCrashed,
    InvalidStreamKey,
    ListenError,
    ProtocolError,
    StreamBusy,
    StreamNotFound,
)
from .extension import (
    Action,
    AllowAll,
    AuthGrant,
    AuthProvider,
    AuthRequest,
    KeyOwnership,
    LocalOwnership,
    MediaSource,
    NullObserver,
    Observer,
    ProtocolHandler,
    PublishRegistry,
    Storage,
    StorageWriter,
    Upstream,
)
from .fallback import FallbackProvider, Splicer
from .frame import Frame, FrameKind
from .gop import GopCache
from .key import StreamKey
from .reasons import CloseReason
from .refusals import Refusals
from .shutdown import ShutdownToken
from .stream import RELAYED, PublishHandle, Stream, Subscription
from .timeline import SegmentMark, Timeline, TimelineState

__all__ = [
    "FALLBACK",
    "RELAYED",
    "Action",
    "AllowAll",
    "ArclyError",
    "AuthError",
    "AuthGrant",
    "AuthProvider",
    "AuthRequest",
    "CloseReason",
    "Engine",
    "EngineConfig",
    "FallbackProvider",
    "Frame",
    "FrameKind",
    "GopCache",
    "HandlerCrashed",
    "InvalidStreamKey",
    "KeyOwnership",
    "ListenError",
    "LocalOwnership",
    "MediaSource",
    "NullObserver",
    "Observer",
    "ProtocolError",
    "ProtocolHandler",
    "PublishHandle",
    "PublishRegistry",
    "Refusals",
    "SegmentMark",
    "ShutdownToken",
    "Splicer",
    "Storage",
    "StorageWriter",
    "Stream",
    "StreamBusy",
    "StreamKey",
    "StreamNotFound",
    "Subscription",
    "Timeline",
    "TimelineState",
    "Upstream",
]

from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FrameKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FRAME_KIND_UNSPECIFIED: _ClassVar[FrameKind]
    FRAME_KIND_AUDIO: _ClassVar[FrameKind]
    FRAME_KIND_VIDEO: _ClassVar[FrameKind]
    FRAME_KIND_DATA: _ClassVar[FrameKind]
FRAME_KIND_UNSPECIFIED: FrameKind
FRAME_KIND_AUDIO: FrameKind
FRAME_KIND_VIDEO: FrameKind
FRAME_KIND_DATA: FrameKind

class SubscribeRequest(_message.Message):
    __slots__ = ("app", "stream", "node_id")
    APP_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    app: str
    stream: str
    node_id: str
    def __init__(self, app: _Optional[str] = ..., stream: _Optional[str] = ..., node_id: _Optional[str] = ...) -> None: ...

class SegmentMark(_message.Message):
    __slots__ = ("sequence", "discontinuity", "start", "session", "part", "part_start", "independent")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    DISCONTINUITY_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    PART_FIELD_NUMBER: _ClassVar[int]
    PART_START_FIELD_NUMBER: _ClassVar[int]
    INDEPENDENT_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    discontinuity: int
    start: int
    session: int
    part: int
    part_start: int
    independent: bool
    def __init__(self, sequence: _Optional[int] = ..., discontinuity: _Optional[int] = ..., start: _Optional[int] = ..., session: _Optional[int] = ..., part: _Optional[int] = ..., part_start: _Optional[int] = ..., independent: _Optional[bool] = ...) -> None: ...

class RelayFrame(_message.Message):
    __slots__ = ("kind", "timestamp", "keyframe", "config", "payload", "fencing_token", "mark", "origin_time_us")
    KIND_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    KEYFRAME_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    MARK_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_TIME_US_FIELD_NUMBER: _ClassVar[int]
    kind: FrameKind
    timestamp: int
    keyframe: bool
    config: bool
    payload: bytes
    fencing_token: int
    mark: SegmentMark
    origin_time_us: int
    def __init__(self, kind: _Optional[_Union[FrameKind, str]] = ..., timestamp: _Optional[int] = ..., keyframe: _Optional[bool] = ..., config: _Optional[bool] = ..., payload: _Optional[bytes] = ..., fencing_token: _Optional[int] = ..., mark: _Optional[_Union[SegmentMark, _Mapping]] = ..., origin_time_us: _Optional[int] = ...) -> None: ...

class StreamEnded(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class RelayMessage(_message.Message):
    __slots__ = ("frame", "ended")
    FRAME_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    frame: RelayFrame
    ended: StreamEnded
    def __init__(self, frame: _Optional[_Union[RelayFrame, _Mapping]] = ..., ended: _Optional[_Union[StreamEnded, _Mapping]] = ...) -> None: ...

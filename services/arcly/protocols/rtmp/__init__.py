"""RTMP: a sans-I/O server connection (``RtmpConnection``) and its asyncio adapter."""

from .connection import RtmpConnection
from .server import RtmpServer, RtmpSettings

__all__ = ["RtmpConnection", "RtmpServer", "RtmpSettings"]

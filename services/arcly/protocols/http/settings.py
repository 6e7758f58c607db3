"""Limits and timeouts of the HTTP listener (seconds, bytes)."""

from __future__ import annotations

from dataclasses import dataclass

from arcly.protocols.egress import DEFAULT_COALESCE, DEFAULT_COALESCE_MAX


@dataclass(frozen=True, slots=True)
class HttpSettings:
    header_timeout: float = 10.0
    keepalive_timeout: float = 15.0  # an idle kept-alive connection is closed after this
    keepalive_requests: int = 1000   # requests per connection, then it is closed
    write_buffer_high: int = 512 * 1024
    stall_timeout: float = 10.0
    viewer_send_buffer: int = 256 * 1024
    write_coalesce: float = DEFAULT_COALESCE  # 0: write every frame the moment it arrives
    write_coalesce_max: float = DEFAULT_COALESCE_MAX  # the interval's ceiling as viewers grow

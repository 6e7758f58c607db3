"""arcly-stream: a live-video streaming cluster (RTMP in; RTMP, HTTP-FLV and HLS out)."""

__version__ = "0.1.0"

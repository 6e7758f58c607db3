"""Sans-I/O codecs and containers: AMF0, FLV tags, codec configuration (AVC, HEVC, AAC),
MPEG-TS. Bytes in, bytes out: no sockets, no asyncio."""

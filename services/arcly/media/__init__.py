"""Sans-I/O codecs and containers: AMF0, FLV tags, codec configuration. Bytes in, bytes out."""

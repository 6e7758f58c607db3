"""WebRTC: WHEP playback and WHIP ingest (aiortc), on every node.

The HTTP exchange (offer in, answer out) is ours, on the node's HTTP listener; aiortc does ICE,
DTLS, SRTP and RTP packetization. Video passes through untouched (H.264 access units, Annex-B on
the wire); audio is transcoded once per stream (AAC → Opus for viewers, Opus → AAC for WHIP
publishers), off the event loop.
"""

"""HLS: a deterministic segmenter (an ordinary stream subscriber), live playlists, and the
service that runs segmenters on demand and serves them over the node's HTTP listener."""

from .playlist import render_playlist
from .segmenter import Segment, Segmenter

__all__ = ["Segment", "Segmenter", "render_playlist"]

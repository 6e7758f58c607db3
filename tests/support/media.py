"""Test media: the tags of the generated source FLV, ready to publish through a test client."""

from __future__ import annotations

from pathlib import Path

from arcly.media import flv


def load_tags(path: Path) -> list[flv.Tag]:
    data = path.read_bytes()
    tags, _ = flv.parse_tags(data, flv.parse_header(data))
    return tags

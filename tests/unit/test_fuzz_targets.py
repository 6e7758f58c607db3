"""The fuzz targets stay runnable, and crashes fuzzing found stay fixed (regressions)."""

from __future__ import annotations

import pytest

pytest.importorskip("atheris")

from tests.fuzz.targets import TARGETS, _guarded

SEEDS = [b"", b"\x00", b"\x03" * 64, b"FLV\x01\x05\x00\x00\x00\x09" + b"\x00" * 40,
         b"GET / HTTP/1.1\r\nHost: x", bytes(range(256))]


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_every_target_accepts_seed_inputs(name: str) -> None:
    for seed in SEEDS:
        _guarded(TARGETS[name])(seed)

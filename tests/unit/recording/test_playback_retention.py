"""Retention: recordings older than ``max_age`` go, then the oldest while all of them are over
``max_bytes``; a recording's FLV and HLS folder go together, empty directories after them, and
a recording being written is never touched."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

import pytest

from arcly.engine import Engine, EngineConfig, FrameKind, StreamKey
from arcly.media.flv import make_frame
from arcly.recording import FilesystemStorage, RecordingManager, RecordSettings
from arcly.recording.retention import MAX_AGE, MAX_BYTES, inventory, plan_deletions
from tests.support.wait import eventually
from tests.unit.recording.test_playback_index import AAC_HEADER, AVC_HEADER, video_body
from tests.unit.recording.test_recorder import running

NOW = 1_800_000_000.0


def stored_recording(root: Path, name: str, *, age: float, size: int, hls: int = 0,
                     now: float = NOW) -> Path:
    """``{root}/{name}.flv`` of ``size`` bytes last written ``age`` seconds before ``now``,
    with an HLS folder of ``hls`` bytes when asked."""
    flv = root / f"{name}.flv"
    flv.parent.mkdir(parents=True, exist_ok=True)
    flv.write_bytes(bytes(size))
    if hls:
        (root / name).mkdir()
        (root / name / "index.m3u8").write_bytes(bytes(hls))
    os.utime(flv, (now - age, now - age))
    return flv


def test_old_recordings_go_first_then_the_oldest_while_over_the_cap(tmp_path: Path) -> None:
    stored_recording(tmp_path, "live/a/20270101-000000-1", age=90_000, size=100, hls=50)
    stored_recording(tmp_path, "live/a/20270114-000000-2", age=3_000, size=400)
    stored_recording(tmp_path, "live/b/20270114-010000-3", age=2_000, size=300)
    stored_recording(tmp_path, "live/b/20270115-070000-4", age=10, size=200)
    found = inventory(tmp_path)
    assert sorted(s.size for s in found) == [150, 200, 300, 400], "the folder counts"
    plan = plan_deletions(found, now=NOW, max_age=86_400, max_bytes=450, live=set())
    assert [(d.recording.name, d.reason) for d in plan] == [
        ("live/a/20270101-000000-1", MAX_AGE), ("live/a/20270114-000000-2", MAX_BYTES),
        ("live/b/20270114-010000-3", MAX_BYTES)]
    assert plan_deletions(found, now=NOW, max_age=None, max_bytes=None, live=set()) == []


def test_a_recording_being_written_is_never_planned_for_deletion(tmp_path: Path) -> None:
    stored_recording(tmp_path, "live/a/20270101-000000-1", age=90_000, size=1000)
    stored_recording(tmp_path, "live/a/20270115-000000-2", age=50, size=10)
    found = inventory(tmp_path)
    plan = plan_deletions(found, now=NOW, max_age=60, max_bytes=1,
                          live={"live/a/20270101-000000-1"})
    assert [(d.recording.name, d.reason) for d in plan] == [
        ("live/a/20270115-000000-2", MAX_BYTES)], "the live one's bytes still count"


async def test_the_sweep_deletes_flv_and_folder_and_empty_directories_and_logs_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "arcly.recording")
    now = time.time()
    old = stored_recording(tmp_path, "live/a/20270101-000000-1", age=7200, size=100, hls=20,
                           now=now)
    kept = stored_recording(tmp_path, "live/b/20270115-000000-2", age=10, size=10, now=now)
    manager = RecordingManager(FilesystemStorage(tmp_path), RecordSettings(max_age=3600))
    deleted = await manager.sweep(tmp_path)
    assert [d.recording.flv for d in deleted] == [old]
    assert not (tmp_path / "live" / "a").exists(), "the emptied stream and app directories"
    assert kept.exists() and (tmp_path / "live").is_dir()
    line = next(r.getMessage() for r in caplog.records if "recording deleted" in r.getMessage())
    assert line.startswith("recording deleted path=live/a/20270101-000000-1.flv reason=max-age "
                           "age=72") and line.endswith(" bytes=120")


async def test_retention_runs_at_start_and_after_each_recording_leaving_live_ones_alone(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "arcly.recording")
    old = stored_recording(tmp_path, "live/old/20270101-000000-1", age=7200, size=10,
                           now=time.time())
    # Every recording is "old" after 0.2 s (a finished one is over the byte cap too).
    manager = RecordingManager(FilesystemStorage(tmp_path), RecordSettings(
        max_age=0.2, max_bytes=1000, sweep_interval=3600))
    engine = Engine(EngineConfig(idle_timeout=None), observer=manager)
    key = StreamKey("live", "now")
    async with running(manager, engine):
        handle = await engine.start_publish(key)
        handle.publish_frame(make_frame(FrameKind.VIDEO, 0, AVC_HEADER))
        handle.publish_frame(make_frame(FrameKind.AUDIO, 0, AAC_HEADER))
        for index in range(60):
            handle.publish_frame(make_frame(FrameKind.VIDEO, index * 33,
                                            video_body(index % 30 == 0, size=100)))
        folder = tmp_path / "live" / "now"
        await eventually(lambda: not old.exists() and list(folder.glob("*.flv")))
        assert not old.exists(), "swept at start"
        live = next(folder.glob("*.flv"))
        await asyncio.sleep(0.3)
        assert await manager.sweep(tmp_path) == [] and live.exists(), "being written"
        await engine.end_publish(key, "publisher disconnected")
        await eventually(lambda: not live.exists(), message="not swept after finalization")
    assert not folder.exists()
    deleted = [r.getMessage() for r in caplog.records if "recording deleted" in r.getMessage()]
    assert len(deleted) == 2 and "live/old/" in deleted[0] and "live/now/" in deleted[1], deleted

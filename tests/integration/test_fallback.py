"""Always-available streams on a real node: keys nobody published play their app's on-demand
fallback, a fallback may be another live stream, and the API shows who feeds a stream."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.processes import Node

pytestmark = pytest.mark.integration


def test_an_unpublished_key_plays_its_on_demand_fallback_through_another_stream(
        node_factory: Callable[..., Node], ffmpeg: str, ffprobe: str, slate_flv: Path,
        tmp_path: Path) -> None:
    config = tmp_path / "arcly.toml"
    config.write_text(f'[apps.lobby]\nfallback = "{slate_flv}"\non_demand_fallback = true\n'
                      '[apps.show]\nfallback_stream = "lobby/slate"\non_demand_fallback = true\n')
    node = node_factory("--config", str(config))
    out = tmp_path / "show.flv"
    record = subprocess.run(
        [ffmpeg, "-hide_banner", "-loglevel", "error", "-rw_timeout", "10000000",
         "-i", f"http://127.0.0.1:{node.http}/show/tonight.flv", "-t", "4", "-c", "copy",
         "-y", str(out)], capture_output=True, text=True, timeout=60)
    assert record.returncode == 0, record.stderr
    probe = subprocess.run(
        [ffprobe, "-v", "error", "-count_frames", "-show_entries",
         "stream=codec_type,nb_read_frames", "-of", "json", str(out)],
        capture_output=True, text=True, timeout=60, check=True)
    frames = {s["codec_type"]: int(s["nb_read_frames"])
              for s in json.loads(probe.stdout)["streams"]}
    assert frames.get("video", 0) >= 90 and frames.get("audio", 0) > 0, frames
    node.wait_for_log(r"fallback start stream=show/tonight source=stream:lobby/slate "
                      r"on_demand=true")
    node.wait_for_log(r"fallback start stream=lobby/slate source=file:slate.flv on_demand=true")
    # A key of an app without a fallback is still unknown.
    missing = subprocess.run(
        [ffmpeg, "-hide_banner", "-loglevel", "error", "-rw_timeout", "3000000",
         "-i", f"http://127.0.0.1:{node.http}/live/nobody.flv", "-t", "1", "-f", "null", "-"],
        capture_output=True, text=True, timeout=30)
    assert missing.returncode != 0 and "404" in missing.stderr

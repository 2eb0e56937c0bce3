"""`python -m opensegur.ops.viewer_install`: puts the OHIF viewer's prebuilt files where the platform serves them.

The pinned package (``viewer/ohif.json``: name, version, npm integrity) is fetched with ``npm pack`` — npm's own
registry settings apply, a hospital's mirror included —, its SHA-512 checked against the pin, and its ``dist/``
extracted (tarfile's ``data`` filter: no absolute path, no link out, no device) with its licence. Nothing of it is
kept in the repository: the dist weighs 200 MB."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

__all__ = ["install_viewer", "viewer_dir"]


def viewer_dir() -> Path:
    """Where the platform looks for the viewer by default: beside the Python environment it runs in."""
    return Path(sys.prefix) / "share" / "ohif" / "dist"


def _integrity(path: Path) -> str:
    digest = hashlib.sha512()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return "sha512-" + base64.b64encode(digest.digest()).decode()


def install_viewer(pin: Path, target: Path) -> None:
    spec = json.loads(pin.read_text(encoding="utf-8"))
    if shutil.which("npm") is None:
        raise SystemExit("npm est nécessaire pour installer la visionneuse OHIF (apt install npm)")
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            ["npm", "pack", f"{spec['package']}@{spec['version']}", "--pack-destination", tmp, "--json"],
            check=True,
            capture_output=True,
            text=True,
        )
        tarball = Path(tmp) / json.loads(out.stdout)[0]["filename"]
        found = _integrity(tarball)
        if found != spec["integrity"]:
            raise SystemExit(f"OHIF {spec['version']} : empreinte inattendue ({found}), installation refusée")
        staging = Path(tmp) / "x"
        with tarfile.open(tarball) as archive:
            members = [
                m for m in archive.getmembers() if m.name.startswith(("package/dist/", "package/LICENSE"))
            ]
            archive.extractall(staging, members=members, filter="data")
        shutil.copy(staging / "package" / "LICENSE", staging / "package" / "dist" / "LICENSE.ohif")
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging / "package" / "dist"), target)
    (target / "index.html").touch()  # newer than the pin: make does not install it again


if __name__ == "__main__":
    install_viewer(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else viewer_dir())

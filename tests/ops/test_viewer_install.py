"""Installing the OHIF viewer: only the pinned package, only its dist/, never a path out of the target."""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
from pathlib import Path

import pytest

from opensegur.ops.viewer_install import _integrity, install_viewer


def _tarball(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def _fake_npm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tarball: Path) -> None:
    """An ``npm pack`` that hands over ``tarball``, as the registry would."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    npm = bin_dir / "npm"
    npm.write_text(
        "#!/bin/sh\n"
        'dest=""; while [ $# -gt 0 ]; do [ "$1" = --pack-destination ] && dest="$2"; shift; done\n'
        f'cp {tarball} "$dest/ohif-app.tgz"\n'
        'echo \'[{"filename": "ohif-app.tgz"}]\'\n'
    )
    npm.chmod(npm.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def _pin(tmp_path: Path, integrity: str) -> Path:
    pin = tmp_path / "ohif.json"
    pin.write_text(json.dumps({"package": "@ohif/app", "version": "0.0.1", "integrity": integrity}))
    return pin


def test_the_pinned_package_dist_is_installed_with_its_licence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tarball = tmp_path / "app.tgz"
    _tarball(
        tarball, {"package/dist/index.html": b"<html>", "package/LICENSE": b"MIT", "package/src/x.js": b"x"}
    )
    _fake_npm(tmp_path, monkeypatch, tarball)
    install_viewer(_pin(tmp_path, _integrity(tarball)), tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["LICENSE.ohif", "index.html"]


def test_another_package_than_the_pinned_one_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tarball = tmp_path / "app.tgz"
    _tarball(tarball, {"package/dist/index.html": b"<html>", "package/LICENSE": b"MIT"})
    _fake_npm(tmp_path, monkeypatch, tarball)
    with pytest.raises(SystemExit, match="empreinte inattendue"):
        install_viewer(_pin(tmp_path, "sha512-autre"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_member_climbing_out_of_the_target_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tarball = tmp_path / "app.tgz"
    _tarball(tarball, {"package/dist/../../../evil.js": b"x", "package/LICENSE": b"MIT"})
    _fake_npm(tmp_path, monkeypatch, tarball)
    with pytest.raises(tarfile.FilterError):
        install_viewer(_pin(tmp_path, _integrity(tarball)), tmp_path / "out")
    assert not (tmp_path / "evil.js").exists() and not (tmp_path.parent / "evil.js").exists()

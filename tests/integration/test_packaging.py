"""A plain (non-editable) install carries the twistd drop-in that lists both commands."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
         "-w", str(out), str(ROOT)],
        check=True, capture_output=True, timeout=150,
    )
    return next(out.glob("distpotify-*.whl"))


def test_wheel_holds_the_packages_and_the_plugin_drop_in(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())

    assert "twisted/plugins/distpotify_plugins.py" in names
    assert "twisted/__init__.py" not in names and "twisted/plugins/__init__.py" not in names
    assert {"distpotify/tap.py", "distpotify/store/metadata.py", "proxy/tap.py"} <= names
    assert not any(name.startswith(("tests/", "bench/")) for name in names)


def test_twistd_lists_both_commands_from_a_plain_install(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
         str(target), str(wheel)],
        check=True, capture_output=True, timeout=120,
    )
    # -S skips site and its .pth files (the editable install's path to the checkout): only
    # the installed copy and the dependencies in site-packages are importable.
    site_packages = sysconfig.get_paths()["purelib"]
    env = {**os.environ, "PYTHONPATH": f"{target}{os.pathsep}{site_packages}"}
    listing = subprocess.run(
        [sys.executable, "-S", "-c", "from twisted.scripts.twistd import run; run()", "--help"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )
    where = subprocess.run(
        [sys.executable, "-S", "-c", "import distpotify; print(distpotify.__file__)"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )

    assert "distpotify " in listing.stdout and "distpotify-proxy" in listing.stdout
    assert where.stdout.startswith(str(target))

"""A plain (non-editable) install carries what a deployment runs: both twistd commands and
``distpotify-cluster``, and none of the lab, the tests or the benchmarks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]


# Left out of the copy the wheel is built from: a checkout's build/ keeps the files of
# earlier builds (packages since moved out, such as the lab), which setuptools would pack.
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__",
                                    "data", "results")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built, as a release would be, from the checkout's sources alone."""
    source = tmp_path_factory.mktemp("source") / "distpotify"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
         "-w", str(out), str(source)],
        check=True, capture_output=True, timeout=150,
    )
    return next(out.glob("distpotify-*.whl"))


def test_wheel_holds_the_packages_and_the_plugin_drop_in(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())

    assert "twisted/plugins/distpotify_plugins.py" in names
    assert "twisted/__init__.py" not in names and "twisted/plugins/__init__.py" not in names
    assert {"distpotify/tap.py", "distpotify/store/metadata.py", "proxy/tap.py"} <= names
    assert "proxy/openapi.yaml" in names  # what the proxy serves at /openapi.json


def test_wheel_carries_no_lab_tests_or_benchmarks(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()

    assert not [name for name in names
                if name.startswith(("lab/", "tests/", "bench/", "distpotify/testing/"))]
    # the lab's root-only code, wherever it might end up
    assert not [name for name in names if name.endswith(("/netns.py", "/nemesis.py"))]


def test_wheel_installs_the_distpotify_cluster_command(wheel: Path) -> None:
    archive = zipfile.ZipFile(wheel)
    entry_points = next(name for name in archive.namelist()
                        if name.endswith(".dist-info/entry_points.txt"))

    scripts = archive.read(entry_points).decode()

    assert "distpotify-cluster = distpotify.cli.cluster:main" in scripts
    assert {"distpotify/cli/cluster.py", "distpotify/cli/processes.py"} <= set(
        archive.namelist())


def test_a_plain_install_offers_both_twistd_commands_and_distpotify_cluster(
    wheel: Path, tmp_path: Path
) -> None:
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
    cluster = subprocess.run(
        [sys.executable, "-S", str(target / "bin" / "distpotify-cluster"), "--help"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )

    assert "distpotify " in listing.stdout and "distpotify-proxy" in listing.stdout
    assert where.stdout.startswith(str(target))
    assert cluster.returncode == 0 and "usage: distpotify-cluster" in cluster.stdout

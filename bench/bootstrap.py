"""Bootstrap speed: an empty replica joins a cluster holding a 1 GiB library.

Builds the library locally (WAV files generated on the fly, uploaded to the founding replica),
starts a second replica with an empty data dir, and times it from process start to ACTIVE.
The physical reference, in the same run: copying the same chunk directory with `cp -r` and
syncing it to disk. Targets: at least 150 MiB/s, and at least a third of the copy's rate.

    .venv/bin/python bench/bootstrap.py [--mib 1024] [--song-mib 16]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import save_result

from tests.helpers.audio import make_wav
from tests.helpers.replica import Cluster, ReplicaProcess, wait_until


def directory_bytes(path: Path) -> int:
    return sum(entry.stat().st_size for entry in os.scandir(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024, help="library size")
    parser.add_argument("--song-mib", type=int, default=16)
    args = parser.parse_args()
    started: list[ReplicaProcess] = []
    keep = os.environ.get("BENCH_KEEP")
    with tempfile.TemporaryDirectory(prefix="dp-boot-", dir="/var/tmp") as tmp:
        root = Path(tmp)
        try:
            cluster = Cluster(root, started)
            founder = cluster.add(1)
            founder.wait_ready()
            wav = make_wav(root / "song.wav", args.song_mib * 2**20).read_bytes()
            songs = args.mib // args.song_mib
            t0 = time.monotonic()
            for n in range(songs):
                answer = founder.post("/songs", wav[:-8] + n.to_bytes(8, "big"), "audio/wav")
                assert answer.status == 201, answer.body
            upload_s = time.monotonic() - t0
            chunks_dir = founder.data_dir / "chunks"
            library = directory_bytes(chunks_dir)
            print(f"library: {songs} songs, {library / 2**20:.0f} MiB in"
                  f" {len(os.listdir(chunks_dir))} chunks (uploaded in {upload_s:.1f} s)")

            copy = root / "copy"
            t0 = time.monotonic()
            subprocess.run(["cp", "-r", str(chunks_dir), str(copy)], check=True)
            subprocess.run(["sync", "-f", str(copy)], check=True)
            copy_s = time.monotonic() - t0

            newcomer = cluster.add(2, start=False)
            t0 = time.monotonic()
            newcomer.start(wait=False)
            final = wait_until(
                lambda: (s := newcomer.status()) and s["state"] == "ACTIVE" and s,
                timeout=600, interval=0.05, what="the new replica to be ACTIVE")
            join_s = time.monotonic() - t0
            assert directory_bytes(newcomer.data_dir / "chunks") == library
        finally:
            for node in started:
                node.kill()
            if keep:
                for node in started:
                    if node.log_path.exists():
                        (Path(keep) / node.log_path.name).write_text(node.log_path.read_text())
    mib = library / 2**20
    result = {
        "library_mib": round(mib, 1), "chunks": final["sync"]["chunks_total"],
        "join_seconds": round(join_s, 2), "join_mib_per_s": round(mib / join_s, 1),
        "copy_seconds": round(copy_s, 2), "copy_mib_per_s": round(mib / copy_s, 1),
        "ratio": round(copy_s / join_s, 3),
        "snapshots_fetched": final["sync"]["snapshots_fetched"],
    }
    print("\nnew replica to ACTIVE (targets: >= 150 MiB/s and >= 1/3 of cp -r + sync)")
    print(f"{'':18} {'seconds':>8} {'MiB/s':>8}")
    print(f"{'join':18} {result['join_seconds']:>8} {result['join_mib_per_s']:>8}")
    print(f"{'cp -r + sync':18} {result['copy_seconds']:>8} {result['copy_mib_per_s']:>8}")
    print(f"ratio join/copy: {result['ratio']}")
    save_result("bootstrap", result)


if __name__ == "__main__":
    main()

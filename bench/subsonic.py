"""Real clients' load: Subsonic browse calls on a 10,000-song library, and distpotify-import.

Three replicas and the proxy on 127.0.0.1, accounts on (the first admin made at start). The
library is ``--songs`` tiny MP3s (10,000) in ``--albums`` albums (800), tagged with mutagen
(album artist, album, year, track, disc: every tenth album on two discs; genre), every
tenth album with a cover embedded in its songs (a JPEG made by ffmpeg), uploaded through
the proxy by ``--clients`` clients; the seed is cached on disk between runs (the replicas'
data dirs, copied after a clean stop), as bench/library.py does. Then:

* **Subsonic** (once the replicas serve /rest: the probe is ``ping``; a tree without it
  reports "not served" and goes on), through the proxy, one call at a time over one
  persistent connection, ``f=json``, user + password auth, ``--rounds`` each: p50 and p99
  of ``getAlbumList2`` of several types, ``getAlbum`` over every album, ``search3`` (a query,
  and the empty query in pages of 500 songs, as clients sync), ``getCoverArt`` with a size,
  cold (the first ask of each album's cover at that size) and cached (asked again), and its
  bytes. Plain HTTP (http.client) rather than a client library: the figures are the
  server's and the proxy's, not a client's parsing. Target: p99 under 100 ms for every
  browse call (reported, never asserted).
* **Import**: ``distpotify-import`` of ``--import-mib`` (1 GiB) of distinct WAV files of
  4 MiB (files/s and MiB/s, as its summary counts them, with the hashing and the checksum
  lookups), next to the same run's reference: the same amount of other WAV files uploaded
  by a plain loop of as many threads as the importer's --jobs, one POST /songs each (what
  bench/replica.py's upload does, through the proxy and with three replicas). The ratio
  importer / loop says what the importer's own work costs.

    .venv/bin/python bench/subsonic.py [--songs 10000] [--albums 800] [--rounds 200] \\
        [--import-mib 1024] [--jobs 4] [--no-subsonic] [--no-import]

Prints a table and saves JSON to ``bench/results/subsonic-<time>.json``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common import save_result  # noqa: E402
from stack import Accounts, Client, Stack, percentile, say, upload  # noqa: E402

from tests.helpers.audio import make_audio, make_wav, run_ffmpeg, tagged_copy  # noqa: E402
from tests.helpers.replica import wait_until  # noqa: E402

# Bump when the seeded songs change, so an old cache is not taken for the new seed.
SEED_FORMAT = 1
ADMIN = "admin"
PASSWORD = "bench-admin-password"
METRICS_TOKEN = "bench-subsonic-metrics-token-0123"
TARGET_P99_MS = 100.0
COVER_EVERY = 10  # albums with an embedded cover
TWO_DISCS_EVERY = 10  # albums on two discs
GENRES = ("Rock", "Jazz", "Électro", "Folk", "Hip-Hop", "Classical")
SYNC_PAGE = 500  # search3 songCount of an empty-query sync page
COVER_SIZE = 300
IMPORT_FILE_MIB = 4
# How many songs a second the replicas take in at the least while seeding (tagged MP3s).
SEED_SONGS_PER_S = 50
IMPORTER = Path(sys.executable).with_name("distpotify-import")


# ---------------------------------------------------------------- the library


def album_of(n: int, songs: int, albums: int) -> int:
    return n * albums // songs


def song_tags(n: int, songs: int, albums: int) -> dict[str, str]:
    """Song n's tags: albums of 12 or 13 songs, four albums per album artist."""
    album = album_of(n, songs, albums)
    position = n - _first_of(album, songs, albums)
    discs = 2 if album % TWO_DISCS_EVERY == 0 else 1
    per_disc = 7
    disc = min(discs, position // per_disc + 1)
    return {
        "title": f"Song {n:05d}", "artist": f"Artist {album // 4:03d}",
        "albumartist": f"Artist {album // 4:03d}", "album": f"Album {album:03d}",
        "date": str(1960 + album % 60),
        "tracknumber": str(position - (disc - 1) * per_disc + 1),
        "discnumber": f"{disc}/{discs}", "genre": GENRES[album % len(GENRES)],
    }


def _first_of(album: int, songs: int, albums: int) -> int:
    """The first song of ``album`` (the smallest n with album_of(n) == album)."""
    return -(-album * songs // albums)


def make_covers(work: Path, albums: int) -> dict[int, bytes]:
    """A distinct 600x600 JPEG for every COVER_EVERY-th album, made by ffmpeg."""
    covers = {}
    for album in range(0, albums, COVER_EVERY):
        path = work / f"cover-{album}.jpg"
        colour = f"0x{(album * 2654435761) & 0xFFFFFF:06x}"
        run_ffmpeg("-f", "lavfi", "-i", f"color=c={colour}:s=600x600", "-frames:v", "1",
                   str(path))
        covers[album] = path.read_bytes()
    return covers


def log_in(port: int) -> str:
    def token() -> str | None:
        status, body = Client(port).call(
            "POST", "/auth/login", json.dumps({"username": ADMIN, "password": PASSWORD})
            .encode(), {"Content-Type": "application/json"})
        return json.loads(body)["token"] if status == 200 else None

    return wait_until(token, timeout=120, interval=2.0, what="the admin to log in")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def upload_seed(port: int, token: str, work: Path, songs: int, albums: int,
                clients: int) -> float:
    """Every song through the proxy; uploads per second."""
    base = make_audio(work / "base.mp3", "mp3", seconds=0.2)
    covers = make_covers(work, albums)
    local = threading.local()

    def song(n: int) -> tuple[str, bytes, str]:
        if not hasattr(local, "dir"):
            local.dir = Path(tempfile.mkdtemp(dir=work))
        album = album_of(n, songs, albums)
        path = tagged_copy(base, local.dir / "song.mp3", song_tags(n, songs, albums),
                           covers.get(album))
        return "/songs", path.read_bytes(), "audio/mpeg"

    return upload(port, range(songs), song, clients, bearer(token), every=2000)


# ---------------------------------------------------------------- the seed


def seed(stack: Stack, cache: Path, work: Path, songs: int, albums: int,
         clients: int) -> dict[str, Any]:
    """The library: the cached seed's data dirs, else uploaded (and then cached)."""
    target = cache / f"v{SEED_FORMAT}-{songs}-{albums}"
    if target.is_dir():
        say(f"restoring the cached seed {target}")
        stack.restore(target)
        stack.wait_converged(songs, bearer(log_in(stack.port)), SEED_SONGS_PER_S)
        return {"seeded_from": "cache"}
    stack.start()
    token = log_in(stack.port)
    say(f"uploading {songs} songs in {albums} albums with {clients} clients")
    rate = upload_seed(stack.port, token, work, songs, albums, clients)
    stack.wait_converged(songs, bearer(token), SEED_SONGS_PER_S)
    say(f"saving the seed in {target}")
    stack.save(target)
    stack.wait_converged(songs, bearer(log_in(stack.port)), SEED_SONGS_PER_S)
    return {"seeded_from": "uploads", "uploads_per_s": round(rate, 1)}


# ---------------------------------------------------------------- Subsonic


class Subsonic:
    """Calls of /rest/<method>.view through the proxy, as user + password, f=json."""

    def __init__(self, port: int) -> None:
        self.client = Client(port)
        self.auth = urllib.parse.urlencode({
            "u": ADMIN, "p": "enc:" + PASSWORD.encode().hex(), "v": "1.16.1",
            "c": "distpotify-bench"})

    def path(self, method: str, **params: Any) -> str:
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        return f"/rest/{method}.view?{self.auth}&{query}"

    def json(self, method: str, **params: Any) -> dict[str, Any]:
        status, body = self.client.call("GET", self.path(method, f="json", **params))
        if status != 200:
            raise RuntimeError(f"{method} answered HTTP {status}: {body[:200]!r}")
        answer: dict[str, Any] = json.loads(body)["subsonic-response"]
        if answer.get("status") != "ok":
            raise RuntimeError(f"{method} failed: {answer.get('error')}")
        return answer

    def timed(self, paths: Iterator[str] | list[str], rounds: int,
              check: str | None = None) -> dict[str, Any]:
        """p50/p99 (ms) of GETs of ``paths`` (cycled) until ``rounds`` answers; ``check``: a
        JSON answer must say status ok (pictures are bytes)."""
        times: list[float] = []
        sizes: list[int] = []
        cycle = list(paths)
        unavailable = 0
        for i in range(rounds + 3):  # three untimed: connections, caches
            path = cycle[i % len(cycle)]
            started = time.perf_counter()
            status, body = self.client.call("GET", path)
            elapsed = (time.perf_counter() - started) * 1000
            if status == 503 and unavailable < 50:
                unavailable += 1
                time.sleep(0.2)
                continue
            if status != 200 or (check and b'"status":"ok"' not in body.replace(b" ", b"")):
                raise RuntimeError(f"GET {path.split('?')[0]} answered {status}:"
                                   f" {body[:300]!r}")
            if i >= 3:
                times.append(elapsed)
                sizes.append(len(body))
        return {"p50_ms": round(percentile(times, 0.5), 2),
                "p99_ms": round(percentile(times, 0.99), 2), "n": len(times),
                "bytes_p50": int(percentile([float(s) for s in sizes], 0.5))}

    def cold(self, paths: list[str]) -> dict[str, Any]:
        """Each path once (the first ask of it anywhere): p50/p99 (ms) and sizes."""
        times, sizes = [], []
        for path in paths:
            started = time.perf_counter()
            status, body = self.client.call("GET", path)
            times.append((time.perf_counter() - started) * 1000)
            if status != 200:
                raise RuntimeError(f"GET {path.split('?')[0]} answered {status}: {body[:200]!r}")
            sizes.append(len(body))
        return {"p50_ms": round(percentile(times, 0.5), 2),
                "p99_ms": round(percentile(times, 0.99), 2), "n": len(times),
                "bytes_p50": int(percentile([float(s) for s in sizes], 0.5))}


def serves_rest(port: int) -> bool:
    status, body = Client(port).call("GET", Subsonic(port).path("ping", f="json"))
    return status == 200 and b'"ok"' in body


def measure_subsonic(port: int, songs: int, albums: int, rounds: int) -> dict[str, Any]:
    api = Subsonic(port)
    found: list[dict[str, Any]] = []
    for offset in range(0, albums + 500, 500):
        page = api.json("getAlbumList2", type="alphabeticalByName", size=500, offset=offset)
        found += page.get("albumList2", {}).get("album", [])
    if len(found) < albums:
        raise RuntimeError(f"getAlbumList2 lists {len(found)} albums, not {albums}")
    covered = [a for a in found if a.get("coverArt") and int(a["name"].split()[-1])
               % COVER_EVERY == 0]
    results: dict[str, Any] = {"albums_listed": len(found), "albums_with_covers": len(covered)}
    pages = range(0, albums, 50)
    lists: dict[str, dict[str, Any]] = {
        "newest": {}, "random": {}, "alphabeticalByName": {}, "alphabeticalByArtist": {},
        "frequent": {}, "recent": {}, "starred": {},
        "byYear": {"fromYear": 1970, "toYear": 1989}, "byGenre": {"genre": "Jazz"},
    }
    for kind, extra in lists.items():
        say(f"getAlbumList2 type={kind}")
        # A filtered list holds a fraction of the albums: its first pages, not empty ones.
        offsets = range(0, 150, 50) if extra else pages
        results[f"getAlbumList2 {kind}"] = api.timed(
            [api.path("getAlbumList2", type=kind, size=50, offset=o, f="json", **extra)
             for o in offsets], rounds, check="ok")
    say("getAlbum")
    results["getAlbum"] = api.timed([api.path("getAlbum", id=a["id"], f="json") for a in found],
                                    rounds, check="ok")
    say("search3")
    results["search3 query"] = api.timed(
        [api.path("search3", query=f"Song {n:04d}", f="json") for n in range(0, 1000, 7)],
        rounds, check="ok")
    results[f"search3 empty query, pages of {SYNC_PAGE}"] = api.timed(
        [api.path("search3", query="", artistCount=0, albumCount=0, songCount=SYNC_PAGE,
                  songOffset=o, f="json") for o in range(0, songs, SYNC_PAGE)],
        max(1, min(rounds, 2 * songs // SYNC_PAGE)), check="ok")
    say("getCoverArt")
    if covered:
        paths = [api.path("getCoverArt", id=a["coverArt"], size=COVER_SIZE) for a in covered]
        results[f"getCoverArt size={COVER_SIZE} cold"] = api.cold(paths)
        results[f"getCoverArt size={COVER_SIZE} cached"] = api.timed(paths, rounds)
        results["getCoverArt original"] = api.timed(
            [api.path("getCoverArt", id=a["coverArt"]) for a in covered], rounds)
    return results


# ---------------------------------------------------------------- the importer


def make_files(folder: Path, mib: int, first_seed: int) -> int:
    """``mib`` MiB of distinct 4 MiB WAVs in ``folder`` (album folders of 16); how many."""
    count = max(1, mib // IMPORT_FILE_MIB)
    for n in range(count):
        album = folder / f"Album {n // 16:03d}"
        album.mkdir(parents=True, exist_ok=True)
        make_wav(album / f"{n:04d}.wav", IMPORT_FILE_MIB << 20, seed=first_seed + n)
    return count


def upload_loop(port: int, token: str, folder: Path, jobs: int, multipart: bool = False
                ) -> dict[str, Any]:
    """The reference: every file of ``folder`` as one POST /songs, ``jobs`` at a time: the
    raw body, or (``multipart``) the form field ``file``, as the importer sends it."""
    files = sorted(folder.rglob("*.wav"))
    local = threading.local()

    def one(path: Path) -> int:
        if not hasattr(local, "client"):
            local.client = Client(port, bearer(token), timeout=300)
        data = path.read_bytes()
        kind = "audio/wav"
        if multipart:
            head = (f"--b0undary\r\nContent-Disposition: form-data; name=\"file\";"
                    f" filename=\"{path.name}\"\r\nContent-Type: audio/wav\r\n\r\n").encode()
            data, kind = head + data + b"\r\n--b0undary--\r\n", \
                "multipart/form-data; boundary=b0undary"
        status, body = local.client.call("POST", "/songs", data, {"Content-Type": kind})
        if status != 201:
            raise RuntimeError(f"upload of {path.name} answered {status}: {body[:200]!r}")
        return len(data)

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        total = sum(pool.map(one, files))
    seconds = time.monotonic() - started
    return {"files": len(files), "mib": round(total / 2**20, 1), "seconds": round(seconds, 2),
            "mib_per_s": round(total / 2**20 / seconds, 2),
            "files_per_s": round(len(files) / seconds, 2)}


def run_importer(port: int, folder: Path, state: Path, jobs: int) -> dict[str, Any]:
    started = time.monotonic()
    done = subprocess.run(
        [str(IMPORTER), str(folder), "--server", f"http://127.0.0.1:{port}", "--user", ADMIN,
         "--jobs", str(jobs), "--state", str(state), "--json", "--no-progress"],
        capture_output=True, text=True, timeout=3600, check=False,
        env={**os.environ, "DISTPOTIFY_PASSWORD": PASSWORD})
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"distpotify-import exited {done.returncode}: {done.stderr[-2000:]}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    return {"files": summary["uploaded"], "mib": round(summary["uploaded_bytes"] / 2**20, 1),
            "seconds": summary["seconds"], "wall_seconds": round(wall, 2),
            "mib_per_s": summary["mib_per_s"], "files_per_s": summary["files_per_s"],
            "refused": len(summary["refused"]), "failed": len(summary["failed"])}


def measure_import(port: int, token: str, work: Path, mib: int, jobs: int) -> dict[str, Any]:
    say(f"making 3 x {mib} MiB of WAV files")
    reference, form, imported = work / "reference", work / "form", work / "import"
    make_files(reference, mib, first_seed=1_000_000)
    make_files(form, mib, first_seed=3_000_000)
    make_files(imported, mib, first_seed=2_000_000)
    say(f"the reference: a plain upload loop of {jobs} threads")
    loop = upload_loop(port, token, reference, jobs)
    say("the same loop, multipart")
    form_loop = upload_loop(port, token, form, jobs, multipart=True)
    say(f"distpotify-import --jobs {jobs}")
    importer = run_importer(port, imported, work / "import-state.jsonl", jobs)
    again_started = time.monotonic()
    rerun = run_importer(port, imported, work / "import-state.jsonl", jobs)
    return {"jobs": jobs, "upload_loop": loop, "multipart_loop": form_loop,
            "importer": importer,
            "rerun_seconds": round(time.monotonic() - again_started, 2),
            "rerun_uploaded": rerun["files"],
            "ratio_mib_per_s": round(importer["mib_per_s"] / loop["mib_per_s"], 2),
            "ratio_to_multipart_loop": round(importer["mib_per_s"] / form_loop["mib_per_s"],
                                             2)}


# ---------------------------------------------------------------- the report


def table(result: dict[str, Any]) -> Iterator[str]:
    subsonic = result.get("subsonic")
    if isinstance(subsonic, dict):
        yield f"{'call (through the proxy)':46s} {'p50 ms':>8s} {'p99 ms':>8s} {'n':>5s}" \
              f" {'bytes':>8s}"
        for name, figures in subsonic.items():
            if isinstance(figures, dict):
                mark = "" if figures["p99_ms"] < TARGET_P99_MS else "  over target"
                yield (f"{name:46s} {figures['p50_ms']:8.1f} {figures['p99_ms']:8.1f}"
                       f" {figures['n']:5d} {figures['bytes_p50']:8d}{mark}")
    elif subsonic is not None:
        yield f"Subsonic: {subsonic}"
    imported = result.get("import")
    if imported:
        loop, importer = imported["upload_loop"], imported["importer"]
        yield ""
        yield (f"upload loop ({imported['jobs']} threads): {loop['mib']} MiB, {loop['files']}"
               f" files in {loop['seconds']} s: {loop['mib_per_s']} MiB/s,"
               f" {loop['files_per_s']} files/s")
        form = imported["multipart_loop"]
        yield (f"the same loop, multipart: {form['mib']} MiB in {form['seconds']} s:"
               f" {form['mib_per_s']} MiB/s, {form['files_per_s']} files/s")
        yield (f"distpotify-import --jobs {imported['jobs']}: {importer['mib']} MiB,"
               f" {importer['files']} files in {importer['seconds']} s:"
               f" {importer['mib_per_s']} MiB/s, {importer['files_per_s']} files/s"
               f" (x{imported['ratio_mib_per_s']} of the loop,"
               f" x{imported['ratio_to_multipart_loop']} of the multipart loop)")
        yield (f"the same import again: {imported['rerun_uploaded']} uploaded, in"
               f" {imported['rerun_seconds']} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--songs", type=int, default=10_000)
    parser.add_argument("--albums", type=int, default=800)
    parser.add_argument("--clients", type=int, default=8, help="seeding upload threads")
    parser.add_argument("--rounds", type=int, default=200, help="timed calls per measurement")
    parser.add_argument("--import-mib", type=int, default=1024)
    parser.add_argument("--jobs", type=int, default=4, help="the importer's --jobs")
    parser.add_argument("--no-subsonic", action="store_true")
    parser.add_argument("--no-import", action="store_true")
    parser.add_argument("--cache", type=Path,
                        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                        / "distpotify-bench" / "subsonic",
                        help="where the seeded library is kept between runs")
    args = parser.parse_args(argv)
    if args.albums < 10 or args.songs < args.albums:
        parser.error("--songs must be at least --albums, and --albums at least 10")
    args.cache.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"songs": args.songs, "albums": args.albums,
                              "target_p99_ms": TARGET_P99_MS}
    with tempfile.TemporaryDirectory(prefix="distpotify-bench-subsonic-") as tmp:
        root = Path(tmp)
        (root / "work").mkdir()
        stack = Stack(root / "cluster", Accounts(PASSWORD, METRICS_TOKEN))
        try:
            if not args.no_subsonic:
                result["seed"] = seed(stack, args.cache, root / "work", args.songs,
                                      args.albums, args.clients)
                if serves_rest(stack.port):
                    result["subsonic"] = measure_subsonic(stack.port, args.songs, args.albums,
                                                          args.rounds)
                else:
                    say("the replicas do not serve /rest: no Subsonic figures")
                    result["subsonic"] = "not served by this tree (no /rest)"
            else:
                stack.start()
            if not args.no_import:
                result["import"] = measure_import(stack.port, log_in(stack.port), root / "work",
                                                  args.import_mib, args.jobs)
        finally:
            stack.kill()
    result["loadavg_at_end"] = os.getloadavg()
    print("\n".join(table(result)))
    save_result("subsonic", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark the web player on a big library: what a person waits for, in headless Chromium.

Three replicas and the proxy on 127.0.0.1 (as the browser tests start them), ``--songs`` tiny
distinct WAVs uploaded through the proxy (titles, artists and albums in query fields), then
the player in Debian's Chromium driven by Playwright, measuring in page time:

* first rows: navigation start until the first song row shows;
* DOM rows: how many rows exist (the list is windowed: it should stay near one screen);
* jump to the end / the middle: scroll there until those rows are loaded;
* search: typing a query until the count of matches shows (including the 250 ms debounce);
* sort by title: the replicas sort (GET /songs?sort=title), until the first row shows;
* artists view: every song loaded and grouped, until the list of artists shows;
* the JS heap after all of it.

Targets: first rows < 1 s, each jump < 1 s, search < 1 s, sort and artists < 5 s at 10,000
songs, DOM rows < 100.

Usage: ``.venv/bin/python bench/player.py [--songs 10000] [--workers 8]``; prints a table and
saves JSON to ``bench/results/player-<ts>.json``. Every process it starts is stopped.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import io
import json
import platform
import random
import sys
import tempfile
import time
import urllib.parse
import wave
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common import save_result  # noqa: E402

from tests.e2e.harness import CHROMIUM_ARGS, chromium_path, start_stack  # noqa: E402
from tests.helpers.replica import ReplicaProcess  # noqa: E402

TARGETS_MS = {"first_rows_ms": 1000, "jump_end_ms": 1000, "jump_middle_ms": 1000,
              "search_ms": 1000, "sort_title_ms": 5000, "artists_ms": 5000}


def tiny_wav(seed: int) -> bytes:
    """0.1 s of 8 kHz mono noise: distinct bytes for each seed, so no upload is a duplicate."""
    out = io.BytesIO()
    with wave.open(out, "wb") as audio:
        audio.setnchannels(1)
        audio.setsampwidth(2)
        audio.setframerate(8000)
        audio.writeframes(random.Random(seed).randbytes(1600))
    return out.getvalue()


def upload_all(port: int, count: int, workers: int) -> float:
    artists = [f"Artist {n:03d}" for n in range(max(1, count // 20))]
    albums = [f"Album {n:04d}" for n in range(max(1, count // 10))]

    def one(n: int) -> None:
        query = urllib.parse.urlencode({
            "title": f"Song {n:05d}", "artist": artists[n % len(artists)],
            "album": albums[n % len(albums)], "track": str(n % 10 + 1)})
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            conn.request("POST", f"/songs?{query}", body=tiny_wav(n),
                         headers={"Content-Type": "audio/wav"})
            answer = conn.getresponse()
            answer.read()
            if answer.status not in (200, 201):
                raise RuntimeError(f"upload {n} answered {answer.status}")
        finally:
            conn.close()

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for done, _ in enumerate(pool.map(one, range(count)), 1):
            if done % 1000 == 0:
                print(f"  uploaded {done}/{count}", flush=True)
    return time.monotonic() - started


def wait_replicated(stack: Any, count: int, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    for node in stack.cluster.running():
        while json.loads(node.get("/songs?limit=1").body)["total"] < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"replica {node.node_id} did not get all {count} songs")
            time.sleep(0.5)


def measure(url: str, count: int) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    results: dict[str, Any] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_path(), args=[*CHROMIUM_ARGS, "--enable-precise-memory-info"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.set_default_timeout(60_000)
        page.goto(url + "#/library")
        page.wait_for_selector("#song-list .row[data-id]:not([data-id=''])")
        results["first_rows_ms"] = round(page.evaluate("performance.now()"))
        results["dom_rows"] = page.locator("#song-list .row").count()

        def timed(action: str, ready: str) -> int:
            start = page.evaluate("performance.now()")
            page.evaluate(action)
            page.wait_for_function(ready, polling="raf")
            return round(page.evaluate("performance.now()") - start)

        results["jump_end_ms"] = timed(
            "(() => { const l = document.getElementById('song-list');"
            " l.scrollTop = l.scrollHeight; })()",
            f"(() => {{ const row = document.querySelector("
            f"\"#song-list .row[aria-posinset='{count}']\"); return row && row.dataset.id; }})()")
        middle = count // 2
        results["jump_middle_ms"] = timed(
            "(() => { const l = document.getElementById('song-list');"
            " l.scrollTop = l.scrollHeight / 2; })()",
            f"(() => [...document.querySelectorAll('#song-list .row')].some(r => r.dataset.id"
            f" && Math.abs(Number(r.getAttribute('aria-posinset')) - {middle}) < 5))()")
        results["dom_rows_after_scrolling"] = page.locator("#song-list .row").count()

        query = f"Song {middle:05d}"[:-1]  # ten songs: Song NNNN0 to Song NNNN9
        start = page.evaluate("performance.now()")
        page.locator("#search").fill(query)
        page.wait_for_function(
            "document.getElementById('library-count').textContent.includes('matching')",
            polling="raf")
        results["search_ms"] = round(page.evaluate("performance.now()") - start)
        results["search_count"] = page.locator("#library-count").text_content()
        page.locator("#search").fill("")
        page.wait_for_function(
            f"document.getElementById('library-count').textContent.startsWith('{count:,}')",
            polling="raf")

        start = page.evaluate("performance.now()")
        page.locator("#sort").select_option("title")
        page.wait_for_function(
            "(() => { const row = document.querySelector(\"#song-list .row[aria-posinset='1']\");"
            " return row && row.textContent.includes('Song 00000'); })()", polling="raf")
        results["sort_title_ms"] = round(page.evaluate("performance.now()") - start)

        start = page.evaluate("performance.now()")
        page.evaluate("location.hash = '#/artists'")
        page.wait_for_function(
            "document.getElementById('groups-count').textContent.includes('artist')",
            polling="raf")
        results["artists_ms"] = round(page.evaluate("performance.now()") - start)
        results["js_heap_mb"] = round(
            page.evaluate("performance.memory.usedJSHeapSize") / 2**20, 1)
        browser.close()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--songs", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=8, help="parallel uploads")
    args = parser.parse_args(argv)
    if chromium_path() is None:
        print("needs Chromium: apt-get install chromium", file=sys.stderr)
        return 2

    started: list[ReplicaProcess] = []
    with tempfile.TemporaryDirectory(prefix="distpotify-bench-player-") as tmp:
        stack = None
        try:
            print("starting three replicas and the proxy", flush=True)
            stack = start_stack(Path(tmp), started)
            print(f"uploading {args.songs} songs with {args.workers} workers", flush=True)
            upload_s = upload_all(stack.proxy.port, args.songs, args.workers)
            wait_replicated(stack, args.songs)
            print("measuring in Chromium", flush=True)
            results = measure(stack.url, args.songs)
        finally:
            if stack is not None:
                stack.stop()
            for node in started:
                node.kill()

    report = {"songs": args.songs, "upload_s": round(upload_s, 1), **results,
              "targets_ms": TARGETS_MS, "machine": platform.platform()}
    width = max(len(name) for name in results)
    for name, value in results.items():
        target = TARGETS_MS.get(name)
        verdict = "" if target is None else ("  ok" if value < target else f"  OVER {target}")
        print(f"{name:<{width}}  {value}{verdict}")
    save_result("player", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``distpotify-import DIR``: upload a music folder through the proxy, several files at once,
with a progress bar; files the library already holds are found by their SHA-256 and never
sent, and a run stopped with Ctrl-C goes on where it stopped when run again.

A client of the public API like any other (POST /auth/login, GET /songs?sha256=, POST /songs
with the file as the raw body, which a replica writes into chunk files as it arrives), over
http.client in worker threads: a command-line tool, not a service, so it does not run a
reactor. What it has done is appended to a state file (JSON lines), so a
rerun neither hashes unchanged files again nor asks about files it has imported.
"""
# test-case-name: tests.unit.test_cli_importer, tests.integration.test_importer

from __future__ import annotations

import argparse
import getpass
import hashlib
import http.client
import json
import mimetypes
import os
import secrets
import signal
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import attrs

DEFAULT_SERVER = "http://127.0.0.1:8080"
DEFAULT_JOBS = 4
# GET /songs?sha256= takes at most this many checksums (api/parsing.py MAX_SHA256).
LOOKUP_BATCH = 100
BATCH_BYTES = 64 << 20  # ... or fewer files, when they are big: hashed before the lookup
BLOCK = 256 * 1024  # read, hashed and sent this much at a time
# An upload that fails without the server's answer (connection lost, 502/503/504) is sent
# again under the same Idempotency-Key, so the server applies it once.
ATTEMPTS = 5
TIMEOUT = 300.0  # seconds without progress on one connection
ENV_PASSWORD = "DISTPOTIFY_PASSWORD"
ENV_TOKEN = "DISTPOTIFY_TOKEN"

# Outcomes, as the state file and the summary name them.
UPLOADED = "uploaded"  # stored by this upload (201)
PRESENT = "present"  # the library held these bytes: found by checksum, or the upload said so
REFUSED = "refused"  # the server will not take it (not audio, too big, ...) or it is empty
FAILED = "failed"  # no answer, or an unexpected one: tried again by the next run
STORED = frozenset({UPLOADED, PRESENT})


class ImportFailed(Exception):
    """Something that stops the whole run (no login, no server): its message says why."""


@attrs.frozen
class FileEntry:
    """One file of the folder: ``rel`` names it (relative, with /) in the state and summary."""

    path: Path
    rel: str
    size: int
    mtime_ns: int


@attrs.frozen
class Result:
    entry: FileEntry
    outcome: str
    sha256: str | None = None
    status: int | None = None
    reason: str = ""
    song_id: str | None = None
    sent: int = 0  # body bytes sent (an upload's), for the rate


# ---------------------------------------------------------------- the state file


class State:
    """What earlier runs did, by file: the last record of each ``rel`` wins. Appended one JSON
    line per result and flushed at once, so Ctrl-C (or a crash) loses at most the files in
    flight, which the library's checksum lookup catches on the next run."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: dict[str, dict[str, Any]] = {}
        if path.exists():
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a line cut by a crash
                if isinstance(record, dict) and isinstance(record.get("rel"), str):
                    self.records[record["rel"]] = record
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed by close())

    def known(self, entry: FileEntry) -> dict[str, Any] | None:
        """The record of ``entry`` if the file has not changed since (same size and mtime)."""
        record = self.records.get(entry.rel)
        if record and record.get("size") == entry.size and record.get("mtime_ns") == entry.mtime_ns:
            return record
        return None

    def add(self, result: Result) -> None:
        entry = result.entry
        record = {"rel": entry.rel, "size": entry.size, "mtime_ns": entry.mtime_ns,
                  "sha256": result.sha256, "outcome": result.outcome}
        if result.status is not None:
            record["status"] = result.status
        if result.reason:
            record["reason"] = result.reason
        if result.song_id:
            record["song_id"] = result.song_id
        self.records[entry.rel] = record
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def default_state_path(server: str, folder: Path) -> Path:
    """One state file per (server, folder), under the user's cache directory."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    name = hashlib.sha256(f"{server}\n{folder.resolve()}".encode()).hexdigest()[:16]
    return cache / "distpotify-import" / f"{name}.jsonl"


# ---------------------------------------------------------------- the folder


def walk(folder: Path, skip: Path | None = None) -> Iterator[FileEntry]:
    """Every regular file under ``folder`` (symlinks followed to files, not to directories),
    in a stable order; dotfiles (.DS_Store, ._*) and ``skip`` (the state file) left out."""
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = Path(root) / name
            if skip is not None and path == skip:
                continue
            try:
                stat = path.stat()
            except OSError:
                continue
            if not path.is_file():
                continue
            yield FileEntry(path, path.relative_to(folder).as_posix(), stat.st_size,
                            stat.st_mtime_ns)


def file_sha256(path: Path, stopped: threading.Event | None = None) -> str | None:
    """The file's SHA-256, or None if ``stopped`` was set meanwhile."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            if stopped is not None and stopped.is_set():
                return None
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------- the server


class Stopped(Exception):
    """Ctrl-C: the upload in flight was abandoned (the next run asks the library again)."""


class Server:
    """The proxy (or a replica) at ``url``, with a session ``token`` (None: --auth off)."""

    def __init__(self, url: str, token: str | None = None, timeout: float = TIMEOUT) -> None:
        self.url = url
        self.token = token
        self.timeout = timeout
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ImportFailed(f"--server must be an http:// or https:// URL, not {self.url!r}")
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port
        self._base = parts.path.rstrip("/")

    def connection(self) -> http.client.HTTPConnection:
        if self._scheme == "https":
            return http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout)
        return http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)

    def headers(self) -> dict[str, str]:
        headers = {"User-Agent": "distpotify-import", "Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def call(self, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
        """One small JSON exchange: (status, headers, the JSON body or None)."""
        conn = self.connection()
        try:
            conn.request(method, self._base + path, body=body,
                         headers={**self.headers(), **(headers or {})})
            response = conn.getresponse()
            data = response.read()
            answer_headers = {k.lower(): v for k, v in response.getheaders()}
        finally:
            conn.close()
        try:
            value = json.loads(data) if data else None
        except ValueError:
            value = None
        return response.status, answer_headers, value

    def log_in(self, username: str, password: str) -> None:
        try:
            status, _, value = self.call(
                "POST", "/auth/login", json.dumps({"username": username, "password": password})
                .encode(), {"Content-Type": "application/json"})
        except (OSError, http.client.HTTPException) as e:
            raise ImportFailed(f"cannot reach {self.url}: {e}") from None
        if status != 200 or not isinstance(value, dict) or "token" not in value:
            raise ImportFailed(f"login as {username!r} refused: {status} {_message(value)}")
        self.token = str(value["token"])

    def present(self, hashes: Sequence[str]) -> dict[str, str]:
        """Which of ``hashes`` the library holds: checksum -> song id."""
        found: dict[str, str] = {}
        for start in range(0, len(hashes), LOOKUP_BATCH):
            batch = hashes[start:start + LOOKUP_BATCH]
            status, value = self._retried("GET", "/songs?sha256=" + ",".join(batch))
            if status == 401:
                raise ImportFailed(f"{self.url} wants a login: give --user NAME (or --token)")
            if status != 200 or not isinstance(value, dict):
                raise ImportFailed(f"the library lookup by checksum failed: {status}"
                                   f" {_message(value)}")
            for song in value.get("songs", []):
                found[song["sha256"]] = song["id"]
        return found

    def _retried(self, method: str, path: str) -> tuple[int, Any]:
        """A read, tried again while the cluster is between leaders or a replica is away."""
        for attempt in range(ATTEMPTS):
            try:
                status, headers, value = self.call(method, path)
            except (OSError, http.client.HTTPException) as e:
                status, headers, value = 0, {}, {"message": str(e)}
            if status not in (0, 502, 503, 504) or attempt == ATTEMPTS - 1:
                return status, value
            time.sleep(_retry_after(headers, attempt))
        raise AssertionError("unreachable")

    def upload(self, entry: FileEntry, sha256: str, key: str, stopped: threading.Event,
               sent: Callable[[int], None]) -> tuple[int, Any, int]:
        """POST /songs with the file as the raw body (its name in ``?filename=``), streamed
        from disk under ``key``: (status, JSON body, body bytes sent). Sent again on an unknown
        outcome, with the same key; ``sent`` hears of every block (progress), less any block
        sent again."""
        mime = mimetypes.guess_type(entry.path.name)[0] or ""
        raw = mime if mime.startswith("audio/") else "application/octet-stream"
        headers = {**self.headers(), "Content-Type": raw,
                   "Content-Length": str(entry.size), "Idempotency-Key": key}
        target = f"{self._base}/songs?{urllib.parse.urlencode({'filename': entry.path.name})}"
        for attempt in range(ATTEMPTS):
            counted = 0
            conn = self.connection()
            try:
                conn.putrequest("POST", target, skip_accept_encoding=True)
                for name, text in headers.items():
                    conn.putheader(name, text)
                conn.endheaders()
                try:
                    with open(entry.path, "rb") as f:
                        while block := f.read(BLOCK):
                            if stopped.is_set():
                                raise Stopped()
                            conn.send(block)
                            counted += len(block)
                            sent(len(block))
                except (BrokenPipeError, ConnectionResetError):
                    pass  # refused early (413): its answer may be waiting to be read
                response = conn.getresponse()
                data = response.read()
                status = response.status
                answer_headers = {k.lower(): v for k, v in response.getheaders()}
            except Stopped:
                raise
            except (OSError, http.client.HTTPException) as e:
                status, data, answer_headers = 0, json.dumps({"message": str(e)}).encode(), {}
            finally:
                conn.close()
            try:
                value: Any = json.loads(data) if data else None
            except ValueError:
                value = {"message": data[:200].decode("utf-8", "replace")}
            # No answer, or 502/503/504 (the proxy found no leader in time): the outcome is
            # unknown, and the same key makes sending it again harmless. Else: the answer.
            if status not in (0, 502, 503, 504) or attempt == ATTEMPTS - 1:
                return status, value, counted
            sent(-counted)
            if stopped.wait(_retry_after(answer_headers, attempt)):
                raise Stopped()
        raise AssertionError("unreachable")


def _retry_after(headers: dict[str, str], attempt: int) -> float:
    try:
        return min(30.0, max(0.1, float(headers.get("retry-after", ""))))
    except ValueError:
        return min(8.0, 0.5 * 2 ** attempt)


def _message(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("message") or value.get("error") or "")
    return ""


def idempotency_key(sha256: str, run: str) -> str:
    """The key of one file's upload: its bytes' checksum and this run. A retry within the run
    is applied once; a later run asks the library first and uses a new key, so an answer
    kept from an earlier run (of a song deleted since) is never replayed."""
    return f"distpotify-import:{sha256}:{run}"


def refusal(status: int, value: Any) -> str:
    """Why the server refused a file, as the summary says it."""
    message = _message(value)
    if status == 413:
        kind = "too big"
    elif status in (400, 415):
        kind = "not audio"
    elif status == 0:
        return f"no answer: {message}" if message else "no answer"
    else:
        return f"answered {status}: {message}" if message else f"answered {status}"
    return f"{kind} ({status}): {message}" if message else f"{kind} ({status})"


# ---------------------------------------------------------------- the run


def _batch(pending: list[FileEntry], start: int) -> list[FileEntry]:
    """The files from ``start`` hashed and looked up together: LOOKUP_BATCH of them, or
    fewer once they hold BATCH_BYTES, so uploads start after little hashing (big files)."""
    batch: list[FileEntry] = []
    size = 0
    for entry in pending[start:start + LOOKUP_BATCH]:
        if batch and size + entry.size > BATCH_BYTES:
            break
        batch.append(entry)
        size += entry.size
    return batch


@attrs.define
class Progress:
    """The bar (rich), or nothing when stderr is not a terminal or --no-progress."""

    total_files: int
    total_bytes: int
    enabled: bool
    files: int = 0
    _bar: Any = None
    _task: Any = None
    _lock: threading.Lock = attrs.Factory(threading.Lock)

    def __enter__(self) -> Progress:
        if self.enabled:
            # Imported only to draw: --no-progress and --json runs need none of it.
            from rich import progress
            from rich.console import Console
            self._bar = progress.Progress(
                progress.TextColumn("[bold]{task.description}"), progress.BarColumn(),
                progress.TextColumn("{task.fields[files]}"),
                progress.DownloadColumn(binary_units=True),
                progress.TransferSpeedColumn(), progress.TimeRemainingColumn(),
                console=Console(stderr=True))
            self._bar.__enter__()
            self._task = self._bar.add_task("importing", total=self.total_bytes,
                                            files=self._files_text())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)

    def _files_text(self) -> str:
        return f"{self.files}/{self.total_files} files"

    def advance(self, size: int) -> None:
        if self._bar is not None:
            with self._lock:
                self._bar.advance(self._task, size)

    def file_done(self, rest: int) -> None:
        """One file finished; ``rest``: its bytes not counted yet (a skipped file's)."""
        with self._lock:
            self.files += 1
            if self._bar is not None:
                self._bar.update(self._task, advance=rest, files=self._files_text())


@attrs.define
class Run:
    """One import: the folder's files, the state, the server, and what happened to each."""

    folder: Path
    server: Server
    state: State
    jobs: int = DEFAULT_JOBS
    recheck: bool = False
    retry_refused: bool = False
    show_progress: bool = True
    stopped: threading.Event = attrs.Factory(threading.Event)
    results: list[Result] = attrs.Factory(list)
    earlier: list[Result] = attrs.Factory(list)
    duplicates: list[tuple[str, str]] = attrs.Factory(list)  # (file, the file it repeats)
    left: int = 0
    seconds: float = 0.0
    run_id: str = attrs.Factory(lambda: secrets.token_hex(8))

    def execute(self) -> None:
        started = time.monotonic()
        entries = list(walk(self.folder, self.state.path))
        pending = []
        for entry in entries:
            record = self.state.known(entry)
            if record is not None and not self.recheck and (
                    record["outcome"] in STORED
                    or (record["outcome"] == REFUSED and not self.retry_refused)):
                self.earlier.append(Result(entry, record["outcome"], record.get("sha256"),
                                           record.get("status"), record.get("reason", ""),
                                           record.get("song_id")))
            else:
                pending.append(entry)
        with Progress(len(pending), sum(e.size for e in pending),
                      self.show_progress and sys.stderr.isatty()) as progress, \
                ThreadPoolExecutor(self.jobs, "hash") as hashers, \
                ThreadPoolExecutor(self.jobs, "upload") as uploaders:
            try:
                self._import(pending, progress, hashers, uploaders)
            finally:
                self.stopped.set()  # whatever ended the run: workers stop at their next block
                self.seconds = time.monotonic() - started

    def _import(self, pending: list[FileEntry], progress: Progress,
                hashers: ThreadPoolExecutor, uploaders: ThreadPoolExecutor) -> None:
        in_flight: dict[Future[Result], FileEntry] = {}
        seen: dict[str, str] = {}  # checksum -> the file of this folder that has it
        index = 0
        while index < len(pending) and not self.stopped.is_set():
            batch = _batch(pending, index)
            index += len(batch)
            hashes = self._hashes(batch, hashers, in_flight, progress)
            if hashes is None:
                break
            to_ask = sorted({h for h in hashes.values() if h is not None and h not in seen})
            present = self.server.present(to_ask) if to_ask else {}
            for entry in batch:
                sha = hashes.get(entry.rel)
                if entry.size == 0:
                    self._done(Result(entry, REFUSED, sha, reason="empty file"), progress)
                elif sha is None:
                    self._done(Result(entry, FAILED, reason="could not be read"), progress)
                elif sha in seen:
                    self.duplicates.append((entry.rel, seen[sha]))
                    progress.file_done(entry.size)
                elif sha in present:
                    seen[sha] = entry.rel
                    self._done(Result(entry, PRESENT, sha, reason="found by checksum",
                                      song_id=present[sha]), progress)
                else:
                    seen[sha] = entry.rel
                    while len(in_flight) >= 2 * self.jobs and not self.stopped.is_set():
                        self._collect(in_flight, progress, timeout=0.2)
                    if self.stopped.is_set():
                        break
                    future = uploaders.submit(self._upload, entry, sha, progress)
                    in_flight[future] = entry
        while in_flight:
            self._collect(in_flight, progress, timeout=0.2)
        self.left = len(pending) - sum(1 for r in self.results) - len(self.duplicates)

    def _hashes(self, batch: list[FileEntry], hashers: ThreadPoolExecutor,
                in_flight: dict[Future[Result], FileEntry], progress: Progress
                ) -> dict[str, str | None] | None:
        """The batch's checksums (from the state when the file has not changed), hashed in
        parallel while earlier uploads go on; None if the run was stopped meanwhile."""
        found: dict[str, str | None] = {}
        jobs: dict[Future[str | None], FileEntry] = {}
        for entry in batch:
            record = self.state.known(entry)
            if record is not None and record.get("sha256"):
                found[entry.rel] = record["sha256"]
            else:
                jobs[hashers.submit(self._hash, entry)] = entry
        waiting: set[Future[Any]] = set(jobs)
        while waiting:
            if self.stopped.is_set():
                return None
            done, _ = wait(waiting | set(in_flight), timeout=0.2, return_when=FIRST_COMPLETED)
            self._collect(in_flight, progress, timeout=0)
            for future in done & waiting:
                waiting.discard(future)
                found[jobs[future].rel] = future.result()
        return found

    def _hash(self, entry: FileEntry) -> str | None:
        try:
            return file_sha256(entry.path, self.stopped)
        except OSError:
            return None

    def _upload(self, entry: FileEntry, sha: str, progress: Progress) -> Result:
        try:
            status, value, sent = self.server.upload(
                entry, sha, idempotency_key(sha, self.run_id), self.stopped, progress.advance)
        except Stopped:
            raise
        except OSError as e:
            return Result(entry, FAILED, sha, reason=f"could not be read: {e}")
        song = value.get("song") if isinstance(value, dict) else None
        song_id = song.get("id") if isinstance(song, dict) else None
        if status == 201:
            return Result(entry, UPLOADED, sha, status, song_id=song_id, sent=sent)
        if status == 200:
            return Result(entry, PRESENT, sha, status, "the same bytes were already stored",
                          song_id, sent=sent)
        if status in (400, 413, 415):
            return Result(entry, REFUSED, sha, status, refusal(status, value), sent=sent)
        return Result(entry, FAILED, sha, status, refusal(status, value), sent=sent)

    def _collect(self, in_flight: dict[Future[Result], FileEntry], progress: Progress,
                 timeout: float) -> None:
        if not in_flight:
            return
        done, _ = wait(list(in_flight), timeout=timeout, return_when=FIRST_COMPLETED)
        for future in done:
            in_flight.pop(future)
            try:
                result = future.result()
            except Stopped:
                continue  # abandoned mid-body: not done, the next run sees to it
            self._done(result, progress, counted=result.sent)

    def _done(self, result: Result, progress: Progress, counted: int = 0) -> None:
        self.results.append(result)
        if result.outcome != FAILED:
            self.state.add(result)
        progress.file_done(result.entry.size - counted)

    # the summary

    def summary(self) -> dict[str, Any]:
        def by(outcome: str, results: Iterable[Result]) -> list[Result]:
            return [r for r in results if r.outcome == outcome]

        uploaded = by(UPLOADED, self.results)
        sent = sum(r.entry.size for r in uploaded)
        return {
            "folder": str(self.folder),
            "server": self.server.url,
            "files": len(self.results) + len(self.earlier) + len(self.duplicates) + self.left,
            "uploaded": len(uploaded),
            "uploaded_bytes": sent,
            "present": len(by(PRESENT, self.results)),
            "done_before": len([r for r in self.earlier if r.outcome in STORED]),
            "duplicates": [{"file": f, "same_as": other} for f, other in self.duplicates],
            "refused": [{"file": r.entry.rel, "status": r.status, "reason": r.reason,
                         "earlier": r in self.earlier}
                        for r in (*by(REFUSED, self.results), *by(REFUSED, self.earlier))],
            "failed": [{"file": r.entry.rel, "status": r.status, "reason": r.reason}
                       for r in by(FAILED, self.results)],
            "left": self.left,
            "interrupted": self.left > 0,
            "seconds": round(self.seconds, 3),
            "mib_per_s": round(sent / 2**20 / self.seconds, 2) if self.seconds else 0.0,
            "files_per_s": round(len(uploaded) / self.seconds, 2) if self.seconds else 0.0,
        }


def summary_text(summary: dict[str, Any]) -> str:
    lines = [
        f"distpotify-import: {summary['files']} files in {summary['folder']}"
        f" -> {summary['server']}",
        f"  uploaded          {summary['uploaded']:6d}  ({_size(summary['uploaded_bytes'])} in"
        f" {summary['seconds']:.1f} s: {summary['mib_per_s']} MiB/s,"
        f" {summary['files_per_s']} files/s)",
        f"  already there     {summary['present']:6d}  (found by checksum, not sent again)",
        f"  done before       {summary['done_before']:6d}  (imported by an earlier run,"
        " unchanged since)",
        f"  duplicates        {len(summary['duplicates']):6d}  (the same bytes as another"
        " file here)",
        f"  refused           {len(summary['refused']):6d}",
    ]
    for item in summary["refused"]:
        earlier = " (an earlier run; --retry-refused sends it again)" if item["earlier"] else ""
        lines.append(f"    {item['file']}: {item['reason']}{earlier}")
    lines.append(f"  failed            {len(summary['failed']):6d}")
    for item in summary["failed"]:
        lines.append(f"    {item['file']}: {item['reason']}")
    if summary["interrupted"]:
        lines.append(f"  stopped: {summary['left']} files left; run the same command again to"
                     " go on where it stopped")
    return "\n".join(lines)


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    raise AssertionError("unreachable")


# ---------------------------------------------------------------- the command


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="distpotify-import",
        description="Upload every audio file of a folder to Distpotify through the proxy,"
                    " skipping what the library already holds. Ctrl-C stops; running the"
                    " same command again goes on where it stopped.")
    parser.add_argument("folder", metavar="DIR", type=Path)
    parser.add_argument("--server", default=DEFAULT_SERVER,
                        help=f"the proxy's URL (default {DEFAULT_SERVER})")
    parser.add_argument("--user", help="log in as NAME: the password is read from"
                        f" ${ENV_PASSWORD}, else asked for")
    parser.add_argument("--token", default=os.environ.get(ENV_TOKEN),
                        help=f"a session token instead of --user (default ${ENV_TOKEN})")
    parser.add_argument("--jobs", type=int, default=DEFAULT_JOBS,
                        help=f"files uploaded at once (default {DEFAULT_JOBS})")
    parser.add_argument("--state", type=Path,
                        help="the state file (default: one per server and folder under"
                        " ~/.cache/distpotify-import/)")
    parser.add_argument("--recheck", action="store_true",
                        help="ask the library about files an earlier run imported (they may"
                        " have been deleted since); checksums are still reused")
    parser.add_argument("--retry-refused", action="store_true",
                        help="send files an earlier run saw refused again")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true",
                        help="print the summary as one JSON object")
    args = parser.parse_args(argv)
    if not 1 <= args.jobs <= 64:
        parser.error("--jobs must be between 1 and 64")
    if not args.folder.is_dir():
        parser.error(f"{args.folder} is not a folder")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        server = Server(args.server.rstrip("/"))
        if args.user:
            password = os.environ.get(ENV_PASSWORD) or getpass.getpass(
                f"password of {args.user} at {server.url}: ")
            server.log_in(args.user, password)
        elif args.token:
            server.token = args.token
        state_path = args.state or default_state_path(server.url, args.folder)
        state = State(state_path)
    except ImportFailed as e:
        print(f"distpotify-import: {e}", file=sys.stderr)
        return 2
    run = Run(args.folder, server, state, jobs=args.jobs, recheck=args.recheck,
              retry_refused=args.retry_refused, show_progress=not args.no_progress)
    interrupts = 0

    def on_interrupt(signum: int, frame: object) -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts > 1:
            raise KeyboardInterrupt  # a second Ctrl-C: stop at once
        print("\nstopping: uploads in flight are left for the next run (Ctrl-C again to quit"
              " at once)",
              file=sys.stderr, flush=True)
        run.stopped.set()

    previous = signal.signal(signal.SIGINT, on_interrupt)
    error: str | None = None
    try:
        run.execute()
    except ImportFailed as e:
        error = str(e)
    finally:
        signal.signal(signal.SIGINT, previous)
        state.close()
    summary = run.summary()
    if error is not None and not summary["interrupted"]:
        summary["interrupted"] = True
    print(json.dumps(summary) if args.json else summary_text(summary), flush=True)
    if error is not None:
        print(f"distpotify-import: {error}", file=sys.stderr)
        return 2
    if interrupts:
        return 130
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())

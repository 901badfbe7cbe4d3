"""The records every part shares: versions, ops, rows, and the entities they describe.

A row is a set of fields, each stamped with the version of the op that last wrote it.
"""
# test-case-name: tests.unit.test_merge

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from typing import Any

import attrs


@attrs.frozen
class Version:
    """``(epoch, leader_id, seq)``: unique per write, totally ordered across partitions."""

    epoch: int
    leader_id: int
    seq: int

    # The order by hand: every op applied compares versions once per field and more (the
    # merge, the head, the watermarks), and attrs' generated order builds each side's tuple
    # through a generator, which made comparing a third of an op's apply.
    def __lt__(self, other: Version) -> bool:
        if other.__class__ is not Version:
            return NotImplemented
        return (self.epoch, self.leader_id, self.seq) < (other.epoch, other.leader_id, other.seq)

    def __le__(self, other: Version) -> bool:
        if other.__class__ is not Version:
            return NotImplemented
        return (self.epoch, self.leader_id, self.seq) <= (other.epoch, other.leader_id, other.seq)

    def __gt__(self, other: Version) -> bool:
        if other.__class__ is not Version:
            return NotImplemented
        return (self.epoch, self.leader_id, self.seq) > (other.epoch, other.leader_id, other.seq)

    def __ge__(self, other: Version) -> bool:
        if other.__class__ is not Version:
            return NotImplemented
        return (self.epoch, self.leader_id, self.seq) >= (other.epoch, other.leader_id, other.seq)

    _TEXT = re.compile(r"^(\d{10})-(\d{5})-(\d{12})$")

    def encode(self) -> str:
        """Fixed-width text whose string order is the version order (indexable in SQLite)."""
        return f"{self.epoch:010d}-{self.leader_id:05d}-{self.seq:012d}"

    @classmethod
    def decode(cls, text: str) -> Version:
        match = cls._TEXT.match(text)
        if match is None:
            raise ValueError(f"not a version: {text!r}")
        return cls(*(int(group) for group in match.groups()))

    def as_list(self) -> list[int]:
        return [self.epoch, self.leader_id, self.seq]


ZERO = Version(0, 0, 0)

MAX_INDEX = 2**31  # chunk indexes are below it

# The entity of keyed writes' stored outcomes (idempotency.py), one row per key.
KEY_ROWS = "idempotency"

# The keys of the purges entity: the tombstone watermark and the idempotency key watermark.
TOMBSTONES = "tombstones"
IDEMPOTENCY_KEYS = "idempotency"
PURGES = (TOMBSTONES, IDEMPOTENCY_KEYS)


@attrs.frozen
class Entity:
    """One replicated table: its name, key columns and the fields ops may write."""

    name: str
    keys: tuple[str, ...]
    fields: tuple[str, ...]
    # True: its tombstones are never purged (store/tombstones.py), so a deleted record's id
    # can never be made live again by a write that derives it.
    tombstones_kept: bool = False

    def key_of(self, values: Mapping[str, Any]) -> str:
        return "/".join(str(values[k]) for k in self.keys)

    def valid_key(self, key: str) -> bool:
        """Ids are canonical UUIDs, chunk indexes small non-negative integers."""
        parts = key.split("/")
        if len(parts) != len(self.keys):
            return False
        for name, part in zip(self.keys, parts, strict=True):
            if name == "idx":
                if not valid_index(part):
                    return False
            elif not (valid_uuid(part) or (self.name == "purges" and part in PURGES)):
                return False
        return True

    def split_key(self, key: str) -> dict[str, Any]:
        parts = key.split("/")
        if len(parts) != len(self.keys):
            raise ValueError(f"bad {self.name} key {key!r}")
        return {
            name: int(part) if name == "idx" else part
            for name, part in zip(self.keys, parts, strict=True)
        }


ENTITIES: dict[str, Entity] = {
    entity.name: entity
    for entity in (
        Entity(
            "songs",
            ("id",),
            (
                "title", "artist", "album", "track", "year", "genre", "duration", "mime",
                "size", "sha256", "chunk_size", "chunk_count", "created_at", "deleted",
                "uploaded_by",
                # Subsonic (issue 18): the album's artist (media.py: the file's album artist
                # tag, VARIOUS for a compilation), the disc number, and the SHA-256 of the
                # song's cover picture (content-addressed, replicated like chunks).
                "album_artist", "disc", "cover_sha256",
            ),
        ),
        Entity("chunks", ("song_id", "idx"), ("size", "sha256", "deleted")),
        # "owner" is the id of the account that made it (None: from before accounts);
        # "comment" is the Subsonic API's (issue 18).
        # "changed_at": the time of its last edit, of itself or of its items (Subsonic's
        # "changed", by which clients re-sync playlists).
        Entity("playlists", ("id",), ("name", "owner", "created_at", "deleted", "public",
                                      "comment", "changed_at")),
        Entity(
            "playlist_items",
            ("id",),
            ("playlist_id", "song_id", "position", "created_at", "deleted"),
        ),
        # Accounts (auth/users.py): no unique index on names, the leader refuses a taken one
        # and a clash that arrives by merge is renamed by auth/users.resolve_clash. An
        # account's id may derive from the create's Idempotency-Key: a deleted account's
        # tombstone stays (without its password), or the same create sent again once it was
        # purged would make the account live again, and its old sessions with it.
        Entity(
            "users",
            ("id",),
            ("username", "name_key", "password_hash", "role", "generation", "created_at",
             "disabled", "deleted",
             # The password sealed for Subsonic token auth (auth/box.py), or None.
             "subsonic_box"),
            tombstones_kept=True,
        ),
        # The stored outcome of a keyed write (idempotency.py): its key's id is a UUIDv5 of
        # the client's key text; "request" hashes the request, "written" is the version
        # the write answered with.
        Entity("idempotency", ("id",), ("request", "status", "body", "written")),
        # A cover set on an album by a user (PUT /albums/{id}/cover, covers.py): keyed by the
        # album's derived id (catalog.py); the picture is a cover file like a song's.
        Entity("album_covers", ("id",), ("cover_sha256", "set_by", "deleted")),
        # One row per watermark (PURGES): what is at or below "through" is purged everywhere.
        Entity("purges", ("id",), ("through",)),
        # Per-user state (issue 18; userstate.py). OpenSubsonic API keys, stored hashed. A
        # key's secret derives from its id (auth/apikeys.py), and its id from the create's
        # Idempotency-Key: a revoked key's tombstone stays, or the same create sent again
        # once it was purged would make the revoked secret work again.
        Entity("api_keys", ("id",), ("user_id", "name", "key_hash", "created_at", "deleted"),
               tombstones_kept=True),
        # A star and a rating of one item (kind song/album/artist) by one user: its id is a
        # UUIDv5 of user, kind and item, so the same star made twice (on two sides of a
        # partition) is one record. Unstarring and a rating of 0 are tombstones.
        Entity("stars", ("id",), ("user_id", "kind", "item_id", "starred_at", "deleted")),
        Entity("ratings", ("id",), ("user_id", "kind", "item_id", "rating", "rated_at",
                                    "deleted")),
        # One record per play, never changed: records only add, so no play is lost in a
        # partition, and a play count is a count of records.
        Entity("plays", ("id",), ("user_id", "song_id", "played_at")),
        # What a user's client plays now (scrobble submission=false), one record per user and
        # client; shown while "at" is recent.
        Entity("now_playing", ("id",), ("user_id", "client", "song_id", "at")),
        # A user's saved play queue (Subsonic savePlayQueue), one record per user: "entries"
        # the song ids in order as compact JSON text (a song may come twice), "current" an
        # index into them (None once cleared), "position_ms" within that song, and when and
        # by which client it was saved. Every save writes every field in one op, so of two
        # saves merged (made on two sides of a partition) the newer wins whole: the field
        # merge never pairs one save's songs with another's current song or position.
        Entity("play_queues", ("id",), ("user_id", "entries", "current", "position_ms",
                                        "changed_at", "changed_by")),
        # A position within a song kept by a user (Subsonic createBookmark), one record per
        # user and song: its id is a UUIDv5 of both, so the same bookmark made twice (on two
        # sides of a partition) is one record. Deleting one is a tombstone. ("song_" tells
        # them from store/bookmarks.py's, which are places in a sorted list of songs.)
        Entity("song_bookmarks", ("id",), ("user_id", "song_id", "position_ms", "comment",
                                           "created_at", "changed_at", "deleted")),
    )
}


@attrs.frozen
class Op:
    """One write: the fields it sets on one row, all stamped with one version."""

    version: Version
    entity: str
    key: str
    fields: Mapping[str, Any]
    # A keyed write's stored outcome, carried by the write's last op: the id and fields of
    # its idempotency row, written under this op's version wherever the op is applied. The
    # key row rides in the op instead of being an op (a version, an oplog entry, a push
    # item) of its own.
    outcome: tuple[str, Mapping[str, Any]] | None = None

    def outcome_op(self) -> Op | None:
        """The idempotency row this op carries, as the op that writes it."""
        if self.outcome is None:
            return None
        key, fields = self.outcome
        return Op(self.version, KEY_ROWS, key, fields)

    def to_json(self) -> dict[str, Any]:
        value = {
            "version": self.version.encode(),
            "entity": self.entity,
            "key": self.key,
            "fields": dict(self.fields),
        }
        if self.outcome is not None:
            value["outcome"] = {"key": self.outcome[0], "fields": dict(self.outcome[1])}
        return value


@attrs.frozen
class Row:
    """A row as stored: its field values and the version that wrote each field."""

    entity: str
    key: str
    fields: Mapping[str, Any]
    versions: Mapping[str, Version]

    @property
    def version(self) -> Version:
        return max(self.versions.values(), default=ZERO)


def new_id() -> str:
    return str(uuid.uuid4())


def valid_index(text: str) -> bool:
    """True only for a chunk index in canonical decimal below 2**31: "007", "+7" or "²" would
    name a chunk differently (or not at all), and 10 digits keep int() cheap."""
    return (
        len(text) <= 10 and text.isascii() and text.isdigit() and str(int(text)) == text
        and int(text) < MAX_INDEX
    )


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def valid_uuid(text: str) -> bool:
    """True only for the canonical lowercase UUID text this service hands out (what
    ``str(uuid.UUID(text)) == text`` says, without building the UUID: every id of every op
    a follower applies is checked)."""
    return _UUID.fullmatch(text) is not None

"""``distpotify-keygen``: a new cluster key file on standard output, or a check of one.

    distpotify-keygen > cluster.key        every replica gets this file (--cluster-key-file)
    distpotify-keygen --check cluster.key  is it usable? prints its key ids, as /status shows them
"""
# test-case-name: tests.unit.test_keys

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from distpotify.keys import ClusterKeys, KeyFileError, new_key

HEADER = (
    "# Distpotify cluster key (distpotify-keygen). Keep it secret: whoever holds it can act\n"
    "# as a replica. Give every replica of the cluster this file (--cluster-key-file).\n"
)


def key_file_text() -> str:
    """A new key file: the header comment and one new key."""
    return HEADER + new_key() + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="distpotify-keygen",
        description="Print a new Distpotify cluster key file (redirect it to a file), or check"
                    " one with --check.")
    parser.add_argument("--check", type=Path, metavar="FILE",
                        help="check that FILE is a usable key file and print its key ids")
    args = parser.parse_args(argv)
    if args.check is not None:
        try:
            keys = ClusterKeys.load(args.check)
        except KeyFileError as e:
            print(f"distpotify-keygen: {e}", file=sys.stderr)
            return 1
        roles = ("signs and accepts", "accepted too (rotation)")
        for key_id, role in zip(keys.key_ids, roles, strict=False):
            print(f"{key_id}  {role}")
        return 0
    if sys.stdout.isatty():
        print("distpotify-keygen: redirect the key to a file: distpotify-keygen > cluster.key",
              file=sys.stderr)
    sys.stdout.write(key_file_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

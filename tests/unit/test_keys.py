"""The cluster key file (missing, short, two keys, every bad shape), the keys derived per
purpose, and distpotify-keygen."""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

import pytest

from distpotify import keys
from distpotify.cli import keygen
from distpotify.keys import AMP, HEARTBEAT, PURPOSES, REQUEST, ClusterKeys, KeyFileError

ONE = secrets.token_bytes(32)
TWO = secrets.token_bytes(48)


def b64(secret: bytes) -> str:
    return base64.b64encode(secret).decode()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cluster.key"
    path.write_text(text)
    return path


# -- the key file


def test_a_base64_key_is_read() -> None:
    assert ClusterKeys.parse(b64(ONE)) == ClusterKeys((ONE,))


def test_a_hex_key_is_read() -> None:
    assert ClusterKeys.parse(ONE.hex().upper()) == ClusterKeys((ONE,))


def test_url_safe_base64_without_padding_is_read() -> None:
    text = base64.urlsafe_b64encode(TWO).decode().rstrip("=")
    assert ClusterKeys.parse(text) == ClusterKeys((TWO,))


def test_comments_and_blank_lines_are_skipped() -> None:
    text = (f"# made for the test\n\n   {b64(ONE)}  \n"
            f"# the old one, during a rotation\n{TWO.hex()}\n")
    assert ClusterKeys.parse(text) == ClusterKeys((ONE, TWO))


def test_two_keys_sign_with_the_first_and_accept_both() -> None:
    rotating = ClusterKeys.parse(f"{b64(ONE)}\n{b64(TWO)}\n")
    new, old = ClusterKeys((ONE,)), ClusterKeys((TWO,))

    tag = rotating.sign(HEARTBEAT, b"datagram")

    assert tag == new.sign(HEARTBEAT, b"datagram")
    assert rotating.verify(HEARTBEAT, b"datagram", old.sign(HEARTBEAT, b"datagram"))
    assert rotating.verify(HEARTBEAT, b"datagram", new.sign(HEARTBEAT, b"datagram"))
    assert rotating.accepted(AMP)[0] == rotating.signing(AMP)


def test_the_file_is_loaded_from_its_path(tmp_path: Path) -> None:
    path = write(tmp_path, keygen.key_file_text())
    loaded = ClusterKeys.load(path)
    assert len(loaded.key_ids) == 1
    assert loaded.source == f"cluster key file {path}"


@pytest.mark.parametrize(("text", "problem"), [
    ("", "holds no key"),
    ("# only a comment\n\n", "holds no key"),
    (b64(secrets.token_bytes(16)), "line 1 holds a key of 16 bytes; a cluster key is at least 32"),
    ("00" * 31, "line 1 holds a key of 31 bytes"),
    ("# header\nnot a key at all!", "line 2 is neither hex nor base64"),
    ("abc=def", "line 1 is neither hex nor base64"),
    ("a", "line 1 is neither hex nor base64"),
    ("00" * 64, "line 1 holds a key that is not random"),
])
def test_an_unusable_file_is_one_line_naming_the_problem_and_the_fix(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = write(tmp_path, text)

    with pytest.raises(KeyFileError) as raised:
        ClusterKeys.load(path)

    message = str(raised.value)
    assert problem in message
    assert f"make a key with `distpotify-keygen > {path}`" in message
    assert "\n" not in message


def test_more_than_two_keys_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "\n".join(b64(secrets.token_bytes(32)) for _ in range(3)))

    with pytest.raises(KeyFileError, match="holds 3 keys; keep at most 2: the key in use first"):
        ClusterKeys.load(path)


def test_a_missing_file_names_the_path_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "absent.key"

    with pytest.raises(KeyFileError) as raised:
        ClusterKeys.load(path)

    assert str(raised.value) == (f"cannot read cluster key file {path}: No such file or"
                                 f" directory; make a key with `distpotify-keygen > {path}`")


def test_an_unreadable_file_says_why(tmp_path: Path) -> None:
    path = write(tmp_path, b64(ONE))
    path.chmod(0)
    if os.access(path, os.R_OK):
        pytest.skip("running as root: every file is readable")

    with pytest.raises(KeyFileError, match="Permission denied"):
        ClusterKeys.load(path)


def test_a_binary_or_huge_file_is_refused(tmp_path: Path) -> None:
    binary = tmp_path / "binary.key"
    binary.write_bytes(b"\xff" * 40)
    huge = write(tmp_path, "#" * (keys.MAX_FILE_BYTES + 1))

    with pytest.raises(KeyFileError, match="is not text"):
        ClusterKeys.load(binary)
    with pytest.raises(KeyFileError, match="larger than"):
        ClusterKeys.load(huge)


def test_no_message_ever_shows_the_key(tmp_path: Path) -> None:
    texts = [f"{b64(ONE)}\n{b64(TWO)}\n{b64(ONE)}", f"{b64(ONE)[:20]}", f"{ONE.hex()}!"]
    for text in texts:
        with pytest.raises(KeyFileError) as raised:
            ClusterKeys.load(write(tmp_path, text))
        for line in text.splitlines():
            assert line[:12] not in str(raised.value)
    assert b64(ONE) not in repr(ClusterKeys((ONE,)))
    assert ONE.hex() not in repr(ClusterKeys((ONE,)))


# -- derived keys


def test_each_purpose_has_its_own_key() -> None:
    cluster = ClusterKeys((ONE,))
    derived = {cluster.signing(purpose) for purpose in PURPOSES}
    assert len(derived) == len(PURPOSES)
    assert ONE not in derived


def test_a_mac_for_one_purpose_does_not_verify_for_another() -> None:
    cluster = ClusterKeys((ONE,))
    assert not cluster.verify(REQUEST, b"data", cluster.sign(HEARTBEAT, b"data"))


def test_another_key_does_not_verify() -> None:
    assert not ClusterKeys((TWO,)).verify(AMP, b"data", ClusterKeys((ONE,)).sign(AMP, b"data"))


def test_derivation_is_hkdf_sha256_with_the_label_as_info() -> None:
    # RFC 5869 test case 3 (no salt, no info) checks the primitive; here: our parameters.
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    expected = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=AMP).derive(ONE)
    assert ClusterKeys((ONE,)).signing(AMP) == expected


def test_key_ids_are_stable_short_and_differ_per_key() -> None:
    first, again = ClusterKeys((ONE, TWO)), ClusterKeys((ONE,))
    assert first.key_ids[0] == again.key_ids[0]
    assert first.key_ids[0] != first.key_ids[1]
    assert all(len(key_id) == 8 for key_id in first.key_ids)


# -- distpotify-keygen


def test_keygen_prints_a_usable_key_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert keygen.main([]) == 0
    first = capsys.readouterr().out
    keygen.main([])
    second = capsys.readouterr().out

    assert first.startswith("#")
    assert ClusterKeys.parse(first) != ClusterKeys.parse(second)


def test_keygen_check_prints_the_key_ids(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, f"{b64(ONE)}\n{b64(TWO)}\n")

    assert keygen.main(["--check", str(path)]) == 0

    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(ClusterKeys((ONE, TWO)).key_ids)


def test_keygen_check_refuses_a_bad_file_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert keygen.main(["--check", str(tmp_path / "absent")]) == 1
    assert capsys.readouterr().err.count("\n") == 1

"""The user directory: names compared folded, the clash rule (the older account keeps the
name, the same answer in any order), renames and removals, and a repr without the hash."""

from __future__ import annotations

import itertools

import attrs
import pytest

from distpotify.auth.users import (
    ADMIN,
    LISTENER,
    MAX_USERNAME,
    Clash,
    Directory,
    InvalidUsername,
    User,
    check_username,
    name_key,
    resolve_clash,
)

HASH = "$argon2id$v=19$m=65536,t=3,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA"
EARLY = "2026-11-01T10:00:00.000Z"
LATE = "2026-11-02T09:00:00.000Z"


def user(id: str, username: str, created_at: str = EARLY, **changes: object) -> User:
    fields: dict[str, object] = {
        "id": id, "username": username, "role": LISTENER, "password_hash": HASH,
        "generation": 0, "created_at": created_at, **changes,
    }
    return User(**fields)  # type: ignore[arg-type]


ALICE = user("11111111-aaaa-4aaa-8aaa-aaaaaaaaaaaa", "alice", EARLY)
ALICE_TOO = user("22222222-bbbb-4bbb-8bbb-bbbbbbbbbbbb", "Alice", LATE)


# -- names


@pytest.mark.parametrize("spelling", [
    "alice", "ALICE", "Alice", "\uff21\uff4c\uff49\uff43\uff45",  # fullwidth
])
def test_spellings_of_one_name_fold_to_one_key(spelling: str) -> None:
    assert name_key(spelling) == name_key("alice")


@pytest.mark.parametrize(("a", "b"), [
    ("Stra\u00dfe", "STRASSE"),  # ß folds to ss
    ("\ufb01le", "FILE"),  # the fi ligature
    ("caf\u00e9", "CAFE\u0301"),  # one code point, or e and a combining accent
])
def test_folding_follows_nfkc_and_case_folding(a: str, b: str) -> None:
    assert name_key(a) == name_key(b)


def test_different_names_stay_different() -> None:
    assert name_key("alice") != name_key("alicia")


def test_folding_twice_changes_nothing() -> None:
    for name in ("Stra\u00dfe", "\u0130stanbul", "\u1e9e", "\u2460abc"):
        assert name_key(name_key(name)) == name_key(name)


@pytest.mark.parametrize("name", ["alice", "bob.smith", "\u00e9lodie", "a" * MAX_USERNAME])
def test_a_plain_name_is_a_username(name: str) -> None:
    assert check_username(name) == name


@pytest.mark.parametrize("name", ["", "a" * (MAX_USERNAME + 1), "al ice", "alice\n",
                                  "ali\u200bce", "\u00a0"])
def test_empty_long_spaced_or_control_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidUsername):
        check_username(name)


# -- the record


def test_the_repr_of_a_user_leaves_the_hash_out() -> None:
    assert HASH not in repr(ALICE)
    assert "password" not in repr(ALICE)
    assert "alice" in repr(ALICE)


def test_a_role_is_admin_or_listener() -> None:
    assert user("a", "root", role=ADMIN).role == ADMIN
    with pytest.raises(ValueError):
        user("a", "root", role="superuser")


def test_a_generation_is_not_negative() -> None:
    with pytest.raises(ValueError):
        user("a", "root", generation=-1)


# -- the clash rule


def test_the_older_account_keeps_the_name() -> None:
    keeper, renamed = resolve_clash(ALICE_TOO, ALICE)

    assert keeper == ALICE
    assert renamed.id == ALICE_TOO.id
    assert renamed.username == "Alice-22222222"


def test_the_order_of_the_arguments_does_not_matter() -> None:
    assert resolve_clash(ALICE, ALICE_TOO) == resolve_clash(ALICE_TOO, ALICE)


def test_created_at_the_same_moment_the_smaller_id_keeps_the_name() -> None:
    first = user("0aaaaaaa-0000-4000-8000-000000000000", "alice", EARLY)
    second = user("0bbbbbbb-0000-4000-8000-000000000000", "ALICE", EARLY)

    keeper, renamed = resolve_clash(second, first)

    assert (keeper.id, renamed.username) == (first.id, "ALICE-0bbbbbbb")


def test_only_the_name_of_the_renamed_account_changes() -> None:
    _, renamed = resolve_clash(ALICE, ALICE_TOO)

    assert attrs.evolve(renamed, username=ALICE_TOO.username) == ALICE_TOO


def test_an_account_does_not_clash_with_itself() -> None:
    with pytest.raises(ValueError):
        resolve_clash(ALICE, attrs.evolve(ALICE, role=ADMIN))


# -- the directory


def test_a_user_is_found_by_id_and_by_any_spelling_of_the_name() -> None:
    users = Directory()
    users.put(ALICE)

    assert users.by_id(ALICE.id) == ALICE
    assert users.by_name("ALICE") == ALICE
    assert users.by_name("\uff41\uff4c\uff49\uff43\uff45") == ALICE
    assert users.by_name("bob") is None
    assert users.by_id("nobody") is None


def test_putting_a_user_again_replaces_it() -> None:
    users = Directory()
    users.put(ALICE)

    changed = attrs.evolve(ALICE, role=ADMIN, generation=1)
    assert users.put(changed) == []

    assert users.by_name("alice") == changed
    assert len(users) == 1


def test_a_renamed_user_is_found_by_the_new_name_only() -> None:
    users = Directory()
    users.put(ALICE)

    users.put(attrs.evolve(ALICE, username="alicia"))

    assert users.by_name("alicia") is not None
    assert users.by_name("alice") is None


def test_a_removed_user_is_gone_and_frees_the_name() -> None:
    users = Directory()
    users.put(ALICE)

    assert users.remove(ALICE.id) == ALICE
    assert users.remove(ALICE.id) is None

    assert (users.by_id(ALICE.id), users.by_name("alice"), len(users)) == (None, None, 0)
    assert users.put(ALICE_TOO) == []


def test_a_clash_is_resolved_and_reported() -> None:
    users = Directory()
    users.put(ALICE)

    clashes = users.put(ALICE_TOO)

    renamed = attrs.evolve(ALICE_TOO, username="Alice-22222222")
    assert clashes == [Clash(ALICE, renamed)]
    assert users.by_name("alice") == ALICE
    assert users.by_name("alice-22222222") == renamed
    assert users.by_id(ALICE_TOO.id) == renamed


def test_the_older_account_takes_the_name_back_when_it_arrives_second() -> None:
    users = Directory()
    users.put(ALICE_TOO)

    clashes = users.put(ALICE)

    assert [clash.keeper for clash in clashes] == [ALICE]
    assert users.by_name("alice") == ALICE
    assert users.by_id(ALICE_TOO.id) == attrs.evolve(ALICE_TOO, username="Alice-22222222")


# A squatter holds the name the second alice is renamed to: made before her, or after.
@pytest.mark.parametrize("squatter_created", ["2026-11-01T12:00:00.000Z", LATE])
def test_every_order_of_arrival_gives_the_same_directory(squatter_created: str) -> None:
    third = user("33333333-cccc-4ccc-8ccc-cccccccccccc", "ALICE", "2026-11-03T00:00:00.000Z")
    squatter = user("44444444-dddd-4ddd-8ddd-dddddddddddd", "alice-22222222", squatter_created)
    accounts = [ALICE, ALICE_TOO, third, squatter]

    outcomes = set()
    for order in itertools.permutations(accounts):
        users = Directory()
        for account in order:
            users.put(account)
        outcomes.add(frozenset((u.id, u.username) for u in users))

    assert len(outcomes) == 1
    (outcome,) = outcomes
    assert len({name_key(name) for _, name in outcome}) == len(accounts)


def test_an_update_of_a_renamed_account_under_its_old_name_is_renamed_again() -> None:
    users = Directory()
    users.put(ALICE)
    users.put(ALICE_TOO)

    users.put(attrs.evolve(ALICE_TOO, generation=5))  # its record still says "Alice"

    assert users.by_name("alice") == ALICE
    assert users.by_name("alice-22222222") == attrs.evolve(ALICE_TOO, username="Alice-22222222",
                                                           generation=5)

"""The random nemesis's decisions (no namespaces needed): seeded, within what the world
allows, every kind of fault reachable, and always one replica left running."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from lab.chaos import FAULT_KINDS, Action, World, choose, may_wipe
from lab.nemesis import PROXY

NODES = (1, 2, 3)


def _play(seed: int, steps: int, world: World) -> list[Action]:
    """Decisions applied to a model of the world, as the lab would apply them."""
    rng = random.Random(seed)
    actions = []
    for _ in range(steps):
        action = choose(rng, world)
        actions.append(action)
        world = _after(world, action)
    return actions


def _after(world: World, action: Action) -> World:
    target = action.target
    if action.op in ("kill", "wipe"):
        return World(**{**_fields(world), "down": world.down | {target}})
    if action.op == "pause":
        return World(**{**_fields(world), "paused": world.paused | {target}})
    if action.op == "recover":
        return World(**{**_fields(world), "down": world.down - {target},
                        "paused": world.paused - {target}})
    if action.op == "partition":
        return World(**{**_fields(world), "partitioned": True})
    if action.op == "slow":
        return World(**{**_fields(world), "slowed": world.slowed | {target}})
    if action.op == "heal":
        return World(**{**_fields(world), "partitioned": False, "slowed": frozenset()})
    if action.op == "disk_full":
        return World(**{**_fields(world), "full": world.full | {target}})
    if action.op == "disk_free":
        return World(**{**_fields(world), "full": world.full - {target}})
    return world


def _fields(world: World) -> dict[str, Any]:
    return {name: getattr(world, name) for name in (
        "nodes", "proxy", "disks", "down", "paused", "full", "partitioned", "slowed", "leader")}


def test_the_same_seed_makes_the_same_decisions() -> None:
    world = World(NODES, proxy=True, disks=True, leader=3)

    assert _play(7, 200, world) == _play(7, 200, world)
    assert _play(7, 200, world) != _play(8, 200, world)


def test_every_kind_of_fault_and_every_end_is_chosen_in_a_long_run() -> None:
    actions = _play(1, 2000, World(NODES, proxy=True, disks=True, leader=3))

    ops = Counter(a.op if a.params.get("loss", 0) == 0 else "lossy" for a in actions)
    assert set(FAULT_KINDS) - {"lossy"} <= set(ops)
    assert {"lossy", "recover", "heal", "disk_free"} <= set(ops)
    partitions = {repr(a.target) for a in actions if a.op == "partition"}
    assert any(PROXY in group for a in actions if a.op == "partition" for group in a.target)
    assert len(partitions) > 5  # many different splits, not one


def test_at_least_one_replica_always_runs_unpaused() -> None:
    world = World(NODES, proxy=True, disks=True, leader=3)
    rng = random.Random(3)
    for _ in range(3000):
        action = choose(rng, world)
        world = _after(world, action)
        assert set(NODES) - world.down - world.paused, action


def test_with_all_but_one_replica_down_only_ends_or_network_and_disk_faults_are_chosen() -> None:
    world = World(NODES, proxy=True, disks=True, down=frozenset({1, 2}), leader=3)
    rng = random.Random(5)

    chosen = {choose(rng, world).op for _ in range(500)}

    assert chosen.isdisjoint({"kill", "pause", "wipe"})
    assert "recover" in chosen


def test_a_partition_splits_every_host_into_non_empty_groups() -> None:
    rng = random.Random(11)
    world = World(NODES, proxy=True)
    for _ in range(300):
        action = choose(rng, world, kinds=("partition",))
        groups = action.target
        assert len(groups) >= 2 and all(groups)
        assert sorted((h for g in groups for h in g), key=str) == sorted([*NODES, PROXY], key=str)


def test_a_wipe_prefers_a_follower_and_disk_faults_need_disks() -> None:
    rng = random.Random(2)
    world = World(NODES, leader=3)

    wipes = [choose(rng, world, kinds=("wipe",)).target for _ in range(200)]
    assert 3 not in wipes
    assert {choose(rng, world, kinds=("disk_full",)).op for _ in range(50)} == {"heal"}


def test_kills_and_pauses_often_hit_the_leader() -> None:
    rng = random.Random(4)
    world = World(NODES, leader=2)

    targets = Counter(choose(rng, world, kinds=("kill", "pause")).target for _ in range(600))

    assert targets[2] > targets[1] + targets[3] - 100  # about half, plus its fair third


def test_every_decision_takes_the_same_draws_whatever_the_world() -> None:
    worlds = [World(NODES, proxy=True, disks=True, leader=3),
              World(NODES, proxy=True, disks=True, down=frozenset({1}), leader=2),
              World(NODES, paused=frozenset({1, 2}), partitioned=True),
              World(NODES, proxy=True, full=frozenset(NODES), slowed=frozenset({PROXY}))]
    for seed in range(50):
        states = set()
        for world in worlds:
            rng = random.Random(seed)
            choose(rng, world)
            states.add(repr(rng.getstate()))
        assert len(states) == 1, seed


OLD, NEW = "0000000001-00001-000000000001", "0000000002-00001-000000000001"


def test_a_replica_is_wiped_only_when_another_holds_what_it_holds() -> None:
    song = {("songs", "s"): {"title": NEW}}
    older = {("songs", "s"): {"title": OLD}}
    assert may_wipe(1, {1: song, 2: song, 3: older}, leader=3)
    assert not may_wipe(1, {1: song, 2: older, 3: older}, leader=3)
    assert not may_wipe(3, {1: song, 2: song, 3: song}, leader=3), "the leader"
    assert not may_wipe(1, {1: None, 2: song, 3: song}, leader=3), "its database unreadable"


def test_no_replica_is_wiped_while_another_holds_nothing_yet() -> None:
    """Seed 5353: a second lost disk while the first still fetches its snapshot leaves two
    empty replicas, a majority of three that cannot tell a lost cluster from a new one."""
    song = {("songs", "s"): {"title": NEW}}
    assert not may_wipe(1, {1: song, 2: {}, 3: song}, leader=3)
    assert not may_wipe(1, {1: song, 2: None, 3: song}, leader=3)
    assert may_wipe(1, {1: song, 2: song, 3: song}, leader=3)

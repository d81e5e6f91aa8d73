"""Scripted consensus scenarios, each forcing one situation the random seeds may only brush.

Most drive the production Replica through the simulator with a scripted network
(`message_filter`, partitions, crashes); a few feed a single replica events by hand
where the exact actions matter (restart, join rule, timers, hostile input).
"""
from __future__ import annotations

import random

import pytest

from ledger import codec
from ledger.crypto import KeyPair

from consensus import wal as wal_records
from consensus.actions import Broadcast, BuildProposal, CheckBlock, Persist
from consensus.events import BlockChecked, ProposalBuilt, Receive, Tick, WorkChanged
from consensus.messages import (
    Limits,
    MessageError,
    decode_message,
    encode_new_view,
    encode_preprepare,
    encode_view_change,
    encode_vote,
    sign_new_view,
    sign_prepare,
    sign_preprepare,
    sign_view_change,
)
from consensus.replica import NORMAL, VIEW_CHANGE, Replica, ReplicaConfig

from .ledger_app import FakeLedger, clock_ms, genesis_hash
from .simulator import CHAIN_ID, FaultPlan, SimConfig, Simulation

FOREVER = 10**9


def scripted(n: int = 4, seed: int = 1, heights: int = FOREVER, **overrides) -> Simulation:
    """A simulation without random faults; the test scripts what goes wrong."""
    config = SimConfig(
        seed=seed, n=n, heights=heights, faults=FaultPlan(gst_tick=1, delay_ticks_max=2),
        heights_after_gst=0, liveness_bound_ticks=FOREVER, require_faults_fired=False, **overrides,
    )
    return Simulation(config)


def heights(sim: Simulation, indices=None) -> list[int]:
    nodes = sim.nodes if indices is None else [sim.nodes[i] for i in indices]
    return [node.ledger.height for node in nodes]


def decoded(sim: Simulation, data: bytes):
    try:
        return decode_message(data, CHAIN_ID, Limits(validators_max=sim.config.n))
    except MessageError:
        return None


# --- view change --------------------------------------------------------------------


def test_primary_crash_view_change_then_commits():
    sim = scripted(n=4)
    sim.run_until(lambda s: min(heights(s)) >= 3, 300, "3 heights")
    primary = sim.validators.index(sim.nodes[1].replica.primary)
    sim.crash(primary)
    others = [i for i in range(4) if i != primary]
    start = max(heights(sim))
    sim.run_until(lambda s: min(heights(s, others)) >= start + 5, 1000, "5 more heights without the primary")
    for index in others:
        replica = sim.nodes[index].replica
        assert replica.view >= 1 and replica.mode == NORMAL
        assert replica.primary != sim.validators[primary]
        assert replica.counters["view_changes_started"] >= 1


@pytest.mark.parametrize("n", [4, 7])
def test_equivocating_primary(n):
    plan = FaultPlan(gst_tick=1, byzantine={0: frozenset({"equivocate"})})
    result = Simulation(SimConfig(seed=11, n=n, heights=10, faults=plan)).run()  # safety checked every step
    assert result.heights >= 10
    assert result.faults["byzantine.equivocate"] >= 1
    if n == 7:
        # The two halves (3 and 3 backups) cannot prepare either block: the view must change.
        assert result.views_max >= 1


def drop_view0_commits(sim: Simulation):
    def message_filter(source: int, target: int, data: bytes) -> bool:
        message = decoded(sim, data)
        return not (message is not None and message.kind == "commit" and message.view == 0)
    return message_filter


def original_block(sim: Simulation, index: int, height: int) -> tuple[bytes, bytes]:
    """(header, payload) of the block a node validated for `height`, from its WAL."""
    for key, value in sim.nodes[index].wal.items():
        if key.startswith(wal_records.height_prefix(height) + wal_records.KIND_BLOCK):
            return tuple(codec.decode(wal_records.unseal(key, value)))
    raise AssertionError(f"node{index} holds no block for height {height}")


def test_prepared_block_is_carried_over_with_its_header():
    sim = scripted(n=4, seed=3, heights=1)
    sim.network.message_filter = drop_view0_commits(sim)
    prepared = wal_records.prepared_key(1)
    sim.run_until(lambda s: sum(prepared in node.wal for node in s.nodes) >= 3, 300, "a prepared block")
    header, payload = original_block(sim, 0, 1)
    assert heights(sim) == [0, 0, 0, 0]  # no commit got through in view 0
    sim.crash(0)  # the primary that proposed it is gone
    sim.run_until(lambda s: min(heights(s, [1, 2, 3])) >= 1, 1000, "the carried block committed")
    for index in (1, 2, 3):
        block = sim.nodes[index].ledger.blocks[0]
        assert block.header == header and block.payload == payload  # byte for byte
        assert codec.decode(block.header)["view"] == 0
        assert codec.decode(block.header)["proposer"] == sim.validators[0]
        assert block.certificate["view"] >= 1  # certified in a later view


def test_wrong_new_view_moves_replicas_to_the_next_view():
    """primary(1) sends a NEW-VIEW that drops the prepared block: backups go on to view 2."""
    sim = scripted(n=4, seed=4, heights=1)
    drop_commits = drop_view0_commits(sim)
    forged: set[bytes] = set()

    def message_filter(source: int, target: int, data: bytes) -> bool:
        message = decoded(sim, data)
        if message is not None and message.kind == "nv" and message.view == 1 and data not in forged:
            if not forged:  # replace primary(1)'s genuine NEW-VIEW with one that omits the block
                wrong = sign_new_view(sim.nodes[1].key, CHAIN_ID, 1, message.view_changes, None)
                forged.add(encode_new_view(wrong, None))
            return False
        return drop_commits(source, target, data)

    sim.network.message_filter = message_filter
    sim.run_until(lambda s: bool(forged), 1000, "primary(1)'s NEW-VIEW")
    header, _ = original_block(sim, 0, 1)
    for target in (0, 2, 3):
        sim.network.send(sim.now, 1, target, next(iter(forged)))
    sim.run_until(lambda s: min(heights(s)) >= 1, 2000, "commit after the wrong NEW-VIEW")
    for index in (0, 2, 3):
        counters = sim.nodes[index].replica.counters
        assert counters.get("dropped.bad_new_view.wrong_carried_block", 0) >= 1
        assert counters.get("view_change.bad_new_view", 0) >= 1
    for node in sim.nodes:
        assert node.ledger.blocks[0].header == header
        assert node.ledger.blocks[0].certificate["view"] >= 2


# --- restart ------------------------------------------------------------------------


def cluster(n: int = 4, **overrides):
    keys = [KeyPair.from_seed(bytes([index + 1]) * 32) for index in range(n)]
    config = ReplicaConfig(chain_id=CHAIN_ID, validators=tuple(key.public_key for key in keys), **overrides)
    return keys, config


def persisted(actions) -> dict[bytes, bytes]:
    return {action.key: action.value for action in actions if type(action) is Persist}


def broadcasts(actions) -> list[bytes]:
    return [action.data for action in actions if type(action) is Broadcast]


def proposal(keys, config, view: int = 0, payload: bytes = b"tx:first") -> bytes:
    ledger = FakeLedger(CHAIN_ID, config.validators)
    proposer = keys[view % len(keys)]
    header = ledger.build(view, proposer.public_key, clock_ms(0), payload)
    preprepare = sign_preprepare(
        proposer, CHAIN_ID, view, 1, header, payload, codec.sha256(header), codec.sha256(payload)
    )
    return encode_preprepare(preprepare, payload)


def test_restarted_backup_resends_verbatim_and_never_prepares_another_block():
    keys, config = cluster()
    genesis = genesis_hash(CHAIN_ID)
    backup = Replica(config, keys[1], 0, genesis, [])
    first = proposal(keys, config, payload=b"tx:first")
    actions = backup.step(Receive(keys[0].public_key, first))
    check = next(action for action in actions if type(action) is CheckBlock)
    actions = backup.step(BlockChecked(codec.sha256(check.header), True))
    wal = persisted(actions)
    [prepare_wire] = broadcasts(actions)
    assert decoded_kind(prepare_wire) == "prepare"
    # Crash: only the WAL survives.
    restarted = Replica(config, keys[1], 0, genesis, sorted(wal.items()))
    actions = restarted.step(Tick())
    assert prepare_wire in broadcasts(actions)  # the same bytes, not a new signature
    assert any(type(action) is CheckBlock for action in actions)  # the driver re-validates it
    second = proposal(keys, config, payload=b"tx:second")
    actions = restarted.step(Receive(keys[0].public_key, second))
    actions += restarted.step(BlockChecked(codec.sha256(check.header), True))
    for data in broadcasts(actions):
        message = decode_message(data, CHAIN_ID, Limits(validators_max=4))
        assert message.kind != "prepare" or encode_vote(message) == prepare_wire
    assert restarted.counters.get("dropped.equivocation", 0) == 1


def decoded_kind(data: bytes) -> str:
    return decode_message(data, CHAIN_ID, Limits(validators_max=4)).kind


def test_restarted_primary_resends_its_proposal_instead_of_building_another():
    keys, config = cluster()
    genesis = genesis_hash(CHAIN_ID)
    primary = Replica(config, keys[0], 0, genesis, [])
    [build] = [a for a in primary.step(WorkChanged(has_work=True)) if type(a) is BuildProposal]
    ledger = FakeLedger(CHAIN_ID, config.validators)
    header = ledger.build(0, keys[0].public_key, clock_ms(0), b"tx:block")
    actions = primary.step(ProposalBuilt(build.height, build.view, header, b"tx:block"))
    [preprepare_wire] = broadcasts(actions)
    restarted = Replica(config, keys[0], 0, genesis, sorted(persisted(actions).items()))
    actions = restarted.step(WorkChanged(has_work=True))
    assert preprepare_wire in broadcasts(actions)
    assert not any(type(action) is BuildProposal for action in actions)
    for _ in range(5):
        assert not any(type(action) is BuildProposal for action in restarted.step(Tick()))


def test_crash_at_every_cut_point_never_equivocates():
    """Crash one node at each of many steps, cutting its action list at random."""
    for seed in range(6):
        sim = scripted(n=4, seed=seed, heights=8)
        rng = random.Random(seed)
        for _ in range(10):
            sim.run_ticks(rng.randint(3, 15))
            victim = sim.nodes[rng.randrange(4)]
            if victim.alive:
                victim.crash_in_step = True  # its next step performs a prefix of its actions
            sim.run_ticks(rng.randint(1, 10))
            for index, node in enumerate(sim.nodes):
                if not node.alive:
                    sim.restart(index)
        sim.run_until(lambda s: min(heights(s)) >= 8, 3000, "8 heights after crashes")


def test_corrupt_wal_record_refuses_to_start():
    keys, config = cluster()
    genesis = genesis_hash(CHAIN_ID)
    primary = Replica(config, keys[0], 0, genesis, [])
    [build] = [a for a in primary.step(WorkChanged(has_work=True)) if type(a) is BuildProposal]
    header = FakeLedger(CHAIN_ID, config.validators).build(0, keys[0].public_key, clock_ms(0), b"tx:x")
    wal = persisted(primary.step(ProposalBuilt(build.height, build.view, header, b"tx:x")))
    key = sorted(wal)[0]
    wal[key] = wal[key][:-1] + bytes([wal[key][-1] ^ 1])
    with pytest.raises(ValueError, match="corrupt"):
        Replica(config, keys[0], 0, genesis, sorted(wal.items()))


# --- quiet, catch-up, n = 1 -------------------------------------------------------------


def test_idle_network_stays_quiet():
    sim = scripted(n=4, seed=5, heights=0)
    sim.run_ticks(2000)
    assert sim.network.sent == 0
    assert all(node.replica.view == 0 and node.replica.mode == NORMAL for node in sim.nodes)
    sim.set_goal(3)
    sim.run_until(lambda s: min(heights(s)) >= 3, 300, "3 heights")
    sim.run_ticks(30)  # the last votes land
    sent = sim.network.sent
    sim.run_ticks(2000)
    assert sim.network.sent == sent
    for node in sim.nodes:
        assert node.replica.view == 0 and node.replica.counters.get("view_changes_started", 0) == 0


def test_lagging_replica_catches_up_with_fetch_and_synced():
    sim = scripted(n=4, seed=7)
    sim.run_ticks(1)  # GST (tick 1) heals the network; partition it afterwards
    sim.network.partition = (frozenset({0, 1, 2}), frozenset({3}))
    sim.run_until(lambda s: min(heights(s, [0, 1, 2])) >= 10, 1000, "10 heights without node3")
    assert sim.nodes[3].ledger.height == 0
    sim.network.partition = None
    target = max(heights(sim)) + 3
    sim.run_until(lambda s: s.nodes[3].ledger.height >= target, 1000, "node3 caught up")
    counters = sim.nodes[3].replica.counters
    assert counters["fetches"] >= 1 and counters["synced"] >= 1


def test_single_validator_commits_its_own_proposals():
    sim = scripted(n=1, heights=20)
    result = sim.run()
    assert result.heights == 20 and sim.network.sent == 0 and result.views_max == 0


def test_same_seed_same_trace():
    first = Simulation(SimConfig(seed=42, n=4)).run()
    again = Simulation(SimConfig(seed=42, n=4)).run()
    assert first.trace_hash == again.trace_hash


# --- single-replica rules -----------------------------------------------------------------


def view_change_from(key: KeyPair, target: int) -> bytes:
    return encode_view_change(sign_view_change(key, CHAIN_ID, target, 0, None, None), None)


def sent_view_changes(actions) -> list[int]:
    out = []
    for data in broadcasts(actions):
        message = decode_message(data, CHAIN_ID, Limits(validators_max=4))
        if message.kind == "vc":
            out.append(message.view)
    return out


def test_join_rule_needs_f_plus_1_and_picks_the_smallest_view():
    keys, config = cluster()
    replica = Replica(config, keys[3], 0, genesis_hash(CHAIN_ID), [])
    assert sent_view_changes(replica.step(Receive(keys[1].public_key, view_change_from(keys[1], 5)))) == []
    actions = replica.step(Receive(keys[2].public_key, view_change_from(keys[2], 2)))
    assert sent_view_changes(actions) == [2]  # f+1 = 2 others above view 0: join the smallest
    assert replica.mode == VIEW_CHANGE


def test_view_change_timer_waits_for_a_quorum_of_view_changes():
    keys, config = cluster(progress_timeout_ticks=5)
    replica = Replica(config, keys[3], 0, genesis_hash(CHAIN_ID), [])
    replica.step(WorkChanged(has_work=True))
    sent = []
    for _ in range(10):
        sent += sent_view_changes(replica.step(Tick()))
    assert sent == [1]
    for _ in range(500):  # alone in the view change: the timer does not run, no escalation
        sent += sent_view_changes(replica.step(Tick()))
    assert set(sent) == {1}
    replica.step(Receive(keys[1].public_key, view_change_from(keys[1], 1)))
    replica.step(Receive(keys[2].public_key, view_change_from(keys[2], 1)))  # q = 3 with ours
    later = []
    for _ in range(20):
        later += sent_view_changes(replica.step(Tick()))
    assert 2 in later


def test_prepare_from_the_primary_is_never_counted():
    keys, config = cluster()
    replica = Replica(config, keys[2], 0, genesis_hash(CHAIN_ID), [])
    prepare = sign_prepare(keys[0], CHAIN_ID, 0, 1, b"\1" * 32, b"\2" * 32)
    replica.step(Receive(keys[0].public_key, encode_vote(prepare)))
    assert replica.counters["dropped.prepare_from_primary"] == 1


def test_hostile_input_is_dropped_and_counted_never_raised():
    keys, config = cluster()
    replica = Replica(config, keys[1], 0, genesis_hash(CHAIN_ID), [])
    rng = random.Random(9)
    valid = [
        proposal(keys, config),
        encode_vote(sign_prepare(keys[2], CHAIN_ID, 0, 1, b"\1" * 32, b"\2" * 32)),
        view_change_from(keys[2], 1),
    ]
    inputs = [b"", b"\x90", b"\xc1", codec.encode({"a": 1}), codec.encode(["pp"] * 6), rng.randbytes(100)]
    for _ in range(3000):
        data = bytearray(rng.choice(valid))
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        inputs.append(bytes(data[: rng.randint(0, len(data))] if rng.random() < 0.2 else data))
    for data in inputs:
        replica.step(Receive(keys[rng.randrange(4)].public_key, data))
    replica.step(Receive(b"\0" * 32, valid[1]))  # not a validator
    counters = replica.counters
    assert sum(value for key, value in counters.items() if key.startswith("dropped.")) > 2500
    assert counters["dropped.unknown_sender"] == 1
    assert replica.view == 0 and replica.height == 0 and replica.mode == NORMAL


def test_quorum_sizes():
    from consensus.quorum import Quorum

    expected = {1: (0, 1), 2: (0, 2), 3: (0, 3), 4: (1, 3), 5: (1, 4), 6: (1, 5), 7: (2, 5), 10: (3, 7)}
    for n, (f, q) in expected.items():
        quorum = Quorum(tuple(bytes([i]) * 32 for i in range(n)))
        assert (quorum.f, quorum.q) == (f, q)
        assert 2 * q - n > f  # any two quorums share an honest validator
        assert quorum.primary(n + 1) == quorum.validators[1 % n]

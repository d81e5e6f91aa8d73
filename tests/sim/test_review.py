"""Review scenarios for the consensus core: each drives the production Replica (as
test_scenarios.py does) through one situation found in a review against the pitfalls
and invariants of PBFT-NOTES.md. Five were defects, fixed since (stale views buffered
for future heights; a restart between the certificate record and the commit; a backup
restarted right after a NEW-VIEW; a NEW-VIEW forwarded as help; a payload swap that
raised a false divergence alarm), one a slow path (a catch-up that stops short of a new
view's start waited for the progress timer); the others pin down pitfalls the code avoids.
"""
from __future__ import annotations

from ledger import codec
from ledger.crypto import KeyPair

from consensus import wal as wal_records
from consensus.actions import Broadcast, CheckBlock, Persist
from consensus.events import BlockChecked, ProposalBuilt, Receive, Synced, Tick, WorkChanged
from consensus.messages import (
    Certificate,
    Limits,
    PreparedCertificate,
    decode_message,
    encode_certificate_message,
    encode_new_view,
    encode_preprepare,
    encode_view_change,
    encode_vote,
    sign_commit,
    sign_new_view,
    sign_prepare,
    sign_preprepare,
    sign_view_change,
)
from consensus.replica import NORMAL, VIEW_CHANGE, Replica, ReplicaConfig

from .ledger_app import FakeLedger, clock_ms, genesis_hash
from .simulator import CHAIN_ID

GENESIS = genesis_hash(CHAIN_ID)


def cluster(n: int = 4, **overrides):
    keys = [KeyPair.from_seed(bytes([index + 1]) * 32) for index in range(n)]
    config = ReplicaConfig(chain_id=CHAIN_ID, validators=tuple(key.public_key for key in keys), **overrides)
    return keys, config


def sealed(key: bytes, obj) -> tuple[bytes, bytes]:
    return key, wal_records.seal(key, codec.encode(obj))


def view_record(view: int, start: int = 1) -> tuple[bytes, bytes]:
    return sealed(wal_records.VIEW_KEY, {"view": view, "start": start})


def broadcasts(actions) -> list[bytes]:
    return [action.data for action in actions if type(action) is Broadcast]


def decode(data: bytes, n: int = 4):
    return decode_message(data, CHAIN_ID, Limits(validators_max=n))


def kinds_sent(actions, n: int = 4) -> list[tuple[str, int]]:
    out = []
    for data in broadcasts(actions):
        message = decode(data, n)
        out.append((message.kind, message.view))
    return out


def block(keys, config, view: int, payload: bytes, time_ms: int | None = None, proposer: int | None = None):
    ledger = FakeLedger(CHAIN_ID, config.validators)
    signer = keys[(view if proposer is None else proposer) % len(keys)]
    header = ledger.build(view, signer.public_key, clock_ms(0), payload, time_ms=time_ms)
    return header, payload


def preprepare_for(key, view: int, height: int, header: bytes, payload: bytes):
    return sign_preprepare(key, CHAIN_ID, view, height, header, None, codec.sha256(header), codec.sha256(payload))


def prepared_certificate(keys, view: int, height: int, header: bytes, payload: bytes, q: int = 3):
    """PRE-PREPARE by primary(view) plus q-1 PREPAREs from the next backups."""
    n = len(keys)
    primary = keys[view % n]
    pp = preprepare_for(primary, view, height, header, payload)
    backups = [keys[(view + i) % n] for i in range(1, q)]
    prepares = tuple(
        sign_prepare(key, CHAIN_ID, view, height, codec.sha256(header), codec.sha256(payload)) for key in backups
    )
    return PreparedCertificate(pp, prepares)


def feed_checks(replica: Replica, actions, valid: bool = True) -> list:
    """Answer every CheckBlock in `actions` (and in the answers' actions) with `valid`."""
    out = list(actions)
    pending = [a for a in actions if type(a) is CheckBlock]
    while pending:
        check = pending.pop(0)
        more = replica.step(BlockChecked(codec.sha256(check.header), valid))
        out += more
        pending += [a for a in more if type(a) is CheckBlock]
    return out


# --- pitfall 8 / invariant "log size <= c*n*(W+Vmax)" ------------------------------------


def test_stale_views_are_never_buffered_for_future_heights():
    """A Byzantine validator sends votes for future heights in views far BELOW the current
    one. They could never be used (views only grow), so `_admit` drops them before
    buffering; were they buffered, the buffer would grow with the current view number, not
    with n*(W+Vmax).

    The bound is the simulator's own: 3*n*W*(Vmax+1) + 12*n*(Vmax+1) = 864 for n=4, W=4, Vmax=8.
    """
    keys, config = cluster()
    view = 400  # a long-lived chain after many view changes (restored from its WAL record)
    replica = Replica(config, keys[1], 0, GENESIS, [view_record(view)])
    replica.step(Tick())
    assert replica.view == view
    byzantine = keys[3]
    digest = (b"\1" * 32, b"\2" * 32)
    for old_view in range(0, view - config.view_window):  # all below view - Vmax: stale by any reading
        for height in (2, 3, 4):  # h+2 .. h+W
            prepare = sign_prepare(byzantine, CHAIN_ID, old_view, height, *digest)
            commit = sign_commit(byzantine, CHAIN_ID, old_view, height, digest[0])
            replica.step(Receive(byzantine.public_key, encode_vote(prepare)))
            replica.step(Receive(byzantine.public_key, encode_vote(commit)))
    n, window, views = 4, config.height_window, config.view_window
    bound = 3 * n * window * (views + 1) + 12 * n * (views + 1)
    assert replica.log_size <= bound, (
        f"log_size {replica.log_size} > {bound}: {replica.counters.get('buffered')} stale-view messages buffered"
    )


# --- liveness: a certificate restored from the WAL without its block --------------------


def commit_wire(key, view: int, height: int, header: bytes) -> bytes:
    return encode_vote(sign_commit(key, CHAIN_ID, view, height, codec.sha256(header)))


def view_change_wire(key, target: int, height: int = 0, certificate=None, prepared=None, payload=None) -> bytes:
    return encode_view_change(sign_view_change(key, CHAIN_ID, target, height, certificate, prepared), payload)


def test_restart_between_certificate_and_commit_commits_or_fetches():
    """node2 validated block 1 but did not vote for it (it had joined a view change while
    the driver's check ran), then committed it on q COMMITs and crashed between the
    certificate record and the durable CommitBlock. The block is persisted before the
    certificate, so the restarted replica re-validates and commits it; with a WAL that
    holds the certificate but not the block it fetches the block at once (before the fix
    it did neither, and with the peers idle it stayed one height behind for good)."""
    keys, config = cluster()
    header, payload = block(keys, config, 0, b"tx:one")
    node = Replica(config, keys[2], 0, GENESIS, [])
    wal: dict[bytes, bytes] = {}

    def perform(actions, upto=None):
        for action in actions[:upto]:
            if type(action) is Persist:
                wal[action.key] = action.value
        return actions

    actions = perform(node.step(Receive(keys[0].public_key, encode_preprepare(preprepare_for(keys[0], 0, 1, header, payload), payload))))
    [check] = [a for a in actions if type(a) is CheckBlock]
    # f+1 = 2 others want view 1 before the driver answers: node2 joins the view change.
    perform(node.step(Receive(keys[1].public_key, view_change_wire(keys[1], 1))))
    perform(node.step(Receive(keys[3].public_key, view_change_wire(keys[3], 1))))
    assert node.mode == VIEW_CHANGE
    perform(node.step(BlockChecked(codec.sha256(check.header), True)))  # valid, but no PREPARE in view-change mode
    # The others still commit block 1 in view 0; node2 gets their COMMITs.
    perform(node.step(Receive(keys[0].public_key, commit_wire(keys[0], 0, 1, header))))
    perform(node.step(Receive(keys[1].public_key, commit_wire(keys[1], 0, 1, header))))
    actions = node.step(Receive(keys[3].public_key, commit_wire(keys[3], 0, 1, header)))
    names = [type(a).__name__ for a in actions]
    assert "CommitBlock" in names
    perform(actions, upto=names.index("CommitBlock"))  # crash: the CommitBlock is not performed
    assert wal_records.CERTIFICATE_KEY in wal
    assert any(key[8:9] == wal_records.KIND_BLOCK for key in wal)  # persisted before the certificate

    restarted = Replica(config, keys[2], 0, GENESIS, sorted(wal.items()))
    actions = restarted.step(WorkChanged(has_work=True))
    # A peer at height 1 answers node2's (retransmitted) VIEW-CHANGE with its certificate,
    # exactly what _help_view_change_sender sends to a replica below its height.
    votes = tuple(
        (keys[i].public_key, sign_commit(keys[i], CHAIN_ID, 0, 1, codec.sha256(header)).signed.signature) for i in (0, 1, 3)
    )
    certificate = Certificate(1, 0, codec.sha256(header), votes)
    for tick in range(3000):
        if tick % 20 == 0:
            actions += restarted.step(Receive(keys[1].public_key, encode_certificate_message(certificate)))
        actions += restarted.step(Tick())
    # Either it holds the block (persisted before the certificate) and commits it once
    # the driver re-validates it, or it fetches it.
    for check in [a for a in actions if type(a) is CheckBlock]:
        actions += restarted.step(BlockChecked(codec.sha256(check.header), True))
    committed = [a for a in actions if type(a).__name__ == "CommitBlock" and a.height == 1]
    fetched = [a for a in actions if type(a).__name__ == "FetchBlocks"]
    assert committed or fetched, (
        f"restarted replica (height {restarted.height}, mode {restarted.mode}) holds a certificate for height 1 "
        f"but neither commits nor fetches the block; dropped.stale_height={restarted.counters.get('dropped.stale_height')}"
    )
    # A WAL with the certificate but not the block: the restarted replica fetches at once
    # (its startup actions come with its first step).
    without_block = sorted((key, value) for key, value in wal.items() if key[8:9] != wal_records.KIND_BLOCK)
    actions = Replica(config, keys[2], 0, GENESIS, without_block).step(Tick())
    assert any(type(a).__name__ == "FetchBlocks" for a in actions), [type(a).__name__ for a in actions]


# --- liveness: a backup that restarts right after entering a view through a NEW-VIEW -----


def carried_new_view(keys, config):
    """Block B proposed in view 0 and prepared by node0..node2; primary(1) = node1 carries it."""
    header, payload = block(keys, config, 0, b"tx:carried")
    prepared = prepared_certificate(keys, 0, 1, header, payload)
    vcs = [sign_view_change(keys[i], CHAIN_ID, 1, 0, None, prepared if i == 1 else None) for i in (0, 1, 2)]
    pp = preprepare_for(keys[1], 1, 1, header, payload)
    new_view = sign_new_view(keys[1], CHAIN_ID, 1, tuple(vcs), pp)
    return header, payload, encode_new_view(new_view, payload)


def test_backup_restarted_right_after_a_new_view_votes_in_that_view():
    """node3 accepts NEW-VIEW(1) carrying block B and persists view 1, then crashes before
    the driver answers CheckBlock. The carried PRE-PREPARE and block are persisted when
    the NEW-VIEW is accepted, so the restarted replica prepares B in view 1. (Were they
    persisted only at its vote, it would restart in view 1 without the re-pre-prepare, the
    primary's retransmitted NEW-VIEW(1) would be stale for it, and it could not vote for
    the rest of view 1.)"""
    keys, config = cluster()
    header, payload, nv_wire = carried_new_view(keys, config)
    control = Replica(config, keys[3], 0, GENESIS, [])  # without the crash node3 prepares B in view 1
    assert ("prepare", 1) in kinds_sent(feed_checks(control, control.step(Receive(keys[1].public_key, nv_wire))))
    node = Replica(config, keys[3], 0, GENESIS, [])
    wal: dict[bytes, bytes] = {}
    actions = node.step(Receive(keys[1].public_key, nv_wire))
    assert node.view == 1 and any(type(a) is CheckBlock and not a.fresh for a in actions)
    for action in actions:  # performed, then the crash (the BlockChecked answer is lost)
        if type(action) is Persist:
            wal[action.key] = action.value
    restarted = Replica(config, keys[3], 0, GENESIS, sorted(wal.items()))
    actions = feed_checks(restarted, restarted.step(WorkChanged(has_work=True)))  # the driver re-validates
    assert restarted.view == 1
    for _ in range(5):  # primary(1) retransmits its NEW-VIEW (Replica._retransmit)
        actions += feed_checks(restarted, restarted.step(Receive(keys[1].public_key, nv_wire)))
        for _ in range(5):
            actions += feed_checks(restarted, restarted.step(Tick()))
    prepares = [kv for kv in kinds_sent(actions) if kv == ("prepare", 1)]
    assert prepares, (
        f"restarted node3 never prepares the carried block in view 1: "
        f"dropped.stale_view={restarted.counters.get('dropped.stale_view')}"
    )


# --- liveness: NEW-VIEW forwarded as help by a backup ------------------------------------


def test_new_view_forwarded_by_a_backup_is_accepted():
    """docs/consensus.md section 6: a replica that sees a peer at its height asking for a
    view it is already in sends it "the NEW-VIEW that started it" (_help_view_change_sender
    sends _new_view_wire, which for a backup is the primary's NEW-VIEW it received; the
    checker even notes "a NEW-VIEW forwarded as help carries the primary's signature").
    So _on_new_view requires the primary's signature, not the primary as sender: else, if
    primary(1) crashed after reaching only some backups, the others would stay in the
    view change until another one failed."""
    keys, config = cluster()
    header, payload, nv_wire = carried_new_view(keys, config)
    # node2 entered view 1 through primary(1)'s NEW-VIEW.
    helper = Replica(config, keys[2], 0, GENESIS, [])
    feed_checks(helper, helper.step(Receive(keys[1].public_key, nv_wire)))
    assert helper.view == 1
    # node3 missed it and asks for view 1; node2 answers with the NEW-VIEW (help).
    node = Replica(config, keys[3], 0, GENESIS, [])
    node.step(WorkChanged(has_work=True))
    actions = []
    while not any(kind == ("vc", 1) for kind in kinds_sent(actions)):
        actions = node.step(Tick())
    vc = next(data for data in broadcasts(actions) if decode(data).kind == "vc")
    help_actions = helper.step(Receive(keys[3].public_key, vc))
    helps = [a.data for a in help_actions if type(a).__name__ == "Send" and a.to == keys[3].public_key]
    assert helps and decode(helps[0]).kind == "nv", "node2 sends the NEW-VIEW as help"
    feed_checks(node, node.step(Receive(keys[2].public_key, helps[0])))
    assert node.view == 1, (
        f"node3 ignored the forwarded NEW-VIEW(1) (dropped.not_primary={node.counters.get('dropped.not_primary')}) "
        f"and stays in mode {node.mode} for view {node.view}"
    )


# --- pitfalls avoided (passing) ---------------------------------------------------------


def certificate_dict(keys, view: int, height: int, header: bytes, signers=(0, 1, 2)) -> dict:
    block_hash = codec.sha256(header)
    return {
        "height": height, "view": view, "block_hash": block_hash,
        "sigs": [[keys[i].public_key, sign_commit(keys[i], CHAIN_ID, view, height, block_hash).signed.signature] for i in signers],
    }


def test_pitfall1_13_new_view_must_carry_the_highest_view_prepared_block():
    """Two prepared certificates at height 1 (A in view 0, B in view 1): a NEW-VIEW(2)
    carrying A is rejected and moves the backup on; the one carrying B is accepted."""
    keys, config = cluster()
    header_a, payload_a = block(keys, config, 0, b"tx:A")
    header_b, payload_b = block(keys, config, 1, b"tx:B")
    prepared_a = prepared_certificate(keys, 0, 1, header_a, payload_a)
    prepared_b = prepared_certificate(keys, 1, 1, header_b, payload_b)
    vcs = (
        sign_view_change(keys[0], CHAIN_ID, 2, 0, None, prepared_a),
        sign_view_change(keys[1], CHAIN_ID, 2, 0, None, None),
        sign_view_change(keys[2], CHAIN_ID, 2, 0, None, prepared_b),
    )
    for header, payload, accepted in ((header_a, payload_a, False), (header_b, payload_b, True)):
        node = Replica(config, keys[3], 0, GENESIS, [])
        node.step(Receive(keys[1].public_key, view_change_wire(keys[1], 2)))
        node.step(Receive(keys[0].public_key, view_change_wire(keys[0], 2)))  # joins view 2
        assert node.mode == VIEW_CHANGE
        nv = sign_new_view(keys[2], CHAIN_ID, 2, vcs, preprepare_for(keys[2], 2, 1, header, payload))
        actions = feed_checks(node, node.step(Receive(keys[2].public_key, encode_new_view(nv, payload))))
        if accepted:
            assert node.view == 2 and node.mode == NORMAL
            assert ("prepare", 2) in kinds_sent(actions)
            assert [a.fresh for a in actions if type(a) is CheckBlock] == [False]  # never against the clock
        else:
            assert node.view == 0 and node.counters["dropped.bad_new_view.wrong_carried_block"] == 1
            assert ("vc", 3) in kinds_sent(actions)


def test_pitfall12_one_invalid_view_change_does_not_hide_the_valid_ones():
    keys, config = cluster()
    header, payload = block(keys, config, 0, b"tx:carried")
    prepared = prepared_certificate(keys, 0, 1, header, payload)
    good = [sign_view_change(keys[i], CHAIN_ID, 1, 0, None, prepared if i == 2 else None) for i in (0, 1, 2)]
    bad = sign_view_change(keys[3], CHAIN_ID, 1, 0, None, None)
    forged = type(bad)(type(bad.signed)(bad.signer, bad.signed.body, bytes(64)), *[getattr(bad, f) for f in ("view", "height", "certificate", "prepared", "payload")])
    nv = sign_new_view(keys[1], CHAIN_ID, 1, (forged, *good), preprepare_for(keys[1], 1, 1, header, payload))
    node = Replica(config, keys[3], 0, GENESIS, [])
    actions = feed_checks(node, node.step(Receive(keys[1].public_key, encode_new_view(nv, payload))))
    assert node.view == 1 and node.counters["new_view_invalid_view_change"] == 1
    assert ("prepare", 1) in kinds_sent(actions)


def test_pitfall2_block_rejected_by_the_clock_is_still_accepted_when_carried():
    keys, config = cluster()
    header, payload = block(keys, config, 0, b"tx:late", time_ms=clock_ms(0) + 60_000)
    node = Replica(config, keys[3], 0, GENESIS, [])
    actions = node.step(Receive(keys[0].public_key, encode_preprepare(preprepare_for(keys[0], 0, 1, header, payload), payload)))
    assert [a.fresh for a in actions if type(a) is CheckBlock] == [True]
    feed_checks(node, actions, valid=False)  # our clock says the time is off: no PREPARE in view 0
    prepared = prepared_certificate(keys, 0, 1, header, payload)  # the others accepted it
    vcs = tuple(sign_view_change(keys[i], CHAIN_ID, 1, 0, None, prepared if i == 0 else None) for i in (0, 1, 2))
    nv = sign_new_view(keys[1], CHAIN_ID, 1, vcs, preprepare_for(keys[1], 1, 1, header, payload))
    actions = node.step(Receive(keys[1].public_key, encode_new_view(nv, payload)))
    assert [a.fresh for a in actions if type(a) is CheckBlock] == [False]
    actions = feed_checks(node, actions, valid=True)
    assert node.view == 1 and ("prepare", 1) in kinds_sent(actions)


def test_pitfall7_signer_must_be_the_sender():
    keys, config = cluster()
    node = Replica(config, keys[1], 0, GENESIS, [])
    prepare = sign_prepare(keys[2], CHAIN_ID, 0, 1, b"\1" * 32, b"\2" * 32)
    node.step(Receive(keys[3].public_key, encode_vote(prepare)))
    node.step(Receive(keys[3].public_key, view_change_wire(keys[2], 1)))
    node.step(Receive(keys[3].public_key, view_change_wire(keys[2], 2)))
    assert node.counters["dropped.signer_mismatch"] == 3
    assert node.mode == NORMAL and node.log_size == 0


def test_pitfall14_catch_up_never_lowers_the_view_nor_undercuts_a_view_change():
    keys, config = cluster()
    header, payload = block(keys, config, 0, b"tx:one")
    block_hash = codec.sha256(header)
    # In view 5 (restored): a certificate of view 0 does not move it down.
    node = Replica(config, keys[3], 0, GENESIS, [view_record(5)])
    node.step(Synced(1, block_hash, header, certificate_dict(keys, 0, 1, header)))
    assert node.view == 5 and node.height == 1
    # In a view change to 3: a certificate of view 2 keeps it there, one of view 3 lets it in.
    for cert_view, expected_view, expected_mode in ((2, 0, VIEW_CHANGE), (3, 3, NORMAL)):
        node = Replica(config, keys[0], 0, GENESIS, [])
        node.step(Receive(keys[1].public_key, view_change_wire(keys[1], 3)))
        node.step(Receive(keys[2].public_key, view_change_wire(keys[2], 3)))
        assert node.mode == VIEW_CHANGE
        node.step(Synced(1, block_hash, header, certificate_dict(keys, cert_view, 1, header)))
        assert (node.view, node.mode) == (expected_view, expected_mode)


def test_pitfall15_prepared_certificate_survives_a_failed_view():
    keys, config = cluster(progress_timeout_ticks=5)
    header, payload = block(keys, config, 0, b"tx:A")
    node = Replica(config, keys[3], 0, GENESIS, [])
    node.step(WorkChanged(has_work=True))
    actions = feed_checks(node, node.step(Receive(keys[0].public_key, encode_preprepare(preprepare_for(keys[0], 0, 1, header, payload), payload))))
    for i in (1, 2):
        actions += node.step(Receive(keys[i].public_key, encode_vote(sign_prepare(keys[i], CHAIN_ID, 0, 1, codec.sha256(header), codec.sha256(payload)))))
    assert ("commit", 0) in kinds_sent(actions)  # prepared in view 0
    sent = []
    for _ in range(100):
        sent += broadcasts(node.step(Tick()))
        if any(decode(d).kind == "vc" for d in sent):
            break
    node.step(Receive(keys[0].public_key, view_change_wire(keys[0], 1)))
    node.step(Receive(keys[2].public_key, view_change_wire(keys[2], 1)))  # q for view 1: timer runs; primary(1) silent
    for _ in range(200):
        sent += broadcasts(node.step(Tick()))
    vcs = {decode(d).view: decode(d) for d in sent if decode(d).kind == "vc"}
    assert 1 in vcs and 2 in vcs
    for view in (1, 2):
        assert vcs[view].prepared is not None and vcs[view].prepared.view == 0
        assert vcs[view].prepared.block_hash == codec.sha256(header)


def test_pitfall11_old_primary_drops_its_late_proposal_after_a_view_change():
    keys, config = cluster()
    node = Replica(config, keys[0], 0, GENESIS, [])
    build = [a for a in node.step(WorkChanged(has_work=True)) if type(a).__name__ == "BuildProposal"]
    assert build and build[0].view == 0
    vcs = tuple(sign_view_change(keys[i], CHAIN_ID, 1, 0, None, None) for i in (1, 2, 3))
    node.step(Receive(keys[1].public_key, encode_new_view(sign_new_view(keys[1], CHAIN_ID, 1, vcs, None), None)))
    assert node.view == 1
    old_header, old_payload = block(keys, config, 0, b"tx:old")
    actions = node.step(ProposalBuilt(1, 0, old_header, old_payload))
    assert broadcasts(actions) == [] and node.counters["dropped.stale_proposal"] == 1


# --- a Byzantine primary makes an honest replica raise Alarm ------------------------------


def answer_with_ledger(replica: Replica, actions, ledger: FakeLedger, now_tick: int = 0) -> list:
    """Answer CheckBlocks the way the simulator's driver does (FakeLedger.check)."""
    out = list(actions)
    pending = [a for a in actions if type(a) is CheckBlock]
    while pending:
        check = pending.pop(0)
        valid = ledger.check(check.header, check.payload, check.fresh, clock_ms(now_tick))
        more = replica.step(BlockChecked(codec.sha256(check.header), valid))
        out += more
        pending += [a for a in more if type(a) is CheckBlock]
    return out


def test_payload_swap_by_a_byzantine_primary_fetches_without_alarm():
    """Byzantine primary(0) sends node3 the header of block B with a different payload P'
    (a valid PRE-PREPARE: its body names sha256(P')), and everyone else B with its real
    payload P. The others commit B. COMMIT votes name only the block hash, so node3 holds
    an INVALID (B, P'): no evidence of divergence (a peer caused it), so no Alarm (which
    docs/consensus.md reserves for local faults); it fetches the certified block, and the
    driver judges the fetched bytes (ledger.validation.BlockDiverges)."""
    keys, config = cluster()
    ledger = FakeLedger(CHAIN_ID, config.validators)
    header, payload = block(keys, config, 0, b"tx:real")
    swapped = b"tx:swapped"  # same header, another payload: fails tx_root
    node = Replica(config, keys[3], 0, GENESIS, [])
    pp = sign_preprepare(keys[0], CHAIN_ID, 0, 1, header, None, codec.sha256(header), codec.sha256(swapped))
    actions = answer_with_ledger(node, node.step(Receive(keys[0].public_key, encode_preprepare(pp, swapped))), ledger)
    assert node.counters.get("blocks_rejected") == 1
    for signer in (0, 1, 2):
        actions += answer_with_ledger(node, node.step(Receive(keys[signer].public_key, commit_wire(keys[signer], 0, 1, header))), ledger)
    for _ in range(20):
        actions += node.step(Tick())
    alarms = [a.reason for a in actions if type(a).__name__ == "Alarm"]
    assert not alarms, f"honest replica alarmed because of a Byzantine payload swap: {alarms}"
    assert any(type(a).__name__ == "FetchBlocks" for a in actions), "it fetches the certified block instead"


def test_catch_up_that_stops_short_of_a_new_views_start_fetches_again():
    """NEW-VIEW(1) shows height 2 certified, node3 is at 0: it fetches. The peer it
    fetched from had only block 1, so Synced stops at 1, below the view's start: node3
    fetches again after the grace period instead of waiting for the progress timer."""
    keys, config = cluster(progress_timeout_ticks=10_000)
    ledger = FakeLedger(CHAIN_ID, config.validators)
    blocks = []
    for height in (1, 2):
        header = ledger.build(0, keys[0].public_key, clock_ms(0), b"tx:%d" % height)
        certificate = certificate_dict(keys, 0, height, header)
        ledger.append(header, b"tx:%d" % height, certificate)
        blocks.append((header, certificate))
    (header1, certificate1), (header2, certificate2) = blocks
    certified = Certificate(2, 0, codec.sha256(header2), tuple(
        (keys[i].public_key, sign_commit(keys[i], CHAIN_ID, 0, 2, codec.sha256(header2)).signed.signature)
        for i in (0, 1, 2)))
    view_changes = tuple(sign_view_change(keys[i], CHAIN_ID, 1, 2, certified, None) for i in (0, 1, 2))
    new_view = encode_new_view(sign_new_view(keys[1], CHAIN_ID, 1, view_changes, None), None)
    node = Replica(config, keys[3], 0, GENESIS, [])
    actions = node.step(Receive(keys[1].public_key, new_view))
    assert node.view == 1 and [type(a).__name__ for a in actions].count("FetchBlocks") == 1
    node.step(Synced(1, codec.sha256(header1), header1, certificate1))
    assert node.height == 1
    fetches = 0
    for _ in range(config.catchup_grace_ticks + 5):
        fetches += sum(1 for a in node.step(Tick()) if type(a).__name__ == "FetchBlocks")
    assert fetches == 1, "it fetches again, once, within the grace period"

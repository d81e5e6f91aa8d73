"""Transaction execution and block validation against INTERFACE.md sections 2-4, rule by rule.

Every test quotes the contract rule it pins down. They cover rules that the other
execution tests leave open (stage order across legs and parties, "or" signer rules,
small member counts, running balances for overflow, what expiry and cancellation do for
frozen accounts, expiry before a block's transactions, fresh-proposal rules). Pure
execution only: no processes, no sockets.
"""
import copy
import random
from types import SimpleNamespace

import pytest

from ledger import block as blockmod
from ledger import codec
from ledger.bodies import AMOUNT_MAX
from ledger.mempool import Mempool
from ledger.node import Node
from ledger.tx import MAX_EXPIRY_AHEAD_MS, TxError, make_tx, parse_signed
from ledger.validation import BlockInvalid, ChainContext, build_block, check_block
from ledger.views import doc_view, hold_view, lc_view
from tests.data.ledger_harness import CHAIN_ID, Ledger, keypair, make_genesis, public_key

BILL_A = codec.sha256(b"review bill A")
BILL_B = codec.sha256(b"review bill B")
INVOICE = codec.sha256(b"review invoice")


def transfer(source, target, amount, currency="USD"):
    return {"from": source, "to": target, "currency": currency, "amount": amount}


def hold_body(ledger, hold_id="h1", amount=300, source="alice", target="bob", expires_in_ms=60_000, arbiter=None):
    body = {"id": hold_id, "from": source, "to": target, "currency": "USD", "amount": amount,
            "expires": ledger.time_ms + expires_in_ms}
    if arbiter is not None:
        body["arbiter"] = public_key(arbiter)
    return body


@pytest.fixture
def ledger() -> Ledger:
    """alice (BANK0) holds 1,000 USD; bob (BANK1) 900 EUR; carol (BANK2) nothing."""
    scene = Ledger()
    scene.open("alice", "BANK0")
    scene.open("bob", "BANK1")
    scene.open("carol", "BANK2")
    scene.fund("alice", "USD", 1000)
    scene.fund("bob", "EUR", 900)
    return scene


# -- pvp: stages cover every leg before the next stage, legs on running balances -------------

def test_pvp_signers_of_every_leg_before_any_frozen_account(ledger):
    """Section 3: "each stage covering every leg or party before the next": (3) signers
    of every leg come before (5) frozen accounts of any leg."""
    ledger.expect("ok", "account.freeze", {"account": "bob"}, "BANK1")
    legs = [transfer("alice", "bob", 10), transfer("carol", "alice", 1, "EUR")]  # carol does not sign
    ledger.expect("unauthorized", "pvp", {"legs": legs}, "alice")


def test_pvp_frozen_party_of_a_later_leg_before_funds_of_an_earlier_leg(ledger):
    """Section 3: (5) frozen accounts cover every party before (6) funds of any leg."""
    ledger.expect("ok", "account.freeze", {"account": "carol"}, "BANK2")
    legs = [transfer("alice", "bob", 10**6), transfer("bob", "carol", 1, "EUR")]
    ledger.expect("account_frozen", "pvp", {"legs": legs}, "alice", "bob")


def test_pvp_overflow_follows_running_balances(ledger):
    """Section 3 pvp: "legs apply in order on running balances"; "A balance that would
    exceed 2^63-1 fails overflow". bob first passes 500 on, then may receive 600."""
    ledger.expect("ok", "issue", {"account": "bob", "currency": "USD", "amount": AMOUNT_MAX - 100}, "BANK0")
    spend_then_receive = [transfer("bob", "carol", 500), transfer("alice", "bob", 600)]
    receive_then_spend = [transfer("alice", "bob", 600), transfer("bob", "carol", 500)]
    ledger.expect("overflow", "pvp", {"legs": receive_then_spend}, "alice", "bob")
    ledger.expect("ok", "pvp", {"legs": spend_then_receive}, "alice", "bob")
    assert ledger.balance("bob", "USD") == (AMOUNT_MAX, 0)
    assert ledger.balance("carol", "USD") == (500, 0)
    assert ledger.balance("alice", "USD") == (400, 0)


def test_a_failed_pvp_leaves_nothing_for_later_txs_in_the_block(ledger):
    """Section 3: a failed transaction "changes nothing", also for the rest of its block."""
    bad = ledger.tx("pvp", {"legs": [transfer("alice", "carol", 1000), transfer("carol", "bob", 1001)]},
                    "alice", "carol")
    after = ledger.tx("transfer", transfer("alice", "bob", 1000), "alice")
    outcome = ledger.block(bad, after)
    assert outcome.results == ["insufficient_funds", "ok"]
    assert ledger.balance("carol", "USD") == (0, 0) and ledger.balance("bob", "USD") == (1000, 0)


# -- holds: "or" signer rules and frozen accounts -------------------------------------------------

def test_hold_settle_by_the_arbiter_alone_still_checks_frozen_parties(ledger):
    """Section 3: hold.settle "key(from) or arbiter"; "A frozen account cannot ... settle a
    hold" and cannot receive."""
    ledger.expect("ok", "hold.create", hold_body(ledger, arbiter="escrow"), "alice")
    ledger.expect("ok", "account.freeze", {"account": "bob"}, "BANK1")
    ledger.expect("account_frozen", "hold.settle", {"id": "h1"}, "escrow")
    ledger.expect("ok", "account.unfreeze", {"account": "bob"}, "BANK1")
    ledger.expect("ok", "hold.settle", {"id": "h1"}, "escrow")
    assert ledger.balance("bob", "USD") == (300, 0)


def test_hold_cancel_returns_money_whoever_is_frozen(ledger):
    """Section 3: "expiry and cancellation always return reservations, also to a frozen
    account"; hold.cancel is signed by "key(to) or arbiter"."""
    ledger.expect("ok", "hold.create", hold_body(ledger, "h1", arbiter="escrow"), "alice")
    ledger.expect("ok", "hold.create", hold_body(ledger, "h2"), "alice")
    ledger.expect("ok", "account.freeze", {"account": "alice"}, "BANK0")
    ledger.expect("ok", "account.freeze", {"account": "bob"}, "BANK1")
    ledger.expect("ok", "hold.cancel", {"id": "h1"}, "escrow")
    ledger.expect("ok", "hold.cancel", {"id": "h2"}, "bob")  # a frozen `to` may still give it back
    assert ledger.balance("alice", "USD") == (1000, 0)


def test_an_arbiter_key_is_not_the_payer_for_cancel_nor_the_payee_for_settle(ledger):
    """Section 3: hold.settle "key(from) or arbiter", hold.cancel "key(to) or arbiter"."""
    ledger.expect("ok", "hold.create", hold_body(ledger, arbiter="escrow"), "alice")
    ledger.expect("unauthorized", "hold.settle", {"id": "h1"}, "bob", "carol")
    ledger.expect("unauthorized", "hold.cancel", {"id": "h1"}, "alice", "carol")


# -- expiry at the start of each block ---------------------------------------------------------

def test_expiry_releases_funds_before_the_blocks_transactions(ledger):
    """Section 3: "At the start of each block, before its transactions, every pending hold
    ... whose E is at or before the block's time becomes expired and releases its
    reservation"."""
    ledger.expect("ok", "hold.create", hold_body(ledger, amount=1000, expires_in_ms=5_000), "alice")
    expires = hold_view(ledger.state, "h1")["expires"]
    spend = ledger.tx("transfer", transfer("alice", "carol", 1000), "alice")
    outcome = ledger.block(spend, time_ms=expires)
    assert outcome.results == ["ok"]
    assert hold_view(ledger.state, "h1")["status"] == "expired"
    assert ledger.balance("alice", "USD") == (0, 0) and ledger.balance("carol", "USD") == (1000, 0)


def test_hold_create_with_expires_equal_to_block_time_is_expired(ledger):
    """Section 3: "hold.create, lc.issue and lc.amend with an E at or before the block's
    time fail expired"."""
    stx = ledger.tx("hold.create", {**hold_body(ledger), "expires": ledger.time_ms + 1_000}, "alice")
    assert ledger.block(stx, time_ms=ledger.time_ms + 1_000).results == ["expired"]
    stx = ledger.tx("hold.create", {**hold_body(ledger), "expires": ledger.time_ms + 1_001}, "alice")
    assert ledger.block(stx, time_ms=ledger.time_ms + 1_000).results == ["ok"]


# -- members: thresholds with small member counts ----------------------------------------------

def members(count):
    return Ledger(make_genesis(member_count=count, issuers={"USD": "BANK0"}))


@pytest.mark.parametrize("count, approving_others, code", [
    (2, 1, "ok"),                       # 1 of 1 other
    (3, 1, "insufficient_approvals"),   # 1 of 2 others
    (3, 2, "ok"),                       # 2 of 2 others
    (5, 3, "ok"),                       # 3 of 4 others
    (7, 4, "insufficient_approvals"),   # exactly two thirds of 6 others
])
def test_member_rotate_key_recovery_threshold_small_counts(count, approving_others, code):
    """Section 3 member.rotate_key: "admin keys of more than two thirds of the other
    members"; "insufficient_approvals when other members signed but too few"."""
    scene = members(count)
    signers = [f"BANK{i}" for i in range(approving_others)]
    scene.expect(code, "member.rotate_key", {"id": f"BANK{count - 1}", "new_key": public_key("new")}, *signers)


def test_member_rotate_key_by_itself_ignores_too_few_others():
    """Section 3 member.rotate_key: "admin(id), or admin keys of more than two thirds of
    the other members": the member's own key is enough whoever else signs."""
    scene = members(4)
    scene.expect("ok", "member.rotate_key", {"id": "BANK3", "new_key": public_key("new")}, "BANK0", "BANK3")


def test_a_rotated_member_key_no_longer_approves():
    """Section 3: "admin(M)" is "member M's current admin key"."""
    scene = members(4)
    scene.expect("ok", "member.rotate_key", {"id": "BANK2", "new_key": public_key("BANK2-new")}, "BANK2")
    body = {"id": "BANK3", "new_key": public_key("x")}
    scene.expect("insufficient_approvals", "member.rotate_key", body, "BANK0", "BANK1", "BANK2")
    scene.expect("ok", "member.rotate_key", body, "BANK0", "BANK1", "BANK2-new")


def test_member_add_with_two_members_needs_both():
    """Section 3 member.add: "admin keys of more than two thirds of current members"."""
    scene = members(2)
    body = {"id": "NEW", "name": "New", "admin_key": public_key("NEW")}
    scene.expect("insufficient_approvals", "member.add", body, "BANK1")
    scene.expect("ok", "member.add", body, "BANK0", "BANK1")


# -- letters of credit -----------------------------------------------------------------------------

@pytest.fixture
def trade() -> Ledger:
    scene = Ledger()
    scene.open("buyer", "BANK0")
    scene.open("seller", "BANK1")
    scene.fund("buyer", "USD", 10_000)
    for doc_hash, doc_type in [(BILL_A, "bill_of_lading"), (BILL_B, "bill_of_lading"), (INVOICE, "invoice")]:
        scene.expect("ok", "doc.register", {"hash": doc_hash, "type": doc_type, "holder": "seller"}, "seller", "BANK1")
    return scene


def lc_body(trade, lc_id="LC1", amount=6_000, expires_in_ms=600_000):
    return {"id": lc_id, "applicant": "buyer", "beneficiary": "seller", "advising_bank": "BANK1",
            "currency": "USD", "amount": amount, "expires": trade.time_ms + expires_in_ms,
            "documents": ["invoice", "bill_of_lading"]}


def docs(*pairs):
    return [{"type": t, "hash": h} for t, h in pairs]


def test_payment_passes_every_presented_bill_of_lading(trade):
    """Section 3 lc.examine: "On paid, in one step: reserved funds move to the beneficiary
    and the title of every presented bill_of_lading passes to the applicant"."""
    trade.expect("ok", "lc.issue", lc_body(trade), "buyer", "BANK0")
    trade.expect("ok", "lc.advise", {"id": "LC1"}, "BANK1")
    presented = docs(("invoice", INVOICE), ("bill_of_lading", BILL_A), ("bill_of_lading", BILL_B))
    trade.expect("ok", "lc.present", {"id": "LC1", "documents": presented}, "seller")
    outcome = trade.expect("ok", "lc.examine", {"id": "LC1", "accept": True}, "BANK0")
    tx_id = outcome.changes["lc/LC1"]["history"][-1]["tx_id"]
    for bill in (BILL_A, BILL_B):
        view = doc_view(trade.state, bill)
        assert view["holder"] == "buyer"
        assert view["history"][-1] == {"height": trade.height, "holder": "buyer", "tx_id": tx_id.hex()}
    assert doc_view(trade.state, INVOICE)["holder"] == "seller"
    assert trade.balance("buyer", "USD") == (4_000, 0) and trade.balance("seller", "USD") == (6_000, 0)


def test_reservation_follows_an_amendment_of_a_refused_lc(trade):
    """Section 3 lc.amend: "from issued, advised or refused; reservation follows the new
    amount"."""
    trade.expect("ok", "lc.issue", lc_body(trade), "buyer", "BANK0")
    trade.expect("ok", "lc.advise", {"id": "LC1"}, "BANK1")
    trade.expect("ok", "lc.present", {"id": "LC1", "documents": docs(("invoice", INVOICE),
                                                                     ("bill_of_lading", BILL_A))}, "seller")
    trade.expect("ok", "lc.examine", {"id": "LC1", "accept": False}, "BANK0")
    trade.expect("ok", "lc.amend", {"id": "LC1", "amount": 9_000}, "BANK0", "seller")
    assert trade.balance("buyer", "USD") == (1_000, 9_000)
    trade.expect("ok", "lc.amend", {"id": "LC1", "amount": 2_500}, "BANK0", "seller")
    assert trade.balance("buyer", "USD") == (7_500, 2_500)
    assert [e["type"] for e in lc_view(trade.state, "LC1")["history"]][-2:] == ["lc.amend", "lc.amend"]


def test_lc_amend_with_expires_equal_to_block_time_is_expired(trade):
    """Section 3: "lc.amend with an E at or before the block's time fail expired"."""
    trade.expect("ok", "lc.issue", lc_body(trade), "buyer", "BANK0")
    stx = trade.tx("lc.amend", {"id": "LC1", "amount": 1, "expires": trade.time_ms + 1_000}, "BANK0", "seller")
    assert trade.block(stx, time_ms=trade.time_ms + 1_000).results == ["expired"]
    assert trade.balance("buyer", "USD") == (4_000, 6_000)


def test_lc_issue_with_expires_equal_to_block_time_is_expired(trade):
    """Section 3: "lc.issue ... with an E at or before the block's time fail expired"."""
    stx = trade.tx("lc.issue", {**lc_body(trade), "expires": trade.time_ms + 1_000}, "buyer", "BANK0")
    assert trade.block(stx, time_ms=trade.time_ms + 1_000).results == ["expired"]


def test_an_amended_lc_expires_at_its_new_time(trade):
    """Section 3: "A thing with expires E is alive while the block time is earlier than E";
    the LC's history records {"height", "type": "expired", "tx_id": null}."""
    trade.expect("ok", "lc.issue", lc_body(trade, expires_in_ms=10_000), "buyer", "BANK0")
    old = lc_view(trade.state, "LC1")["expires"]
    trade.expect("ok", "lc.amend", {"id": "LC1", "expires": old + 10_000}, "BANK0", "seller")
    trade.block(time_ms=old)
    assert lc_view(trade.state, "LC1")["status"] == "issued"
    trade.block(time_ms=old + 10_000)
    view = lc_view(trade.state, "LC1")
    assert view["status"] == "expired"
    assert view["history"][-1] == {"height": trade.height, "type": "expired", "tx_id": None}
    assert trade.balance("buyer", "USD") == (10_000, 0)


def test_lc_amend_of_expires_only_works_for_a_frozen_applicant(trade):
    """Section 3: a frozen account cannot "raise an LC's amount"; an amendment that raises
    nothing is not refused for it."""
    trade.expect("ok", "lc.issue", lc_body(trade), "buyer", "BANK0")
    trade.expect("ok", "account.freeze", {"account": "buyer"}, "BANK0")
    trade.expect("ok", "lc.amend", {"id": "LC1", "expires": trade.time_ms + 900_000}, "BANK0", "seller")
    trade.expect("account_frozen", "lc.amend", {"id": "LC1", "amount": 6_001}, "BANK0", "seller")


def test_lc_issue_with_a_frozen_applicant(trade):
    """Section 3: a frozen account cannot "take part in a new LC"."""
    trade.expect("ok", "account.freeze", {"account": "buyer"}, "BANK0")
    trade.expect("account_frozen", "lc.issue", lc_body(trade), "buyer", "BANK0")


def test_lc_cancel_signed_by_the_advising_bank_is_unauthorized(trade):
    """Section 3 lc.cancel: "admin(issuing bank) and key(beneficiary)"."""
    trade.expect("ok", "lc.issue", lc_body(trade), "buyer", "BANK0")
    trade.expect("unauthorized", "lc.cancel", {"id": "LC1"}, "BANK1", "seller")
    trade.expect("ok", "lc.cancel", {"id": "LC1"}, "BANK0", "seller")
    assert trade.balance("buyer", "USD") == (10_000, 0)


# -- section 4: fresh proposals ----------------------------------------------------------------

DRIFT_MS = 5_000


def chain_ctx(ledger, validators):
    return ChainContext(chain_id=CHAIN_ID, validators=tuple(validators), max_block_txs=3,
                        max_block_bytes=8 * 1024 * 1024, max_clock_drift_ms=DRIFT_MS,
                        tip_height=ledger.height, tip_hash=b"\x11" * 32, tip_time=ledger.time_ms)


def proposal(ledger, raws, time_ms, view=0):
    validators = [public_key(f"node{i}") for i in range(4)]
    ctx = chain_ctx(ledger, validators)
    txs = [parse_signed(raw) for raw in raws]
    checked = build_block(ctx, ledger.state, txs, time_ms=time_ms, view=view,
                          proposer=validators[view % len(validators)])
    return ctx, checked.header_bytes, blockmod.encode_payload(raws)


def check(ledger, ctx, header, payload, now_ms, committed=()):
    return check_block(ctx, ledger.state, header, payload, is_committed=lambda tx_id: tx_id in committed,
                       verified=lambda raw: None, now_ms=now_ms)


def account_open(ledger, name, expires, nonce=1):
    return make_tx(CHAIN_ID, "account.open", {"id": name, "owner": "BANK0", "key": public_key(name)},
                   [keypair("BANK0")], nonce=nonce, expires=expires)


@pytest.mark.parametrize("offset, valid", [(-DRIFT_MS, True), (DRIFT_MS, True), (-DRIFT_MS - 1, False),
                                           (DRIFT_MS + 1, False)])
def test_fresh_proposal_time_within_the_clock_drift(ledger, offset, valid):
    """Section 4: a fresh proposal requires "now - D <= time <= now + D"."""
    block_time = ledger.time_ms + 10_000
    ctx, header, payload = proposal(ledger, [], block_time)
    if valid:
        check(ledger, ctx, header, payload, now_ms=block_time - offset)
    else:
        with pytest.raises(BlockInvalid):
            check(ledger, ctx, header, payload, now_ms=block_time - offset)
    check(ledger, ctx, header, payload, now_ms=None)  # carried over or fetched: never a clock


def test_block_time_must_exceed_the_previous_blocks_time(ledger):
    """Section 4: "time is strictly greater than the previous block's time"."""
    ctx, header, payload = proposal(ledger, [], ledger.time_ms)
    with pytest.raises(BlockInvalid):
        check(ledger, ctx, header, payload, now_ms=None)


def test_proposer_must_be_the_primary_of_its_view(ledger):
    """Section 4: "The primary of view v is validators[v mod n]"; a fresh proposal is valid
    only if "its proposer is the primary of its view"."""
    block_time = ledger.time_ms + 1_000
    ctx, header, payload = proposal(ledger, [], block_time, view=5)  # proposer validators[1]
    check(ledger, ctx, header, payload, now_ms=block_time)
    fields = blockmod.decode_header(header).to_dict()
    fields["proposer"] = public_key("node0")
    with pytest.raises(BlockInvalid):
        check(ledger, ctx, codec.encode(fields), payload, now_ms=block_time)


@pytest.mark.parametrize("expires_after_block, valid", [(0, False), (1, True), (MAX_EXPIRY_AHEAD_MS, True),
                                                        (MAX_EXPIRY_AHEAD_MS + 1, False)])
def test_block_tx_expiry_window(ledger, expires_after_block, valid):
    """Section 2: "A block may include a transaction only if block time < expires <= block
    time + 24 h"."""
    block_time = ledger.time_ms + 1_000
    raw = account_open(ledger, "x", block_time + expires_after_block)
    ctx, header, payload = proposal(ledger, [raw], block_time)
    if valid:
        check(ledger, ctx, header, payload, now_ms=block_time)
    else:
        with pytest.raises(BlockInvalid):
            check(ledger, ctx, header, payload, now_ms=block_time)


def test_block_refuses_a_committed_or_repeated_tx_and_too_many_txs(ledger):
    """Section 2: "A tx_id is committed at most once, ever"; section 4: at most
    params.max_block_txs transactions."""
    block_time = ledger.time_ms + 1_000
    raw = account_open(ledger, "x", block_time + 60_000)
    ctx, header, payload = proposal(ledger, [raw], block_time)
    check(ledger, ctx, header, payload, now_ms=block_time)
    with pytest.raises(BlockInvalid):
        check(ledger, ctx, header, payload, now_ms=block_time, committed={parse_signed(raw).tx_id})
    ctx, header, payload = proposal(ledger, [raw, raw], block_time)
    with pytest.raises(BlockInvalid):
        check(ledger, ctx, header, payload, now_ms=block_time)
    raws = [account_open(ledger, f"a{i}", block_time + 60_000, nonce=i) for i in range(4)]  # limit is 3
    ctx, header, payload = proposal(ledger, raws, block_time)
    with pytest.raises(BlockInvalid):
        check(ledger, ctx, header, payload, now_ms=block_time)


# -- section 2: the submission check order ------------------------------------------------------

def admissible_code(stx, now_ms, committed):
    fake = SimpleNamespace(chain_id=CHAIN_ID, mempool=Mempool(),
                           store=SimpleNamespace(tx_location=lambda tx_id: (1, 0) if committed else None))
    try:
        Node._check_admissible(fake, stx, now_ms)
    except TxError as exc:
        return exc.code
    return None


def tampered(raw):
    """The same envelope with its only signature broken."""
    signed = codec.decode(raw)
    signed["sigs"] = [bytes(64)]
    return codec.encode(signed)


def test_submission_checks_run_in_the_contracts_order():
    """Section 2: "Submission checks run in this order, the first failure answering: size,
    decoding, canonical form, envelope shape (invalid_tx), chain, expiry, signatures, body
    shape ..., duplicate"."""
    now = 1_900_000_000_000
    bad_body = {"id": "x", "owner": "BANK0"}
    good = make_tx(CHAIN_ID, "account.open", {**bad_body, "key": bytes(32)}, [keypair("BANK0")], 1, now + 1000)
    wrong_chain_expired = make_tx("other", "account.open", bad_body, [keypair("BANK0")], 1, now)
    expired_bad_sig = tampered(make_tx(CHAIN_ID, "account.open", bad_body, [keypair("BANK0")], 1, now))
    bad_sig_bad_body = tampered(make_tx(CHAIN_ID, "account.open", bad_body, [keypair("BANK0")], 1, now + 1000))
    bad_body_committed = make_tx(CHAIN_ID, "account.open", bad_body, [keypair("BANK0")], 1, now + 1000)
    assert admissible_code(parse_signed(wrong_chain_expired), now, True) == "wrong_chain"
    assert admissible_code(parse_signed(expired_bad_sig), now, True) == "expired"
    assert admissible_code(parse_signed(bad_sig_bad_body), now, True) == "bad_signature"
    assert admissible_code(parse_signed(bad_body_committed), now, True) == "invalid_body"
    assert admissible_code(parse_signed(good), now, True) == "duplicate"
    assert admissible_code(parse_signed(good), now, False) is None
    # Envelope shape (invalid_tx) comes before the chain: parse_signed never looks at it.
    signed = codec.decode(wrong_chain_expired)
    signed["tx"]["signers"] = signed["tx"]["signers"] * 2
    signed["sigs"] = signed["sigs"] * 2
    with pytest.raises(TxError) as info:
        parse_signed(codec.encode(signed))
    assert info.value.code == "invalid_tx"


# -- the title checks of lc.present / lc.examine (documented choice 10, pinned) -------------------

def test_lc_examine_reports_a_frozen_party_before_a_passed_on_bill(trade):
    """Section 3 stage order with docs/state.md decision 10: the title check (unauthorized)
    runs with the document checks in stage 6, after frozen accounts (5). The contract lists
    `unauthorized` only under stage (3); this pins the project's documented reading."""
    trade.open("carrier", "BANK2")
    trade.expect("ok", "lc.issue", lc_body(trade), "buyer", "BANK0")
    trade.expect("ok", "lc.advise", {"id": "LC1"}, "BANK1")
    trade.expect("ok", "lc.present", {"id": "LC1", "documents": docs(("invoice", INVOICE),
                                                                     ("bill_of_lading", BILL_A))}, "seller")
    trade.expect("ok", "doc.transfer", {"hash": BILL_A, "to": "carrier"}, "seller")
    trade.expect("ok", "account.freeze", {"account": "buyer"}, "BANK0")
    trade.expect("account_frozen", "lc.examine", {"id": "LC1", "accept": True}, "BANK0")
    trade.expect("ok", "account.unfreeze", {"account": "buyer"}, "BANK0")
    trade.expect("unauthorized", "lc.examine", {"id": "LC1", "accept": True}, "BANK0")
    trade.expect("ok", "lc.examine", {"id": "LC1", "accept": False}, "BANK0")  # refusing needs no title


def test_lc_present_checks_lifecycle_before_title(trade):
    """Section 3 stage order (4 before 6) with decision 10: presenting to an LC that is not
    yet advised is invalid_state even when the bill of lading is not the beneficiary's."""
    trade.open("carrier", "BANK2")
    trade.expect("ok", "doc.transfer", {"hash": BILL_A, "to": "carrier"}, "seller")
    trade.expect("ok", "lc.issue", lc_body(trade), "buyer", "BANK0")
    presented = docs(("invoice", INVOICE), ("bill_of_lading", BILL_A))
    trade.expect("invalid_state", "lc.present", {"id": "LC1", "documents": presented}, "seller")
    trade.expect("ok", "lc.advise", {"id": "LC1"}, "BANK1")
    trade.expect("unauthorized", "lc.present", {"id": "LC1", "documents": presented}, "seller")


# -- a differential check of money and holds against an independent model --------------------------


class _Model:
    """An independent reading of section 3 for money and holds (stage by stage, every leg or
    party before the next stage); it shares no code with ledger/execution.py."""
    def __init__(self, accounts, owners):
        self.acc = {a: {"owner": owners[a], "key": a, "frozen": False, "bal": {}, "held": {}} for a in accounts}
        self.holds = {}
        self.issuers = {"USD": "BANK0", "EUR": "BANK1"}
    def tot(self, a, c):
        x = self.acc[a]; return x["bal"].get(c, 0) + x["held"].get(c, 0)
    def av(self, a, c): return self.acc[a]["bal"].get(c, 0)
    def expire(self, t):
        for hid, h in sorted(self.holds.items(), key=lambda kv: (kv[1]["expires"], kv[0])):
            if h["status"] == "pending" and h["expires"] <= t:
                h["status"] = "expired"; self._release(h)
    def _release(self, h):
        a = self.acc[h["from"]]; c = h["currency"]
        a["held"][c] -= h["amount"]; a["bal"][c] = a["bal"].get(c, 0) + h["amount"]
    def run(self, typ, body, signers, t):
        snap = copy.deepcopy((self.acc, self.holds))
        code = self._run(typ, body, set(signers), t)
        if code != "ok":
            self.acc, self.holds = snap
        return code
    def _run(self, typ, b, S, t):
        A = self.acc
        if typ == "transfer":
            if b["from"] not in A or b["to"] not in A: return "unknown_account"
            if b["from"] not in S: return "unauthorized"
            if A[b["from"]]["frozen"] or A[b["to"]]["frozen"]: return "account_frozen"
            if self.av(b["from"], b["currency"]) < b["amount"]: return "insufficient_funds"
            if self.tot(b["to"], b["currency"]) + b["amount"] > AMOUNT_MAX: return "overflow"
            self._mv(b["from"], b["to"], b["currency"], b["amount"]); return "ok"
        if typ == "pvp":
            for l in b["legs"]:
                if l["from"] not in A or l["to"] not in A: return "unknown_account"
            for l in b["legs"]:
                if l["from"] not in S: return "unauthorized"
            for l in b["legs"]:
                if A[l["from"]]["frozen"] or A[l["to"]]["frozen"]: return "account_frozen"
            for l in b["legs"]:
                if self.av(l["from"], l["currency"]) < l["amount"]: return "insufficient_funds"
                if self.tot(l["to"], l["currency"]) + l["amount"] > AMOUNT_MAX: return "overflow"
                self._mv(l["from"], l["to"], l["currency"], l["amount"])
            return "ok"
        if typ == "issue":
            if b["account"] not in A: return "unknown_account"
            iss = self.issuers.get(b["currency"])
            if iss is None or iss not in S: return "not_issuer"
            if A[b["account"]]["frozen"]: return "account_frozen"
            if self.tot(b["account"], b["currency"]) + b["amount"] > AMOUNT_MAX: return "overflow"
            A[b["account"]]["bal"][b["currency"]] = self.av(b["account"], b["currency"]) + b["amount"]; return "ok"
        if typ == "redeem":
            if b["account"] not in A: return "unknown_account"
            if b["account"] not in S: return "unauthorized"
            if A[b["account"]]["frozen"]: return "account_frozen"
            if self.av(b["account"], b["currency"]) < b["amount"]: return "insufficient_funds"
            A[b["account"]]["bal"][b["currency"]] -= b["amount"]; return "ok"
        if typ == "hold.create":
            if b["from"] not in A or b["to"] not in A: return "unknown_account"
            if b["from"] not in S: return "unauthorized"
            if b["id"] in self.holds: return "hold_exists"
            if b["expires"] <= t: return "expired"
            if A[b["from"]]["frozen"] or A[b["to"]]["frozen"]: return "account_frozen"
            if self.av(b["from"], b["currency"]) < b["amount"]: return "insufficient_funds"
            a = A[b["from"]]; c = b["currency"]
            a["bal"][c] -= b["amount"]; a["held"][c] = a["held"].get(c, 0) + b["amount"]
            self.holds[b["id"]] = {**b, "status": "pending"}; return "ok"
        if typ in ("hold.settle", "hold.cancel"):
            h = self.holds.get(b["id"])
            if h is None: return "unknown_hold"
            party = h["from"] if typ == "hold.settle" else h["to"]
            if party not in S and not (h.get("arbiter") and h["arbiter"] in S): return "unauthorized"
            if h["status"] != "pending": return "invalid_state"
            if typ == "hold.cancel":
                self._release(h); h["status"] = "cancelled"; return "ok"
            if A[h["from"]]["frozen"] or A[h["to"]]["frozen"]: return "account_frozen"
            if self.tot(h["to"], h["currency"]) + h["amount"] > AMOUNT_MAX: return "overflow"
            a = A[h["from"]]; c = h["currency"]; a["held"][c] -= h["amount"]
            A[h["to"]]["bal"][c] = self.av(h["to"], c) + h["amount"]; h["status"] = "settled"; return "ok"
        if typ in ("account.freeze", "account.unfreeze"):
            a = A.get(b["account"])
            if a is None: return "unknown_account"
            if a["owner"] not in S: return "unauthorized"
            want = typ == "account.freeze"
            if a["frozen"] == want: return "invalid_state"
            a["frozen"] = want; return "ok"
        raise ValueError(typ)
    def _mv(self, f, to, c, n):
        self.acc[f]["bal"][c] -= n; self.acc[to]["bal"][c] = self.av(to, c) + n

def _norm(d): return {k: v for k, v in d.items() if v}

def _differential_run(seed):
    rng = random.Random(seed)
    L = Ledger()
    accts = ["a0", "a1", "a2", "a3"]
    owners = {a: f"BANK{i % 3}" for i, a in enumerate(accts)}
    for a in accts: L.open(a, owners[a])
    M = _Model(accts, owners)
    ids = [f"h{i}" for i in range(rng.randint(3, 12))]
    for step in range(60):
        t = L.time_ms + rng.randint(1, 4000)
        txs, plan = [], []
        for _ in range(rng.randint(0, 10)):
            kind = rng.choice(["transfer", "pvp", "pvp", "issue", "issue", "redeem", "hold.create", "hold.create", "hold.settle", "hold.settle", "hold.cancel", "hold.cancel"] + (["account.freeze", "account.unfreeze"] if rng.random() < 0.3 else []))
            pool = accts + ["ghost"]
            s, r = rng.sample(pool if rng.random() < 0.1 else accts, 2)
            c = rng.choice(["USD", "EUR", "CHF"] if kind == "issue" else ["USD", "EUR"])
            amt = rng.choice([1, rng.randint(1, 300), rng.randint(1, 3000), AMOUNT_MAX - rng.randint(0, 3000)])
            signers = set()
            for x in accts + ["BANK0", "BANK1", "BANK2", "escrow"]:
                if rng.random() < 0.25: signers.add(x)
            if kind == "transfer":
                body = {"from": s, "to": r, "currency": c, "amount": amt}
                signers.add(s) if rng.random() < 0.8 else None
            elif kind == "pvp":
                legs = []
                for _ in range(rng.randint(2, 4)):
                    f, to = rng.sample(accts + (["ghost"] if rng.random() < 0.05 else []), 2)
                    legs.append({"from": f, "to": to, "currency": rng.choice(["USD", "EUR"]), "amount": rng.choice([1, rng.randint(1, 500), AMOUNT_MAX - rng.randint(0, 500)])})
                    if rng.random() < 0.85: signers.add(f)
                body = {"legs": legs}
            elif kind == "issue":
                body = {"account": s, "currency": c, "amount": rng.choice([amt, rng.randint(1, 5000)])}
                if rng.random() < 0.7: signers.add({"USD": "BANK0", "EUR": "BANK1"}.get(c, "BANK2"))
            elif kind == "redeem":
                body = {"account": s, "currency": c, "amount": amt}; signers.add(s)
            elif kind == "hold.create":
                body = {"id": rng.choice(ids), "from": s, "to": r, "currency": c, "amount": rng.randint(1, 800), "expires": t + rng.randint(-500, 6000)}
                if rng.random() < 0.5: body["arbiter"] = public_key("escrow")
                if rng.random() < 0.8: signers.add(s)
            elif kind in ("hold.settle", "hold.cancel"):
                body = {"id": rng.choice(ids)}
                if rng.random() < 0.6: signers.update(rng.sample(accts, 2))
            else:
                body = {"account": s}
            if not signers: signers.add("escrow")
            signers = sorted(signers)
            stx = L.tx(kind, body, *signers)
            txs.append(stx)
            mb = dict(body)
            if "arbiter" in mb: mb["arbiter"] = "escrow"
            plan.append((kind, mb, signers))
        out = L.block(*txs, time_ms=t)
        M.expire(t)
        for (kind, mb, signers), code in zip(plan, out.results):
            want = M.run(kind, mb, signers, t)
            assert want == code, (seed, step, kind, mb, signers, want, code)
        for a in accts:
            v = L.state.get("acct/" + a)
            assert _norm(v["balances"]) == _norm(M.acc[a]["bal"]) and _norm(v["held"]) == _norm(M.acc[a]["held"]), (seed, step, a)


@pytest.mark.parametrize("seed", range(12))
def test_money_and_holds_match_an_independent_reading_of_section_3(seed):
    """Section 3: result codes by stage ("each stage covering every leg or party before the
    next"), pvp on running balances, "or" signers of holds, frozen accounts, overflow at
    2^63-1, expiry at block start, and "changes nothing" on failure, over random blocks."""
    _differential_run(seed)

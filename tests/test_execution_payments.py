"""Execution of accounts, money and holds: every success, every failure code, stage order.

Each failure goes through `Ledger.expect`, which also checks that the failed
transaction changed nothing (same changes and root as the block without it, and the
committed state untouched by execute_block).
"""
import random

import pytest

from ledger.bodies import AMOUNT_MAX, check_body
from ledger.execution import RESULT_MESSAGES, execute_block
from ledger.state import LedgerState, account_key, state_root_after
from ledger.views import account_view, hold_view, members_view
from tests.data.ledger_harness import GENESIS_TIME_MS, Ledger, make_genesis, public_key

ALL_CODES = {
    "ok", "insufficient_funds", "unauthorized", "unknown_account", "account_exists", "account_frozen",
    "not_issuer", "unknown_member", "member_exists", "insufficient_approvals", "unknown_hold", "hold_exists",
    "unknown_lc", "lc_exists", "invalid_state", "documents_missing", "doc_exists", "unknown_doc",
    "not_transferable", "expired", "invalid_body", "overflow",
}


@pytest.fixture
def ledger() -> Ledger:
    """alice (BANK0) holds 1,000 USD; bob (BANK1) and carol (BANK2) hold nothing."""
    scene = Ledger()
    scene.open("alice", "BANK0")
    scene.open("bob", "BANK1")
    scene.open("carol", "BANK2")
    scene.fund("alice", "USD", 1000)
    return scene


def transfer(source, target, amount, currency="USD"):
    return {"from": source, "to": target, "currency": currency, "amount": amount}


def test_result_messages_cover_every_code():
    assert set(RESULT_MESSAGES) == ALL_CODES


# -- genesis and views ---------------------------------------------------------------

def test_genesis_state_and_views():
    genesis = make_genesis(member_count=3)
    state = LedgerState.from_genesis(genesis)
    assert [m["id"] for m in members_view(state)] == ["BANK0", "BANK1", "BANK2"]
    assert members_view(state)[1] == {"id": "BANK1", "name": "Bank 1", "admin_key": public_key("BANK1").hex()}
    assert state.get("issuer/USD") == {"member": "BANK0"}
    assert state.next_expiry() is None
    assert len(state.state_root) == 32
    # The root at height 0 chains from the genesis hash, so another genesis gives another root.
    other = make_genesis(member_count=3)
    other["genesis_time"] += 1
    assert LedgerState.from_genesis(other).state_root != state.state_root


def test_genesis_with_an_unknown_issuer_is_refused():
    genesis = make_genesis(issuers={"USD": "BANK9"})
    with pytest.raises(ValueError):
        LedgerState.from_genesis(genesis)


def test_state_root_scheme_is_the_documented_one():
    from ledger import codec
    prev = bytes(32)
    changes = {"b": None, "a": {"x": 1}}
    expected = codec.sha256(b"ledger/state/v1" + prev + codec.encode([7, [["a", {"x": 1}], ["b", None]]]))
    assert state_root_after(prev, 7, changes) == expected


# -- account.open --------------------------------------------------------------------

def test_account_open(ledger):
    ledger.expect("ok", "account.open", {"id": "BANK1:dave", "owner": "BANK1", "key": public_key("dave")}, "BANK1")
    assert account_view(ledger.state, "BANK1:dave") == {
        "id": "BANK1:dave", "owner": "BANK1", "key": public_key("dave").hex(), "frozen": False,
        "balances": {}, "held": {}}


def test_account_open_failures(ledger):
    body = {"id": "dave", "owner": "BANK1", "key": public_key("dave")}
    ledger.expect("invalid_body", "account.open", {**body, "id": "dave/x"}, "BANK1")
    ledger.expect("invalid_body", "account.open", {**body, "extra": 1}, "BANK1")
    ledger.expect("unknown_member", "account.open", {**body, "owner": "BANK9"}, "BANK1")
    ledger.expect("unauthorized", "account.open", body, "BANK0")
    ledger.expect("account_exists", "account.open", {**body, "id": "alice"}, "BANK1")
    # Stage order: unknown_member (2) beats the bad signer (3); a bad signer (3) beats account_exists (4).
    ledger.expect("unknown_member", "account.open", {**body, "owner": "BANK9"}, "alice")
    ledger.expect("unauthorized", "account.open", {**body, "id": "alice"}, "BANK0")


def test_extra_signers_change_nothing(ledger):
    ledger.expect("ok", "account.open", {"id": "dave", "owner": "BANK1", "key": public_key("dave")},
                  "BANK0", "BANK1", "alice")


# -- freeze, unfreeze, rotate_key ----------------------------------------------------

def test_freeze_and_unfreeze(ledger):
    ledger.expect("unknown_account", "account.freeze", {"account": "nobody"}, "BANK0")
    ledger.expect("unauthorized", "account.freeze", {"account": "alice"}, "BANK1")
    ledger.expect("unauthorized", "account.freeze", {"account": "alice"}, "alice")
    ledger.expect("invalid_state", "account.unfreeze", {"account": "alice"}, "BANK0")
    ledger.expect("ok", "account.freeze", {"account": "alice"}, "BANK0")
    assert account_view(ledger.state, "alice")["frozen"] is True
    ledger.expect("invalid_state", "account.freeze", {"account": "alice"}, "BANK0")
    ledger.expect("ok", "account.unfreeze", {"account": "alice"}, "BANK0")
    assert account_view(ledger.state, "alice")["frozen"] is False
    ledger.expect("invalid_body", "account.freeze", {"account": "alice", "why": "x"}, "BANK0")


def test_rotate_key(ledger):
    ledger.expect("unknown_account", "account.rotate_key", {"account": "nobody", "new_key": public_key("x")}, "BANK0")
    ledger.expect("unauthorized", "account.rotate_key", {"account": "alice", "new_key": public_key("x")}, "bob")
    ledger.expect("unauthorized", "account.rotate_key", {"account": "alice", "new_key": public_key("x")}, "BANK1")
    # By the account's own key ...
    ledger.expect("ok", "account.rotate_key", {"account": "alice", "new_key": public_key("alice2")}, "alice")
    ledger.expect("unauthorized", "transfer", transfer("alice", "bob", 1), "alice")
    ledger.expect("ok", "transfer", transfer("alice", "bob", 1), "alice2")
    # ... or by the owner's admin key (a lost account key).
    ledger.expect("ok", "account.rotate_key", {"account": "alice", "new_key": public_key("alice3")}, "BANK0")
    assert account_view(ledger.state, "alice")["key"] == public_key("alice3").hex()
    # A frozen account's key can still be rotated: rotation moves no value.
    ledger.expect("ok", "account.freeze", {"account": "bob"}, "BANK1")
    ledger.expect("ok", "account.rotate_key", {"account": "bob", "new_key": public_key("bob2")}, "bob")


# -- issue and redeem ----------------------------------------------------------------

def test_issue(ledger):
    ledger.expect("ok", "issue", {"account": "bob", "currency": "EUR", "amount": 500}, "BANK1")
    assert ledger.balance("bob", "EUR") == (500, 0)
    ledger.expect("unknown_account", "issue", {"account": "nobody", "currency": "EUR", "amount": 5}, "BANK1")
    ledger.expect("not_issuer", "issue", {"account": "bob", "currency": "EUR", "amount": 5}, "BANK0")
    ledger.expect("not_issuer", "issue", {"account": "bob", "currency": "CHF", "amount": 5}, "BANK0", "BANK1")
    ledger.expect("invalid_body", "issue", {"account": "bob", "currency": "eur", "amount": 5}, "BANK1")
    ledger.expect("invalid_body", "issue", {"account": "bob", "currency": "EUR", "amount": 0}, "BANK1")
    ledger.expect("invalid_body", "issue", {"account": "bob", "currency": "EUR", "amount": 2**63}, "BANK1")
    ledger.expect("invalid_body", "issue", {"account": "bob", "currency": "EUR", "amount": True}, "BANK1")
    ledger.expect("ok", "issue", {"account": "bob", "currency": "EUR", "amount": AMOUNT_MAX - 500}, "BANK1")
    ledger.expect("overflow", "issue", {"account": "bob", "currency": "EUR", "amount": 1}, "BANK1")
    ledger.expect("ok", "account.freeze", {"account": "carol"}, "BANK2")
    ledger.expect("account_frozen", "issue", {"account": "carol", "currency": "EUR", "amount": 5}, "BANK1")
    # Stage order: unknown_account beats not_issuer; not_issuer beats account_frozen.
    ledger.expect("unknown_account", "issue", {"account": "nobody", "currency": "EUR", "amount": 5}, "BANK0")
    ledger.expect("not_issuer", "issue", {"account": "carol", "currency": "EUR", "amount": 5}, "BANK0")


def test_redeem(ledger):
    ledger.expect("ok", "redeem", {"account": "alice", "currency": "USD", "amount": 400}, "alice")
    assert ledger.balance("alice", "USD") == (600, 0)
    ledger.expect("unknown_account", "redeem", {"account": "nobody", "currency": "USD", "amount": 1}, "alice")
    ledger.expect("unauthorized", "redeem", {"account": "alice", "currency": "USD", "amount": 1}, "BANK0")
    ledger.expect("insufficient_funds", "redeem", {"account": "alice", "currency": "USD", "amount": 601}, "alice")
    ledger.expect("insufficient_funds", "redeem", {"account": "alice", "currency": "EUR", "amount": 1}, "alice")
    ledger.expect("ok", "account.freeze", {"account": "alice"}, "BANK0")
    ledger.expect("account_frozen", "redeem", {"account": "alice", "currency": "USD", "amount": 1}, "alice")
    # account_frozen (5) beats insufficient_funds (6).
    ledger.expect("account_frozen", "redeem", {"account": "alice", "currency": "USD", "amount": 10**6}, "alice")
    ledger.expect("ok", "account.unfreeze", {"account": "alice"}, "BANK0")
    ledger.expect("ok", "redeem", {"account": "alice", "currency": "USD", "amount": 600}, "alice")
    assert account_view(ledger.state, "alice")["balances"] == {}  # zero amounts are left out


# -- transfer ------------------------------------------------------------------------

def test_transfer(ledger):
    ledger.expect("ok", "transfer", {**transfer("alice", "bob", 250), "ref": "INV-1"}, "alice")
    assert ledger.balance("alice", "USD") == (750, 0)
    assert ledger.balance("bob", "USD") == (250, 0)


def test_transfer_failures(ledger):
    ledger.expect("invalid_body", "transfer", transfer("alice", "alice", 1), "alice")
    ledger.expect("invalid_body", "transfer", {**transfer("alice", "bob", 1), "ref": "x" * 141}, "alice")
    ledger.expect("invalid_body", "transfer", {**transfer("alice", "bob", 1), "ref": 5}, "alice")
    ledger.expect("unknown_account", "transfer", transfer("alice", "nobody", 1), "alice")
    ledger.expect("unknown_account", "transfer", transfer("nobody", "bob", 1), "alice")
    ledger.expect("unauthorized", "transfer", transfer("alice", "bob", 1), "bob")
    ledger.expect("unauthorized", "transfer", transfer("alice", "bob", 1), "BANK0")
    ledger.expect("insufficient_funds", "transfer", transfer("alice", "bob", 1001), "alice")
    ledger.expect("insufficient_funds", "transfer", transfer("alice", "bob", 1, "EUR"), "alice")
    ledger.expect("ok", "account.freeze", {"account": "bob"}, "BANK1")
    ledger.expect("account_frozen", "transfer", transfer("alice", "bob", 1), "alice")
    ledger.expect("account_frozen", "transfer", transfer("bob", "alice", 1), "bob")
    # Stage order: invalid_body beats everything, unknown_account beats a bad signer,
    # unauthorized beats account_frozen, account_frozen beats insufficient_funds.
    ledger.expect("invalid_body", "transfer", transfer("nobody", "nobody", 1), "bob")
    ledger.expect("unknown_account", "transfer", transfer("alice", "nobody", 1), "bob")
    ledger.expect("unauthorized", "transfer", transfer("alice", "bob", 1), "carol")
    ledger.expect("account_frozen", "transfer", transfer("alice", "bob", 10**9), "alice")


def test_transfer_overflow(ledger):
    ledger.expect("ok", "issue", {"account": "bob", "currency": "USD", "amount": AMOUNT_MAX - 10}, "BANK0")
    ledger.expect("ok", "transfer", transfer("alice", "bob", 10), "alice")
    ledger.expect("overflow", "transfer", transfer("alice", "bob", 1), "alice")
    # Reserved money counts toward the limit: bob's total may never exceed 2^63-1.
    ledger.expect("ok", "hold.create", {"id": "h", "from": "bob", "to": "carol", "currency": "USD",
                                        "amount": 100, "expires": ledger.time_ms + 60_000}, "bob")
    ledger.expect("overflow", "transfer", transfer("alice", "bob", 1), "alice")


# -- pvp -----------------------------------------------------------------------------

@pytest.fixture
def fx(ledger) -> Ledger:
    ledger.fund("bob", "EUR", 900)
    return ledger


def test_pvp(fx):
    legs = [transfer("alice", "bob", 1000), transfer("bob", "alice", 900, "EUR")]
    fx.expect("ok", "pvp", {"legs": legs, "ref": "FX-1"}, "alice", "bob")
    assert fx.balance("alice", "USD") == (0, 0) and fx.balance("alice", "EUR") == (900, 0)
    assert fx.balance("bob", "USD") == (1000, 0) and fx.balance("bob", "EUR") == (0, 0)


def test_pvp_legs_run_on_running_balances(fx):
    # carol has nothing, but may pass on what the first leg gives her.
    legs = [transfer("alice", "carol", 600), transfer("carol", "bob", 600), transfer("bob", "alice", 900, "EUR")]
    fx.expect("ok", "pvp", {"legs": legs}, "alice", "bob", "carol")
    assert fx.balance("carol", "USD") == (0, 0) and fx.balance("bob", "USD") == (600, 0)


def test_pvp_is_all_or_nothing(fx):
    legs = [transfer("alice", "bob", 1000), transfer("bob", "alice", 901, "EUR")]
    fx.expect("insufficient_funds", "pvp", {"legs": legs}, "alice", "bob")
    assert fx.balance("alice", "USD") == (1000, 0)


def test_pvp_failures_and_stage_order(fx):
    good = [transfer("alice", "bob", 10), transfer("bob", "alice", 9, "EUR")]
    fx.expect("invalid_body", "pvp", {"legs": good[:1]}, "alice", "bob")
    fx.expect("invalid_body", "pvp", {"legs": good * 5}, "alice", "bob")
    fx.expect("invalid_body", "pvp", {"legs": [good[0], transfer("bob", "bob", 9, "EUR")]}, "alice", "bob")
    fx.expect("invalid_body", "pvp", {"legs": [good[0], {**good[1], "ref": "x"}]}, "alice", "bob")
    fx.expect("unauthorized", "pvp", {"legs": good}, "alice")
    fx.expect("unknown_account", "pvp", {"legs": [good[0], transfer("bob", "nobody", 9, "EUR")]}, "alice", "bob")
    # Every leg's existence (2) is checked before any leg's signer (3), and so on.
    fx.expect("unknown_account", "pvp", {"legs": [good[0], transfer("bob", "nobody", 9, "EUR")]}, "carol")
    fx.expect("ok", "account.freeze", {"account": "bob"}, "BANK1")
    fx.expect("unauthorized", "pvp", {"legs": good}, "bob")
    big_first = [transfer("alice", "carol", 10**6), transfer("bob", "alice", 9, "EUR")]
    fx.expect("account_frozen", "pvp", {"legs": big_first}, "alice", "bob")
    fx.expect("ok", "account.unfreeze", {"account": "bob"}, "BANK1")
    fx.expect("ok", "issue", {"account": "carol", "currency": "EUR", "amount": AMOUNT_MAX}, "BANK1")
    fx.expect("overflow", "pvp", {"legs": [good[0], transfer("bob", "carol", 9, "EUR")]}, "alice", "bob")


# -- holds ---------------------------------------------------------------------------

def hold(ledger, hold_id="h1", amount=300, arbiter=None, expires_in_ms=60_000, source="alice", target="bob"):
    body = {"id": hold_id, "from": source, "to": target, "currency": "USD", "amount": amount,
            "expires": ledger.time_ms + expires_in_ms}
    if arbiter is not None:
        body["arbiter"] = public_key(arbiter)
    return body


def test_hold_create_and_settle(ledger):
    ledger.expect("ok", "hold.create", hold(ledger, arbiter="escrow"), "alice")
    assert ledger.balance("alice", "USD") == (700, 300)
    view = hold_view(ledger.state, "h1")
    assert view["status"] == "pending" and view["arbiter"] == public_key("escrow").hex()
    ledger.expect("ok", "hold.settle", {"id": "h1"}, "alice")
    assert ledger.balance("alice", "USD") == (700, 0)
    assert ledger.balance("bob", "USD") == (300, 0)
    assert hold_view(ledger.state, "h1")["status"] == "settled"
    ledger.expect("invalid_state", "hold.settle", {"id": "h1"}, "alice")
    ledger.expect("invalid_state", "hold.cancel", {"id": "h1"}, "bob")
    # Hold ids are never reused.
    ledger.expect("hold_exists", "hold.create", hold(ledger), "alice")


def test_hold_settled_and_cancelled_by_arbiter(ledger):
    ledger.expect("ok", "hold.create", hold(ledger, "h1", arbiter="escrow"), "alice")
    ledger.expect("ok", "hold.create", hold(ledger, "h2", arbiter="escrow"), "alice")
    ledger.expect("ok", "hold.settle", {"id": "h1"}, "escrow")
    ledger.expect("ok", "hold.cancel", {"id": "h2"}, "escrow")
    assert ledger.balance("alice", "USD") == (700, 0)
    assert ledger.balance("bob", "USD") == (300, 0)
    assert hold_view(ledger.state, "h2")["status"] == "cancelled"


def test_hold_cancel_by_recipient(ledger):
    ledger.expect("ok", "hold.create", hold(ledger), "alice")
    assert hold_view(ledger.state, "h1")["arbiter"] is None
    ledger.expect("unauthorized", "hold.cancel", {"id": "h1"}, "alice")  # the payer cannot take it back
    ledger.expect("unauthorized", "hold.settle", {"id": "h1"}, "bob")  # the payee cannot take it
    ledger.expect("unknown_hold", "hold.cancel", {"id": "h9"}, "bob")
    ledger.expect("ok", "hold.cancel", {"id": "h1"}, "bob")
    assert ledger.balance("alice", "USD") == (1000, 0)


def test_hold_create_failures(ledger):
    ledger.expect("invalid_body", "hold.create", hold(ledger, target="alice"), "alice")
    ledger.expect("invalid_body", "hold.create", {**hold(ledger), "arbiter": b"short"}, "alice")
    ledger.expect("unknown_account", "hold.create", hold(ledger, target="nobody"), "alice")
    ledger.expect("unauthorized", "hold.create", hold(ledger), "bob")
    ledger.expect("expired", "hold.create", hold(ledger, expires_in_ms=1000), "alice")  # == next block time
    ledger.expect("insufficient_funds", "hold.create", hold(ledger, amount=1001), "alice")
    ledger.expect("ok", "hold.create", hold(ledger, amount=600), "alice")
    ledger.expect("hold_exists", "hold.create", hold(ledger, amount=1), "alice")
    ledger.expect("insufficient_funds", "hold.create", hold(ledger, "h2", amount=401), "alice")
    ledger.expect("ok", "account.freeze", {"account": "bob"}, "BANK1")
    ledger.expect("account_frozen", "hold.create", hold(ledger, "h2", amount=1), "alice")
    # Stage order: hold_exists and expired (4) beat account_frozen (5).
    ledger.expect("hold_exists", "hold.create", hold(ledger, amount=1), "alice")
    ledger.expect("expired", "hold.create", hold(ledger, "h2", amount=1, expires_in_ms=0), "alice")


def test_hold_settle_failures(ledger):
    ledger.expect("unknown_hold", "hold.settle", {"id": "h1"}, "alice")
    ledger.expect("ok", "hold.create", hold(ledger, "h1"), "alice")
    ledger.expect("ok", "hold.create", hold(ledger, "h2", amount=100, source="alice", target="carol"), "alice")
    ledger.expect("ok", "account.freeze", {"account": "alice"}, "BANK0")
    # A frozen payer cannot settle a hold, and a frozen payee cannot receive it ...
    ledger.expect("account_frozen", "hold.settle", {"id": "h1"}, "alice")
    ledger.expect("unauthorized", "hold.settle", {"id": "h1"}, "bob")  # signers (3) before frozen (5)
    ledger.expect("ok", "account.unfreeze", {"account": "alice"}, "BANK0")
    ledger.expect("ok", "account.freeze", {"account": "carol"}, "BANK2")
    ledger.expect("account_frozen", "hold.settle", {"id": "h2"}, "alice")
    # ... but cancellation always returns the reservation, also to a frozen payer.
    ledger.expect("ok", "account.freeze", {"account": "alice"}, "BANK0")
    ledger.expect("ok", "hold.cancel", {"id": "h1"}, "bob")
    assert ledger.balance("alice", "USD") == (900, 100)


def test_hold_settle_overflow(ledger):
    ledger.expect("ok", "hold.create", hold(ledger), "alice")
    ledger.expect("ok", "issue", {"account": "bob", "currency": "USD", "amount": AMOUNT_MAX - 299}, "BANK0")
    ledger.expect("overflow", "hold.settle", {"id": "h1"}, "alice")


def test_hold_expires_at_block_start_even_to_a_frozen_account(ledger):
    ledger.expect("ok", "hold.create", hold(ledger, expires_in_ms=5_000), "alice")
    expires = hold_view(ledger.state, "h1")["expires"]
    assert ledger.state.next_expiry() == expires
    ledger.expect("ok", "account.freeze", {"account": "alice"}, "BANK0")
    ledger.block(time_ms=expires - 1)  # still alive while the block time is earlier
    assert hold_view(ledger.state, "h1")["status"] == "pending"
    # The block at exactly `expires` expires it first, so a settle in it is too late.
    outcome = ledger.block(ledger.tx("hold.settle", {"id": "h1"}, "alice"), time_ms=expires)
    assert outcome.results == ["invalid_state"]
    assert outcome.changes[account_key("alice")]["held"] == {}
    assert hold_view(ledger.state, "h1")["status"] == "expired"
    assert ledger.balance("alice", "USD") == (1000, 0)
    assert ledger.state.next_expiry() is None


# -- the rules of stage 1 alone ------------------------------------------------------

@pytest.mark.parametrize("tx_type, body", [
    ("transfer", []),
    ("transfer", {"from": "a", "to": "b", "currency": "USD"}),
    ("transfer", {"from": "a", "to": "b", "currency": "USD", "amount": 1.0}),
    ("transfer", {"from": "a" * 65, "to": "b", "currency": "USD", "amount": 1}),
    ("transfer", {"from": "a\n", "to": "b", "currency": "USD", "amount": 1}),
    ("transfer", {"from": "é", "to": "b", "currency": "USD", "amount": 1}),
    ("transfer", {"from": "a", "to": "b", "currency": "USDX", "amount": 1}),
    ("account.open", {"id": "a", "owner": "bank0", "key": bytes(32)}),
    ("account.open", {"id": "a", "owner": "BANK0", "key": bytes(31)}),
    ("account.open", {"id": "a", "owner": "BANK0", "key": "00" * 32}),
    ("hold.create", {"id": "h", "from": "a", "to": "b", "currency": "USD", "amount": 1, "expires": -1}),
    ("lc.issue", {"id": "l", "applicant": "a", "beneficiary": "b", "advising_bank": "B", "currency": "USD",
                  "amount": 1, "expires": 1, "documents": []}),
    ("lc.issue", {"id": "l", "applicant": "a", "beneficiary": "b", "advising_bank": "B", "currency": "USD",
                  "amount": 1, "expires": 1, "documents": ["invoice", "invoice"]}),
    ("lc.issue", {"id": "l", "applicant": "a", "beneficiary": "b", "advising_bank": "B", "currency": "USD",
                  "amount": 1, "expires": 1, "documents": ["Invoice"]}),
    ("lc.issue", {"id": "l", "applicant": "a", "beneficiary": "b", "advising_bank": "B", "currency": "USD",
                  "amount": 1, "expires": 1, "documents": ["invoice"], "terms": "x" * 4097}),
    ("lc.present", {"id": "l", "documents": [{"type": "invoice", "hash": bytes(32)}] * 2}),
    ("lc.present", {"id": "l", "documents": [{"type": "invoice"}]}),
    ("lc.examine", {"id": "l", "accept": 1}),
    ("lc.amend", {"id": "l"}),
    ("doc.register", {"hash": bytes(32), "type": "invoice", "holder": "a", "meta": {"k": 1}}),
    ("doc.register", {"hash": bytes(32), "type": "invoice", "holder": "a",
                      "meta": {f"k{i}": "v" for i in range(33)}}),
    ("member.add", {"id": "NEW", "name": "", "admin_key": bytes(32)}),
    ("no.such.type", {}),
])
def test_check_body_rejects(tx_type, body):
    reason = check_body(tx_type, body)
    assert isinstance(reason, str) and reason


@pytest.mark.parametrize("tx_type, body", [
    ("transfer", {"from": "BANK0:a.b_c-d", "to": "b", "currency": "USD", "amount": AMOUNT_MAX, "ref": ""}),
    ("lc.present", {"id": "l", "documents": [{"type": "invoice", "hash": bytes(32)}]}),
    ("lc.amend", {"id": "l", "expires": 5}),
    ("doc.register", {"hash": bytes(32), "type": "invoice", "holder": "a", "meta": {"k": "v"}}),
    ("hold.create", {"id": "h", "from": "a", "to": "b", "currency": "USD", "amount": 1, "expires": 2**64 - 1}),
])
def test_check_body_accepts(tx_type, body):
    assert check_body(tx_type, body) is None


# -- money is conserved, whatever happens --------------------------------------------

def random_block(rng: random.Random, ledger: Ledger, accounts: list[str], currencies: list[str]) -> list:
    """A block of random money-moving transactions, some of them bound to fail."""
    txs = []
    for _ in range(rng.randint(0, 12)):
        kind = rng.choice(["issue", "redeem", "transfer", "transfer", "pvp", "hold.create", "hold.settle",
                           "hold.cancel", "lc.issue", "lc.amend", "lc.cancel", "freeze", "unfreeze"])
        source, target = rng.sample(accounts, 2)
        currency = rng.choice(currencies)
        amount = rng.choice([1, rng.randint(1, 500), rng.randint(1, 5000)])
        signer = source if rng.random() < 0.9 else target  # a wrong signer now and then
        object_id = f"x{rng.randint(0, 15)}"
        expires = ledger.time_ms + rng.randint(500, 8000)
        if kind == "issue":
            issuer = ledger.genesis["issuers"][currency]
            txs.append(ledger.tx("issue", {"account": source, "currency": currency, "amount": amount}, issuer))
        elif kind == "redeem":
            txs.append(ledger.tx("redeem", {"account": source, "currency": currency, "amount": amount}, signer))
        elif kind == "transfer":
            txs.append(ledger.tx("transfer", transfer(source, target, amount, currency), signer))
        elif kind == "pvp":
            legs = [transfer(source, target, amount, currency),
                    transfer(target, source, rng.randint(1, 500), rng.choice(currencies))]
            txs.append(ledger.tx("pvp", {"legs": legs}, source, target))
        elif kind == "hold.create":
            body = {"id": object_id, "from": source, "to": target, "currency": currency, "amount": amount,
                    "expires": expires}
            txs.append(ledger.tx("hold.create", body, signer))
        elif kind in ("hold.settle", "hold.cancel"):
            txs.append(ledger.tx(kind, {"id": object_id}, source, target))
        elif kind == "lc.issue":
            owner = account_view(ledger.state, source)["owner"]
            body = {"id": object_id, "applicant": source, "beneficiary": target, "advising_bank": "BANK1",
                    "currency": currency, "amount": amount, "expires": expires, "documents": ["invoice"]}
            txs.append(ledger.tx("lc.issue", body, source, owner))
        elif kind in ("lc.amend", "lc.cancel"):
            body = {"id": object_id}
            if kind == "lc.amend":
                body["amount"] = amount
            lc = ledger.state.get(f"lc/{object_id}")
            signers = [target] if lc is None else [lc["beneficiary"], lc["issuing_bank"]]
            txs.append(ledger.tx(kind, body, *signers))
        else:
            owner = account_view(ledger.state, source)["owner"]
            txs.append(ledger.tx(f"account.{kind}", {"account": source}, owner))
    return txs


def check_conservation(ledger: Ledger, outstanding: dict[str, int]) -> None:
    totals: dict[str, int] = {}
    reserved: dict[tuple[str, str], int] = {}
    for key, record in ledger.state.items():
        if key.startswith("acct/"):
            for field in ("balances", "held"):
                for currency, value in record[field].items():
                    assert 0 < value <= AMOUNT_MAX
                    totals[currency] = totals.get(currency, 0) + value
        elif key.startswith("hold/") and record["status"] == "pending":
            party = (record["from"], record["currency"])
            reserved[party] = reserved.get(party, 0) + record["amount"]
        elif key.startswith("lc/") and record["status"] in ("issued", "advised", "presented", "refused"):
            party = (record["applicant"], record["currency"])
            reserved[party] = reserved.get(party, 0) + record["amount"]
    assert totals == {currency: value for currency, value in outstanding.items() if value}
    # What accounts hold back is exactly what pending holds and live LCs reserve.
    held = {(key[5:], currency): value for key, record in ledger.state.items() if key.startswith("acct/")
            for currency, value in record["held"].items()}
    assert held == reserved


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_money_is_conserved_over_random_blocks(seed):
    rng = random.Random(seed)
    ledger = Ledger()
    accounts = [f"BANK{i % 3}:acct{i}" for i in range(6)]
    for index, account_id in enumerate(accounts):
        ledger.open(account_id, f"BANK{index % 3}")
    currencies = ["USD", "EUR"]
    outstanding = {currency: 0 for currency in currencies}
    codes_seen = set()
    for _ in range(40):
        txs = random_block(rng, ledger, accounts, currencies)
        outcome = ledger.block(*txs, time_ms=ledger.time_ms + rng.randint(1, 3000))
        for stx, code in zip(txs, outcome.results):
            codes_seen.add(code)
            if code == "ok" and stx.type in ("issue", "redeem"):
                sign = 1 if stx.type == "issue" else -1
                outstanding[stx.body["currency"]] += sign * stx.body["amount"]
        check_conservation(ledger, outstanding)
        # The incremental expiry index matches one rebuilt from the records.
        rebuilt = LedgerState.from_records(ledger.state.items(), ledger.state.state_root)
        assert rebuilt.next_expiry() == ledger.state.next_expiry()
        assert rebuilt.due_expiries(2**63) == ledger.state.due_expiries(2**63)
    assert {"ok", "insufficient_funds", "account_frozen", "unauthorized"} <= codes_seen


def test_execute_block_is_pure_and_repeatable(ledger):
    txs = [ledger.tx("transfer", transfer("alice", "bob", 10), "alice"),
           ledger.tx("transfer", transfer("bob", "carol", 5), "bob"),
           ledger.tx("transfer", transfer("bob", "carol", 50), "bob")]
    before = ledger.snapshot()
    first = execute_block(ledger.state, ledger.height + 1, ledger.time_ms + 1, txs)
    second = execute_block(ledger.state, ledger.height + 1, ledger.time_ms + 1, txs)
    assert ledger.snapshot() == before
    assert first == second
    assert first.results == ["ok", "ok", "insufficient_funds"]
    assert sorted(first.changes) == [account_key("alice"), account_key("bob"), account_key("carol")]
    assert GENESIS_TIME_MS < ledger.time_ms


# -- the expiry index ----------------------------------------------------------------

def test_expiry_index_matches_a_scan_of_the_records():
    """Random holds created, finished and re-dated: the index always agrees with a full scan."""
    rng = random.Random(99)
    state = LedgerState.from_genesis(make_genesis())
    statuses = ["pending", "pending", "settled", "cancelled", "expired"]
    for height in range(1, 200):
        changes = {}
        for _ in range(rng.randint(1, 6)):
            key = f"hold/h{rng.randint(0, 40)}"
            if rng.random() < 0.1:
                changes[key] = None
            else:
                changes[key] = {"id": key[5:], "from": "a", "to": "b", "currency": "USD", "amount": 1,
                                "arbiter": None, "expires": rng.randint(0, 50), "status": rng.choice(statuses)}
        state.apply(changes, state_root_after(state.state_root, height, changes))
        live = sorted((record["expires"], key) for key, record in state.items()
                      if key.startswith("hold/") and record["status"] == "pending")
        assert state.next_expiry() == (live[0][0] if live else None)
        for time_ms in (-1, 0, 10, 25, 50):
            assert state.due_expiries(time_ms) == [key for expires, key in live if expires <= time_ms]

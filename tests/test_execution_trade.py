"""Execution of trade finance: letters of credit and trade documents.

The scene: `buyer` (a customer of BANK0, the issuing bank) buys from `seller` (a
customer of BANK1, the advising bank), paying by letter of credit against an invoice
and a bill of lading. Every failure goes through `Ledger.expect`, which also checks
that the failed transaction changed nothing.
"""
import pytest

from ledger import codec
from ledger.bodies import AMOUNT_MAX
from ledger.views import doc_view, lc_view
from tests.data.ledger_harness import Ledger

INVOICE = codec.sha256(b"invoice 2024-001")
BILL = codec.sha256(b"bill of lading MAEU-778")
PACKING = codec.sha256(b"packing list 17")
CARRIER_BILL = codec.sha256(b"bill of lading held by the carrier")


@pytest.fixture
def trade() -> Ledger:
    scene = Ledger()
    scene.open("buyer", "BANK0")
    scene.open("seller", "BANK1")
    scene.open("carrier", "BANK2")
    scene.fund("buyer", "USD", 10_000)
    for doc_hash, doc_type, holder, bank in [(INVOICE, "invoice", "seller", "BANK1"),
                                             (BILL, "bill_of_lading", "seller", "BANK1"),
                                             (PACKING, "packing_list", "seller", "BANK1"),
                                             (CARRIER_BILL, "bill_of_lading", "carrier", "BANK2")]:
        scene.expect("ok", "doc.register", {"hash": doc_hash, "type": doc_type, "holder": holder}, holder, bank)
    return scene


def lc_body(trade, lc_id="LC1", amount=6_000, expires_in_ms=600_000, **extra):
    return {"id": lc_id, "applicant": "buyer", "beneficiary": "seller", "advising_bank": "BANK1",
            "currency": "USD", "amount": amount, "expires": trade.time_ms + expires_in_ms,
            "documents": ["invoice", "bill_of_lading"], **extra}


def presentation(*documents):
    return [{"type": doc_type, "hash": doc_hash} for doc_type, doc_hash in documents]


GOOD_PRESENTATION = presentation(("invoice", INVOICE), ("bill_of_lading", BILL))


def issue_and_advise(trade, lc_id="LC1", **kwargs):
    trade.expect("ok", "lc.issue", lc_body(trade, lc_id, **kwargs), "buyer", "BANK0")
    trade.expect("ok", "lc.advise", {"id": lc_id}, "BANK1")


def history_types(trade, lc_id="LC1"):
    return [entry["type"] for entry in lc_view(trade.state, lc_id)["history"]]


# -- the whole lifecycle -------------------------------------------------------------

def test_full_lifecycle(trade):
    outcome = trade.expect("ok", "lc.issue", lc_body(trade, terms="CIF Rotterdam"), "buyer", "BANK0")
    view = lc_view(trade.state, "LC1")
    assert view["status"] == "issued" and view["issuing_bank"] == "BANK0" and view["terms"] == "CIF Rotterdam"
    assert view["presented"] == [] and view["history"][0]["height"] == trade.height
    assert len(outcome.changes) == 2  # the LC and the buyer's reservation
    assert trade.balance("buyer", "USD") == (4_000, 6_000)

    trade.expect("ok", "lc.advise", {"id": "LC1"}, "BANK1")
    assert lc_view(trade.state, "LC1")["status"] == "advised"

    # Presentations that do not comply change nothing.
    trade.expect("documents_missing", "lc.present",
                 {"id": "LC1", "documents": presentation(("invoice", INVOICE), ("packing_list", PACKING))}, "seller")
    trade.expect("unknown_doc", "lc.present",
                 {"id": "LC1", "documents": presentation(("invoice", INVOICE),
                                                         ("bill_of_lading", codec.sha256(b"forged")))}, "seller")
    trade.expect("unknown_doc", "lc.present",  # a registered document, but of another type
                 {"id": "LC1", "documents": presentation(("invoice", PACKING), ("bill_of_lading", BILL))}, "seller")
    trade.expect("unauthorized", "lc.present",  # the seller does not hold this bill of lading
                 {"id": "LC1", "documents": presentation(("invoice", INVOICE),
                                                         ("bill_of_lading", CARRIER_BILL))}, "seller")

    trade.expect("ok", "lc.present", {"id": "LC1", "documents": GOOD_PRESENTATION}, "seller")
    view = lc_view(trade.state, "LC1")
    assert view["status"] == "presented"
    assert view["presented"] == [{"type": "invoice", "hash": INVOICE.hex()},
                                 {"type": "bill_of_lading", "hash": BILL.hex()}]

    trade.expect("ok", "lc.examine", {"id": "LC1", "accept": False, "reason": "late shipment"}, "BANK0")
    assert lc_view(trade.state, "LC1")["status"] == "refused"
    assert trade.balance("buyer", "USD") == (4_000, 6_000)  # a refusal keeps the reservation

    # Extra documents may be presented beyond the required ones.
    second = GOOD_PRESENTATION + presentation(("packing_list", PACKING))
    trade.expect("ok", "lc.present", {"id": "LC1", "documents": second}, "seller")
    outcome = trade.expect("ok", "lc.examine", {"id": "LC1", "accept": True}, "BANK0")
    paid_tx_id = outcome.changes["lc/LC1"]["history"][-1]["tx_id"]

    # Documents against payment, in one step.
    assert lc_view(trade.state, "LC1")["status"] == "paid"
    assert trade.balance("buyer", "USD") == (4_000, 0)
    assert trade.balance("seller", "USD") == (6_000, 0)
    bill = doc_view(trade.state, BILL)
    assert bill["holder"] == "buyer"
    assert bill["history"][-1] == {"height": trade.height, "holder": "buyer", "tx_id": paid_tx_id.hex()}
    assert doc_view(trade.state, INVOICE)["holder"] == "seller"  # only title documents change hands
    assert history_types(trade) == ["lc.issue", "lc.advise", "lc.present", "lc.examine", "lc.present",
                                    "lc.examine"]
    assert trade.state.next_expiry() is None

    # A paid LC is finished.
    for tx_type, body, signers in [("lc.advise", {"id": "LC1"}, ["BANK1"]),
                                   ("lc.present", {"id": "LC1", "documents": GOOD_PRESENTATION}, ["seller"]),
                                   ("lc.examine", {"id": "LC1", "accept": True}, ["BANK0"]),
                                   ("lc.amend", {"id": "LC1", "amount": 1}, ["BANK0", "seller"]),
                                   ("lc.cancel", {"id": "LC1"}, ["BANK0", "seller"])]:
        trade.expect("invalid_state", tx_type, body, *signers)


def test_lc_view_shape(trade):
    trade.expect("ok", "lc.issue", lc_body(trade), "buyer", "BANK0")
    view = lc_view(trade.state, "LC1")
    assert set(view) == {"id", "status", "applicant", "beneficiary", "issuing_bank", "advising_bank", "currency",
                         "amount", "expires", "documents", "terms", "presented", "history"}
    assert view["terms"] is None and view["documents"] == ["invoice", "bill_of_lading"]
    assert set(view["history"][0]) == {"height", "type", "tx_id"} and len(view["history"][0]["tx_id"]) == 64
    assert lc_view(trade.state, "LC9") is None


# -- lc.issue ------------------------------------------------------------------------

def test_lc_issue_failures(trade):
    trade.expect("invalid_body", "lc.issue", {**lc_body(trade), "beneficiary": "buyer"}, "buyer", "BANK0")
    trade.expect("invalid_body", "lc.issue", {**lc_body(trade), "documents": ["invoice"] * 17}, "buyer", "BANK0")
    trade.expect("unknown_account", "lc.issue", {**lc_body(trade), "beneficiary": "nobody"}, "buyer", "BANK0")
    trade.expect("unknown_member", "lc.issue", {**lc_body(trade), "advising_bank": "BANK9"}, "buyer", "BANK0")
    trade.expect("unauthorized", "lc.issue", lc_body(trade), "buyer")  # without its bank
    trade.expect("unauthorized", "lc.issue", lc_body(trade), "BANK0")  # without the applicant
    trade.expect("unauthorized", "lc.issue", lc_body(trade), "buyer", "BANK1")  # not the applicant's bank
    trade.expect("expired", "lc.issue", lc_body(trade, expires_in_ms=1_000), "buyer", "BANK0")
    trade.expect("insufficient_funds", "lc.issue", lc_body(trade, amount=10_001), "buyer", "BANK0")
    trade.expect("ok", "lc.issue", lc_body(trade), "buyer", "BANK0")
    trade.expect("lc_exists", "lc.issue", lc_body(trade, amount=1), "buyer", "BANK0")
    trade.expect("insufficient_funds", "lc.issue", lc_body(trade, "LC2", amount=4_001), "buyer", "BANK0")
    trade.expect("ok", "account.freeze", {"account": "seller"}, "BANK1")
    trade.expect("account_frozen", "lc.issue", lc_body(trade, "LC2", amount=1), "buyer", "BANK0")
    # Stage order: unknown_account (2) beats unauthorized (3), which beats lc_exists (4),
    # which beats account_frozen (5), which beats insufficient_funds (6).
    trade.expect("unknown_account", "lc.issue", {**lc_body(trade, "LC2"), "applicant": "nobody"}, "seller")
    trade.expect("unauthorized", "lc.issue", lc_body(trade), "buyer")
    trade.expect("lc_exists", "lc.issue", lc_body(trade), "buyer", "BANK0")
    trade.expect("account_frozen", "lc.issue", lc_body(trade, "LC2", amount=10**9), "buyer", "BANK0")


# -- lc.advise and lc.present --------------------------------------------------------

def test_lc_advise_failures(trade):
    trade.expect("unknown_lc", "lc.advise", {"id": "LC1"}, "BANK1")
    trade.expect("ok", "lc.issue", lc_body(trade), "buyer", "BANK0")
    trade.expect("unauthorized", "lc.advise", {"id": "LC1"}, "BANK0")  # the issuing bank cannot advise
    trade.expect("invalid_state", "lc.present", {"id": "LC1", "documents": GOOD_PRESENTATION}, "seller")
    trade.expect("ok", "lc.advise", {"id": "LC1"}, "BANK1")
    trade.expect("invalid_state", "lc.advise", {"id": "LC1"}, "BANK1")


def test_lc_present_failures(trade):
    trade.expect("unknown_lc", "lc.present", {"id": "LC1", "documents": GOOD_PRESENTATION}, "seller")
    issue_and_advise(trade)
    trade.expect("unauthorized", "lc.present", {"id": "LC1", "documents": GOOD_PRESENTATION}, "buyer")
    trade.expect("unauthorized", "lc.present", {"id": "LC1", "documents": GOOD_PRESENTATION}, "BANK1")
    trade.expect("invalid_body", "lc.present", {"id": "LC1", "documents": []}, "seller")
    trade.expect("ok", "lc.present", {"id": "LC1", "documents": GOOD_PRESENTATION}, "seller")
    trade.expect("invalid_state", "lc.present", {"id": "LC1", "documents": GOOD_PRESENTATION}, "seller")
    # Stage order: the signer (3) is checked before the state (4) and the documents (6).
    trade.expect("unauthorized", "lc.present", {"id": "LC1", "documents": presentation(("x", INVOICE))}, "buyer")


def test_lc_present_checks_documents_in_order(trade):
    issue_and_advise(trade)
    # documents_missing is reported before unknown_doc, which comes before the title check.
    trade.expect("documents_missing", "lc.present",
                 {"id": "LC1", "documents": presentation(("invoice", codec.sha256(b"forged")))}, "seller")
    trade.expect("unknown_doc", "lc.present",
                 {"id": "LC1", "documents": presentation(("invoice", codec.sha256(b"forged")),
                                                         ("bill_of_lading", CARRIER_BILL))}, "seller")


# -- lc.examine ----------------------------------------------------------------------

def test_lc_examine_failures(trade):
    trade.expect("unknown_lc", "lc.examine", {"id": "LC1", "accept": True}, "BANK0")
    issue_and_advise(trade)
    trade.expect("invalid_state", "lc.examine", {"id": "LC1", "accept": True}, "BANK0")
    trade.expect("ok", "lc.present", {"id": "LC1", "documents": GOOD_PRESENTATION}, "seller")
    trade.expect("unauthorized", "lc.examine", {"id": "LC1", "accept": True}, "BANK1")  # the advising bank
    trade.expect("unauthorized", "lc.examine", {"id": "LC1", "accept": True}, "buyer")
    trade.expect("invalid_body", "lc.examine", {"id": "LC1", "accept": "yes"}, "BANK0")
    trade.expect("invalid_body", "lc.examine", {"id": "LC1", "accept": True, "reason": "x" * 1025}, "BANK0")


def test_lc_examine_with_frozen_parties(trade):
    issue_and_advise(trade)
    trade.expect("ok", "lc.present", {"id": "LC1", "documents": GOOD_PRESENTATION}, "seller")
    trade.expect("ok", "account.freeze", {"account": "buyer"}, "BANK0")
    trade.expect("account_frozen", "lc.examine", {"id": "LC1", "accept": True}, "BANK0")  # a frozen applicant
    trade.expect("ok", "account.unfreeze", {"account": "buyer"}, "BANK0")
    trade.expect("ok", "account.freeze", {"account": "seller"}, "BANK1")
    trade.expect("account_frozen", "lc.examine", {"id": "LC1", "accept": True}, "BANK0")  # a frozen beneficiary
    # Refusing moves nothing, so it stays possible.
    trade.expect("ok", "lc.examine", {"id": "LC1", "accept": False}, "BANK0")


def test_lc_examine_fails_when_the_bill_was_passed_on(trade):
    issue_and_advise(trade)
    trade.expect("ok", "lc.present", {"id": "LC1", "documents": GOOD_PRESENTATION}, "seller")
    trade.expect("ok", "doc.transfer", {"hash": BILL, "to": "carrier"}, "seller")
    trade.expect("unauthorized", "lc.examine", {"id": "LC1", "accept": True}, "BANK0")
    trade.expect("ok", "doc.transfer", {"hash": BILL, "to": "seller"}, "carrier")
    trade.expect("ok", "lc.examine", {"id": "LC1", "accept": True}, "BANK0")
    assert doc_view(trade.state, BILL)["holder"] == "buyer"


def test_lc_examine_overflow(trade):
    issue_and_advise(trade)
    trade.expect("ok", "lc.present", {"id": "LC1", "documents": GOOD_PRESENTATION}, "seller")
    trade.expect("ok", "issue", {"account": "seller", "currency": "USD", "amount": AMOUNT_MAX - 5_999}, "BANK0")
    trade.expect("overflow", "lc.examine", {"id": "LC1", "accept": True}, "BANK0")


# -- lc.amend ------------------------------------------------------------------------

def test_lc_amend(trade):
    issue_and_advise(trade)
    trade.expect("ok", "lc.amend", {"id": "LC1", "amount": 8_000}, "BANK0", "seller")
    assert trade.balance("buyer", "USD") == (2_000, 8_000)
    trade.expect("ok", "lc.amend", {"id": "LC1", "amount": 1_000}, "BANK0", "seller")
    assert trade.balance("buyer", "USD") == (9_000, 1_000)
    new_expires = trade.time_ms + 900_000
    trade.expect("ok", "lc.amend", {"id": "LC1", "expires": new_expires}, "BANK0", "seller")
    view = lc_view(trade.state, "LC1")
    assert (view["amount"], view["expires"], view["status"]) == (1_000, new_expires, "advised")
    assert trade.state.next_expiry() == new_expires  # the expiry index follows the amendment
    assert history_types(trade)[-3:] == ["lc.amend"] * 3


def test_lc_amend_failures(trade):
    trade.expect("unknown_lc", "lc.amend", {"id": "LC1", "amount": 1}, "BANK0", "seller")
    issue_and_advise(trade)
    trade.expect("invalid_body", "lc.amend", {"id": "LC1"}, "BANK0", "seller")
    trade.expect("unauthorized", "lc.amend", {"id": "LC1", "amount": 1}, "BANK0")
    trade.expect("unauthorized", "lc.amend", {"id": "LC1", "amount": 1}, "seller")
    trade.expect("unauthorized", "lc.amend", {"id": "LC1", "amount": 1}, "BANK1", "seller")
    trade.expect("expired", "lc.amend", {"id": "LC1", "expires": trade.time_ms + 1_000}, "BANK0", "seller")
    # Amending beyond the applicant's available funds (4,000 are left beside the 6,000 reserved).
    trade.expect("insufficient_funds", "lc.amend", {"id": "LC1", "amount": 10_001}, "BANK0", "seller")
    trade.expect("ok", "lc.amend", {"id": "LC1", "amount": 10_000}, "BANK0", "seller")
    trade.expect("ok", "account.freeze", {"account": "buyer"}, "BANK0")
    trade.expect("account_frozen", "lc.amend", {"id": "LC1", "amount": 10_001}, "BANK0", "seller")
    # Lowering the amount returns money and is allowed even for a frozen applicant.
    trade.expect("ok", "lc.amend", {"id": "LC1", "amount": 9_000}, "BANK0", "seller")
    trade.expect("ok", "account.unfreeze", {"account": "buyer"}, "BANK0")
    trade.expect("ok", "lc.present", {"id": "LC1", "documents": GOOD_PRESENTATION}, "seller")
    trade.expect("invalid_state", "lc.amend", {"id": "LC1", "amount": 1}, "BANK0", "seller")  # under examination
    trade.expect("ok", "lc.examine", {"id": "LC1", "accept": False}, "BANK0")
    trade.expect("ok", "lc.amend", {"id": "LC1", "amount": 5_000}, "BANK0", "seller")  # refused: amendable
    assert lc_view(trade.state, "LC1")["status"] == "refused"
    # Stage order: expired (4) beats insufficient_funds (6).
    trade.expect("expired", "lc.amend", {"id": "LC1", "amount": 10**9, "expires": 1}, "BANK0", "seller")


# -- lc.cancel -----------------------------------------------------------------------

@pytest.mark.parametrize("steps", [0, 1, 2, 3])
def test_lc_cancel_from_every_live_state(trade, steps):
    trade.expect("ok", "lc.issue", lc_body(trade), "buyer", "BANK0")
    script = [("lc.advise", {"id": "LC1"}, ["BANK1"]),
              ("lc.present", {"id": "LC1", "documents": GOOD_PRESENTATION}, ["seller"]),
              ("lc.examine", {"id": "LC1", "accept": False}, ["BANK0"])]
    for tx_type, body, signers in script[:steps]:
        trade.expect("ok", tx_type, body, *signers)
    trade.expect("ok", "account.freeze", {"account": "buyer"}, "BANK0")  # cancellation returns money anyway
    trade.expect("ok", "lc.cancel", {"id": "LC1"}, "BANK0", "seller")
    assert lc_view(trade.state, "LC1")["status"] == "cancelled"
    assert trade.balance("buyer", "USD") == (10_000, 0)
    assert trade.state.next_expiry() is None
    trade.expect("invalid_state", "lc.cancel", {"id": "LC1"}, "BANK0", "seller")


def test_lc_cancel_failures(trade):
    trade.expect("unknown_lc", "lc.cancel", {"id": "LC1"}, "BANK0", "seller")
    issue_and_advise(trade)
    trade.expect("unauthorized", "lc.cancel", {"id": "LC1"}, "BANK0")  # the beneficiary must agree
    trade.expect("unauthorized", "lc.cancel", {"id": "LC1"}, "buyer", "seller")


# -- expiry --------------------------------------------------------------------------

def test_lc_expires_at_block_start_to_a_frozen_applicant(trade):
    issue_and_advise(trade, expires_in_ms=10_000)
    expires = lc_view(trade.state, "LC1")["expires"]
    assert trade.state.next_expiry() == expires
    trade.expect("ok", "account.freeze", {"account": "buyer"}, "BANK0")
    trade.block(time_ms=expires - 1)
    assert lc_view(trade.state, "LC1")["status"] == "advised"
    outcome = trade.block(trade.tx("lc.present", {"id": "LC1", "documents": GOOD_PRESENTATION}, "seller"),
                          time_ms=expires)
    assert outcome.results == ["invalid_state"]  # expired before the block's transactions ran
    view = lc_view(trade.state, "LC1")
    assert view["status"] == "expired"
    assert view["history"][-1] == {"height": trade.height, "type": "expired", "tx_id": None}
    assert trade.balance("buyer", "USD") == (10_000, 0)
    assert trade.state.next_expiry() is None
    trade.expect("invalid_state", "lc.cancel", {"id": "LC1"}, "BANK0", "seller")
    trade.expect("invalid_state", "lc.amend", {"id": "LC1", "expires": trade.time_ms + 10**6}, "BANK0", "seller")


def test_presented_lc_expires_too(trade):
    issue_and_advise(trade, expires_in_ms=10_000)
    trade.expect("ok", "lc.present", {"id": "LC1", "documents": GOOD_PRESENTATION}, "seller")
    trade.block(time_ms=lc_view(trade.state, "LC1")["expires"] + 5)
    assert lc_view(trade.state, "LC1")["status"] == "expired"
    trade.expect("invalid_state", "lc.examine", {"id": "LC1", "accept": True}, "BANK0")


def test_expiries_in_one_block_run_in_order(trade):
    expires = trade.time_ms + 10_000
    trade.expect("ok", "lc.issue", {**lc_body(trade, "LC2"), "expires": expires}, "buyer", "BANK0")
    trade.expect("ok", "lc.issue", {**lc_body(trade, "LC1", amount=1_000), "expires": expires + 1}, "buyer",
                 "BANK0")
    trade.expect("ok", "hold.create", {"id": "H1", "from": "buyer", "to": "seller", "currency": "USD",
                                       "amount": 3_000, "expires": expires}, "buyer")
    assert trade.state.due_expiries(expires + 1) == ["hold/H1", "lc/LC2", "lc/LC1"]
    outcome = trade.block(time_ms=expires + 1)
    assert sorted(outcome.changes) == ["acct/buyer", "hold/H1", "lc/LC1", "lc/LC2"]
    assert trade.balance("buyer", "USD") == (10_000, 0)


# -- documents -----------------------------------------------------------------------

def test_doc_register(trade):
    doc_hash = codec.sha256(b"certificate of origin")
    body = {"hash": doc_hash, "type": "certificate_of_origin", "holder": "seller",
            "meta": {"issuer": "Chamber of Commerce", "country": "DE"}}
    outcome = trade.expect("ok", "doc.register", body, "seller", "BANK1")
    tx_id = outcome.changes[f"doc/{doc_hash.hex()}"]["history"][0]["tx_id"]
    assert doc_view(trade.state, doc_hash) == {
        "hash": doc_hash.hex(), "type": "certificate_of_origin", "holder": "seller",
        "meta": {"country": "DE", "issuer": "Chamber of Commerce"},
        "history": [{"height": trade.height, "holder": "seller", "tx_id": tx_id.hex()}]}
    assert doc_view(trade.state, INVOICE)["meta"] == {}
    assert doc_view(trade.state, codec.sha256(b"nothing")) is None


def test_doc_register_failures(trade):
    doc_hash = codec.sha256(b"new doc")
    body = {"hash": doc_hash, "type": "invoice", "holder": "seller"}
    trade.expect("invalid_body", "doc.register", {**body, "type": "Invoice"}, "seller", "BANK1")
    trade.expect("unknown_account", "doc.register", {**body, "holder": "nobody"}, "seller", "BANK1")
    trade.expect("unauthorized", "doc.register", body, "seller")  # the holder's bank must vouch
    trade.expect("unauthorized", "doc.register", body, "BANK1")
    trade.expect("unauthorized", "doc.register", body, "seller", "BANK0")  # another bank
    # The first registration of a hash wins, whoever tries again.
    trade.expect("doc_exists", "doc.register", {**body, "hash": INVOICE}, "seller", "BANK1")
    trade.expect("doc_exists", "doc.register", {**body, "hash": BILL, "holder": "buyer"}, "buyer", "BANK0")
    trade.expect("ok", "account.freeze", {"account": "seller"}, "BANK1")
    trade.expect("account_frozen", "doc.register", body, "seller", "BANK1")
    trade.expect("doc_exists", "doc.register", {**body, "hash": INVOICE}, "seller", "BANK1")  # (4) before (5)


def test_doc_transfer(trade):
    trade.expect("ok", "doc.transfer", {"hash": BILL, "to": "carrier"}, "seller")
    trade.expect("ok", "doc.transfer", {"hash": BILL, "to": "buyer"}, "carrier")
    view = doc_view(trade.state, BILL)
    assert view["holder"] == "buyer"
    assert [entry["holder"] for entry in view["history"]] == ["seller", "carrier", "buyer"]


def test_doc_transfer_failures(trade):
    trade.expect("unknown_doc", "doc.transfer", {"hash": codec.sha256(b"x"), "to": "buyer"}, "seller")
    trade.expect("unknown_account", "doc.transfer", {"hash": BILL, "to": "nobody"}, "seller")
    trade.expect("unauthorized", "doc.transfer", {"hash": BILL, "to": "buyer"}, "buyer")
    trade.expect("unauthorized", "doc.transfer", {"hash": BILL, "to": "buyer"}, "BANK1")
    trade.expect("invalid_state", "doc.transfer", {"hash": BILL, "to": "seller"}, "seller")
    trade.expect("not_transferable", "doc.transfer", {"hash": INVOICE, "to": "buyer"}, "seller")
    trade.expect("not_transferable", "doc.transfer", {"hash": PACKING, "to": "buyer"}, "seller")
    trade.expect("ok", "account.freeze", {"account": "buyer"}, "BANK0")
    trade.expect("account_frozen", "doc.transfer", {"hash": BILL, "to": "buyer"}, "seller")
    # Stage order: unknown_doc (2) beats a bad signer (3); account_frozen (5) beats not_transferable (6).
    trade.expect("unknown_doc", "doc.transfer", {"hash": codec.sha256(b"x"), "to": "buyer"}, "carrier")
    trade.expect("account_frozen", "doc.transfer", {"hash": INVOICE, "to": "buyer"}, "seller")
    trade.expect("ok", "account.freeze", {"account": "carrier"}, "BANK2")
    trade.expect("account_frozen", "doc.transfer", {"hash": CARRIER_BILL, "to": "seller"}, "carrier")
    trade.expect("invalid_body", "doc.transfer", {"hash": BILL.hex(), "to": "buyer"}, "seller")


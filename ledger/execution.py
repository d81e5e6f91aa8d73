"""Deterministic execution of a block's transactions (contract section 3).

`execute_block(state, height, time_ms, txs)` is pure: it reads the committed state
through an overlay, never changes it, and depends on nothing but its arguments (no
clock, no randomness, no iteration over unordered containers). It returns one result
code per transaction, every record the block wrote, and the new state root; the
caller commits them with `LedgerState.apply`.

A block first expires every pending hold and live letter of credit whose `expires` is
at or before the block time, in (expires, key) order, then runs each transaction in
order. A transaction's checks run in the contract's stages, the first failure giving
its code, each stage covering every leg or party before the next:

    1 body shape        invalid_body
    2 existence         unknown_account, unknown_member, unknown_hold, unknown_lc, unknown_doc
    3 signers           unauthorized, not_issuer, insufficient_approvals
    4 lifecycle state   invalid_state, *_exists, expired
    5 frozen accounts   account_frozen
    6 funds, documents  insufficient_funds, documents_missing, unknown_doc, not_transferable, overflow

Every handler below is written as those stages in that order and writes only after
its last check, into a per-transaction scratch map that is merged into the block only
when the result is `ok`: a failed transaction changes nothing.

Balances: an account holds, per currency, an available amount ("balances") and a
reserved amount ("held", by holds and letters of credit). The two together never
exceed 2^63-1: a credit that would break this fails `overflow`, which is what lets
cancellation and expiry always return a reservation without any check.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ledger.bodies import AMOUNT_MAX, check_body
from ledger.state import (
    ACCOUNT_PREFIX,
    HOLD_PENDING,
    HOLD_PREFIX,
    LC_LIVE_STATUSES,
    LC_PREFIX,
    LedgerState,
    account_key,
    doc_key,
    hold_key,
    invariant,
    issuer_key,
    lc_key,
    member_key,
    state_root_after,
)
from ledger.tx import SignedTx

__all__ = ["BlockOutcome", "RESULT_MESSAGES", "execute_block", "state_root_after"]

OK = "ok"
BILL_OF_LADING = "bill_of_lading"
# An LC can still be amended from these; presented documents must be examined first.
LC_ADVISABLE_STATUSES = frozenset({"issued"})
LC_AMENDABLE_STATUSES = frozenset({"issued", "advised", "refused"})
LC_EXAMINABLE_STATUSES = frozenset({"presented"})
LC_PRESENTABLE_STATUSES = frozenset({"advised", "refused"})

RESULT_MESSAGES: dict[str, str] = {
    "ok": "executed",
    "insufficient_funds": "the available balance is too small",
    "unauthorized": "the transaction lacks a required signature",
    "unknown_account": "no such account",
    "account_exists": "an account with this id already exists",
    "account_frozen": "a frozen account takes part",
    "not_issuer": "not signed by the currency's issuer, or the currency has no issuer",
    "unknown_member": "no such member",
    "member_exists": "a member with this id already exists",
    "insufficient_approvals": "too few members approved (more than two thirds are needed)",
    "unknown_hold": "no such hold",
    "hold_exists": "a hold with this id already exists",
    "unknown_lc": "no such letter of credit",
    "lc_exists": "a letter of credit with this id already exists",
    "invalid_state": "not allowed in the current state",
    "documents_missing": "a required document type was not presented",
    "doc_exists": "this document is already registered",
    "unknown_doc": "no such registered document (of that type)",
    "not_transferable": "only a bill_of_lading can be transferred",
    "expired": "the expiry time is at or before the block time",
    "invalid_body": "the transaction body is malformed",
    "overflow": "a balance would exceed 2^63-1",
}


@dataclass(frozen=True, slots=True)
class BlockOutcome:
    results: list[str]  # one result code per tx, in order: "ok" or a section-3 code
    changes: dict[str, object | None]  # every state key the block wrote (None = deleted), expiries included
    state_root: bytes


# -- overlays over the committed state -----------------------------------------------

class _BlockOverlay:
    """The records this block has written so far, read over the untouched base state."""

    __slots__ = ("base", "writes", "added_member_ids")

    def __init__(self, base: LedgerState):
        self.base = base
        self.writes: dict[str, object | None] = {}
        self.added_member_ids: list[str] = []

    def get(self, key: str):
        writes = self.writes
        if key in writes:
            return writes[key]
        return self.base.get(key)

    def member_ids(self) -> list[str]:
        if not self.added_member_ids:
            return self.base.member_ids()
        return sorted(self.base.member_ids() + self.added_member_ids)

    def commit(self, tx_writes: dict[str, object | None], added_member_id: str | None) -> None:
        """Merge a successful transaction's writes (member.add names the member it added)."""
        if added_member_id is not None:
            invariant(self.get(member_key(added_member_id)) is None, "member.add of an existing member")
            self.added_member_ids.append(added_member_id)
        self.writes.update(tx_writes)


class _TxContext:
    """One transaction's view: its own scratch writes over the block's writes over the base state."""

    # `get` reads the three layers directly rather than through _BlockOverlay.get: it
    # runs several times for every transaction of every block.
    __slots__ = ("block", "writes", "_block_writes", "_base_get", "signers", "height", "time_ms", "tx_id",
                 "tx_type")

    def __init__(self, block: _BlockOverlay, stx: SignedTx, height: int, time_ms: int):
        self.block = block
        self.writes: dict[str, object | None] = {}
        self._block_writes = block.writes
        self._base_get = block.base.get
        self.signers = frozenset(stx.signers)
        self.height = height
        self.time_ms = time_ms
        self.tx_id = stx.tx_id
        self.tx_type = stx.type

    def get(self, key: str):
        writes = self.writes
        if key in writes:
            return writes[key]
        writes = self._block_writes
        if key in writes:
            return writes[key]
        return self._base_get(key)

    def put(self, key: str, record) -> None:
        self.writes[key] = record

    def account(self, account_id: str):
        return self.get(ACCOUNT_PREFIX + account_id)

    def existing_account(self, account_id: str) -> dict:
        """An account a stored hold, LC or document refers to: accounts are never removed."""
        account = self.get(account_key(account_id))
        invariant(account is not None, f"stored record refers to a missing account {account_id}")
        return account

    def admin_key(self, member_id: str) -> bytes:
        member = self.get(member_key(member_id))
        invariant(member is not None, f"stored record refers to a missing member {member_id}")
        return member["admin_key"]

    def lc_history(self, lc: dict) -> list:
        return lc["history"] + [{"height": self.height, "type": self.tx_type, "tx_id": self.tx_id}]

    def doc_history(self, doc: dict, holder: str) -> list:
        return doc["history"] + [{"height": self.height, "holder": holder, "tx_id": self.tx_id}]


# -- balances: records are never changed in place -----------------------------------

def _available(account: dict, currency: str) -> int:
    return account["balances"].get(currency, 0)


def _total(account: dict, currency: str) -> int:
    return account["balances"].get(currency, 0) + account["held"].get(currency, 0)


def _adjusted(amounts: dict, currency: str, delta: int) -> dict:
    """A copy of a currency -> amount map with `delta` added; zero amounts are left out."""
    result = amounts.copy()
    value = result.get(currency, 0) + delta
    invariant(value >= 0, f"{currency} amount would go negative")
    if value:
        result[currency] = value
    else:
        result.pop(currency, None)
    return result


def _with_amounts(account: dict, currency: str, available_delta: int, held_delta: int) -> dict:
    """A new account record with its available and held amounts of `currency` moved."""
    updated = account.copy()
    if available_delta:
        updated["balances"] = _adjusted(account["balances"], currency, available_delta)
    if held_delta:
        updated["held"] = _adjusted(account["held"], currency, held_delta)
    total = updated["balances"].get(currency, 0) + updated["held"].get(currency, 0)
    invariant(total <= AMOUNT_MAX, "an account's total exceeds 2^63-1")
    return updated


def _can_credit(account: dict, currency: str, amount: int) -> bool:
    return _total(account, currency) + amount <= AMOUNT_MAX


# -- accounts ------------------------------------------------------------------------

def _account_open(ctx: _TxContext, body: dict) -> str:
    owner = ctx.get(member_key(body["owner"]))
    if owner is None:
        return "unknown_member"
    if owner["admin_key"] not in ctx.signers:
        return "unauthorized"
    key = account_key(body["id"])
    if ctx.get(key) is not None:
        return "account_exists"
    ctx.put(key, {"id": body["id"], "owner": body["owner"], "key": body["key"],
                  "frozen": False, "balances": {}, "held": {}})
    return OK


def _set_frozen(ctx: _TxContext, body: dict, frozen: bool) -> str:
    account = ctx.account(body["account"])
    if account is None:
        return "unknown_account"
    if ctx.admin_key(account["owner"]) not in ctx.signers:
        return "unauthorized"
    if account["frozen"] == frozen:
        return "invalid_state"  # already (un)frozen: say so rather than report a change
    ctx.put(account_key(body["account"]), {**account, "frozen": frozen})
    return OK


def _account_freeze(ctx: _TxContext, body: dict) -> str:
    return _set_frozen(ctx, body, True)


def _account_unfreeze(ctx: _TxContext, body: dict) -> str:
    return _set_frozen(ctx, body, False)


def _account_rotate_key(ctx: _TxContext, body: dict) -> str:
    account = ctx.account(body["account"])
    if account is None:
        return "unknown_account"
    if account["key"] not in ctx.signers and ctx.admin_key(account["owner"]) not in ctx.signers:
        return "unauthorized"
    ctx.put(account_key(body["account"]), {**account, "key": body["new_key"]})
    return OK


# -- money ---------------------------------------------------------------------------

def _issue(ctx: _TxContext, body: dict) -> str:
    account = ctx.account(body["account"])
    if account is None:
        return "unknown_account"
    currency, amount = body["currency"], body["amount"]
    issuer = ctx.get(issuer_key(currency))
    if issuer is None or ctx.admin_key(issuer["member"]) not in ctx.signers:
        return "not_issuer"
    if account["frozen"]:
        return "account_frozen"
    if not _can_credit(account, currency, amount):
        return "overflow"
    ctx.put(account_key(body["account"]), _with_amounts(account, currency, amount, 0))
    return OK


def _redeem(ctx: _TxContext, body: dict) -> str:
    account = ctx.account(body["account"])
    if account is None:
        return "unknown_account"
    if account["key"] not in ctx.signers:
        return "unauthorized"
    if account["frozen"]:
        return "account_frozen"
    currency, amount = body["currency"], body["amount"]
    if _available(account, currency) < amount:
        return "insufficient_funds"
    ctx.put(account_key(body["account"]), _with_amounts(account, currency, -amount, 0))
    return OK


def _transfer(ctx: _TxContext, body: dict) -> str:
    source = ctx.account(body["from"])
    target = ctx.account(body["to"])
    if source is None or target is None:
        return "unknown_account"
    if source["key"] not in ctx.signers:
        return "unauthorized"
    if source["frozen"] or target["frozen"]:
        return "account_frozen"
    currency, amount = body["currency"], body["amount"]
    if _available(source, currency) < amount:
        return "insufficient_funds"
    if not _can_credit(target, currency, amount):
        return "overflow"
    # from != to (stage 1), so the two records are distinct.
    ctx.put(account_key(body["from"]), _with_amounts(source, currency, -amount, 0))
    ctx.put(account_key(body["to"]), _with_amounts(target, currency, amount, 0))
    return OK


def _pvp(ctx: _TxContext, body: dict) -> str:
    legs = body["legs"]
    accounts: dict[str, dict] = {}  # account id -> running record, in order of first mention
    for leg in legs:
        for account_id in (leg["from"], leg["to"]):
            if account_id not in accounts:
                account = ctx.account(account_id)
                if account is None:
                    return "unknown_account"
                accounts[account_id] = account
    for leg in legs:
        if accounts[leg["from"]]["key"] not in ctx.signers:
            return "unauthorized"
    for account in accounts.values():
        if account["frozen"]:
            return "account_frozen"
    # Legs settle in order on running balances: a leg may spend what an earlier one delivered.
    for leg in legs:
        currency, amount = leg["currency"], leg["amount"]
        source, target = accounts[leg["from"]], accounts[leg["to"]]
        if _available(source, currency) < amount:
            return "insufficient_funds"
        if not _can_credit(target, currency, amount):
            return "overflow"
        accounts[leg["from"]] = _with_amounts(source, currency, -amount, 0)
        accounts[leg["to"]] = _with_amounts(accounts[leg["to"]], currency, amount, 0)
    for account_id, account in accounts.items():
        ctx.put(account_key(account_id), account)
    return OK


# -- holds ---------------------------------------------------------------------------

def _hold_create(ctx: _TxContext, body: dict) -> str:
    source = ctx.account(body["from"])
    target = ctx.account(body["to"])
    if source is None or target is None:
        return "unknown_account"
    if source["key"] not in ctx.signers:
        return "unauthorized"
    key = hold_key(body["id"])
    if ctx.get(key) is not None:
        return "hold_exists"  # ids are never reused, whatever became of the old hold
    if body["expires"] <= ctx.time_ms:
        return "expired"
    if source["frozen"] or target["frozen"]:
        return "account_frozen"
    currency, amount = body["currency"], body["amount"]
    if _available(source, currency) < amount:
        return "insufficient_funds"
    ctx.put(account_key(body["from"]), _with_amounts(source, currency, -amount, amount))
    ctx.put(key, {"id": body["id"], "from": body["from"], "to": body["to"], "currency": currency,
                  "amount": amount, "arbiter": body.get("arbiter"), "expires": body["expires"],
                  "status": HOLD_PENDING})
    return OK


def _signed_by_party_or_arbiter(ctx: _TxContext, hold: dict, party_id: str) -> bool:
    if ctx.existing_account(party_id)["key"] in ctx.signers:
        return True
    return hold["arbiter"] is not None and hold["arbiter"] in ctx.signers


def _hold_settle(ctx: _TxContext, body: dict) -> str:
    hold = ctx.get(hold_key(body["id"]))
    if hold is None:
        return "unknown_hold"
    if not _signed_by_party_or_arbiter(ctx, hold, hold["from"]):
        return "unauthorized"
    if hold["status"] != HOLD_PENDING:
        return "invalid_state"
    invariant(hold["expires"] > ctx.time_ms, "a due hold survived the block's expiry pass")
    source = ctx.existing_account(hold["from"])
    target = ctx.existing_account(hold["to"])
    if source["frozen"] or target["frozen"]:
        return "account_frozen"
    currency, amount = hold["currency"], hold["amount"]
    if not _can_credit(target, currency, amount):
        return "overflow"
    ctx.put(account_key(hold["from"]), _with_amounts(source, currency, 0, -amount))
    ctx.put(account_key(hold["to"]), _with_amounts(target, currency, amount, 0))
    ctx.put(hold_key(body["id"]), {**hold, "status": "settled"})
    return OK


def _hold_cancel(ctx: _TxContext, body: dict) -> str:
    hold = ctx.get(hold_key(body["id"]))
    if hold is None:
        return "unknown_hold"
    if not _signed_by_party_or_arbiter(ctx, hold, hold["to"]):
        return "unauthorized"
    if hold["status"] != HOLD_PENDING:
        return "invalid_state"
    # Cancellation always returns the reservation, also to a frozen account; the
    # reserved amount already counts in the account's total, so it cannot overflow.
    source = ctx.existing_account(hold["from"])
    ctx.put(account_key(hold["from"]), _with_amounts(source, hold["currency"], hold["amount"], -hold["amount"]))
    ctx.put(hold_key(body["id"]), {**hold, "status": "cancelled"})
    return OK


# -- letters of credit ---------------------------------------------------------------

def _lc_issue(ctx: _TxContext, body: dict) -> str:
    applicant = ctx.account(body["applicant"])
    beneficiary = ctx.account(body["beneficiary"])
    if applicant is None or beneficiary is None:
        return "unknown_account"
    if ctx.get(member_key(body["advising_bank"])) is None:
        return "unknown_member"
    issuing_bank = applicant["owner"]  # fixed at issue, even if ownership rules change later
    if applicant["key"] not in ctx.signers or ctx.admin_key(issuing_bank) not in ctx.signers:
        return "unauthorized"
    key = lc_key(body["id"])
    if ctx.get(key) is not None:
        return "lc_exists"
    if body["expires"] <= ctx.time_ms:
        return "expired"
    if applicant["frozen"] or beneficiary["frozen"]:
        return "account_frozen"
    currency, amount = body["currency"], body["amount"]
    if _available(applicant, currency) < amount:
        return "insufficient_funds"
    ctx.put(account_key(body["applicant"]), _with_amounts(applicant, currency, -amount, amount))
    ctx.put(key, {
        "id": body["id"], "status": "issued",
        "applicant": body["applicant"], "beneficiary": body["beneficiary"],
        "issuing_bank": issuing_bank, "advising_bank": body["advising_bank"],
        "currency": currency, "amount": amount, "expires": body["expires"],
        "documents": list(body["documents"]), "terms": body.get("terms"),
        "presented": [],
        "history": [{"height": ctx.height, "type": ctx.tx_type, "tx_id": ctx.tx_id}],
    })
    return OK


def _lc_in_step(ctx: _TxContext, body: dict, signed: Callable[[_TxContext, dict], bool],
                statuses: frozenset[str]) -> tuple[dict | None, str]:
    """The LC a lifecycle step acts on, or why the step fails: stages 2 to 4 of every step."""
    lc = ctx.get(lc_key(body["id"]))
    if lc is None:
        return None, "unknown_lc"
    if not signed(ctx, lc):
        return None, "unauthorized"
    if lc["status"] not in statuses:
        return None, "invalid_state"
    return lc, OK


def _signed_by_advising_bank(ctx: _TxContext, lc: dict) -> bool:
    return ctx.admin_key(lc["advising_bank"]) in ctx.signers


def _signed_by_beneficiary(ctx: _TxContext, lc: dict) -> bool:
    return ctx.existing_account(lc["beneficiary"])["key"] in ctx.signers


def _signed_by_issuing_bank(ctx: _TxContext, lc: dict) -> bool:
    return ctx.admin_key(lc["issuing_bank"]) in ctx.signers


def _signed_by_issuing_bank_and_beneficiary(ctx: _TxContext, lc: dict) -> bool:
    return _signed_by_issuing_bank(ctx, lc) and _signed_by_beneficiary(ctx, lc)


def _lc_advise(ctx: _TxContext, body: dict) -> str:
    lc, code = _lc_in_step(ctx, body, _signed_by_advising_bank, LC_ADVISABLE_STATUSES)
    if lc is None:
        return code
    ctx.put(lc_key(body["id"]), {**lc, "status": "advised", "history": ctx.lc_history(lc)})
    return OK


def _lc_present(ctx: _TxContext, body: dict) -> str:
    lc, code = _lc_in_step(ctx, body, _signed_by_beneficiary, LC_PRESENTABLE_STATUSES)
    if lc is None:
        return code
    presented = body["documents"]
    presented_types = {document["type"] for document in presented}
    for required_type in lc["documents"]:
        if required_type not in presented_types:
            return "documents_missing"
    registered = [ctx.get(doc_key(document["hash"])) for document in presented]
    for document, record in zip(presented, registered):
        if record is None or record["type"] != document["type"]:
            return "unknown_doc"
    for record in registered:
        if record["type"] == BILL_OF_LADING and record["holder"] != lc["beneficiary"]:
            return "unauthorized"  # only the holder of the title may present it
    ctx.put(lc_key(body["id"]), {
        **lc, "status": "presented",
        "presented": [{"type": document["type"], "hash": document["hash"]} for document in presented],
        "history": ctx.lc_history(lc),
    })
    return OK


def _lc_examine(ctx: _TxContext, body: dict) -> str:
    lc, code = _lc_in_step(ctx, body, _signed_by_issuing_bank, LC_EXAMINABLE_STATUSES)
    if lc is None:
        return code
    if not body["accept"]:
        # The reason stays in the transaction; the history entry points to it.
        ctx.put(lc_key(body["id"]), {**lc, "status": "refused", "history": ctx.lc_history(lc)})
        return OK
    applicant = ctx.existing_account(lc["applicant"])
    beneficiary = ctx.existing_account(lc["beneficiary"])
    if applicant["frozen"] or beneficiary["frozen"]:
        return "account_frozen"
    bills = [(document["hash"], ctx.get(doc_key(document["hash"])))
             for document in lc["presented"] if document["type"] == BILL_OF_LADING]
    for _, bill in bills:
        if bill["holder"] != lc["beneficiary"]:
            return "unauthorized"  # the title was passed on since it was presented
    currency, amount = lc["currency"], lc["amount"]
    if not _can_credit(beneficiary, currency, amount):
        return "overflow"
    # Documents against payment, in one step: the money to the beneficiary, the title to the applicant.
    ctx.put(account_key(lc["applicant"]), _with_amounts(applicant, currency, 0, -amount))
    ctx.put(account_key(lc["beneficiary"]), _with_amounts(beneficiary, currency, amount, 0))
    for bill_hash, bill in bills:
        ctx.put(doc_key(bill_hash), {**bill, "holder": lc["applicant"],
                                     "history": ctx.doc_history(bill, lc["applicant"])})
    ctx.put(lc_key(body["id"]), {**lc, "status": "paid", "history": ctx.lc_history(lc)})
    return OK


def _lc_amend(ctx: _TxContext, body: dict) -> str:
    lc, code = _lc_in_step(ctx, body, _signed_by_issuing_bank_and_beneficiary, LC_AMENDABLE_STATUSES)
    if lc is None:
        return code
    expires = body.get("expires", lc["expires"])
    if expires <= ctx.time_ms:
        return "expired"
    currency = lc["currency"]
    amount = body.get("amount", lc["amount"])
    increase = amount - lc["amount"]  # negative: part of the reservation returns
    applicant = ctx.existing_account(lc["applicant"])
    if increase > 0 and applicant["frozen"]:
        return "account_frozen"
    if increase > 0 and _available(applicant, currency) < increase:
        return "insufficient_funds"
    if increase:
        ctx.put(account_key(lc["applicant"]), _with_amounts(applicant, currency, -increase, increase))
    ctx.put(lc_key(body["id"]), {**lc, "amount": amount, "expires": expires, "history": ctx.lc_history(lc)})
    return OK


def _lc_cancel(ctx: _TxContext, body: dict) -> str:
    # Not from paid, expired or cancelled.
    lc, code = _lc_in_step(ctx, body, _signed_by_issuing_bank_and_beneficiary, LC_LIVE_STATUSES)
    if lc is None:
        return code
    applicant = ctx.existing_account(lc["applicant"])
    ctx.put(account_key(lc["applicant"]), _with_amounts(applicant, lc["currency"], lc["amount"], -lc["amount"]))
    ctx.put(lc_key(body["id"]), {**lc, "status": "cancelled", "history": ctx.lc_history(lc)})
    return OK


# -- documents -----------------------------------------------------------------------

def _doc_register(ctx: _TxContext, body: dict) -> str:
    holder = ctx.account(body["holder"])
    if holder is None:
        return "unknown_account"
    if holder["key"] not in ctx.signers or ctx.admin_key(holder["owner"]) not in ctx.signers:
        return "unauthorized"
    key = doc_key(body["hash"])
    if ctx.get(key) is not None:
        return "doc_exists"
    if holder["frozen"]:
        return "account_frozen"
    ctx.put(key, {"hash": body["hash"], "type": body["type"], "holder": body["holder"],
                  "meta": dict(body.get("meta", {})),
                  "history": [{"height": ctx.height, "holder": body["holder"], "tx_id": ctx.tx_id}]})
    return OK


def _doc_transfer(ctx: _TxContext, body: dict) -> str:
    key = doc_key(body["hash"])
    doc = ctx.get(key)
    if doc is None:
        return "unknown_doc"
    target = ctx.account(body["to"])
    if target is None:
        return "unknown_account"
    holder = ctx.existing_account(doc["holder"])
    if holder["key"] not in ctx.signers:
        return "unauthorized"
    if body["to"] == doc["holder"]:
        return "invalid_state"  # already the holder: nothing would change
    if holder["frozen"] or target["frozen"]:
        return "account_frozen"
    if doc["type"] != BILL_OF_LADING:
        return "not_transferable"
    ctx.put(key, {**doc, "holder": body["to"], "history": ctx.doc_history(doc, body["to"])})
    return OK


# -- members -------------------------------------------------------------------------

def _approvals(ctx: _TxContext, member_ids: list[str]) -> int:
    """How many of these members' admin keys signed (each member counted once)."""
    return sum(1 for member_id in member_ids if ctx.admin_key(member_id) in ctx.signers)


def _threshold_code(approvals: int, voters: int) -> str | None:
    """None when more than two thirds approved, else why not."""
    if 3 * approvals > 2 * voters:
        return None
    return "insufficient_approvals" if approvals else "unauthorized"


def _member_add(ctx: _TxContext, body: dict) -> str:
    member_ids = ctx.block.member_ids()
    code = _threshold_code(_approvals(ctx, member_ids), len(member_ids))
    if code is not None:
        return code
    key = member_key(body["id"])
    if ctx.get(key) is not None:
        return "member_exists"
    ctx.put(key, {"id": body["id"], "name": body["name"], "admin_key": body["admin_key"]})
    return OK


def _member_rotate_key(ctx: _TxContext, body: dict) -> str:
    key = member_key(body["id"])
    member = ctx.get(key)
    if member is None:
        return "unknown_member"
    if member["admin_key"] not in ctx.signers:
        # Recovery from a lost or stolen key: more than two thirds of the other members.
        others = [member_id for member_id in ctx.block.member_ids() if member_id != body["id"]]
        code = _threshold_code(_approvals(ctx, others), len(others))
        if code is not None:
            return code
    ctx.put(key, {**member, "admin_key": body["new_key"]})
    return OK


Handler = Callable[[_TxContext, dict], str]

_HANDLERS: dict[str, Handler] = {
    "account.open": _account_open,
    "account.freeze": _account_freeze,
    "account.unfreeze": _account_unfreeze,
    "account.rotate_key": _account_rotate_key,
    "issue": _issue,
    "redeem": _redeem,
    "transfer": _transfer,
    "pvp": _pvp,
    "hold.create": _hold_create,
    "hold.settle": _hold_settle,
    "hold.cancel": _hold_cancel,
    "lc.issue": _lc_issue,
    "lc.advise": _lc_advise,
    "lc.present": _lc_present,
    "lc.examine": _lc_examine,
    "lc.amend": _lc_amend,
    "lc.cancel": _lc_cancel,
    "doc.register": _doc_register,
    "doc.transfer": _doc_transfer,
    "member.add": _member_add,
    "member.rotate_key": _member_rotate_key,
}


# -- blocks --------------------------------------------------------------------------

def _expire_due(block: _BlockOverlay, height: int, time_ms: int) -> None:
    """End every pending hold and live LC with expires <= time_ms, releasing its reservation."""
    for key in block.base.due_expiries(time_ms):
        record = block.base.get(key)
        invariant(record["expires"] <= time_ms, "expiry index returned an item not yet due")
        if key.startswith(HOLD_PREFIX):
            invariant(record["status"] == HOLD_PENDING, "expiry index holds a finished hold")
            reserving_account_id = record["from"]
            block.writes[key] = {**record, "status": "expired"}
        else:
            invariant(key.startswith(LC_PREFIX) and record["status"] in LC_LIVE_STATUSES,
                      "expiry index holds a finished LC")
            reserving_account_id = record["applicant"]
            history = record["history"] + [{"height": height, "type": "expired", "tx_id": None}]
            block.writes[key] = {**record, "status": "expired", "history": history}
        # The reservation returns even to a frozen account; it cannot overflow (see module doc).
        reserving_key = account_key(reserving_account_id)
        account = block.get(reserving_key)
        invariant(account is not None, f"{key} refers to a missing account {reserving_account_id}")
        block.writes[reserving_key] = _with_amounts(account, record["currency"], record["amount"],
                                                    -record["amount"])


def _execute_tx(block: _BlockOverlay, stx: SignedTx, height: int, time_ms: int) -> str:
    if check_body(stx.type, stx.body) is not None:
        return "invalid_body"
    handler = _HANDLERS[stx.type]  # the envelope parser admits only known types
    ctx = _TxContext(block, stx, height, time_ms)
    code = handler(ctx, stx.body)
    invariant(code in RESULT_MESSAGES, f"{stx.type} returned an unknown code {code!r}")
    if code == OK:
        # Only member.add creates a member; the overlay keeps the member list for thresholds.
        block.commit(ctx.writes, stx.body["id"] if stx.type == "member.add" else None)
    return code


def execute_block(state: LedgerState, height: int, time_ms: int, txs: Sequence[SignedTx]) -> BlockOutcome:
    """Run a block on `state` without changing it; see the module docstring for the rules.

    The transactions are already known to be canonical, correctly signed and inside
    their expiry window; their bodies are checked again here (stage 1).
    """
    block = _BlockOverlay(state)
    _expire_due(block, height, time_ms)
    results = [_execute_tx(block, stx, height, time_ms) for stx in txs]
    changes = block.writes
    return BlockOutcome(results=results, changes=changes,
                        state_root=state_root_after(state.state_root, height, changes))

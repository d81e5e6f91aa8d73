"""State records -> the JSON objects of the RPC (contract section 6).

Every byte string becomes lowercase hex; everything else is already JSON-ready (the
records hold no floats). `state` is anything with `get(key)` and, for
`members_view`, `member_ids()`: the committed LedgerState in practice.
"""
from __future__ import annotations

from ledger.state import account_key, doc_key, hold_key, lc_key, member_key


def _hex_or_none(value: bytes | None) -> str | None:
    return None if value is None else value.hex()


def account_view(state, account_id: str) -> dict | None:
    """{"id", "owner", "key", "frozen", "balances", "held"}; zero amounts are left out."""
    account = state.get(account_key(account_id))
    if account is None:
        return None
    return {
        "id": account["id"],
        "owner": account["owner"],
        "key": account["key"].hex(),
        "frozen": account["frozen"],
        # Records never keep zero amounts; filtering again keeps the view honest regardless.
        "balances": {currency: value for currency, value in sorted(account["balances"].items()) if value},
        "held": {currency: value for currency, value in sorted(account["held"].items()) if value},
    }


def hold_view(state, hold_id: str) -> dict | None:
    """{"id", "from", "to", "currency", "amount", "arbiter", "expires", "status"}."""
    hold = state.get(hold_key(hold_id))
    if hold is None:
        return None
    return {
        "id": hold["id"],
        "from": hold["from"],
        "to": hold["to"],
        "currency": hold["currency"],
        "amount": hold["amount"],
        "arbiter": _hex_or_none(hold["arbiter"]),
        "expires": hold["expires"],
        "status": hold["status"],
    }


def lc_view(state, lc_id: str) -> dict | None:
    """The letter of credit, its last presentation and its lifecycle history."""
    lc = state.get(lc_key(lc_id))
    if lc is None:
        return None
    return {
        "id": lc["id"],
        "status": lc["status"],
        "applicant": lc["applicant"],
        "beneficiary": lc["beneficiary"],
        "issuing_bank": lc["issuing_bank"],
        "advising_bank": lc["advising_bank"],
        "currency": lc["currency"],
        "amount": lc["amount"],
        "expires": lc["expires"],
        "documents": list(lc["documents"]),
        "terms": lc["terms"],
        "presented": [{"type": document["type"], "hash": document["hash"].hex()} for document in lc["presented"]],
        "history": [{"height": entry["height"], "type": entry["type"], "tx_id": _hex_or_none(entry["tx_id"])}
                    for entry in lc["history"]],
    }


def doc_view(state, doc_hash: bytes) -> dict | None:
    """{"hash", "type", "holder", "meta", "history"}; meta is {} when none was registered."""
    doc = state.get(doc_key(doc_hash))
    if doc is None:
        return None
    return {
        "hash": doc["hash"].hex(),
        "type": doc["type"],
        "holder": doc["holder"],
        "meta": dict(doc["meta"]),
        "history": [{"height": entry["height"], "holder": entry["holder"], "tx_id": entry["tx_id"].hex()}
                    for entry in doc["history"]],
    }


def members_view(state) -> list[dict]:
    """[{"id", "name", "admin_key"}] sorted by id."""
    views = []
    for member_id in state.member_ids():  # already sorted
        member = state.get(member_key(member_id))
        views.append({"id": member["id"], "name": member["name"], "admin_key": member["admin_key"].hex()})
    return views

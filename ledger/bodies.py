"""Stage (1) of every transaction: the shape of its body (contract sections 2 and 3).

`check_body` is pure and state-free, so the node can run it at submission (422
`invalid_body`) and execution runs it again as stage 1, because a block may carry a
body that the submitting node never checked. Every rule here is about the body alone;
anything that depends on the ledger (existence, keys, balances) belongs to execution.

Each body type is a table of fields: name, validator, required. A map must hold every
required field, may hold the optional ones, and nothing else. Validators return None
when the value is fine, otherwise a short reason that names the field.

Limits the contract leaves to us (docs/state.md lists them all): `ref` <= 140
characters and `terms` <= 4096 characters (from the contract), `reason` <= 1024
characters, member `name` 1..128 characters, document `meta` at most 32 entries with
keys of 1..64 and values of at most 1024 characters. String limits count characters
(code points), not bytes; the whole envelope is bounded at 64 KiB anyway.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

AMOUNT_MIN = 1
AMOUNT_MAX = 2**63 - 1
TIME_MAX = 2**64 - 1  # `expires` fields are uint64 milliseconds, like the envelope's

REF_LENGTH_MAX = 140
TERMS_LENGTH_MAX = 4096
REASON_LENGTH_MAX = 1024
MEMBER_NAME_LENGTH_MAX = 128
META_ENTRIES_MAX = 32
META_KEY_LENGTH_MAX = 64
META_VALUE_LENGTH_MAX = 1024
DOCUMENTS_MIN = 1
DOCUMENTS_MAX = 16
PVP_LEGS_MIN = 2
PVP_LEGS_MAX = 8

# fullmatch everywhere: `$` would also accept a trailing newline.
ACCOUNT_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,64}")
MEMBER_ID_PATTERN = re.compile(r"[A-Z0-9]{1,16}")
OBJECT_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,64}")  # holds and letters of credit
CURRENCY_PATTERN = re.compile(r"[A-Z]{3}")
DOCUMENT_TYPE_PATTERN = re.compile(r"[a-z0-9_]{1,32}")

Validator = Callable[[object], "str | None"]


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    validate: Validator
    required: bool = True


class MapShape:
    """The exact keys of one map and how to check each value."""

    __slots__ = ("fields", "cross_check", "_required_names", "_allowed_names", "_validators")

    def __init__(self, fields: tuple[Field, ...], cross_check: Callable[[dict], "str | None"] | None = None):
        self.fields = fields
        # A rule across fields (e.g. from != to), run after every field passed.
        self.cross_check = cross_check
        # Set comparisons on the key view run in C: this check sits on the hot path of every tx.
        self._required_names = frozenset(field.name for field in fields if field.required)
        self._allowed_names = frozenset(field.name for field in fields)
        self._validators = tuple((field.name, field.validate) for field in fields)

    def check(self, value: object, where: str) -> str | None:
        if type(value) is not dict:
            return f"{where} must be a map"
        keys = value.keys()
        if not self._required_names <= keys:
            missing = next(field.name for field in self.fields if field.required and field.name not in value)
            return f"{where} lacks the key {missing!r}"
        if not keys <= self._allowed_names:
            unknown = sorted(str(key) for key in keys if key not in self._allowed_names)
            return f"{where} has the unknown key {unknown[0]!r}"
        for name, validate in self._validators:
            if name in value:
                reason = validate(value[name])
                if reason is not None:
                    # A list's reason starts with the item's index: "body.legs[1].amount ...".
                    separator = "" if reason.startswith("[") else " "
                    return f"{where}.{name}{separator}{reason}"
        if self.cross_check is not None:
            reason = self.cross_check(value)
            if reason is not None:
                return f"{where}: {reason}"
        return None


# -- value validators ------------------------------------------------------------------

def _pattern(pattern: re.Pattern, description: str) -> Validator:
    def validate(value):
        if type(value) is not str or pattern.fullmatch(value) is None:
            return f"must be {description}"
        return None

    return validate


account_id = _pattern(ACCOUNT_ID_PATTERN, "an account id [A-Za-z0-9._:-]{1,64}")
member_id = _pattern(MEMBER_ID_PATTERN, "a member id [A-Z0-9]{1,16}")
object_id = _pattern(OBJECT_ID_PATTERN, "an id [A-Za-z0-9._:-]{1,64}")
currency_code = _pattern(CURRENCY_PATTERN, "a currency code [A-Z]{3}")
document_type = _pattern(DOCUMENT_TYPE_PATTERN, "a document type [a-z0-9_]{1,32}")


def amount(value) -> str | None:
    if type(value) is not int or not AMOUNT_MIN <= value <= AMOUNT_MAX:
        return f"must be an integer in {AMOUNT_MIN}..{AMOUNT_MAX}"
    return None


def time_ms(value) -> str | None:
    if type(value) is not int or not 0 <= value <= TIME_MAX:
        return "must be a time in ms (unsigned 64-bit integer)"
    return None


def bin32(value) -> str | None:
    if type(value) is not bytes or len(value) != 32:
        return "must be 32 bytes"
    return None


def boolean(value) -> str | None:
    if type(value) is not bool:
        return "must be a bool"
    return None


def _text(length_min: int, length_max: int) -> Validator:
    def validate(value):
        if type(value) is not str or not length_min <= len(value) <= length_max:
            return f"must be a str of {length_min}..{length_max} characters"
        return None

    return validate


def _meta(value) -> str | None:
    if type(value) is not dict:
        return "must be a map of str to str"
    if len(value) > META_ENTRIES_MAX:
        return f"must hold at most {META_ENTRIES_MAX} entries"
    if any(type(key) is not str for key in value):
        return "keys must be str"
    for key in sorted(value):  # sorted: the same body always gets the same reason
        if not 1 <= len(key) <= META_KEY_LENGTH_MAX:
            return f"keys must be str of 1..{META_KEY_LENGTH_MAX} characters"
        item = value[key]
        if type(item) is not str or len(item) > META_VALUE_LENGTH_MAX:
            return f"[{key!r}] must be a str of at most {META_VALUE_LENGTH_MAX} characters"
    return None


def _list_of(check_item: Callable[[object, str], "str | None"], count_min: int, count_max: int) -> Validator:
    def validate(value):
        if type(value) is not list or not count_min <= len(value) <= count_max:
            return f"must be a list of {count_min}..{count_max} items"
        for index, item in enumerate(value):
            reason = check_item(item, f"[{index}]")
            if reason is not None:
                return reason
        return None

    return validate


def _document_type_item(item, where: str) -> str | None:
    reason = document_type(item)
    return None if reason is None else f"{where} {reason}"


# -- cross-field rules -----------------------------------------------------------------

def _distinct_parties(first: str, second: str) -> Callable[[dict], "str | None"]:
    def check(body):
        if body[first] == body[second]:
            return f"{first} and {second} must differ"
        return None

    return check


def _lc_issue_rules(body) -> str | None:
    if body["applicant"] == body["beneficiary"]:
        return "applicant and beneficiary must differ"
    if len(set(body["documents"])) != len(body["documents"]):
        return "documents lists a type twice"
    return None


def _lc_present_rules(body) -> str | None:
    hashes = [document["hash"] for document in body["documents"]]
    if len(set(hashes)) != len(hashes):
        return "documents presents one hash twice"
    return None


def _lc_amend_rules(body) -> str | None:
    if "amount" not in body and "expires" not in body:
        return "an amendment must change amount or expires"
    return None


# -- the body of every transaction type ------------------------------------------------

_LEG = MapShape(
    (Field("from", account_id), Field("to", account_id), Field("currency", currency_code), Field("amount", amount)),
    cross_check=_distinct_parties("from", "to"),
)
_PRESENTED_DOCUMENT = MapShape((Field("type", document_type), Field("hash", bin32)))

_REF = Field("ref", _text(0, REF_LENGTH_MAX), required=False)

BODY_SHAPES: dict[str, MapShape] = {
    "account.open": MapShape((Field("id", account_id), Field("owner", member_id), Field("key", bin32))),
    "account.freeze": MapShape((Field("account", account_id),)),
    "account.unfreeze": MapShape((Field("account", account_id),)),
    "account.rotate_key": MapShape((Field("account", account_id), Field("new_key", bin32))),
    "issue": MapShape((Field("account", account_id), Field("currency", currency_code), Field("amount", amount))),
    "redeem": MapShape((Field("account", account_id), Field("currency", currency_code), Field("amount", amount))),
    "transfer": MapShape(
        (Field("from", account_id), Field("to", account_id), Field("currency", currency_code),
         Field("amount", amount), _REF),
        cross_check=_distinct_parties("from", "to"),
    ),
    "pvp": MapShape((Field("legs", _list_of(_LEG.check, PVP_LEGS_MIN, PVP_LEGS_MAX)), _REF)),
    "hold.create": MapShape(
        (Field("id", object_id), Field("from", account_id), Field("to", account_id),
         Field("currency", currency_code), Field("amount", amount), Field("expires", time_ms),
         Field("arbiter", bin32, required=False)),
        cross_check=_distinct_parties("from", "to"),
    ),
    "hold.settle": MapShape((Field("id", object_id),)),
    "hold.cancel": MapShape((Field("id", object_id),)),
    "lc.issue": MapShape(
        (Field("id", object_id), Field("applicant", account_id), Field("beneficiary", account_id),
         Field("advising_bank", member_id), Field("currency", currency_code), Field("amount", amount),
         Field("expires", time_ms),
         Field("documents", _list_of(_document_type_item, DOCUMENTS_MIN, DOCUMENTS_MAX)),
         Field("terms", _text(0, TERMS_LENGTH_MAX), required=False)),
        cross_check=_lc_issue_rules,
    ),
    "lc.advise": MapShape((Field("id", object_id),)),
    "lc.present": MapShape(
        (Field("id", object_id),
         Field("documents", _list_of(_PRESENTED_DOCUMENT.check, DOCUMENTS_MIN, DOCUMENTS_MAX))),
        cross_check=_lc_present_rules,
    ),
    "lc.examine": MapShape(
        (Field("id", object_id), Field("accept", boolean),
         Field("reason", _text(0, REASON_LENGTH_MAX), required=False)),
    ),
    "lc.amend": MapShape(
        (Field("id", object_id), Field("amount", amount, required=False),
         Field("expires", time_ms, required=False)),
        cross_check=_lc_amend_rules,
    ),
    "lc.cancel": MapShape((Field("id", object_id),)),
    "doc.register": MapShape(
        (Field("hash", bin32), Field("type", document_type), Field("holder", account_id),
         Field("meta", _meta, required=False)),
    ),
    "doc.transfer": MapShape((Field("hash", bin32), Field("to", account_id))),
    "member.add": MapShape(
        (Field("id", member_id), Field("name", _text(1, MEMBER_NAME_LENGTH_MAX)), Field("admin_key", bin32)),
    ),
    "member.rotate_key": MapShape((Field("id", member_id), Field("new_key", bin32))),
}


def check_body(tx_type: str, body: dict) -> str | None:
    """Stage (1): None when `body` has exactly the shape of `tx_type`, else a reason.

    The result code for any reason is `invalid_body`; the reason is for people.
    """
    shape = BODY_SHAPES.get(tx_type)
    if shape is None:
        return f"unknown transaction type {tx_type!r}"
    return shape.check(body, "body")

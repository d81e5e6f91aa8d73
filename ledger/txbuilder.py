"""Build transaction bodies from `field=value` words a person types (used by `ledger tx`).

Amounts are typed in major units ("12.50" USD, "1500" JPY) and converted exactly to
minor units with the ISO 4217 exponent; times are ISO 8601 dates/times (UTC) or a
relative "+2h"; keys are hex or a key file; a document hash is hex or "@path" (the
SHA-256 of that file).
"""
from __future__ import annotations

import datetime
import hashlib
import json
import re
from decimal import Decimal, InvalidOperation

# ISO 4217 minor-unit exponents that are not 2 (the common case).
_EXPONENTS = {"JPY": 0, "KRW": 0, "VND": 0, "CLP": 0, "ISK": 0, "BHD": 3, "KWD": 3, "OMR": 3, "JOD": 3, "TND": 3}
_DURATION = re.compile(r"\+([0-9]+)([smhd])")  # fullmatch; [0-9], as \d takes any Unicode digit
_UNIT_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


class UsageError(ValueError):
    pass


def exponent(currency: str) -> int:
    return _EXPONENTS.get(currency, 2)


def to_minor(amount: str, currency: str) -> int:
    try:
        value = Decimal(amount)
    except InvalidOperation:
        raise UsageError(f"amount {amount!r} is not a number") from None
    scaled = value.scaleb(exponent(currency))
    if scaled != scaled.to_integral_value():
        raise UsageError(f"{amount} {currency} has more decimals than the currency allows")
    return int(scaled)


def format_amount(minor: int, currency: str) -> str:
    places = exponent(currency)
    value = Decimal(minor).scaleb(-places)
    return f"{value:,.{places}f} {currency}"


def format_time(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def parse_time(text: str, now_ms: int) -> int:
    match = _DURATION.fullmatch(text)
    if match:
        return now_ms + int(match.group(1)) * _UNIT_MS[match.group(2)]
    if re.fullmatch(r"[0-9]+", text):
        return int(text)
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"time {text!r}: use ISO 8601 (2027-01-31T12:00), ms since the epoch, or +2h") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return int(moment.timestamp() * 1000)


def parse_key(text: str) -> bytes:
    if re.fullmatch(r"[0-9a-fA-F]{64}", text):
        return bytes.fromhex(text)
    try:
        with open(text) as handle:
            return bytes.fromhex(json.load(handle)["public_key"])
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(f"{text!r} is neither a 64-hex-digit key nor a readable key file ({exc})") from None


def parse_hash(text: str) -> bytes:
    if text.startswith("@"):
        try:
            with open(text[1:], "rb") as handle:
                return hashlib.sha256(handle.read()).digest()
        except OSError as exc:
            raise UsageError(f"cannot read {text[1:]}: {exc}") from None
    if re.fullmatch(r"[0-9a-fA-F]{64}", text):
        return bytes.fromhex(text)
    raise UsageError(f"hash {text!r}: 64 hex digits, or @file to hash a file")


def _bool(text: str) -> bool:
    if text.lower() in ("yes", "true", "1", "accept"):
        return True
    if text.lower() in ("no", "false", "0", "refuse"):
        return False
    raise UsageError(f"{text!r} is not yes/no")


# field -> parser kind, per type. Kinds: str, key, hash, amount, time, bool, list (comma separated)
_FIELDS: dict[str, dict[str, str]] = {
    "account.open": {"id": "str", "owner": "str", "key": "key"},
    "account.freeze": {"account": "str"},
    "account.unfreeze": {"account": "str"},
    "account.rotate_key": {"account": "str", "new_key": "key"},
    "issue": {"account": "str", "currency": "str", "amount": "amount"},
    "redeem": {"account": "str", "currency": "str", "amount": "amount"},
    "transfer": {"from": "str", "to": "str", "currency": "str", "amount": "amount", "ref": "str"},
    "pvp": {"ref": "str", "leg": "legs"},
    "hold.create": {"id": "str", "from": "str", "to": "str", "currency": "str", "amount": "amount", "expires": "time",
                    "arbiter": "key"},
    "hold.settle": {"id": "str"},
    "hold.cancel": {"id": "str"},
    "lc.issue": {"id": "str", "applicant": "str", "beneficiary": "str", "advising_bank": "str", "currency": "str",
                 "amount": "amount", "expires": "time", "documents": "list", "terms": "str"},
    "lc.advise": {"id": "str"},
    "lc.present": {"id": "str", "doc": "docs"},
    "lc.examine": {"id": "str", "accept": "bool", "reason": "str"},
    "lc.amend": {"id": "str", "amount": "amount", "expires": "time", "currency": "currency-hint"},
    "lc.cancel": {"id": "str"},
    "doc.register": {"hash": "hash", "type": "str", "holder": "str", "meta": "meta"},
    "doc.transfer": {"hash": "hash", "to": "str"},
    "member.add": {"id": "str", "name": "str", "admin_key": "key"},
    "member.rotate_key": {"id": "str", "new_key": "key"},
}


def tx_types() -> list[str]:
    return sorted(_FIELDS)


def build_body(tx_type: str, words: list[str], now_ms: int) -> dict:
    """Turn `field=value` words into a body for `tx_type`."""
    if tx_type not in _FIELDS:
        raise UsageError(f"unknown type {tx_type!r}; one of: {', '.join(tx_types())}")
    spec = _FIELDS[tx_type]
    pairs = []
    for word in words:
        name, sep, value = word.partition("=")
        if not sep:
            raise UsageError(f"{word!r}: write field=value")
        base = name.split(".", 1)[0]
        if base not in spec:
            raise UsageError(f"{tx_type} has no field {base!r}; fields: {', '.join(spec)}")
        pairs.append((name, base, value))
    currency = next((v for n, b, v in pairs if b == "currency"), None)
    body: dict = {}
    for name, base, value in pairs:
        kind = spec[base]
        if kind == "str":
            body[name] = value
        elif kind == "key":
            body[name] = parse_key(value)
        elif kind == "hash":
            body[name] = parse_hash(value)
        elif kind == "time":
            body[name] = parse_time(value, now_ms)
        elif kind == "bool":
            body[name] = _bool(value)
        elif kind == "list":
            body[name] = [v for v in value.split(",") if v]
        elif kind == "amount":
            if currency is None:
                raise UsageError("give currency=CCY so the amount can be read in major units")
            body[name] = to_minor(value, currency)
        elif kind == "legs":  # leg=FROM,TO,CCY,AMOUNT (repeat for each leg)
            parts = value.split(",")
            if len(parts) != 4:
                raise UsageError("leg=FROM,TO,CCY,AMOUNT")
            body.setdefault("legs", []).append(
                {"from": parts[0], "to": parts[1], "currency": parts[2], "amount": to_minor(parts[3], parts[2])})
        elif kind == "docs":  # doc=TYPE:HASH (repeat)
            doc_type, sep, digest = value.partition(":")
            if not sep:
                raise UsageError("doc=TYPE:HASH (or doc=TYPE:@file)")
            body.setdefault("documents", []).append({"type": doc_type, "hash": parse_hash(digest)})
        elif kind == "meta":  # meta.KEY=VALUE (repeat)
            if "." not in name:
                raise UsageError("meta.KEY=VALUE")
            body.setdefault("meta", {})[name.split(".", 1)[1]] = value
        elif kind == "currency-hint":
            pass  # only tells how to read amount= (lc.amend carries no currency)
    return body


def describe(tx_type: str, body: dict, currency_hint: str | None = None) -> str:
    """A readable one-field-per-line rendering of a body: major units, dates, short hex."""
    currency = body.get("currency", currency_hint)

    def render(name: str, value) -> str:
        if name == "amount" and type(value) is int and currency:
            return format_amount(value, currency)
        if name == "expires" and type(value) is int:
            return format_time(value)
        if isinstance(value, bytes):
            return value.hex()
        if name == "legs":
            return "; ".join(f"{leg['from']} -> {leg['to']} {format_amount(leg['amount'], leg['currency'])}"
                             for leg in value)
        if name == "documents" and value and isinstance(value[0], dict):
            return ", ".join(f"{d['type']}:{d['hash'].hex()[:16]}..." for d in value)
        return str(value)

    lines = [tx_type]
    for name in sorted(body):
        lines.append(f"  {name:<14} {render(name, body[name])}")
    return "\n".join(lines)

"""Canonical msgpack: the only encoding that is hashed or signed (contract section 1).

`encode` writes the canonical form of a value; `decode` accepts exactly the bytes
that `encode` would have written, so no value has two encodings that verify.
"""
from __future__ import annotations

import hashlib

import msgpack

INT_MIN = -(2**63)
INT_MAX = 2**64 - 1


class CodecError(ValueError):
    """Input that is not one canonical msgpack value; `code` is the contract's error code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code  # "bad_encoding" or "non_canonical"
        self.message = message


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _canonical(value):
    """Return `value` with every map key-sorted; raise TypeError on a type the contract forbids."""
    kind = type(value)
    if kind is dict:
        out = {}
        for key in sorted(value):
            if type(key) is not str:
                raise TypeError(f"map key {key!r} is not a str")
            out[key] = _canonical(value[key])
        return out
    if kind is list or kind is tuple:
        return [_canonical(item) for item in value]
    if kind is int:
        if not INT_MIN <= value <= INT_MAX:
            raise TypeError(f"integer {value} is out of range")
        return value
    if kind is str or kind is bytes or kind is bool or value is None:
        return value
    raise TypeError(f"type {kind.__name__} is not allowed in canonical msgpack")


def encode(value) -> bytes:
    """Canonical msgpack bytes of `value` (raises TypeError for floats, ext types, non-str keys)."""
    return msgpack.packb(_canonical(value), use_bin_type=True)


def _reject_key_types(pairs):
    # Keys must be str; anything else (bytes, int, nested containers) is not canonical.
    # Duplicates and order are caught by the re-encoding comparison in `decode`.
    for key, _ in pairs:
        if type(key) is not str:
            raise CodecError("non_canonical", "map key is not a str")
    return dict(pairs)


def decode(data: bytes):
    """Decode one canonical msgpack value; raise CodecError(bad_encoding | non_canonical)."""
    try:
        value = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=False,
            object_pairs_hook=_reject_key_types,
            timestamp=0,
        )
    except CodecError:
        raise
    except msgpack.ExtraData:
        raise CodecError("non_canonical", "bytes follow the msgpack value") from None
    except (ValueError, msgpack.UnpackException, RecursionError, TypeError) as exc:
        # Truncated input, an unknown type byte, invalid UTF-8, too deep a nesting.
        raise CodecError("bad_encoding", f"not a complete msgpack value: {exc}") from None
    try:
        canonical = encode(value)
    except TypeError as exc:
        raise CodecError("non_canonical", str(exc)) from None
    if canonical != data:
        raise CodecError("non_canonical", "not the canonical encoding (key order, duplicate keys or a longer form)")
    return value

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


def _check_canonical_shape(value) -> None:
    """Raise CodecError unless every map has str keys in strictly ascending order and no
    value is of a forbidden type. Shortest forms are checked by re-encoding in `decode`."""
    kind = type(value)
    if kind is dict:
        previous = None
        for key, item in value.items():
            if type(key) is not str:
                raise CodecError("non_canonical", "map key is not a str")
            if previous is not None and key <= previous:
                raise CodecError("non_canonical", "map keys are not sorted ascending")
            previous = key
            if type(item) in _CONTAINERS:
                _check_canonical_shape(item)
            elif type(item) not in _SCALARS:
                raise CodecError("non_canonical", f"type {type(item).__name__} is not allowed")
    elif kind is list:
        for item in value:
            if type(item) in _CONTAINERS:
                _check_canonical_shape(item)
            elif type(item) not in _SCALARS:
                raise CodecError("non_canonical", f"type {type(item).__name__} is not allowed")
    elif kind not in _SCALARS:
        raise CodecError("non_canonical", f"type {kind.__name__} is not allowed")


_CONTAINERS = (dict, list)
_SCALARS = (str, bytes, int, bool, type(None))


def decode(data: bytes):
    """Decode one canonical msgpack value; raise CodecError(bad_encoding | non_canonical).

    The value's shape is checked in place (str keys, ascending, allowed types), then the
    value is re-encoded as it stands: equal bytes prove that every item used its
    shortest form and no key was repeated (a repeated key collapses in the dict).
    """
    try:
        value = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=False, timestamp=0)
    except msgpack.ExtraData:
        raise CodecError("non_canonical", "bytes follow the msgpack value") from None
    except TypeError:
        # An unhashable map key (an array or map used as a key): complete, but not canonical.
        raise CodecError("non_canonical", "map key is not a str") from None
    except (ValueError, msgpack.UnpackException, RecursionError) as exc:
        # Truncated input, an unknown type byte, invalid UTF-8, too deep a nesting.
        raise CodecError("bad_encoding", f"not a complete msgpack value: {exc}") from None
    _check_canonical_shape(value)
    try:
        again = msgpack.packb(value, use_bin_type=True)
    except (OverflowError, ValueError) as exc:
        raise CodecError("non_canonical", str(exc)) from None
    if again != data:
        raise CodecError("non_canonical", "not the canonical encoding (a longer form or a repeated key)")
    return value

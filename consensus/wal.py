"""The replica's write-ahead log: record keys and checksummed values.

The replica Persists a record before it sends anything that the record describes, and
gets every record back (sorted by key) when it restarts. Keys:

    height(8, big-endian) + b"B" + block_hash(32)  a block this replica validated or built:
                                                   canonical([header, payload])
    height + b"A" + view(8)                         the PRE-PREPARE it accepted or sent in view:
                                                   canonical([signer, body, sig, header])
    height + b"p" + view                           its own PREPARE (wire bytes)
    height + b"c" + view                           its own COMMIT (wire bytes)
    height + b"Q"                                  its highest-view prepared certificate
    0xff*8 + b"view"                               canonical({"view": v}): the view it is in
    0xff*8 + b"vc"                                 its latest VIEW-CHANGE (wire bytes, no payload)
    0xff*8 + b"nv"                                 its latest NEW-VIEW as primary (wire bytes, no payload)
    0xff*8 + b"cert"                               the certificate of its latest commit

Forget(below_height) lets the driver delete every key below below_height.to_bytes(8):
exactly the records of lower heights; the 0xff records are overwritten in place.

Each value is CRC32(key + record) as 4 big-endian bytes followed by the record, so a
torn or corrupted record (or one stored under the wrong key) is detected at restart.
"""
from __future__ import annotations

import zlib

GLOBAL_PREFIX = b"\xff" * 8

KIND_BLOCK = b"B"
KIND_PREPREPARE = b"A"
KIND_PREPARE = b"p"
KIND_COMMIT = b"c"
KIND_PREPARED = b"Q"

VIEW_KEY = GLOBAL_PREFIX + b"view"
VIEW_CHANGE_KEY = GLOBAL_PREFIX + b"vc"
NEW_VIEW_KEY = GLOBAL_PREFIX + b"nv"
CERTIFICATE_KEY = GLOBAL_PREFIX + b"cert"
GLOBAL_KEYS = frozenset({VIEW_KEY, VIEW_CHANGE_KEY, NEW_VIEW_KEY, CERTIFICATE_KEY})

_PER_VIEW_KINDS = frozenset({KIND_PREPREPARE, KIND_PREPARE, KIND_COMMIT})


def height_prefix(height: int) -> bytes:
    return height.to_bytes(8, "big")


def block_key(height: int, block_hash: bytes) -> bytes:
    return height_prefix(height) + KIND_BLOCK + block_hash


def vote_key(height: int, kind: bytes, view: int) -> bytes:
    return height_prefix(height) + kind + view.to_bytes(8, "big")


def prepared_key(height: int) -> bytes:
    return height_prefix(height) + KIND_PREPARED


def seal(key: bytes, record: bytes) -> bytes:
    """The stored value: CRC32 over key and record, then the record."""
    return zlib.crc32(record, zlib.crc32(key)).to_bytes(4, "big") + record


def seal_parts(key: bytes, parts: list[bytes]) -> bytes:
    """seal(key, b"".join(parts)) without building the record first (one copy of a payload)."""
    checksum = zlib.crc32(key)
    for part in parts:
        checksum = zlib.crc32(part, checksum)
    return b"".join([checksum.to_bytes(4, "big"), *parts])


def unseal(key: bytes, value: bytes) -> bytes:
    """The record inside a stored value; ValueError if the checksum does not match."""
    if type(value) is not bytes or len(value) < 4:
        raise ValueError(f"WAL record {key.hex()} is truncated")
    record = value[4:]
    if zlib.crc32(record, zlib.crc32(key)).to_bytes(4, "big") != value[:4]:
        raise ValueError(f"WAL record {key.hex()} is corrupt (checksum mismatch)")
    return record


def parse_key(key: bytes) -> tuple[int, bytes, int | bytes | None]:
    """(height, kind, view or block hash or None) of a per-height key; ValueError otherwise."""
    if len(key) < 9 or key.startswith(GLOBAL_PREFIX):
        raise ValueError(f"WAL key {key.hex()} is not a per-height key")
    height = int.from_bytes(key[:8], "big")
    kind = key[8:9]
    rest = key[9:]
    if kind == KIND_BLOCK and len(rest) == 32:
        return height, kind, rest
    if kind in _PER_VIEW_KINDS and len(rest) == 8:
        return height, kind, int.from_bytes(rest, "big")
    if kind == KIND_PREPARED and not rest:
        return height, kind, None
    raise ValueError(f"WAL key {key.hex()} has an unknown layout")

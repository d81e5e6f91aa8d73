"""Durable storage behind a small interface, implemented on LevelDB (plyvel).

Key layout (one byte of prefix, then a fixed-width key so that ranges sort by height):

    b"h" + height(8, big-endian)  ->  canonical header bytes (as hashed)
    b"b" + height(8)              ->  canonical {"txs": [bin], "tx_ids": [bin], "results": [str]}
    b"c" + height(8)              ->  canonical commit certificate {height, view, block_hash, sigs}
    b"t" + tx_id(32)              ->  canonical [height, index]           (tx index)
    b"s" + state key (UTF-8)      ->  canonical record                    (ledger state)
    b"m" + name                   ->  metadata: b"mtip" = {height, hash, state_root, time}, b"mgenesis" = genesis hash
    b"w" + replica key            ->  the consensus replica's own write-ahead records
    b"p" + tx_id(32)              ->  signed envelope of a tx this node acknowledged to a client
                                      and has not seen committed (kept so a crash loses none)

Everything one block changes (block, certificate, tx index, state, tip, the pending
records it settles) is one atomic write batch with sync=True, so a crash leaves either
the whole block or none of it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, Protocol

import plyvel

from ledger import codec

HEADER, BLOCK, CERT, TXINDEX, STATE, META, WAL, PENDING = b"h", b"b", b"c", b"t", b"s", b"m", b"w", b"p"
TIP_KEY = META + b"tip"
GENESIS_KEY = META + b"genesis"


class StoreError(Exception):
    """The store cannot be opened or is not what this node expects."""


def height_key(prefix: bytes, height: int) -> bytes:
    return prefix + height.to_bytes(8, "big")


@dataclass(frozen=True, slots=True)
class Tip:
    height: int
    hash: bytes
    state_root: bytes
    time: int


@dataclass(frozen=True, slots=True)
class StoredBlock:
    header: bytes
    txs: list[bytes]
    tx_ids: list[bytes]
    results: list[str]


class Store(Protocol):
    def genesis_hash(self) -> bytes | None: ...
    def tip(self) -> Tip | None: ...
    def header(self, height: int) -> bytes | None: ...
    def block(self, height: int) -> StoredBlock | None: ...
    def certificate(self, height: int) -> dict | None: ...
    def tx_location(self, tx_id: bytes) -> tuple[int, int] | None: ...
    def state_items(self) -> Iterator[tuple[str, object]]: ...
    def commit_block(self, *, height: int, header: bytes, block_hash: bytes, time: int, state_root: bytes,
                     txs: list[bytes], tx_ids: list[bytes], results: list[str], certificate: dict,
                     changes: dict[str, object | None], settled_pending: list[bytes] = ()) -> None: ...
    def init_genesis(self, genesis_hash: bytes, state_root: bytes, records: dict[str, object]) -> None: ...
    def wal_write(self, items: list[tuple[bytes, bytes]]) -> None: ...
    def wal_items(self) -> list[tuple[bytes, bytes]]: ...
    def wal_delete_below(self, bound: bytes) -> None: ...
    def pending_write(self, envelopes: list[tuple[bytes, bytes]]) -> None: ...
    def pending_delete(self, tx_ids: list[bytes]) -> None: ...
    def pending_items(self) -> list[tuple[bytes, bytes]]: ...
    def close(self) -> None: ...


def _decode_record(raw: bytes, what: str):
    try:
        return codec.decode(raw)
    except codec.CodecError as exc:
        raise StoreError(f"the stored {what} is undecodable ({exc.message}); run `ledger audit`") from None


class LevelDBStore:
    """The node's LevelDB store (see the module docstring for the key layout)."""

    def __init__(self, path: str, create: bool = True):
        # LevelDB writes LOCK and LOG files even when it then refuses a missing store:
        # look first, so that checking a store never leaves an empty one behind.
        if not create and not os.path.isfile(os.path.join(path, "CURRENT")):
            raise StoreError(f"there is no LevelDB store at {path}")
        try:
            self._db = plyvel.DB(path, create_if_missing=create)
        except plyvel.Error as exc:
            reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
            raise StoreError(f"cannot open the LevelDB store at {path}: {reason}") from None
        self.path = path

    def close(self) -> None:
        if not self._db.closed:
            self._db.close()

    # -- metadata -------------------------------------------------------------------
    def genesis_hash(self) -> bytes | None:
        return self._db.get(GENESIS_KEY)

    def tip(self) -> Tip | None:
        raw = self._db.get(TIP_KEY)
        if raw is None:
            return None
        try:
            value = codec.decode(raw)
            return Tip(height=value["height"], hash=value["hash"], state_root=value["state_root"], time=value["time"])
        except (codec.CodecError, KeyError, TypeError) as exc:
            raise StoreError(f"the tip record is unreadable: {exc}") from None

    def init_genesis(self, genesis_hash: bytes, state_root: bytes, records: dict[str, object]) -> None:
        """First start: the genesis state at height 0, in one synced batch."""
        with self._db.write_batch(transaction=True, sync=True) as batch:
            batch.put(GENESIS_KEY, genesis_hash)
            for key, value in records.items():
                batch.put(STATE + key.encode(), codec.encode(value))
            batch.put(TIP_KEY, codec.encode({"height": 0, "hash": genesis_hash, "state_root": state_root, "time": 0}))

    # -- blocks ---------------------------------------------------------------------
    def commit_block(self, *, height, header, block_hash, time, state_root, txs, tx_ids, results, certificate, changes,
                     settled_pending=()):
        with self._db.write_batch(transaction=True, sync=True) as batch:
            batch.put(height_key(HEADER, height), header)
            batch.put(height_key(BLOCK, height), codec.encode({"txs": txs, "tx_ids": tx_ids, "results": results}))
            batch.put(height_key(CERT, height), codec.encode(certificate))
            for index, tx_id in enumerate(tx_ids):
                batch.put(TXINDEX + tx_id, codec.encode([height, index]))
            for key, value in changes.items():
                if value is None:
                    batch.delete(STATE + key.encode())
                else:
                    batch.put(STATE + key.encode(), codec.encode(value))
            batch.put(TIP_KEY, codec.encode({"height": height, "hash": block_hash, "state_root": state_root, "time": time}))
            for tx_id in settled_pending:
                batch.delete(PENDING + tx_id)

    def header(self, height: int) -> bytes | None:
        return self._db.get(height_key(HEADER, height))

    def block(self, height: int) -> StoredBlock | None:
        header = self.header(height)
        raw = self._db.get(height_key(BLOCK, height))
        if header is None or raw is None:
            return None
        value = _decode_record(raw, f"block body {height}")
        try:
            return StoredBlock(header=header, txs=value["txs"], tx_ids=value["tx_ids"], results=value["results"])
        except (KeyError, TypeError) as exc:
            raise StoreError(f"the block body at height {height} is malformed ({exc}); run `ledger audit`") from None

    def headers(self) -> Iterator[tuple[int, bytes]]:
        """Every stored header in height order."""
        for key, value in self._db.iterator(prefix=HEADER):
            yield int.from_bytes(key[1:], "big"), value

    def raw_certificate(self, height: int) -> bytes | None:
        return self._db.get(height_key(CERT, height))

    def certificate(self, height: int) -> dict | None:
        raw = self.raw_certificate(height)
        return None if raw is None else _decode_record(raw, f"certificate {height}")

    def tx_location(self, tx_id: bytes) -> tuple[int, int] | None:
        raw = self._db.get(TXINDEX + tx_id)
        if raw is None:
            return None
        try:
            height, index = _decode_record(raw, f"tx index entry {tx_id.hex()}")
        except (TypeError, ValueError) as exc:
            raise StoreError(f"the tx index entry {tx_id.hex()} is malformed ({exc}); run `ledger audit`") from None
        return height, index

    # -- state ----------------------------------------------------------------------
    def state_items(self) -> Iterator[tuple[str, object]]:
        for key, value in self._db.iterator(prefix=STATE):
            yield key[1:].decode(errors="replace"), _decode_record(value, f"state record {key[1:]!r}")

    def raw_items(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Every record under a prefix, as stored (for the audit)."""
        return self._db.iterator(prefix=prefix)

    # -- consensus write-ahead records ------------------------------------------------
    def wal_write(self, items: list[tuple[bytes, bytes]]) -> None:
        with self._db.write_batch(transaction=True, sync=True) as batch:
            for key, value in items:
                batch.put(WAL + key, value)

    def wal_items(self) -> list[tuple[bytes, bytes]]:
        return [(key[1:], value) for key, value in self._db.iterator(prefix=WAL)]

    def wal_delete_below(self, bound: bytes) -> None:
        """Delete every WAL record whose key sorts below `bound`."""
        with self._db.write_batch(transaction=True, sync=True) as batch:
            for key in self._db.iterator(start=WAL, stop=WAL + bound, include_value=False):
                batch.delete(key)

    # -- transactions acknowledged to clients, not yet committed ----------------------
    def pending_write(self, envelopes: list[tuple[bytes, bytes]]) -> None:
        """(tx_id, envelope) pairs, synced: written before the node acknowledges them."""
        with self._db.write_batch(transaction=True, sync=True) as batch:
            for tx_id, raw in envelopes:
                batch.put(PENDING + tx_id, raw)

    def pending_delete(self, tx_ids: list[bytes]) -> None:
        """Not synced: a record that outlives a crash is dropped again at the next start."""
        with self._db.write_batch(transaction=True) as batch:
            for tx_id in tx_ids:
                batch.delete(PENDING + tx_id)

    def pending_items(self) -> list[tuple[bytes, bytes]]:
        return [(key[1:], value) for key, value in self._db.iterator(prefix=PENDING)]

"""The bounded pool of verified, not yet committed transactions.

A transaction leaves the pool only when it is committed or expires (by this node's
clock), never when it is proposed, so a view change drops nothing. Entries are kept in
arrival order, which is also the order the block producer takes them in (oldest first),
so an honest primary never leaves an old transaction behind while building blocks with
room to spare: that is what lets a replica detect a censoring primary.
"""
from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

from ledger.tx import SignedTx, TxError, expiry_fits_block


@dataclass(slots=True)
class PoolEntry:
    tx: SignedTx
    arrival_height: int  # the committed height when it arrived (for censorship detection)


class Mempool:
    def __init__(self, capacity_txs: int = 200_000, capacity_bytes: int = 256 * 1024 * 1024, signer_share: float = 0.25):
        if capacity_txs < 1 or capacity_bytes < 1 or not 0 < signer_share <= 1:
            raise ValueError("mempool bounds must be positive")
        self.capacity_txs = capacity_txs
        self.capacity_bytes = capacity_bytes
        # No single signer (keyed by a transaction's first signer) may hold more than this.
        self.per_signer_max = max(1, int(capacity_txs * signer_share))
        self._entries: dict[bytes, PoolEntry] = {}
        # Envelope bytes -> verified tx: a block carrying exactly these bytes needs no
        # second parse or signature check.
        self._by_raw: dict[bytes, SignedTx] = {}
        self._per_signer: dict[bytes, int] = defaultdict(int)
        # (expires, tx_id) min-heap, so expiring costs O(expired), not O(pool).
        self._expiry_heap: list[tuple[int, bytes]] = []
        self.size_bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, tx_id: bytes) -> bool:
        return tx_id in self._entries

    def verified(self, raw: bytes) -> SignedTx | None:
        """The pooled (already verified) transaction with exactly these envelope bytes."""
        return self._by_raw.get(raw)

    def raw_envelopes(self) -> list[bytes]:
        """Every pending envelope, oldest first."""
        return [stx.raw for stx in self.oldest_first()]

    def oldest_first(self) -> Iterator[SignedTx]:
        """Every pending transaction, oldest first; the pool must not change meanwhile."""
        return (entry.tx for entry in self._entries.values())

    def get(self, tx_id: bytes) -> SignedTx | None:
        entry = self._entries.get(tx_id)
        return None if entry is None else entry.tx

    def add(self, stx: SignedTx, committed_height: int) -> None:
        """Admit a verified transaction; raises TxError(duplicate | mempool_full)."""
        if stx.tx_id in self._entries:
            raise TxError("duplicate", "transaction is already pending")
        if len(self._entries) >= self.capacity_txs or self.size_bytes + len(stx.raw) > self.capacity_bytes:
            raise TxError("mempool_full", "the mempool is full; retry later")
        signer = stx.signers[0]
        if self._per_signer[signer] >= self.per_signer_max:
            raise TxError("mempool_full", "this signer holds its full share of the mempool; retry later")
        self._entries[stx.tx_id] = PoolEntry(stx, committed_height)
        self._by_raw[stx.raw] = stx
        self._per_signer[signer] += 1
        self.size_bytes += len(stx.raw)
        heapq.heappush(self._expiry_heap, (stx.expires, stx.tx_id))

    def _drop(self, tx_id: bytes) -> None:
        entry = self._entries.pop(tx_id, None)
        if entry is None:
            return
        del self._by_raw[entry.tx.raw]
        signer = entry.tx.signers[0]
        self._per_signer[signer] -= 1
        if not self._per_signer[signer]:
            del self._per_signer[signer]
        self.size_bytes -= len(entry.tx.raw)

    def remove_committed(self, tx_ids) -> None:
        for tx_id in tx_ids:
            self._drop(tx_id)

    def expire(self, now_ms: int) -> list[bytes]:
        """Drop every transaction whose expiry has passed; returns their ids."""
        expired = []
        heap = self._expiry_heap
        while heap and heap[0][0] <= now_ms:
            _, tx_id = heapq.heappop(heap)
            if tx_id in self._entries:  # committed ones were dropped already
                self._drop(tx_id)
                expired.append(tx_id)
        if len(heap) > 2 * len(self._entries) + 1024:
            # Committed entries linger in the heap until their expiry; rebuild when they dominate.
            self._expiry_heap = [(e.tx.expires, i) for i, e in self._entries.items()]
            heapq.heapify(self._expiry_heap)
        return expired

    def select(self, block_time_ms: int, max_txs: int, max_bytes: int) -> list[SignedTx]:
        """Oldest first, every transaction inside its expiry window for this block time."""
        chosen: list[SignedTx] = []
        total = 0
        for entry in self._entries.values():
            stx = entry.tx
            if not expiry_fits_block(stx, block_time_ms):
                continue
            if total + len(stx.raw) > max_bytes:
                break
            chosen.append(stx)
            total += len(stx.raw)
            if len(chosen) >= max_txs:
                break
        return chosen

    def oldest_arrival_height(self) -> int | None:
        for entry in self._entries.values():
            return entry.arrival_height
        return None

"""The bounded mempool: dedup, capacity, a signer's fair share, expiry, oldest-first selection."""
import pytest

from ledger.crypto import KeyPair
from ledger.mempool import Mempool
from ledger.tx import TxError, make_tx, parse_signed

KEYS = [KeyPair.from_seed(bytes([i]) * 32) for i in range(4)]


def tx(nonce: int, key=KEYS[0], expires: int = 10_000):
    body = {"from": "a", "to": "b", "currency": "USD", "amount": 1}
    return parse_signed(make_tx("c", "transfer", body, [key], nonce, expires))


def test_dedup_and_capacity():
    pool = Mempool(capacity_txs=3, signer_share=1.0)
    pool.add(tx(1), 0)
    with pytest.raises(TxError) as info:
        pool.add(tx(1), 0)
    assert info.value.code == "duplicate"
    pool.add(tx(2), 0)
    pool.add(tx(3), 0)
    with pytest.raises(TxError) as info:
        pool.add(tx(4), 0)
    assert info.value.code == "mempool_full"
    assert len(pool) == 3


def test_one_signer_cannot_take_more_than_its_share():
    pool = Mempool(capacity_txs=8, signer_share=0.25)
    pool.add(tx(1), 0)
    pool.add(tx(2), 0)
    with pytest.raises(TxError) as info:
        pool.add(tx(3), 0)
    assert info.value.code == "mempool_full"
    pool.add(tx(3, key=KEYS[1]), 0)  # another signer still gets in
    assert len(pool) == 3


def test_expiry_and_commit_remove():
    pool = Mempool(capacity_txs=10, signer_share=1.0)
    early, late = tx(1, expires=100), tx(2, expires=200)
    pool.add(early, 0)
    pool.add(late, 0)
    assert pool.expire(99) == []
    assert pool.expire(100) == [early.tx_id]
    assert early.tx_id not in pool and late.tx_id in pool
    pool.remove_committed([late.tx_id])
    assert len(pool) == 0 and pool.size_bytes == 0
    assert pool.expire(10**6) == []


def test_select_is_oldest_first_within_window_and_limits():
    pool = Mempool(capacity_txs=10, signer_share=1.0)
    txs = [tx(n, expires=1000 + n) for n in range(5)]
    for t in txs:
        pool.add(t, 0)
    assert [t.nonce for t in pool.select(500, 3, 10**6)] == [0, 1, 2]
    # Block time at or past expiry: those are skipped, never included.
    assert [t.nonce for t in pool.select(1002, 10, 10**6)] == [3, 4]
    size = len(txs[0].raw)
    assert len(pool.select(500, 10, 2 * size)) == 2
    assert pool.oldest_arrival_height() == 0

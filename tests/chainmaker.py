"""Build a real node store without running a node (audit and proof tests, benchmarks).

`make_chain(directory, blocks=N, txs_per_block=M, validators=1|4)` writes a network with
`ledger.network.init_network`, then writes into node0's LevelDB store exactly what a node
writes: the genesis state as `Node._open_chain` does (`store.init_genesis`), and per
block what `Node._commit` does (one `store.commit_block` with the header, transactions,
results, certificate and state changes). Blocks are made by `validation.build_block` with
validator 0 as the primary of view 0, and certified by commit votes signed with the
validator keys in DIR/node<i>/node_key.json.

What the chain holds:

    block 1    the setup: accounts at every member bank (account.open by the bank's admin
               key), USD issued to every account and EUR to one, a pvp (USD against EUR),
               four holds (settled in block 2, cancelled in block 2, expiring at the start
               of block 3, left pending), and a transfer that fails insufficient_funds
    block 2..  txs_per_block transactions each: block 2 starts with the hold settle and
               cancel; the rest are transfers between random accounts (a fixed seed)

So the state holds members, issuers, accounts with balances and held amounts, and holds
in every status, and the results hold a failure code.
"""
from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field

from ledger import block as blockmod
from ledger import crypto
from ledger.network import init_network, params_of
from ledger.state import LedgerState
from ledger.store import LevelDBStore
from ledger.tx import SignedTx, make_tx, parse_signed
from ledger.validation import ChainContext, build_block

CHAIN_ID = "test-chain"
BLOCK_INTERVAL_MS = 1_000
TX_LIFETIME_MS = 600_000
ACCOUNTS_PER_MEMBER = 4
ISSUED_AMOUNT = 10**12
SETUP_HOLD_EXPIRES_MS = 30 * 24 * 3600 * 1000  # long-lived holds: far beyond any test


@dataclass
class Chain:
    """What a test needs to know about a chain made by make_chain."""

    directory: str
    home: str  # DIR/node0, the home whose store holds the chain
    data_dir: str
    genesis_path: str
    genesis: dict
    chain_id: str
    validator_keys: list[crypto.KeyPair]  # genesis order
    bank_keys: dict[str, crypto.KeyPair]  # member id -> admin key
    account_keys: dict[str, crypto.KeyPair]  # account id -> key
    block_times: list[int] = field(default_factory=list)  # block_times[h - 1]
    tx_ids: list[list[bytes]] = field(default_factory=list)  # tx_ids[h - 1]: the block's ids in order
    results: list[list[str]] = field(default_factory=list)

    @property
    def height(self) -> int:
        return len(self.tx_ids)

    @property
    def tx_count(self) -> int:
        return sum(len(ids) for ids in self.tx_ids)

    def location(self, tx_id: bytes) -> tuple[int, int]:
        for height, ids in enumerate(self.tx_ids, start=1):
            if tx_id in ids:
                return height, ids.index(tx_id)
        raise KeyError(tx_id.hex())


class _Signer:
    """Makes signed transactions with increasing nonces, each valid for its block's time."""

    def __init__(self, chain_id: str):
        self.chain_id = chain_id
        self.nonce = 0

    def tx(self, tx_type: str, body: dict, keys: list[crypto.KeyPair], block_time: int) -> SignedTx:
        self.nonce += 1
        return parse_signed(make_tx(self.chain_id, tx_type, body, keys, self.nonce, block_time + TX_LIFETIME_MS))


def sign_certificate(chain_id: str, height: int, view: int, block_hash: bytes,
                     voters: list[crypto.KeyPair]) -> dict:
    """A commit certificate (contract section 4) holding one vote of each voter."""
    message = blockmod.vote_message(chain_id, height, view, block_hash)
    return {"height": height, "view": view, "block_hash": block_hash,
            "sigs": [[key.public_key, key.sign(crypto.COMMIT_TAG, message)] for key in voters]}


def _setup_txs(chain: Chain, signer: _Signer, time_ms: int) -> list[SignedTx]:
    accounts = list(chain.account_keys)
    admin = chain.bank_keys
    txs = []
    for account in accounts:
        owner = account.split(":")[0]
        body = {"id": account, "owner": owner, "key": chain.account_keys[account].public_key}
        txs.append(signer.tx("account.open", body, [admin[owner]], time_ms))
    usd_issuer, eur_issuer = chain.genesis["issuers"]["USD"], chain.genesis["issuers"]["EUR"]
    for account in accounts:
        body = {"account": account, "currency": "USD", "amount": ISSUED_AMOUNT}
        txs.append(signer.tx("issue", body, [admin[usd_issuer]], time_ms))
    a, b, c, d, e, f, g = accounts[:7]
    key = chain.account_keys
    txs.append(signer.tx("issue", {"account": b, "currency": "EUR", "amount": ISSUED_AMOUNT}, [admin[eur_issuer]],
                         time_ms))
    legs = [{"from": a, "to": b, "currency": "USD", "amount": 1_000},
            {"from": b, "to": a, "currency": "EUR", "amount": 900}]
    txs.append(signer.tx("pvp", {"legs": legs, "ref": "fx-1"}, [key[a], key[b]], time_ms))
    far = time_ms + SETUP_HOLD_EXPIRES_MS
    holds = [("hold-settle", c, d, 500, far), ("hold-cancel", d, c, 200, far),
             # expires between block 1 and block 2's successor: due at the start of block 3
             ("hold-expiring", e, f, 100, time_ms + BLOCK_INTERVAL_MS + BLOCK_INTERVAL_MS // 2),
             ("hold-pending", f, g, 50, far)]
    for hold_id, source, target, amount, expires in holds:
        body = {"id": hold_id, "from": source, "to": target, "currency": "USD", "amount": amount, "expires": expires}
        txs.append(signer.tx("hold.create", body, [key[source]], time_ms))
    body = {"from": g, "to": a, "currency": "USD", "amount": ISSUED_AMOUNT * 10}
    txs.append(signer.tx("transfer", body, [key[g]], time_ms))  # fails insufficient_funds
    return txs


def _block_txs(chain: Chain, signer: _Signer, rng: random.Random, height: int, count: int,
               time_ms: int) -> list[SignedTx]:
    accounts = list(chain.account_keys)
    key = chain.account_keys
    txs = []
    if height == 2:
        c = accounts[2]
        txs.append(signer.tx("hold.settle", {"id": "hold-settle"}, [key[c]], time_ms))
        txs.append(signer.tx("hold.cancel", {"id": "hold-cancel"}, [key[c]], time_ms))
    while len(txs) < count:
        source, target = rng.sample(accounts, 2)
        body = {"from": source, "to": target, "currency": "USD", "amount": rng.randint(1, 1_000)}
        if signer.nonce % 10 == 0:
            body["ref"] = f"invoice-{signer.nonce}"
        txs.append(signer.tx("transfer", body, [key[source]], time_ms))
    return txs


def make_chain(directory: str, blocks: int = 5, txs_per_block: int = 10, validators: int = 4, *,
               chain_id: str = CHAIN_ID, base_port: int = 7700, votes: int | None = None, seed: int = 1,
               genesis_time: int | None = None) -> Chain:
    """Write a network in `directory` and a committed chain of `blocks` blocks into node0's store.

    `votes` is how many validators sign each certificate (default all of them).
    """
    if blocks < 1 or validators < 1:
        raise ValueError("a chain needs at least one block and one validator")
    # Block times end well before now, so a node started on the store proposes after them.
    start = genesis_time if genesis_time is not None else int(time.time() * 1000) - (blocks + 3600) * BLOCK_INTERVAL_MS
    genesis = init_network(directory, validators=validators, chain_id=chain_id, base_port=base_port, genesis_time=start)
    members = [m["id"] for m in genesis["members"]]
    chain = Chain(
        directory=directory, home=os.path.join(directory, "node0"), data_dir=os.path.join(directory, "node0", "data"),
        genesis_path=os.path.join(directory, "genesis.json"), genesis=genesis, chain_id=chain_id,
        validator_keys=[crypto.KeyPair.load(os.path.join(directory, v["name"], "node_key.json"))
                        for v in genesis["validators"]],
        bank_keys={m: crypto.KeyPair.load(os.path.join(directory, "keys", f"{m}.json")) for m in members},
        account_keys={f"{members[i % len(members)]}:acct{i}": crypto.KeyPair.generate()
                      for i in range(max(8, ACCOUNTS_PER_MEMBER * len(members)))},
    )
    _write_chain(chain, blocks, txs_per_block, votes if votes is not None else validators, seed)
    return chain


def _write_chain(chain: Chain, blocks: int, txs_per_block: int, votes: int, seed: int) -> None:
    genesis = chain.genesis
    params = params_of(genesis)
    validators = tuple(key.public_key for key in chain.validator_keys)
    genesis_hash = blockmod.genesis_hash(genesis)
    store = LevelDBStore(chain.data_dir)
    try:
        # Exactly Node._open_chain on a fresh store.
        state = LedgerState.from_genesis(genesis)
        store.init_genesis(genesis_hash, state.state_root, dict(state.items()))
        signer, rng = _Signer(chain.chain_id), random.Random(seed)
        tip_hash, tip_time = genesis_hash, genesis["genesis_time"]
        for height in range(1, blocks + 1):
            time_ms = tip_time + BLOCK_INTERVAL_MS
            txs = (_setup_txs(chain, signer, time_ms) if height == 1
                   else _block_txs(chain, signer, rng, height, txs_per_block, time_ms))
            ctx = ChainContext(chain_id=chain.chain_id, validators=validators, max_block_txs=params["max_block_txs"],
                               max_block_bytes=params["max_block_bytes"],
                               max_clock_drift_ms=params["max_clock_drift_ms"], tip_height=height - 1,
                               tip_hash=tip_hash, tip_time=tip_time)
            checked = build_block(ctx, state, txs, time_ms=time_ms, view=0, proposer=validators[0])
            certificate = sign_certificate(chain.chain_id, height, 0, checked.block_hash, chain.validator_keys[:votes])
            tx_ids = [t.tx_id for t in txs]
            # Exactly Node._commit.
            store.commit_block(height=height, header=checked.header_bytes, block_hash=checked.block_hash,
                               time=time_ms, state_root=checked.header.state_root, txs=[t.raw for t in txs],
                               tx_ids=tx_ids, results=checked.outcome.results, certificate=certificate,
                               changes=checked.outcome.changes)
            state.apply(checked.outcome.changes, checked.outcome.state_root)
            tip_hash, tip_time = checked.block_hash, time_ms
            chain.block_times.append(time_ms)
            chain.tx_ids.append(tx_ids)
            chain.results.append(list(checked.outcome.results))
    finally:
        store.close()

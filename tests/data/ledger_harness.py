"""A small in-memory ledger for the execution tests and the replay-chain generator.

Keys are derived from names (sha256 of the name as the Ed25519 seed), so every run
signs the same bytes. By convention a member's admin key is named after the member
("BANK0") and an account's key after the account ("alice"); `Ledger.tx` takes those
names as its signers. Each `Ledger.block` call executes one block on the committed
state and applies it, exactly as a node would after commit.
"""
from __future__ import annotations

from ledger import codec
from ledger.crypto import KeyPair
from ledger.execution import BlockOutcome, execute_block
from ledger.state import LedgerState
from ledger.tx import SignedTx, make_tx, parse_signed
from ledger.views import account_view

CHAIN_ID = "test-chain"
GENESIS_TIME_MS = 1_800_000_000_000
BLOCK_INTERVAL_MS = 1_000
TX_LIFETIME_MS = 3_600_000
DEFAULT_ISSUERS = {"USD": "BANK0", "EUR": "BANK1", "GBP": "BANK2", "JPY": "BANK0"}

_keypairs: dict[str, KeyPair] = {}


def keypair(name: str) -> KeyPair:
    """The deterministic key named `name`."""
    if name not in _keypairs:
        _keypairs[name] = KeyPair.from_seed(codec.sha256(b"test-key/" + name.encode()))
    return _keypairs[name]


def public_key(name: str) -> bytes:
    return keypair(name).public_key


def make_genesis(member_count: int = 4, issuers: dict[str, str] | None = None) -> dict:
    """A genesis.json object (contract section 5) with members BANK0..BANK<n-1>."""
    members = [{"id": f"BANK{i}", "name": f"Bank {i}", "admin_key": public_key(f"BANK{i}").hex()}
               for i in range(member_count)]
    return {
        "chain_id": CHAIN_ID,
        "genesis_time": GENESIS_TIME_MS,
        "validators": [{"name": f"node{i}", "member": f"BANK{i}", "public_key": public_key(f"node{i}").hex()}
                       for i in range(member_count)],
        "members": members,
        "issuers": dict(DEFAULT_ISSUERS if issuers is None else issuers),
        "params": {"max_clock_drift_ms": 5000, "max_block_txs": 10000, "max_block_bytes": 8388608},
    }


class Ledger:
    """A committed state plus the height and time of its last block."""

    def __init__(self, genesis: dict | None = None):
        self.genesis = make_genesis() if genesis is None else genesis
        self.state = LedgerState.from_genesis(self.genesis)
        self.height = 0
        self.time_ms = self.genesis["genesis_time"]
        self.nonce = 0

    def tx(self, tx_type: str, body: dict, *signers: str) -> SignedTx:
        """A signed transaction; `signers` are key names (see the module docstring)."""
        self.nonce += 1
        raw = make_tx(CHAIN_ID, tx_type, body, [keypair(name) for name in signers],
                      nonce=self.nonce, expires=self.time_ms + TX_LIFETIME_MS)
        return parse_signed(raw)

    def block(self, *txs: SignedTx, time_ms: int | None = None) -> BlockOutcome:
        """Execute and commit the next block (default time: one interval after the last)."""
        block_time_ms = self.time_ms + BLOCK_INTERVAL_MS if time_ms is None else time_ms
        assert block_time_ms > self.time_ms, "block time must increase"
        self.height += 1
        self.time_ms = block_time_ms
        outcome = execute_block(self.state, self.height, self.time_ms, list(txs))
        self.state.apply(outcome.changes, outcome.state_root)
        return outcome

    def expect(self, code: str, tx_type: str, body: dict, *signers: str) -> BlockOutcome:
        """Run one transaction in a block of its own and check its result code.

        For a failure it also checks, before committing, that the transaction changed
        nothing: the block's changes and root equal those of the same block without it,
        and execute_block left the committed state untouched.
        """
        stx = self.tx(tx_type, body, *signers)
        if code != "ok":
            height, time_ms = self.height + 1, self.time_ms + BLOCK_INTERVAL_MS
            before = self.snapshot()
            without = execute_block(self.state, height, time_ms, [])
            outcome = execute_block(self.state, height, time_ms, [stx])
            assert outcome.results == [code], f"{tx_type}: expected {code}, got {outcome.results[0]}"
            assert outcome.changes == without.changes, f"failed {tx_type} wrote {outcome.changes}"
            assert outcome.state_root == without.state_root
            assert self.snapshot() == before, "execute_block changed the committed state"
        outcome = self.block(stx)
        assert outcome.results == [code], f"{tx_type}: expected {code}, got {outcome.results[0]}"
        return outcome

    def run(self, tx_type: str, body: dict, *signers: str) -> str:
        """One transaction in a block of its own; its result code."""
        return self.block(self.tx(tx_type, body, *signers)).results[0]

    # -- shortcuts for setting up a scene ----------------------------------------------

    def open(self, account_id: str, owner: str = "BANK0") -> None:
        code = self.run("account.open", {"id": account_id, "owner": owner, "key": public_key(account_id)}, owner)
        assert code == "ok", code

    def fund(self, account_id: str, currency: str, amount: int) -> None:
        issuer = self.genesis["issuers"][currency]
        code = self.run("issue", {"account": account_id, "currency": currency, "amount": amount}, issuer)
        assert code == "ok", code

    def balance(self, account_id: str, currency: str) -> tuple[int, int]:
        """(available, held) of one account in one currency."""
        view = account_view(self.state, account_id)
        return view["balances"].get(currency, 0), view["held"].get(currency, 0)

    def snapshot(self) -> tuple[bytes, list]:
        """The root and every record, to show that something changed nothing."""
        return self.state.state_root, list(self.state.items())

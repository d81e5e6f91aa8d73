"""A fake ledger for the simulator: block building and checking by contract-shaped rules.

Blocks have real contract headers (canonical msgpack with every field of section 4).
The payload stands in for the txs: b"tx:" followed by random bytes, and the roots are
hashes of it, so a block is valid exactly when its header matches its payload and its
parent. A Byzantine-made payload that does not start with b"tx:" fails the check.
"""
from __future__ import annotations

from dataclasses import dataclass

from ledger import codec

GENESIS_TIME_MS = 1_700_000_000_000
TICK_MS = 50
MAX_CLOCK_DRIFT_MS = 5_000
PAYLOAD_PREFIX = b"tx:"
EMPTY_PAYLOAD = PAYLOAD_PREFIX  # a valid block without txs: what a censoring primary proposes


def genesis_hash(chain_id: str) -> bytes:
    return codec.sha256(codec.encode({"chain_id": chain_id, "genesis_time": GENESIS_TIME_MS}))


def clock_ms(tick: int) -> int:
    return GENESIS_TIME_MS + TICK_MS * (tick + 1)


@dataclass(frozen=True)
class StoredBlock:
    height: int
    header: bytes
    payload: bytes
    certificate: dict
    block_hash: bytes
    state_root: bytes
    time: int


class FakeLedger:
    """One node's committed chain and its block rules (the driver's side of the seam)."""

    def __init__(self, chain_id: str, validators: tuple[bytes, ...]):
        self.chain_id = chain_id
        self.validators = validators
        self.blocks: list[StoredBlock] = []
        self.genesis = genesis_hash(chain_id)

    @property
    def height(self) -> int:
        return len(self.blocks)

    @property
    def head_hash(self) -> bytes:
        return self.blocks[-1].block_hash if self.blocks else self.genesis

    @property
    def head_certificate(self) -> dict | None:
        return self.blocks[-1].certificate if self.blocks else None

    def _head_state(self) -> tuple[bytes, int]:
        if self.blocks:
            return self.blocks[-1].state_root, self.blocks[-1].time
        return b"\0" * 32, GENESIS_TIME_MS

    def build(self, view: int, proposer: bytes, now_ms: int, payload: bytes, time_ms: int | None = None) -> bytes:
        state_root, parent_time = self._head_state()
        tx_root = codec.sha256(payload)
        header = {
            "chain": self.chain_id,
            "height": self.height + 1,
            "prev": self.head_hash,
            "time": max(parent_time + 1, now_ms) if time_ms is None else time_ms,
            "proposer": proposer,
            "view": view,
            "tx_count": max(0, len(payload) - len(PAYLOAD_PREFIX)),
            "tx_root": tx_root,
            "results_root": codec.sha256(b"results" + tx_root),
            "state_root": codec.sha256(state_root + tx_root),
        }
        return codec.encode(header)

    def check(self, header_bytes: bytes, payload: bytes, fresh: bool, now_ms: int) -> bool:
        try:
            header = codec.decode(header_bytes)
        except codec.CodecError:
            return False
        state_root, parent_time = self._head_state()
        tx_root = codec.sha256(payload)
        n = len(self.validators)
        return (
            type(header) is dict
            and header.get("chain") == self.chain_id
            and header.get("height") == self.height + 1
            and header.get("prev") == self.head_hash
            and type(header.get("view")) is int
            and header.get("proposer") == self.validators[header["view"] % n]
            and type(header.get("time")) is int
            and header["time"] > parent_time
            and (not fresh or abs(header["time"] - now_ms) <= MAX_CLOCK_DRIFT_MS)
            and payload.startswith(PAYLOAD_PREFIX)
            and header.get("tx_root") == tx_root
            and header.get("results_root") == codec.sha256(b"results" + tx_root)
            and header.get("state_root") == codec.sha256(state_root + tx_root)
        )

    def append(self, header: bytes, payload: bytes, certificate: dict) -> StoredBlock:
        decoded = codec.decode(header)
        block = StoredBlock(
            height=self.height + 1,
            header=header,
            payload=payload,
            certificate=certificate,
            block_hash=codec.sha256(header),
            state_root=decoded["state_root"],
            time=decoded["time"],
        )
        self.blocks.append(block)
        return block

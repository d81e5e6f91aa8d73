"""Outputs of the replica state machine: `Replica.step` returns a list of these.

The driver performs them in list order. Every Persist must be durable (synced) before
any later action of the same list is performed: the replica puts the WAL record of a
vote before the Broadcast of that vote, and the certificate record before CommitBlock,
so a crash can never leave a sent vote unrecorded.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Persist:
    """Write one WAL record (durably, before the next action)."""

    key: bytes
    value: bytes


@dataclass(frozen=True, slots=True)
class Forget:
    """WAL records for heights < below_height may be deleted.

    Record keys start with the 8-byte big-endian height they belong to, so this is the
    key range [b"", below_height.to_bytes(8, "big")). Keys that belong to no height
    start with eight 0xff bytes and are never forgotten.
    """

    below_height: int


@dataclass(frozen=True, slots=True)
class Broadcast:
    """Send to every other validator."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Send:
    """Send to one validator, by public key."""

    to: bytes
    data: bytes


@dataclass(frozen=True, slots=True)
class BuildProposal:
    """Build a fresh block (header + payload) for `height` in `view`; answer ProposalBuilt."""

    height: int
    view: int
    prev_hash: bytes


@dataclass(frozen=True, slots=True)
class CheckBlock:
    """Validate a block by every ledger rule; answer BlockChecked(sha256(header), valid).

    fresh=True also checks the block time against the clock: only for a fresh proposal,
    never for a block carried over by a view change.
    """

    header: bytes
    payload: bytes
    fresh: bool


@dataclass(frozen=True, slots=True)
class CommitBlock:
    """Final: store the block and its certificate atomically.

    certificate = {"height", "view", "block_hash", "sigs": [[validator_key, sig], ...]}
    with >= q commit votes of distinct validators for that view. The replica only commits
    a block the driver answered BlockChecked(valid=True) for in this process.
    """

    height: int
    header: bytes
    payload: bytes
    certificate: dict


@dataclass(frozen=True, slots=True)
class FetchBlocks:
    """Catch-up: fetch blocks + certificates >= from_height from these peers, verify and
    apply them, then send Synced (also when nothing could be fetched)."""

    from_height: int
    peers: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Alarm:
    """Something only a bug or non-determinism explains; log it loudly."""

    reason: str


Action = Persist | Forget | Broadcast | Send | BuildProposal | CheckBlock | CommitBlock | FetchBlocks | Alarm

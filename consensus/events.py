"""Inputs of the replica state machine: one of these per `Replica.step` call.

The driver (ledger node) turns timer ticks, authenticated peer messages and answers to
the replica's own requests into these events. None of them carries wall-clock time:
time exists for the replica only as a count of `Tick`s.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Tick:
    """One logical tick; the driver sends one every tick_ms (about 50 ms)."""


@dataclass(frozen=True, slots=True)
class Receive:
    """Raw wire bytes of a consensus message from validator `sender`.

    `sender` is the peer's public key as authenticated by the p2p handshake. The replica
    decodes, size-checks and verifies the bytes; garbage is dropped and counted.
    """

    sender: bytes
    data: bytes


@dataclass(frozen=True, slots=True)
class ProposalBuilt:
    """Answer to BuildProposal: a fresh block for (height, view)."""

    height: int
    view: int
    header: bytes
    payload: bytes


@dataclass(frozen=True, slots=True)
class BlockChecked:
    """Answer to CheckBlock; digest = sha256(header)."""

    digest: bytes
    valid: bool


@dataclass(frozen=True, slots=True)
class WorkChanged:
    """The driver's mempool state.

    has_work: pending txs or a due expiry. stalled: a tx this node holds has stayed
    uncommitted too long (a censoring primary); the replica then votes for a view change.
    The driver sends this whenever either value changes, and again after performing
    every CommitBlock and every Synced (the replica forgets both values when its height
    moves, because they described the mempool before that block).
    """

    has_work: bool
    stalled: bool = False


@dataclass(frozen=True, slots=True)
class Synced:
    """The driver applied blocks fetched during catch-up up to `height`.

    `certificate` is the commit certificate of block `height` (the contract's dict); the
    replica needs it to prove its height in a VIEW-CHANGE. Sent once for every
    FetchBlocks, also when the fetch made no progress (height unchanged).
    """

    height: int
    block_hash: bytes
    header: bytes
    certificate: dict | None = None


Event = Tick | Receive | ProposalBuilt | BlockChecked | WorkChanged | Synced

"""Block validation and production: every rule of contract section 4 for a block.

Pure functions over the committed state and the block; the node calls them for its own
proposals, for a primary's fresh proposal, for a block carried over by a view change
and for blocks fetched while catching up. Signature checks are skipped only for
envelopes this node already verified byte for byte (its mempool), so every node
verifies every signature once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ledger import block as blockmod
from ledger.execution import BlockOutcome, execute_block
from ledger.state import LedgerState
from ledger.tx import SignedTx, TxError, expiry_fits_block, parse_signed, signatures_valid


class BlockInvalid(Exception):
    """A block that breaks a rule; the message names the rule."""


class BlockDiverges(BlockInvalid):
    """A block whose payload is the one its header commits to (tx_root matches), yet a rule
    fails on its transactions or their re-execution. For a certified block this is not a
    peer's fault: q validators, at least one honest, accepted exactly these bytes, so this
    node's ledger disagrees with theirs (a bug or non-determinism)."""


@dataclass(frozen=True, slots=True)
class CheckedBlock:
    header: blockmod.Header
    header_bytes: bytes
    block_hash: bytes
    txs: list[SignedTx]
    outcome: BlockOutcome


@dataclass(frozen=True)
class ChainContext:
    """What validation needs to know about the chain and the committed tip."""

    chain_id: str
    validators: tuple[bytes, ...]
    max_block_txs: int
    max_block_bytes: int
    max_clock_drift_ms: int
    tip_height: int
    tip_hash: bytes
    tip_time: int


def build_block(ctx: ChainContext, state: LedgerState, txs: list[SignedTx], *, time_ms: int, view: int,
                proposer: bytes) -> CheckedBlock:
    """Execute `txs` on the committed state and make the header of height tip+1."""
    height = ctx.tip_height + 1
    outcome = execute_block(state, height, time_ms, txs)
    raws = [t.raw for t in txs]
    header = blockmod.Header(
        chain=ctx.chain_id, height=height, prev=ctx.tip_hash, time=time_ms, proposer=proposer, view=view,
        tx_count=len(txs), tx_root=blockmod.tx_root(raws),
        results_root=blockmod.results_root([t.tx_id for t in txs], outcome.results),
        state_root=outcome.state_root,
    )
    header_bytes = header.encode()
    return CheckedBlock(header, header_bytes, blockmod.block_hash(header_bytes), list(txs), outcome)


def check_block(ctx: ChainContext, state: LedgerState, header_bytes: bytes, payload: bytes, *,
                is_committed: Callable[[bytes], bool], verified: Callable[[bytes], SignedTx | None],
                now_ms: int | None) -> CheckedBlock:
    """Every section-4 rule; `now_ms` is given only for a fresh proposal (clock bounds)."""
    try:
        header = blockmod.decode_header(header_bytes)
    except ValueError as exc:
        raise BlockInvalid(str(exc)) from None
    if header.chain != ctx.chain_id:
        raise BlockInvalid("header.chain is not this chain")
    if header.height != ctx.tip_height + 1:
        raise BlockInvalid(f"height {header.height} does not follow the tip {ctx.tip_height}")
    if header.prev != ctx.tip_hash:
        raise BlockInvalid("prev does not link to the committed tip")
    if header.time <= ctx.tip_time:
        raise BlockInvalid("time is not after the previous block's time")
    if not ctx.validators or header.proposer != ctx.validators[header.view % len(ctx.validators)]:
        raise BlockInvalid("proposer is not the primary of the header's view")
    if now_ms is not None and abs(header.time - now_ms) > ctx.max_clock_drift_ms:
        raise BlockInvalid(f"time is {header.time - now_ms} ms away from this node's clock")
    try:
        raws = blockmod.decode_payload(payload)
    except ValueError as exc:
        raise BlockInvalid(f"payload: {exc}") from None
    if len(raws) != header.tx_count:
        raise BlockInvalid("tx_count differs from the payload")
    if len(raws) > ctx.max_block_txs:
        raise BlockInvalid("more transactions than params.max_block_txs")
    if sum(len(r) for r in raws) > ctx.max_block_bytes:
        raise BlockInvalid("transactions exceed params.max_block_bytes")
    if blockmod.tx_root(raws) != header.tx_root:
        raise BlockInvalid("tx_root does not match the transactions")
    txs = []
    seen: set[bytes] = set()
    for index, raw in enumerate(raws):
        stx = verified(raw)
        needs_signature_check = stx is None
        if stx is None:
            try:
                stx = parse_signed(raw)
            except TxError as exc:
                raise BlockDiverges(f"tx {index}: {exc.code}: {exc.message}") from None
        if stx.chain != ctx.chain_id:
            raise BlockDiverges(f"tx {index} is for another chain")
        if not expiry_fits_block(stx, header.time):
            raise BlockDiverges(f"tx {index} is outside its expiry window")
        # A pooled tx is never committed (the pool drops it at commit): only others hit the index.
        if stx.tx_id in seen or (needs_signature_check and is_committed(stx.tx_id)):
            raise BlockDiverges(f"tx {index} was committed before or repeats in the block")
        seen.add(stx.tx_id)
        if needs_signature_check and not signatures_valid(stx):
            raise BlockDiverges(f"tx {index} has an invalid signature")
        txs.append(stx)
    outcome = execute_block(state, header.height, header.time, txs)
    if blockmod.results_root([t.tx_id for t in txs], outcome.results) != header.results_root:
        raise BlockDiverges("results_root does not match re-execution")
    if outcome.state_root != header.state_root:
        raise BlockDiverges("state_root does not match re-execution")
    return CheckedBlock(header, header_bytes, blockmod.block_hash(header_bytes), txs, outcome)

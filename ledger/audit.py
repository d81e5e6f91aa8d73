"""Chain audit (contract section 8): `ledger audit --home DIR` and `ledger audit --rpc URL --genesis FILE`.

The audit trusts one thing, the genesis file, and re-derives everything else from it:
it walks the chain from height 1 to the last block, checks every header, certificate,
transaction and root, and replays every block from the genesis state with the same
`execute_block` the nodes run. Offline (`audit_store`, over a stopped node's LevelDB)
it then compares every record the node derived from the chain (state, tx index, tip
and genesis metadata) with what the replay implies, in both directions, and reports any
key it does not know. Online (`audit_rpc`) it reads the blocks through the RPC and
checks the same chain rules and roots, but it cannot see the node's stored records.

Per block, in this order (the first failing check is the one reported; the walk stops
at the first failing block, because every later block is judged against it):

    record_missing      header, body and certificate are all stored at this height
    certificate_decode  the certificate record is canonical msgpack (RPC: well-formed JSON)
    body_decode         the block body is {txs, tx_ids, results} of equal lengths
    header_decode       the header is a canonical header map (section 4)
    header_height       its height is the height it is stored at
    header_chain        its chain is genesis chain_id
    prev_link           prev is the previous block's hash (height 1: the genesis hash)
    time_order          time is after the previous block's time (height 1: genesis_time)
    proposer            proposer is the primary of the header's view
    certificate         >= q valid votes of distinct genesis validators, nothing else, in
                        the header's view or a later one
    block_hash          the header hashes to the certificate's block_hash
    tx_count            header tx_count is the number of stored transactions
    block_limits        params.max_block_txs and params.max_block_bytes hold
    tx_root             tx_root is the RFC 6962 root over the stored envelopes
    tx_envelope         every transaction is a canonical, well-formed signed envelope
    tx_ids              the stored tx ids are the ids of the stored transactions
    tx_chain            every transaction is for this chain
    tx_expiry           block time < expires <= block time + 24 h
    tx_duplicate        no tx id is committed twice in the chain
    results_root        results_root is the root over canonical([tx_id, code])
    tx_signature        every signature verifies (libsodium's rule)
    result_code         replay gives the stored result code of every transaction
    state_root          replay reproduces the header's state_root

After the walk (offline only): block_records (a record under a block prefix whose key
is not a height), genesis_record, tip_record, state_record (missing, extra, altered or
undecodable, by key), tx_index (missing, extra, wrong location or undecodable, by tx
id) and unknown_record (a key under no prefix this node writes); store_read reports a
record LevelDB itself cannot read (a damaged table file). Two kinds of record are not
chain data, yet a damaged one would hurt the node, so their integrity is checked while
their content is not judged: wal_record (each consensus write-ahead record, prefix
b"w", carries the CRC32 of its key and record; a node refuses to start on a bad one)
and pending_record (each transaction a node acknowledged and has not yet seen committed,
prefix b"p", is a canonical envelope stored under its own tx id, for this chain, with
valid signatures; a node would drop a bad one at its next start, losing an
acknowledged transaction). So a single altered byte anywhere in a store is caught.

Speed: each record is decoded once and each signature verified once; for large blocks
the signatures verify on worker processes while the main thread parses the next block
and replays (see SignatureVerifier and ChainChecker).
"""
from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import BrokenExecutor, Future, ProcessPoolExecutor
from dataclasses import dataclass, field

import plyvel

from consensus import wal as wal_records
from ledger import block as blockmod
from ledger import codec, crypto
from ledger import store as storemod
from ledger.execution import BlockOutcome, execute_block
from ledger.network import ConfigError, load_config, load_genesis, params_of
from ledger.state import LedgerState
from ledger.tx import SignedTx, TxError, expiry_fits_block, parse_signed, signatures_valid

# Every check, in the order it runs; the names appear in reports and in docs/audit.md.
BLOCK_CHECKS = (
    "record_missing", "certificate_decode", "body_decode", "header_decode", "header_height", "header_chain",
    "prev_link", "time_order", "proposer", "certificate", "block_hash", "tx_count", "block_limits", "tx_root",
    "tx_envelope", "tx_ids", "tx_chain", "tx_expiry", "tx_duplicate", "results_root", "tx_signature",
    "result_code", "state_root",
)
RPC_CHECKS = ("rpc_block",)  # the node's JSON answer agrees with the bytes it carries
RECORD_CHECKS = ("block_records", "tip_record", "state_record", "tx_index", "wal_record", "pending_record",
                 "unknown_record")
STORE_CHECKS = ("genesis_record",) + RECORD_CHECKS + ("store_read",)

FINDINGS_KEPT_MAX = 200  # a store with a broken state can differ in every record; keep the report readable
VERIFY_CHUNK_TXS = 250
PARALLEL_VERIFY_MIN_TXS = 500  # smaller blocks verify inline: worker round trips would cost more
PROGRESS_DELAY_S = 1.0  # a progress bar only for audits that take a while
PROGRESS_INTERVAL_S = 0.2
RPC_TIMEOUT_S = 60
WAL_NOT_COVERED = ("consensus write-ahead records (prefix 'w'): the replica's own votes and view state, kept "
                   "so that it never votes twice after a restart; not chain data: checksums checked, content not judged")
BODY_KEYS = frozenset({"txs", "tx_ids", "results"})
TIP_KEYS = frozenset({"height", "hash", "state_root", "time"})
PENDING_NOT_COVERED = ("pending records (prefix 'p'): transactions this node acknowledged to clients and has not "
                       "seen committed, re-admitted at its next start; not chain data: envelopes and signatures "
                       "checked, whether they are still admissible is the node's to judge")
KNOWN_PREFIXES = frozenset({storemod.HEADER, storemod.BLOCK, storemod.CERT, storemod.TXINDEX, storemod.STATE,
                            storemod.META, storemod.WAL, storemod.PENDING})


class AuditUnavailable(Exception):
    """The home, its config, its store (or the node's RPC) cannot be opened at all: exit 2."""


class CheckFailed(Exception):
    """One failed check of one block or record; `check` is one of the names above."""

    def __init__(self, check: str, message: str):
        super().__init__(f"{check}: {message}")
        self.check = check
        self.message = message


@dataclass(frozen=True, slots=True)
class Finding:
    """A failed check: at a block height, or on a record named by `key` (then height is the tip)."""

    check: str
    message: str
    height: int | None = None
    key: str | None = None

    def to_json(self) -> dict:
        return {"check": self.check, "height": self.height, "key": self.key, "message": self.message}

    def describe(self) -> str:
        if self.height is None:
            where = "store"
        elif self.check in RECORD_CHECKS:
            where = f"tip height {self.height}"  # a derived record, judged against the chain up to the tip
        else:
            where = f"height {self.height}"
        if self.key is not None:
            where += f", key {self.key}"
        return f"{where}, check {self.check}: {self.message}"


@dataclass
class AuditReport:
    """What an audit found; `intact` is exit 0."""

    source: str  # "store" or "rpc"
    target: str  # the data directory or the RPC URL
    chain_id: str
    checks: tuple[str, ...]
    height: int = 0  # the last block checked
    blocks: int = 0
    txs: int = 0
    elapsed_s: float = 0.0
    findings: list[Finding] = field(default_factory=list)
    findings_total: int = 0
    skipped: list[str] = field(default_factory=list)
    not_covered: list[str] = field(default_factory=list)
    covered: dict[str, int] = field(default_factory=dict)  # record counts compared (offline)

    @property
    def intact(self) -> bool:
        return self.findings_total == 0

    @property
    def first(self) -> Finding | None:
        return self.findings[0] if self.findings else None

    @property
    def txs_per_s(self) -> float:
        return self.txs / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def add(self, finding: Finding) -> None:
        self.findings_total += 1
        if len(self.findings) < FINDINGS_KEPT_MAX:
            self.findings.append(finding)

    def to_json(self) -> dict:
        return {
            "intact": self.intact, "source": self.source, "target": self.target, "chain_id": self.chain_id,
            "height": self.height, "blocks": self.blocks, "txs": self.txs, "elapsed_s": round(self.elapsed_s, 3),
            "txs_per_s": round(self.txs_per_s, 1),
            "first_failure": self.first.to_json() if self.first else None,
            "failures": [f.to_json() for f in self.findings], "failures_total": self.findings_total,
            "checks": list(self.checks), "records_compared": dict(self.covered),
            "skipped": list(self.skipped), "not_covered": list(self.not_covered),
        }

    def to_text(self) -> str:
        verdict = "INTACT" if self.intact else "NOT INTACT"
        lines = [f"audit of {self.source} {self.target} (chain {self.chain_id}): {verdict}"]
        if self.first is not None:
            lines.append(f"  first failure: {self.first.describe()}")
            for finding in self.findings[1:20]:
                lines.append(f"  also: {finding.describe()}")
            if self.findings_total > 20:
                lines.append(f"  ... {self.findings_total - 20} more (use --json for the first {FINDINGS_KEPT_MAX})")
        span = f"heights 1..{self.height}" if self.blocks else "none"
        lines.append(f"  {self.blocks} blocks ({span}) and {self.txs:,} transactions passed every block check; "
                     f"{self.elapsed_s:.2f} s ({self.txs_per_s:,.0f} tx/s)")
        if self.covered:
            lines.append("  compared: " + ", ".join(f"{count:,} {name}" for name, count in self.covered.items()))
        for item in self.skipped:
            lines.append(f"  skipped: {item}")
        for item in self.not_covered:
            lines.append(f"  not covered: {item}")
        return "\n".join(lines)


# ---------------------------------------------------------------------- one block, source-neutral
@dataclass(frozen=True, slots=True)
class BlockRecords:
    """One block as a source hands it over: header bytes, decoded certificate, the body's three lists."""

    height: int
    header: bytes
    certificate: object  # judged by block.certificate_error
    txs: list[bytes]
    tx_ids: list[bytes]
    results: list[str]


class SignatureVerifier:
    """Verifies every transaction signature exactly once; on worker processes for large blocks.

    Ed25519 verification is most of an audit's cost (about two thirds on one core).
    Threads do not help: each libsodium call releases the GIL, but getting it back waits
    for the replaying main thread's switch interval, so the workers crawl. Worker
    processes get the few bytes a check needs (tx id, signers, signatures) in chunks,
    submitted while the main thread is still parsing the rest of the block, and verify
    while it prepares the next block and replays this one (see ChainChecker). Small
    blocks are verified inline: the round trips would cost more than they save.
    """

    def __init__(self, workers: int | None = None):
        """`workers`: how many processes verify (0: all inline); by default one per core on a multi-core machine."""
        cores = os.cpu_count() or 1
        self.workers = workers if workers is not None else (cores if cores > 1 else 0)
        self._pool: ProcessPoolExecutor | None = None

    def begin(self, tx_count: int) -> "BlockVerification":
        parallel = self.workers > 0 and tx_count >= PARALLEL_VERIFY_MIN_TXS
        if parallel and self._pool is None:
            # fork, not spawn: spawn re-runs the caller's __main__ module in every worker.
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("fork"))
        return BlockVerification(self._pool if parallel else None)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class BlockVerification:
    """The signature checks of one block: `add` each parsed transaction, then `first_invalid`."""

    def __init__(self, pool: ProcessPoolExecutor | None):
        self._pool = pool
        self._chunk: list[tuple[bytes, tuple[bytes, ...], tuple[bytes, ...]]] = []
        self._chunk_start = 0
        self._submitted: list[tuple[int, list, Future | None]] = []

    def add(self, stx: SignedTx) -> None:
        self._chunk.append((stx.tx_id, stx.signers, stx.sigs))
        if self._pool is not None and len(self._chunk) >= VERIFY_CHUNK_TXS:
            self._submit()

    def _submit(self) -> None:
        chunk, start = self._chunk, self._chunk_start
        try:
            future = self._pool.submit(verify_signatures, chunk, start)
        except BrokenExecutor:
            future = None  # a worker died earlier: this chunk is verified inline in first_invalid
        self._submitted.append((start, chunk, future))
        self._chunk_start += len(chunk)
        self._chunk = []

    def first_invalid(self) -> int | None:
        """The lowest index whose signatures do not verify (waits for the workers)."""
        found = []
        for start, chunk, future in self._submitted:
            try:
                found.append(verify_signatures(chunk, start) if future is None else future.result())
            except BrokenExecutor:
                found.append(verify_signatures(chunk, start))  # a worker died: do its share here
        found.append(verify_signatures(self._chunk, self._chunk_start))
        return min((index for index in found if index is not None), default=None)


def verify_signatures(items: list[tuple[bytes, tuple[bytes, ...], tuple[bytes, ...]]], start: int) -> int | None:
    """tx.signatures_valid over (tx_id, signers, sigs) items: the index (from start) of the first failure."""
    for offset, (tx_id, signers, sigs) in enumerate(items):
        for key, sig in zip(signers, sigs):
            if not crypto.verify(key, crypto.TX_TAG, tx_id, sig):
                return start + offset
    return None


@dataclass(frozen=True, slots=True)
class PreparedBlock:
    """A block whose header, certificate and transactions passed; its replay is still to come."""

    records: BlockRecords
    header: blockmod.Header
    stxs: list[SignedTx]
    verification: BlockVerification


class ChainChecker:
    """Checks blocks in height order from genesis and replays them (contract sections 2-4 and 8).

    Each block goes through two stages, so that signatures of one block verify on worker
    processes while the main thread works on its neighbours: `prepare` (header,
    certificate, roots, transactions; starts the signature checks) and `replay`
    (execution, result codes, state root, then the signature verdict). The walk runs
    prepare(h + 1) before replay(h); replay(h) decides first, so a failure is always
    reported at the lowest failing height.
    """

    def __init__(self, genesis: dict, verifier: SignatureVerifier):
        params = params_of(genesis)
        self.verifier = verifier
        self.chain_id: str = genesis["chain_id"]
        self.validators = [bytes.fromhex(v["public_key"]) for v in genesis["validators"]]
        self.max_block_txs: int = params["max_block_txs"]
        self.max_block_bytes: int = params["max_block_bytes"]
        self.genesis_hash = blockmod.genesis_hash(genesis)
        self.state = LedgerState.from_genesis(genesis)
        self.height = 0  # the last prepared block: the header chain's tip
        self.tip_hash = self.genesis_hash
        self.tip_time: int = genesis["genesis_time"]  # what the next block's time must exceed
        self.tx_locations: dict[bytes, tuple[int, int]] = {}  # what the tx index must hold

    def prepare(self, block: BlockRecords) -> PreparedBlock:
        """The checks that need no replay; raises CheckFailed. Extends the header chain by one."""
        height = self.height + 1
        if block.height != height:
            raise CheckFailed("record_missing", f"expected the block at height {height}, got {block.height}")
        header = self._check_header(block.header, height)
        block_hash = blockmod.block_hash(block.header)
        self._check_certificate(block.certificate, header, block_hash)
        self._check_payload(header, block)
        verification = self.verifier.begin(len(block.txs))
        stxs = self._check_transactions(header, block, verification)  # signatures start verifying meanwhile
        if blockmod.results_root(block.tx_ids, block.results) != header.results_root:
            raise CheckFailed("results_root", "results_root does not match the stored tx ids and result codes")
        self.height, self.tip_hash, self.tip_time = height, block_hash, header.time
        return PreparedBlock(block, header, stxs, verification)

    def replay(self, prepared: PreparedBlock) -> None:
        """Execute the block on the replayed state and judge its signatures; raises CheckFailed."""
        header, block, stxs = prepared.header, prepared.records, prepared.stxs
        outcome = execute_block(self.state, header.height, header.time, stxs)
        bad = prepared.verification.first_invalid()
        if bad is not None:
            raise CheckFailed("tx_signature", f"tx {bad} ({stxs[bad].tx_id.hex()}): a signature does not verify")
        self._check_replay(header, block, outcome)
        self.state.apply(outcome.changes, outcome.state_root)

    def _check_header(self, header_bytes: bytes, height: int) -> blockmod.Header:
        try:
            header = blockmod.decode_header(header_bytes)
        except ValueError as exc:
            raise CheckFailed("header_decode", str(exc)) from None
        if header.height != height:
            raise CheckFailed("header_height", f"the header stored at height {height} says height {header.height}")
        if header.chain != self.chain_id:
            raise CheckFailed("header_chain", f"header chain {header.chain!r} is not {self.chain_id!r}")
        if header.prev != self.tip_hash:
            previous = "the genesis hash" if height == 1 else f"the hash of block {height - 1}"
            raise CheckFailed("prev_link", f"prev {header.prev.hex()} is not {previous} {self.tip_hash.hex()}")
        if header.time <= self.tip_time:
            previous = "genesis_time" if height == 1 else f"block {height - 1}'s time"
            raise CheckFailed("time_order", f"time {header.time} is not after {previous} {self.tip_time}")
        primary = self.validators[header.view % len(self.validators)]
        if header.proposer != primary:
            raise CheckFailed("proposer", f"proposer {header.proposer.hex()[:16]} is not the primary of view "
                                          f"{header.view} ({primary.hex()[:16]})")
        return header

    def _check_certificate(self, certificate, header: blockmod.Header, block_hash: bytes) -> None:
        problem = blockmod.certificate_error(certificate, self.chain_id, self.validators, header.height)
        if problem is None and certificate["view"] < header.view:
            # A block commits in the view it was proposed in or, carried over, in a later one.
            problem = f"certificate view {certificate['view']} is before the header's view {header.view}"
        if problem is not None:
            raise CheckFailed("certificate", problem)
        if certificate["block_hash"] != block_hash:
            raise CheckFailed("block_hash", f"the header hashes to {block_hash.hex()}, the certificate certifies "
                                            f"{certificate['block_hash'].hex()}")

    def _check_payload(self, header: blockmod.Header, block: BlockRecords) -> None:
        if header.tx_count != len(block.txs):
            raise CheckFailed("tx_count", f"header tx_count {header.tx_count}, {len(block.txs)} transactions stored")
        size = sum(len(raw) for raw in block.txs)
        if len(block.txs) > self.max_block_txs or size > self.max_block_bytes:
            raise CheckFailed("block_limits", f"{len(block.txs)} transactions of {size} bytes exceed params "
                                              f"({self.max_block_txs} txs, {self.max_block_bytes} bytes)")
        if blockmod.tx_root(block.txs) != header.tx_root:
            raise CheckFailed("tx_root", "tx_root does not match the stored transactions")

    def _check_transactions(self, header: blockmod.Header, block: BlockRecords,
                            verification: BlockVerification) -> list[SignedTx]:
        stxs = []
        locations = self.tx_locations
        for index, raw in enumerate(block.txs):
            try:
                stx = parse_signed(raw)
            except TxError as exc:
                raise CheckFailed("tx_envelope", f"tx {index}: {exc.code}: {exc.message}") from None
            if stx.tx_id != block.tx_ids[index]:
                raise CheckFailed("tx_ids", f"tx {index}: stored tx id {block.tx_ids[index].hex()} is not the "
                                            f"transaction's id {stx.tx_id.hex()}")
            if stx.chain != self.chain_id:
                raise CheckFailed("tx_chain", f"tx {index} ({stx.tx_id.hex()}) is for chain {stx.chain!r}")
            if not expiry_fits_block(stx, header.time):
                raise CheckFailed("tx_expiry", f"tx {index} ({stx.tx_id.hex()}) expires at {stx.expires}, outside "
                                               f"(block time, block time + 24 h] for block time {header.time}")
            earlier = locations.get(stx.tx_id)
            if earlier is not None:
                raise CheckFailed("tx_duplicate", f"tx {index} ({stx.tx_id.hex()}) was already committed at "
                                                  f"height {earlier[0]} index {earlier[1]}")
            locations[stx.tx_id] = (header.height, index)
            stxs.append(stx)
            verification.add(stx)
        return stxs

    def _check_replay(self, header: blockmod.Header, block: BlockRecords, outcome: BlockOutcome) -> None:
        if outcome.results != block.results:
            index = next(i for i, (a, b) in enumerate(zip(outcome.results, block.results)) if a != b)
            raise CheckFailed("result_code", f"tx {index} ({block.tx_ids[index].hex()}): stored "
                                             f"{block.results[index]!r}, replay gives {outcome.results[index]!r}")
        if outcome.state_root != header.state_root:
            raise CheckFailed("state_root", f"replay gives state root {outcome.state_root.hex()}, the header says "
                                            f"{header.state_root.hex()}")


# ---------------------------------------------------------------------- the walk, shared by both sources
ProgressFn = Callable[[int, int, int], None]  # (height, last height expected, transactions so far)
BlockLoader = Callable[[], BlockRecords]  # raises CheckFailed for a missing or undecodable record


def _walk(checker: ChainChecker, blocks: Iterable[tuple[int, BlockLoader]], report: AuditReport,
          progress: ProgressFn | None, total: int) -> bool:
    """Check every block in order, one block of lookahead; record the first failure and stop. True if all passed."""
    pending: PreparedBlock | None = None  # prepared, waiting for its replay

    def replay_pending() -> bool:
        try:
            checker.replay(pending)
        except CheckFailed as failed:
            report.add(Finding(failed.check, failed.message, height=pending.header.height))
            return False
        report.blocks += 1
        report.txs += len(pending.stxs)
        report.height = pending.header.height
        if progress is not None:
            progress(report.height, total, report.txs)
        return True

    for height, load in blocks:
        try:
            prepared = checker.prepare(load())
        except CheckFailed as failed:
            if pending is None or replay_pending():  # a failure below this height comes first
                report.add(Finding(failed.check, failed.message, height=height))
            return False
        if pending is not None and not replay_pending():
            return False
        pending = prepared
    return pending is None or replay_pending()


# ---------------------------------------------------------------------- offline: a stopped node's store
class _HeightCursor:
    """Walks the records under one block prefix in key order, handing them out by height.

    Keys are prefix + 8-byte big-endian height, so key order is height order. A key of
    any other length, or of height 0, is set aside in `strays` as it is passed, so the
    cursor only ever stops at a well-formed height key.
    """

    KEY_LENGTH = 9

    def __init__(self, store: storemod.LevelDBStore, prefix: bytes):
        self._prefix = prefix
        self._items = iter(store.raw_items(prefix))
        self.strays: list[bytes] = []
        self._next: tuple[bytes, bytes] | None = None
        self._advance()

    def _advance(self) -> None:
        for key, value in self._items:
            if len(key) == self.KEY_LENGTH and key != storemod.height_key(self._prefix, 0):
                self._next = (key, value)
                return
            self.strays.append(key)
        self._next = None

    def take(self, height: int) -> bytes | None:
        """The record at `height`, or None if there is none."""
        if self._next is not None and self._next[0] == storemod.height_key(self._prefix, height):
            value = self._next[1]
            self._advance()
            return value
        return None

    @property
    def exhausted(self) -> bool:
        return self._next is None


def _decode_store_block(height: int, header: bytes | None, body: bytes | None, cert: bytes | None) -> BlockRecords:
    missing = [name for name, raw in (("header", header), ("block body", body), ("certificate", cert)) if raw is None]
    if missing:
        raise CheckFailed("record_missing", f"no {' and no '.join(missing)} stored at height {height}")
    try:
        certificate = codec.decode(cert)
    except codec.CodecError as exc:
        message = f"the certificate record is not canonical msgpack: {exc.message}"
        raise CheckFailed("certificate_decode", message) from None
    try:
        value = codec.decode(body)
    except codec.CodecError as exc:
        raise CheckFailed("body_decode", f"the block body is not canonical msgpack: {exc.message}") from None
    if type(value) is not dict or value.keys() != BODY_KEYS:
        raise CheckFailed("body_decode", "the block body must be a map of exactly txs, tx_ids, results")
    txs, tx_ids, results = value["txs"], value["tx_ids"], value["results"]
    if type(txs) is not list or any(type(raw) is not bytes for raw in txs):
        raise CheckFailed("body_decode", "body txs must be a list of encoded transactions")
    if type(tx_ids) is not list or any(type(i) is not bytes or len(i) != 32 for i in tx_ids):
        raise CheckFailed("body_decode", "body tx_ids must be a list of 32-byte ids")
    if type(results) is not list or any(type(code) is not str for code in results):
        raise CheckFailed("body_decode", "body results must be a list of result codes")
    if not len(txs) == len(tx_ids) == len(results):
        raise CheckFailed("body_decode", f"the body holds {len(txs)} txs, {len(tx_ids)} tx ids and "
                                         f"{len(results)} results")
    return BlockRecords(height, header, certificate, txs, tx_ids, results)


def _store_blocks(cursors: list[_HeightCursor]) -> Iterator[tuple[int, BlockLoader]]:
    """(height, loader) from height 1 while any block record remains; a gap yields a missing block."""
    header_cursor, body_cursor, cert_cursor = cursors
    height = 1
    while not all(cursor.exhausted for cursor in cursors):
        records = (header_cursor.take(height), body_cursor.take(height), cert_cursor.take(height))
        yield height, (lambda h=height, r=records: _decode_store_block(h, *r))
        height += 1


def _open_store(data_dir: str) -> storemod.LevelDBStore:
    # LevelDB makes the directory and a LOCK file even with create_if_missing=False, so look first:
    # an audit must never leave a store behind where there was none.
    if not os.path.isfile(os.path.join(data_dir, "CURRENT")):
        raise AuditUnavailable(f"{data_dir} holds no LevelDB store (has this node ever run?)")
    try:
        return storemod.LevelDBStore(data_dir, create=False)
    except storemod.StoreError as exc:
        raise AuditUnavailable(f"{exc} (if a node is running on this store it holds the lock: stop it first, or "
                               f"audit it online with --rpc URL --genesis FILE)") from None


def audit_store(home: str, progress: ProgressFn | None = None, verify_workers: int | None = None) -> AuditReport:
    """Audit a stopped node's store offline; raises AuditUnavailable if it cannot be opened at all."""
    started = time.perf_counter()
    try:
        config = load_config(home)
        genesis = load_genesis(config.genesis_path)
    except ConfigError as exc:
        raise AuditUnavailable(str(exc)) from None
    store = _open_store(config.data_dir)
    verifier = SignatureVerifier(verify_workers)
    report = AuditReport(source="store", target=config.data_dir, chain_id=genesis["chain_id"],
                         checks=BLOCK_CHECKS + STORE_CHECKS)
    try:
        _StoreAudit(store, ChainChecker(genesis, verifier), report).run(progress)
    except plyvel.Error as exc:
        # A damaged table file (LevelDB's own checksums or compression): an altered record, so exit 1.
        reason = exc.args[0].decode(errors="replace") if exc.args and type(exc.args[0]) is bytes else str(exc)
        report.add(Finding("store_read", f"LevelDB cannot read the store after block {report.height}: {reason}"))
        report.skipped.append("every check after the unreadable record")
    finally:
        verifier.close()
        store.close()
    report.elapsed_s = time.perf_counter() - started
    return report


class _StoreAudit:
    """The offline audit of one store: the chain walk, then every derived record."""

    def __init__(self, store: storemod.LevelDBStore, checker: ChainChecker, report: AuditReport):
        self.store, self.checker, self.report = store, checker, report
        self.meta = {key: value for key, value in store.raw_items(storemod.META)}

    def run(self, progress: ProgressFn | None) -> None:
        self._check_genesis_record()
        cursors = [_HeightCursor(self.store, p) for p in (storemod.HEADER, storemod.BLOCK, storemod.CERT)]
        complete = _walk(self.checker, _store_blocks(cursors), self.report, progress, self._tip_height_hint())
        if complete:
            self._check_strays(cursors)
            self._check_tip_record()
            self._check_state()
            self._check_tx_index()
        else:
            self.report.skipped.append("the tip record, stored state and tx index were not compared: the chain "
                                       "is broken below the tip, so the replay cannot say what they should hold")
        self._check_unknown_records()
        wal_records = self._check_wal_records()
        self.report.not_covered.append(f"{wal_records} {WAL_NOT_COVERED}")
        pending_records = self._check_pending_records()
        self.report.not_covered.append(f"{pending_records} {PENDING_NOT_COVERED}")

    def _finding(self, check: str, message: str, key: str | None = None, height: int | None = None) -> None:
        self.report.add(Finding(check, message, height=self.checker.height if height is None else height, key=key))

    def _tip_height_hint(self) -> int:
        """The tip record's height for the progress bar (judged properly after the walk)."""
        try:
            value = codec.decode(self.meta.get(storemod.TIP_KEY, b""))
            return int(value["height"])
        except (codec.CodecError, KeyError, TypeError, ValueError):
            return 0

    def _check_genesis_record(self) -> None:
        stored = self.meta.get(storemod.GENESIS_KEY)
        if stored is None:
            self._finding("genesis_record", "the store has no genesis record", key="mgenesis", height=0)
        elif stored != self.checker.genesis_hash:
            self._finding("genesis_record", f"the store was made by genesis {stored.hex()}, this genesis is "
                                            f"{self.checker.genesis_hash.hex()}", key="mgenesis", height=0)

    def _check_strays(self, cursors: list[_HeightCursor]) -> None:
        for cursor in cursors:
            for key in cursor.strays:
                self._finding("block_records", "a block record whose key is not prefix + 8-byte height",
                              key=key.hex())

    def _check_tip_record(self) -> None:
        checker = self.checker
        raw = self.meta.get(storemod.TIP_KEY)
        if raw is None:
            self._finding("tip_record", "the store has no tip record", key="mtip")
            return
        # At height 0 the node writes time 0 (no block yet), not genesis_time.
        expected = {"height": checker.height, "hash": checker.tip_hash, "state_root": checker.state.state_root,
                    "time": checker.tip_time if checker.height else 0}
        try:
            value = codec.decode(raw)
        except codec.CodecError as exc:
            self._finding("tip_record", f"the tip record is not canonical msgpack: {exc.message}", key="mtip")
            return
        if type(value) is not dict or value.keys() != TIP_KEYS:
            self._finding("tip_record", "the tip record must be a map of exactly height, hash, state_root, time",
                          key="mtip")
            return
        differing = [name for name in sorted(TIP_KEYS) if type(value[name]) is not type(expected[name])
                     or value[name] != expected[name]]
        if differing:
            shown = "; ".join(f"{name} {_show(value[name])}, chain says {_show(expected[name])}" for name in differing)
            self._finding("tip_record", f"the tip record differs from the last block: {shown}", key="mtip")

    def _check_state(self) -> None:
        expected = dict(self.checker.state.items())
        self.report.covered["state records"] = len(expected)
        for key_bytes, raw in self.store.raw_items(storemod.STATE):
            try:
                key = key_bytes[1:].decode("utf-8")
            except UnicodeDecodeError:
                self._finding("state_record", "extra: a state key that is not UTF-8", key=key_bytes.hex())
                continue
            record = expected.pop(key, _ABSENT)
            if record is _ABSENT:
                self._finding("state_record", f"extra: the replayed state has no such key (stored {_show_raw(raw)})",
                              key=key)
            elif codec.encode(record) != raw:
                self._finding("state_record", f"altered: {_difference(raw, record)}", key=key)
        for key, record in expected.items():
            self._finding("state_record", f"missing: replay gives {_show(record)}", key=key)

    def _check_wal_records(self) -> int:
        count = 0
        for key, value in self.store.raw_items(storemod.WAL):
            count += 1
            try:
                wal_records.unseal(key[1:], value)
            except ValueError as exc:
                self._finding("wal_record", f"{exc}: the node refuses to start on it (its own votes are "
                                            f"unreadable); restore the record or re-sync the node", key=key.hex())
        return count

    def _check_pending_records(self) -> int:
        count = 0
        for key, raw in self.store.raw_items(storemod.PENDING):
            count += 1
            try:
                stx = parse_signed(raw)
            except TxError as exc:
                problem = f"not a signed envelope ({exc.code}: {exc.message})"
            else:
                if len(key) != 33 or stx.tx_id != key[1:]:
                    problem = f"stored under a key that is not its tx id {stx.tx_id.hex()}"
                elif stx.chain != self.checker.chain_id:
                    problem = f"a transaction for chain {stx.chain!r}"
                elif not signatures_valid(stx):
                    problem = "a signature does not verify"
                else:
                    continue
            self._finding("pending_record", f"{problem}: the node would drop this acknowledged transaction at its "
                                            f"next start", key=key.hex())
        return count

    def _check_tx_index(self) -> None:
        expected = dict(self.checker.tx_locations)
        self.report.covered["tx index entries"] = len(expected)
        for key, raw in self.store.raw_items(storemod.TXINDEX):
            tx_id = key[1:]
            shown = tx_id.hex()
            location = expected.pop(tx_id, None) if len(tx_id) == 32 else None
            if location is None:
                self._finding("tx_index", f"extra: no such transaction in the chain (entry {_show_raw(raw)})",
                              key=shown)
                continue
            if raw == codec.encode(list(location)):
                continue  # the common case: exactly the canonical entry, no decoding needed
            stored = _decode_location(raw)
            if stored is None:
                self._finding("tx_index", f"undecodable entry {raw.hex()}; the chain has it at height "
                                          f"{location[0]} index {location[1]}", key=shown)
            elif stored != location:
                self._finding("tx_index", f"wrong location: height {stored[0]} index {stored[1]}, the chain has it "
                                          f"at height {location[0]} index {location[1]}", key=shown)
        for tx_id, (height, index) in expected.items():
            self._finding("tx_index", f"missing: the chain has it at height {height} index {index}", key=tx_id.hex())

    def _check_unknown_records(self) -> None:
        for key in self.meta:
            if key not in (storemod.TIP_KEY, storemod.GENESIS_KEY):
                self._finding("unknown_record", "an unknown metadata record", key=key.hex())
        first = next(iter(self.store.raw_items(b"")), None)
        if first is not None and first[0] == b"":
            self._finding("unknown_record", "a record under the empty key", key="")
        for byte in range(256):
            prefix = bytes([byte])
            if prefix in KNOWN_PREFIXES:
                continue
            for key, _ in self.store.raw_items(prefix):
                self._finding("unknown_record", f"a record under prefix {prefix!r}, which this node never writes",
                              key=key.hex())


_ABSENT = object()


def _decode_location(raw: bytes) -> tuple[int, int] | None:
    try:
        value = codec.decode(raw)
    except codec.CodecError:
        return None
    if type(value) is not list or len(value) != 2 or any(type(v) is not int for v in value):
        return None
    return value[0], value[1]


def _show(value, limit: int = 160) -> str:
    """A short printable form of a record (bytes as hex)."""
    def plain(v):
        if type(v) is bytes:
            return v.hex()
        if type(v) is dict:
            return {k: plain(x) for k, x in v.items()}
        if type(v) is list:
            return [plain(x) for x in v]
        return v

    text = json.dumps(plain(value), sort_keys=True)
    return text if len(text) <= limit else text[:limit] + "..."


def _show_raw(raw: bytes) -> str:
    try:
        return _show(codec.decode(raw))
    except codec.CodecError as exc:
        return f"undecodable {raw[:32].hex()} ({exc.code})"


def _difference(raw: bytes, record) -> str:
    try:
        stored = codec.decode(raw)
    except codec.CodecError as exc:
        return f"undecodable ({exc.code}); replay gives {_show(record)}"
    if type(stored) is dict and type(record) is dict:
        names = sorted(set(stored) | set(record))
        differing = [n for n in names if n not in stored or n not in record or codec.encode(stored[n]) !=
                     codec.encode(record[n])]
        return "; ".join(f"{n}: stored {_show(stored.get(n), 80)}, replay gives {_show(record.get(n), 80)}"
                         for n in differing)
    return f"stored {_show(stored)}, replay gives {_show(record)}"


# ---------------------------------------------------------------------- online: through a node's RPC
def _get_json(url: str):
    """(status, parsed JSON) of a GET; raises AuditUnavailable when the node cannot be reached."""
    try:
        with urllib.request.urlopen(url, timeout=RPC_TIMEOUT_S) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (OSError, ValueError) as exc:
        raise AuditUnavailable(f"cannot read {url}: {exc}") from None


def _hex_list(value, what: str, length: int | None = None) -> list[bytes]:
    if type(value) is not list:
        raise CheckFailed("rpc_block", f"{what} must be a list of hex strings")
    try:
        out = [bytes.fromhex(item) for item in value]
    except (TypeError, ValueError):
        raise CheckFailed("rpc_block", f"{what} must be a list of hex strings") from None
    if length is not None and any(len(item) != length for item in out):
        raise CheckFailed("rpc_block", f"every entry of {what} must be {length} bytes")
    return out


def _decode_rpc_block(height: int, status: int, data) -> BlockRecords:
    """The block JSON of GET /v1/blocks/{height}?txs=1, in the same check order as a stored block."""
    if status == 404:
        raise CheckFailed("record_missing", f"the node has no block at height {height}")
    if status != 200 or type(data) is not dict:
        raise CheckFailed("rpc_block", f"GET /v1/blocks/{height} answered {status}")
    keys = {"height", "hash", "header", "header_bytes", "tx_ids", "results", "commit", "txs"}
    if not keys <= data.keys():
        raise CheckFailed("rpc_block", f"the block lacks {sorted(keys - data.keys())}")
    try:
        certificate = blockmod.certificate_from_json(data["commit"])
    except ValueError as exc:
        raise CheckFailed("certificate_decode", str(exc)) from None
    txs = _hex_list(data["txs"], "txs")
    tx_ids = _hex_list(data["tx_ids"], "tx_ids", 32)
    results = data["results"]
    if type(results) is not list or any(type(code) is not str for code in results):
        raise CheckFailed("body_decode", "results must be a list of result codes")
    if not len(txs) == len(tx_ids) == len(results):
        raise CheckFailed("body_decode", f"the block holds {len(txs)} txs, {len(tx_ids)} tx ids and "
                                         f"{len(results)} results")
    header_bytes = _hex_list([data["header_bytes"]], "header_bytes")[0]
    if data["height"] != height or data["hash"] != blockmod.block_hash(header_bytes).hex():
        raise CheckFailed("rpc_block", "the answer's height or hash does not match its header bytes")
    try:
        header_json = blockmod.decode_header(header_bytes).to_json()
    except ValueError:
        header_json = None  # undecodable: the checker reports header_decode
    if header_json is not None and data["header"] != header_json:
        raise CheckFailed("rpc_block", "the answer's header object differs from its header bytes")
    return BlockRecords(height, header_bytes, certificate, txs, tx_ids, results)


def _rpc_blocks(url: str, last_height: int) -> Iterator[tuple[int, BlockLoader]]:
    for height in range(1, last_height + 1):
        status, data = _get_json(f"{url}/v1/blocks/{height}?txs=1")
        yield height, (lambda h=height, s=status, d=data: _decode_rpc_block(h, s, d))


def audit_rpc(url: str, genesis_path: str, progress: ProgressFn | None = None,
              verify_workers: int | None = None) -> AuditReport:
    """Audit a node's chain through its RPC, trusting only the genesis file; raises AuditUnavailable."""
    started = time.perf_counter()
    url = url.rstrip("/")
    try:
        genesis = load_genesis(genesis_path)
    except ConfigError as exc:
        raise AuditUnavailable(str(exc)) from None
    status, node_status = _get_json(f"{url}/v1/status")
    if status != 200 or type(node_status) is not dict or type(node_status.get("height")) is not int:
        raise AuditUnavailable(f"{url}/v1/status answered {status}; is this a ledger node's RPC?")
    last_height = node_status["height"]  # the chain may grow meanwhile: audit what existed at the start
    report = AuditReport(source="rpc", target=url, chain_id=genesis["chain_id"], checks=BLOCK_CHECKS + RPC_CHECKS)
    verifier = SignatureVerifier(verify_workers)
    try:
        _walk(ChainChecker(genesis, verifier), _rpc_blocks(url, last_height), report, progress, last_height)
    finally:
        verifier.close()
    report.not_covered.append("the node's stored state, tx index and metadata: the RPC does not serve them whole "
                              "(every state_root they must match was replayed and checked); audit the stopped "
                              "node with --home to compare them")
    report.not_covered.append("the node's consensus write-ahead records and peer addresses (not chain data)")
    report.elapsed_s = time.perf_counter() - started
    return report


# ---------------------------------------------------------------------- the command line
class ProgressBar:
    """A one-line progress bar on a terminal, shown only once an audit has run for a second."""

    def __init__(self, stream):
        self._stream = stream
        self._started = time.perf_counter()
        self._last_draw = 0.0
        self._shown = False

    def __call__(self, height: int, total: int, txs: int) -> None:
        now = time.perf_counter()
        if now - self._started < PROGRESS_DELAY_S or now - self._last_draw < PROGRESS_INTERVAL_S:
            return
        self._last_draw, self._shown = now, True
        rate = txs / (now - self._started)
        if total >= height > 0:
            filled = 30 * height // total
            bar = f"[{'#' * filled}{'.' * (30 - filled)}] {height}/{total}"
        else:
            bar = f"height {height}"
        self._stream.write(f"\raudit {bar} blocks, {txs:,} txs, {rate:,.0f} tx/s ")
        self._stream.flush()

    def close(self) -> None:
        if self._shown:
            self._stream.write("\r\033[K")
            self._stream.flush()


def run(args) -> int:
    """`ledger audit`: exit 0 intact, 1 not intact, 2 when the home, config or store cannot be opened."""
    bar = ProgressBar(sys.stderr) if not args.json and sys.stderr.isatty() else None
    try:
        if args.rpc:
            if not args.genesis:
                raise AuditUnavailable("--rpc needs --genesis FILE: the audit trusts only the genesis you give it")
            report = audit_rpc(args.rpc, args.genesis, progress=bar)
        else:
            report = audit_store(args.home, progress=bar)
    except AuditUnavailable as exc:
        if args.json:
            print(json.dumps({"intact": False, "error": str(exc)}, indent=2))
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if bar is not None:
            bar.close()
    print(json.dumps(report.to_json(), indent=2) if args.json else report.to_text())
    return 0 if report.intact else 1

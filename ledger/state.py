"""The committed ledger state in memory, its record layout and its state root.

The state is a map from str keys to records. Records are canonical-encodable values
(dict, list, str, bytes, int, bool, None) and are never changed in place once stored:
execution builds new records and hands them over through `apply`, so a record read
from the state can be shared freely (speculative execution reads the base state
through an overlay instead of copying it).

Keys (docs/state.md describes every field):

    member/<member id>     {"id", "name", "admin_key"}
    issuer/<currency>      {"member"}
    acct/<account id>      {"id", "owner", "key", "frozen", "balances", "held"}
    hold/<hold id>         {"id", "from", "to", "currency", "amount", "arbiter", "expires", "status"}
    lc/<lc id>             {"id", "status", "applicant", "beneficiary", "issuing_bank", "advising_bank",
                            "currency", "amount", "expires", "documents", "terms", "presented", "history"}
    doc/<hash, hex>        {"hash", "type", "holder", "meta", "history"}

Ids cannot contain "/", so no key of one kind can collide with a key of another.

Two indexes are kept beside the records, both rebuilt by `from_records` and updated by
`apply`: the expiry heap of pending holds and live letters of credit (so a block's
expiries cost O(due items), not a scan of the state), and the sorted member ids (the
member.add and member.rotate_key thresholds need every member).
"""
from __future__ import annotations

import bisect
import heapq
from collections.abc import Iterable, Iterator

from ledger import codec
from ledger.bodies import CURRENCY_PATTERN, MEMBER_ID_PATTERN

STATE_ROOT_TAG = b"ledger/state/v1"

MEMBER_PREFIX = "member/"
ISSUER_PREFIX = "issuer/"
ACCOUNT_PREFIX = "acct/"
HOLD_PREFIX = "hold/"
LC_PREFIX = "lc/"
DOC_PREFIX = "doc/"

HOLD_PENDING = "pending"
LC_LIVE_STATUSES = frozenset({"issued", "advised", "presented", "refused"})


def member_key(member_id: str) -> str:
    return MEMBER_PREFIX + member_id


def issuer_key(currency: str) -> str:
    return ISSUER_PREFIX + currency


def account_key(account_id: str) -> str:
    return ACCOUNT_PREFIX + account_id


def hold_key(hold_id: str) -> str:
    return HOLD_PREFIX + hold_id


def lc_key(lc_id: str) -> str:
    return LC_PREFIX + lc_id


def doc_key(doc_hash: bytes) -> str:
    return DOC_PREFIX + doc_hash.hex()


def live_expiry(key: str, record) -> int | None:
    """The `expires` of a pending hold or a live LC (one that expiry would still end), else None."""
    if record is None:
        return None
    if key.startswith(HOLD_PREFIX):
        return record["expires"] if record["status"] == HOLD_PENDING else None
    if key.startswith(LC_PREFIX):
        return record["expires"] if record["status"] in LC_LIVE_STATUSES else None
    return None


def state_root_after(prev_root: bytes, height: int, changes: dict) -> bytes:
    """The state root after a block: a chained digest of each block's state changes.

    SHA256(b"ledger/state/v1" + prev_root + canonical([height, [[key, value], ...]]))
    with the pairs sorted by key and value None for a deleted key. It commits to the
    whole state by induction from height 0 (whose prev_root is the genesis hash), and
    costs in proportion to what the block changed. Every block, even one that changed
    nothing, moves the root forward, because the height is hashed in.
    """
    if len(prev_root) != 32:
        raise ValueError("prev_root must be 32 bytes")
    pairs = [[key, changes[key]] for key in sorted(changes)]
    return codec.sha256(STATE_ROOT_TAG + prev_root + codec.encode([height, pairs]))


class InvariantError(RuntimeError):
    """A broken internal invariant: a bug in this code, never a bad input."""


def invariant(condition: bool, message: str) -> None:
    # An explicit check rather than `assert`, which `python -O` strips.
    if not condition:
        raise InvariantError(message)


def genesis_records(genesis: dict) -> dict[str, object]:
    """The height-0 records (members and currency issuers) of a parsed genesis.json."""
    records: dict[str, object] = {}
    for member in genesis["members"]:
        member_id = member["id"]
        if type(member_id) is not str or MEMBER_ID_PATTERN.fullmatch(member_id) is None:
            raise ValueError(f"genesis member id {member_id!r} is not [A-Z0-9]{{1,16}}")
        if member_key(member_id) in records:
            raise ValueError(f"genesis lists member {member_id} twice")
        if type(member["name"]) is not str:
            raise ValueError(f"genesis member {member_id}: name must be a str")
        admin_key = bytes.fromhex(member["admin_key"])
        if len(admin_key) != 32:
            raise ValueError(f"genesis member {member_id}: admin_key must be 32 bytes of hex")
        records[member_key(member_id)] = {"id": member_id, "name": member["name"], "admin_key": admin_key}
    for currency, member_id in genesis.get("issuers", {}).items():
        if type(currency) is not str or CURRENCY_PATTERN.fullmatch(currency) is None:
            raise ValueError(f"genesis issuer currency {currency!r} is not [A-Z]{{3}}")
        if member_key(member_id) not in records:
            raise ValueError(f"genesis issuer of {currency} is {member_id!r}, not a member")
        records[issuer_key(currency)] = {"member": member_id}
    return records


class LedgerState:
    """The committed ledger state: str key -> record, plus its root and indexes."""

    __slots__ = ("_records", "state_root", "_expiry_heap", "_expiry_of", "_member_ids")

    def __init__(self, records: dict[str, object], state_root: bytes):
        invariant(len(state_root) == 32, "a state root is 32 bytes")
        self._records = records
        self.state_root = state_root
        # The expiry index: `_expiry_of` maps the key of every pending hold and live LC to
        # its expires; `_expiry_heap` is a min-heap of (expires, key) entries. An entry
        # whose key no longer maps to that expires is stale and is skipped, and dropped
        # once it reaches the top (or when the heap is rebuilt), so that finishing a hold
        # or amending an LC costs O(log n) rather than a search.
        self._expiry_of: dict[str, int] = {}
        self._expiry_heap: list[tuple[int, str]] = []
        self._member_ids: list[str] = []  # sorted
        for key in sorted(records):
            self._index(key, records[key])
        self._drop_stale_expiry_entries()

    @classmethod
    def from_genesis(cls, genesis: dict) -> "LedgerState":
        """The state at height 0; its root chains from the genesis hash SHA256(canonical(genesis))."""
        records = genesis_records(genesis)
        genesis_hash = codec.sha256(codec.encode(genesis))
        return cls(records, state_root_after(genesis_hash, 0, records))

    @classmethod
    def from_records(cls, records: Iterable[tuple[str, object]], state_root: bytes) -> "LedgerState":
        """Rebuild from stored records (node start); the root is trusted from the store's tip."""
        return cls(dict(records), state_root)

    def get(self, key: str):
        return self._records.get(key)

    def __len__(self) -> int:
        return len(self._records)

    def items(self) -> Iterator[tuple[str, object]]:
        """Every (key, record), sorted by key (for persistence and audit, not the hot path)."""
        records = self._records
        for key in sorted(records):
            yield key, records[key]

    def apply(self, changes: dict[str, object | None], state_root: bytes) -> None:
        """Commit a block's changes (None deletes the key) and its resulting root."""
        invariant(len(state_root) == 32, "a state root is 32 bytes")
        records = self._records
        for key, record in changes.items():
            self._index(key, record)
            if record is None:
                records.pop(key, None)
            else:
                records[key] = record
        self._drop_stale_expiry_entries()
        self.state_root = state_root

    # -- indexes -----------------------------------------------------------------------

    def next_expiry(self) -> int | None:
        """The smallest `expires` among pending holds and live LCs: when a block is next due."""
        # Stale entries never stay on top after __init__ or apply.
        return self._expiry_heap[0][0] if self._expiry_heap else None

    def due_expiries(self, time_ms: int) -> list[str]:
        """Keys of the pending holds and live LCs with expires <= time_ms, by (expires, key).

        Reads the heap without changing it (execution is pure): a node's children are
        never earlier than the node, so only due entries and their children are visited.
        """
        heap, expiry_of = self._expiry_heap, self._expiry_of
        due: set[tuple[int, str]] = set()  # a set: one key may have two equal entries
        pending = [0] if heap else []
        while pending:
            position = pending.pop()
            expires, key = heap[position]
            if expires > time_ms:
                continue
            if expiry_of.get(key) == expires:
                due.add((expires, key))
            pending.extend(child for child in (2 * position + 1, 2 * position + 2) if child < len(heap))
        return [key for _, key in sorted(due)]

    def member_ids(self) -> list[str]:
        """Every member id, sorted. Members are never removed."""
        return list(self._member_ids)

    def _index(self, key: str, new_record) -> None:
        if key.startswith(MEMBER_PREFIX):
            member_id = key[len(MEMBER_PREFIX):]
            position = bisect.bisect_left(self._member_ids, member_id)
            listed = position < len(self._member_ids) and self._member_ids[position] == member_id
            if new_record is not None and not listed:
                self._member_ids.insert(position, member_id)
            elif new_record is None and listed:
                del self._member_ids[position]
            return
        new_expires = live_expiry(key, new_record)
        if new_expires is None:
            self._expiry_of.pop(key, None)  # its heap entry, if any, is now stale
        elif self._expiry_of.get(key) != new_expires:
            self._expiry_of[key] = new_expires
            heapq.heappush(self._expiry_heap, (new_expires, key))

    def _drop_stale_expiry_entries(self) -> None:
        heap, expiry_of = self._expiry_heap, self._expiry_of
        # Rebuild when stale entries outnumber live ones (holds settled long before they
        # would expire), so the heap stays O(live items) in memory.
        if len(heap) > 2 * len(expiry_of) + 64:
            heap[:] = [(expires, key) for key, expires in expiry_of.items()]
            heapq.heapify(heap)
        while heap and expiry_of.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)

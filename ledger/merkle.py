"""RFC 6962 Merkle tree hash and audit paths (contract section 4)."""
from __future__ import annotations

import hashlib

EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(leaf: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly below n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_of_hashes(hashes: list[bytes]) -> bytes:
    """Tree hash over already leaf-hashed entries, bottom-up (same shape as RFC 6962's split)."""
    if not hashes:
        return EMPTY_ROOT
    level = list(hashes)
    # Pairing adjacent nodes left to right and promoting a lone last node gives exactly
    # the RFC 6962 tree (left subtrees are the largest power of two).
    while len(level) > 1:
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def root(leaves: list[bytes]) -> bytes:
    return root_of_hashes([leaf_hash(leaf) for leaf in leaves])


def audit_path(leaves: list[bytes], index: int) -> list[bytes]:
    """Sibling hashes from the leaf's sibling up to the root's child."""
    if not 0 <= index < len(leaves):
        raise IndexError("leaf index out of range")
    return _path(index, [leaf_hash(leaf) for leaf in leaves])


def _path(index: int, hashes: list[bytes]) -> list[bytes]:
    if len(hashes) <= 1:
        return []
    k = _split(len(hashes))
    if index < k:
        return _path(index, hashes[:k]) + [root_of_hashes(hashes[k:])]
    return _path(index - k, hashes[k:]) + [root_of_hashes(hashes[:k])]


def root_from_path(leaf: bytes, index: int, size: int, path: list[bytes]) -> bytes | None:
    """Recompute the root from a leaf and its audit path; None if the path has the wrong shape."""
    if not 0 <= index < size:
        return None
    return _fold(leaf_hash(leaf), index, size, list(path))


def _fold(current: bytes, index: int, size: int, path: list[bytes]) -> bytes | None:
    if size == 1:
        return current if not path else None
    if not path:
        return None
    k = _split(size)
    sibling = path.pop()  # the root's child is listed last
    if index < k:
        inner = _fold(current, index, k, path)
        return None if inner is None else node_hash(inner, sibling)
    inner = _fold(current, index - k, size - k, path)
    return None if inner is None else node_hash(sibling, inner)


def verify_path(leaf: bytes, index: int, size: int, path: list[bytes], expected_root: bytes) -> bool:
    return root_from_path(leaf, index, size, path) == expected_root

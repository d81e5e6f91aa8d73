"""The signed transaction envelope (contract section 2): parsing, tx ids, signatures.

Submission checks run in the contract's order, the first failure answering:
size, decoding, canonical form, envelope shape, chain, expiry, signatures, body shape.
Nothing here depends on ledger state: a node never refuses early for reasons that a
later transaction could change.
"""
from __future__ import annotations

from dataclasses import dataclass

from ledger import codec, crypto

MAX_SIGNED_BYTES = 64 * 1024
MAX_SIGNERS = 128
MAX_EXPIRY_AHEAD_MS = 24 * 60 * 60 * 1000
UINT64_MAX = 2**64 - 1

TX_TYPES = frozenset(
    {
        "account.open", "account.freeze", "account.unfreeze", "account.rotate_key",
        "issue", "redeem", "transfer", "pvp",
        "hold.create", "hold.settle", "hold.cancel",
        "lc.issue", "lc.advise", "lc.present", "lc.examine", "lc.amend", "lc.cancel",
        "doc.register", "doc.transfer",
        "member.add", "member.rotate_key",
    }
)
_TX_KEYS = frozenset({"chain", "type", "nonce", "expires", "signers", "body"})
_SIGNED_KEYS = frozenset({"tx", "sigs"})


class TxError(ValueError):
    """A refused submission; `code` is the contract's error code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class SignedTx:
    raw: bytes  # the canonical encoding of the whole signed envelope: the tx_root leaf
    tx_id: bytes
    chain: str
    type: str
    nonce: int
    expires: int
    signers: tuple[bytes, ...]
    body: dict
    sigs: tuple[bytes, ...]


def tx_id_of(tx: dict) -> bytes:
    return codec.sha256(codec.encode(tx))


def _is_uint64(value) -> bool:
    return type(value) is int and 0 <= value <= UINT64_MAX


def _tx_offset(signature_count: int) -> int:
    """Where canonical(tx) starts inside a canonical envelope.

    Keys sort "sigs" < "tx", so the envelope is: map header (1 byte), "sigs" (5), the
    array header (1 byte below 16 entries, else 3), 66 bytes per signature (bin8 header
    + 64), "tx" (3), then exactly canonical(tx): the tx id hashes that slice without
    re-encoding it.
    """
    return 1 + 5 + (1 if signature_count < 16 else 3) + 66 * signature_count + 3


def parse_signed(raw: bytes) -> SignedTx:
    """Size, decoding, canonical form and envelope shape; raises TxError."""
    if len(raw) > MAX_SIGNED_BYTES:
        raise TxError("too_large", f"signed transaction is {len(raw)} bytes; the limit is {MAX_SIGNED_BYTES}")
    try:
        signed = codec.decode(raw)
    except codec.CodecError as exc:
        raise TxError(exc.code, exc.message) from None
    if type(signed) is not dict or signed.keys() != _SIGNED_KEYS:
        raise TxError("invalid_tx", "signed must be a map with exactly the keys tx and sigs")
    tx, sigs = signed["tx"], signed["sigs"]
    if type(tx) is not dict or tx.keys() != _TX_KEYS:
        raise TxError("invalid_tx", "tx must be a map with exactly the keys chain, type, nonce, expires, signers, body")
    if type(tx["chain"]) is not str:
        raise TxError("invalid_tx", "tx.chain must be a str")
    if type(tx["type"]) is not str or tx["type"] not in TX_TYPES:
        raise TxError("invalid_tx", f"unknown transaction type {tx['type']!r}")
    if not _is_uint64(tx["nonce"]):
        raise TxError("invalid_tx", "tx.nonce must be an unsigned 64-bit integer")
    if not _is_uint64(tx["expires"]):
        raise TxError("invalid_tx", "tx.expires must be an unsigned 64-bit integer (ms)")
    signers = tx["signers"]
    if type(signers) is not list or not 1 <= len(signers) <= MAX_SIGNERS:
        raise TxError("invalid_tx", f"tx.signers must hold 1..{MAX_SIGNERS} public keys")
    for key in signers:
        if type(key) is not bytes or len(key) != 32:
            raise TxError("invalid_tx", "every signer is a 32-byte public key")
    if len(set(signers)) != len(signers):
        raise TxError("invalid_tx", "a signer is repeated")
    if type(tx["body"]) is not dict:
        raise TxError("invalid_tx", "tx.body must be a map")
    if type(sigs) is not list or len(sigs) != len(signers):
        raise TxError("invalid_tx", "sigs must hold exactly one signature per signer")
    for sig in sigs:
        if type(sig) is not bytes or len(sig) != 64:
            raise TxError("invalid_tx", "every signature is 64 bytes")
    tx_id = codec.sha256(raw[_tx_offset(len(sigs)):])
    return SignedTx(
        raw=raw,
        tx_id=tx_id,
        chain=tx["chain"],
        type=tx["type"],
        nonce=tx["nonce"],
        expires=tx["expires"],
        signers=tuple(signers),
        body=tx["body"],
        sigs=tuple(sigs),
    )


def check_chain_and_expiry(stx: SignedTx, chain_id: str, now_ms: int) -> None:
    """The submission-time chain and expiry checks (by this node's clock)."""
    if stx.chain != chain_id:
        raise TxError("wrong_chain", f"transaction is for chain {stx.chain!r}, this is {chain_id!r}")
    if stx.expires <= now_ms:
        raise TxError("expired", "transaction expired")
    if stx.expires > now_ms + MAX_EXPIRY_AHEAD_MS:
        raise TxError("expiry_too_far", "expires is more than 24 h ahead")


def signatures_valid(stx: SignedTx) -> bool:
    message = stx.tx_id
    for key, sig in zip(stx.signers, stx.sigs):
        if not crypto.verify(key, crypto.TX_TAG, message, sig):
            return False
    return True


def expiry_fits_block(stx: SignedTx, block_time_ms: int) -> bool:
    """The block rule: block time < expires <= block time + 24 h."""
    return block_time_ms < stx.expires <= block_time_ms + MAX_EXPIRY_AHEAD_MS


def build_signed(tx: dict, keys: list[crypto.KeyPair]) -> bytes:
    """Sign `tx` (whose signers must be the keys' public keys, in order) and encode the envelope."""
    if [k.public_key for k in keys] != list(tx["signers"]):
        raise ValueError("keys must match tx.signers in order")
    tx_id = tx_id_of(tx)
    return codec.encode({"tx": tx, "sigs": [k.sign(crypto.TX_TAG, tx_id) for k in keys]})


def make_tx(chain: str, tx_type: str, body: dict, keys: list[crypto.KeyPair], nonce: int, expires: int) -> bytes:
    tx = {
        "chain": chain,
        "type": tx_type,
        "nonce": nonce,
        "expires": expires,
        "signers": [k.public_key for k in keys],
        "body": body,
    }
    return build_signed(tx, keys)

"""Inclusion proofs a light client checks holding only genesis (contract section 6).

A proof shows that a transaction sits at `index` of the block at `height` with result
`code`, and that q genesis validators committed that block: two RFC 6962 audit paths
(to the header's tx_root and results_root) plus the header and its commit certificate.
"""
from __future__ import annotations

from ledger import block as blockmod
from ledger import merkle
from ledger.tx import TxError, parse_signed, signatures_valid

PROOF_KEYS = {"tx_id", "tx", "height", "index", "tx_count", "code", "tx_path", "results_path", "header", "commit"}


class ProofError(ValueError):
    """A proof that does not prove what it claims; the message says which check failed."""


def build_proof(store, tx_id: bytes) -> dict | None:
    location = store.tx_location(tx_id)
    if location is None:
        return None
    height, index = location
    stored = store.block(height)
    cert = store.certificate(height)
    if stored is None or cert is None or index >= len(stored.txs):
        return None
    result_leaves = [blockmod.result_leaf(i, c) for i, c in zip(stored.tx_ids, stored.results)]
    return {
        "tx_id": tx_id.hex(),
        "tx": stored.txs[index].hex(),
        "height": height,
        "index": index,
        "tx_count": len(stored.txs),
        "code": stored.results[index],
        "tx_path": [h.hex() for h in merkle.audit_path(stored.txs, index)],
        "results_path": [h.hex() for h in merkle.audit_path(result_leaves, index)],
        "header": stored.header.hex(),
        "commit": blockmod.certificate_to_json(cert),
    }


def _hex(value, what: str) -> bytes:
    if type(value) is not str:
        raise ProofError(f"{what} must be a hex string")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise ProofError(f"{what} is not hex") from None


def verify_proof(proof, genesis: dict) -> dict:
    """Check `proof` against genesis alone; returns {tx_id, height, index, code} or raises ProofError."""
    if type(proof) is not dict or set(proof) != PROOF_KEYS:
        raise ProofError(f"a proof holds exactly the keys {sorted(PROOF_KEYS)}")
    for key in ("height", "index", "tx_count"):
        if type(proof[key]) is not int or proof[key] < 0:
            raise ProofError(f"{key} must be a non-negative integer")
    if type(proof["code"]) is not str:
        raise ProofError("code must be a string")
    raw = _hex(proof["tx"], "tx")
    try:
        stx = parse_signed(raw)
    except TxError as exc:
        raise ProofError(f"tx is not a valid envelope: {exc.code}") from None
    if stx.tx_id != _hex(proof["tx_id"], "tx_id"):
        raise ProofError("tx_id is not the hash of the transaction")
    if not signatures_valid(stx):
        raise ProofError("the transaction's signatures do not verify")
    header_bytes = _hex(proof["header"], "header")
    try:
        header = blockmod.decode_header(header_bytes)
    except ValueError as exc:
        raise ProofError(str(exc)) from None
    if header.chain != genesis["chain_id"] or stx.chain != genesis["chain_id"]:
        raise ProofError("the proof is for another chain")
    if header.height != proof["height"]:
        raise ProofError("height differs from the header's")
    if header.tx_count != proof["tx_count"] or not proof["index"] < header.tx_count:
        raise ProofError("index or tx_count does not fit the header")
    for key in ("tx_path", "results_path"):
        if type(proof[key]) is not list:
            raise ProofError(f"{key} must be a list")
    tx_path = [_hex(h, "tx_path entry") for h in proof["tx_path"]]
    results_path = [_hex(h, "results_path entry") for h in proof["results_path"]]
    if not merkle.verify_path(raw, proof["index"], header.tx_count, tx_path, header.tx_root):
        raise ProofError("tx_path does not lead to the header's tx_root")
    leaf = blockmod.result_leaf(stx.tx_id, proof["code"])
    if not merkle.verify_path(leaf, proof["index"], header.tx_count, results_path, header.results_root):
        raise ProofError("results_path does not lead to the header's results_root")
    try:
        cert = blockmod.certificate_from_json(proof["commit"])
    except ValueError as exc:
        raise ProofError(str(exc)) from None
    if cert["view"] < header.view:
        raise ProofError("commit certificate is for a view before the block was proposed")
    validators = [bytes.fromhex(v["public_key"]) for v in genesis["validators"]]
    problem = blockmod.certificate_error(cert, genesis["chain_id"], validators, header.height,
                                         blockmod.block_hash(header_bytes))
    if problem:
        raise ProofError(f"commit certificate: {problem}")
    return {"tx_id": stx.tx_id.hex(), "height": header.height, "index": proof["index"], "code": proof["code"]}

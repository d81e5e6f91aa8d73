"""A client built only on msgpack + PyNaCl + HTTP (urllib), written from the contract alone.

It shares no code with the node on purpose: if the node drifts from the contract, the
tests that use this client fail.
"""
from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request

import msgpack
import nacl.signing


def canonical(value) -> bytes:
    def sort(v):
        if isinstance(v, dict):
            return {k: sort(v[k]) for k in sorted(v)}
        if isinstance(v, list):
            return [sort(x) for x in v]
        return v
    return msgpack.packb(sort(value), use_bin_type=True)


class Key:
    def __init__(self, seed: bytes):
        self.signing = nacl.signing.SigningKey(seed)
        self.public = bytes(self.signing.verify_key)

    @classmethod
    def from_file(cls, path: str) -> "Key":
        with open(path) as handle:
            return cls(bytes.fromhex(json.load(handle)["secret_key"]))


def sign_tx(chain: str, tx_type: str, body: dict, keys: list[Key], nonce: int, expires: int) -> tuple[bytes, str]:
    tx = {"chain": chain, "type": tx_type, "nonce": nonce, "expires": expires,
          "signers": [k.public for k in keys], "body": body}
    tx_id = hashlib.sha256(canonical(tx)).digest()
    sigs = [k.signing.sign(b"ledger/tx/v1" + tx_id).signature for k in keys]
    return canonical({"tx": tx, "sigs": sigs}), tx_id.hex()


def http(method: str, url: str, body: bytes | None = None, content_type: str = "application/json", timeout: float = 30):
    request = urllib.request.Request(url, data=body, method=method,
                                     headers={"Content-Type": content_type} if body is not None else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, raw.decode(errors="replace")


def submit_batch(rpc: str, raws: list[bytes]):
    return http("POST", f"{rpc}/v1/txs/batch", msgpack.packb(raws, use_bin_type=True), "application/msgpack")

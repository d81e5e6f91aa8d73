"""Inclusion proofs (contract section 6) checked by a verifier that holds only genesis.

Proofs are built by `ledger.proof.build_proof` from real stores made by
tests/chainmaker.py, then checked with `ledger.proof.verify_proof` and with the CLI
`ledger verify-proof FILE --genesis genesis.json`. Every transaction of the chains is
proved (trees of 1, 2, 13 and 39 leaves, every index), and every forgery below must
be refused with the check that catches it.
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest

from ledger import block as blockmod
from ledger import codec, crypto
from ledger.cli import main as cli_main
from ledger.proof import ProofError, build_proof, verify_proof
from ledger.store import LevelDBStore
from tests.chainmaker import make_chain, sign_certificate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def all_proofs(chain) -> dict[bytes, dict]:
    store = LevelDBStore(chain.data_dir, create=False)
    try:
        return {tx_id: build_proof(store, tx_id) for ids in chain.tx_ids for tx_id in ids}
    finally:
        store.close()


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    return make_chain(str(tmp_path_factory.mktemp("proof") / "net"), blocks=3, txs_per_block=13, validators=4)


@pytest.fixture(scope="module")
def proofs(chain):
    return all_proofs(chain)


@pytest.fixture(scope="module")
def other_chain(tmp_path_factory):
    """Another network (its own validators and chain id) with blocks of 39, 2 and 1 transactions."""
    return make_chain(str(tmp_path_factory.mktemp("other") / "net"), blocks=3, txs_per_block=1, validators=4,
                      chain_id="other-chain")


@pytest.fixture(scope="module")
def twin_chain(tmp_path_factory):
    """A network with the same chain id as `chain` but its own validators."""
    return make_chain(str(tmp_path_factory.mktemp("twin") / "net"), blocks=2, txs_per_block=3, validators=4)


@pytest.fixture
def proof(chain, proofs):
    """A genuine proof of a transfer in the middle of block 2 (13 transactions)."""
    return copy.deepcopy(proofs[chain.tx_ids[1][6]])


# ---------------------------------------------------------------------- genuine proofs
def test_every_transaction_proves_its_place_and_result(chain, proofs):
    for height, ids in enumerate(chain.tx_ids, start=1):
        for index, tx_id in enumerate(ids):
            found = verify_proof(proofs[tx_id], chain.genesis)
            assert found == {"tx_id": tx_id.hex(), "height": height, "index": index,
                             "code": chain.results[height - 1][index]}


def test_a_failed_transaction_proves_its_code(chain, proofs):
    failed = [(h, i) for h, codes in enumerate(chain.results, start=1) for i, c in enumerate(codes) if c != "ok"]
    assert failed, "chainmaker puts a failing transfer in block 1"
    height, index = failed[0]
    found = verify_proof(proofs[chain.tx_ids[height - 1][index]], chain.genesis)
    assert found["code"] == "insufficient_funds"


def test_small_trees_prove(other_chain):
    sizes = [len(ids) for ids in other_chain.tx_ids]
    assert sizes[1:] == [2, 1]
    for tx_id, proof in all_proofs(other_chain).items():
        assert verify_proof(proof, other_chain.genesis)["tx_id"] == tx_id.hex()
    single = all_proofs(other_chain)[other_chain.tx_ids[2][0]]
    assert single["tx_path"] == [] and single["results_path"] == []


def test_cli_accepts_a_genuine_proof(chain, proof, tmp_path):
    path = tmp_path / "proof.json"
    path.write_text(json.dumps(proof))
    result = subprocess.run([sys.executable, "-m", "ledger.cli", "verify-proof", str(path), "--genesis",
                             chain.genesis_path], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "proof valid" in result.stdout and "height 2 index 6" in result.stdout


def test_unknown_transaction_has_no_proof(chain):
    store = LevelDBStore(chain.data_dir, create=False)
    try:
        assert build_proof(store, bytes(32)) is None
    finally:
        store.close()


# ---------------------------------------------------------------------- forgeries
def flip_hex(value: str, index: int = 0) -> str:
    data = bytearray(bytes.fromhex(value))
    data[index] ^= 0x01
    return data.hex()


def other_vote(proof, key: crypto.KeyPair) -> list[str]:
    cert = proof["commit"]
    message = blockmod.vote_message("test-chain", cert["height"], cert["view"], bytes.fromhex(cert["block_hash"]))
    return [key.public_key.hex(), key.sign(crypto.COMMIT_TAG, message).hex()]


def forge_wrong_tx_path_entry(p, chain):
    p["tx_path"][0] = flip_hex(p["tx_path"][0])


def forge_wrong_results_path_entry(p, chain):
    p["results_path"][-1] = flip_hex(p["results_path"][-1], 31)


def forge_path_entry_dropped(p, chain):
    p["tx_path"] = p["tx_path"][:-1]


def forge_wrong_index(p, chain):
    p["index"] += 1


def forge_index_past_the_end(p, chain):
    p["index"] = p["tx_count"]


def forge_wrong_tx_count(p, chain):
    p["tx_count"] += 1


def forge_altered_code(p, chain):
    p["code"] = "insufficient_funds"


def forge_altered_tx(p, chain):
    # Another genuine, correctly signed transaction of the chain, with its own id.
    signed = bytes.fromhex(p["tx"])
    other = codec.decode(signed)
    other["tx"]["nonce"] += 1
    source = next(a for a, k in chain.account_keys.items() if k.public_key == other["tx"]["signers"][0])
    tx_id = codec.sha256(codec.encode(other["tx"]))
    other["sigs"] = [chain.account_keys[source].sign(crypto.TX_TAG, tx_id)]
    p["tx"], p["tx_id"] = codec.encode(other).hex(), tx_id.hex()


def forge_tx_signature_flipped(p, chain):
    signed = bytes.fromhex(p["tx"])
    p["tx"] = flip_hex(p["tx"], signed.index(codec.decode(signed)["sigs"][0]) + 10)


def forge_tx_bytes_not_canonical(p, chain):
    signed = codec.decode(bytes.fromhex(p["tx"]))
    p["tx"] = (codec.encode(signed) + b"\x00").hex()


def forge_tx_id_of_another_tx(p, chain):
    p["tx_id"] = chain.tx_ids[1][7].hex()


def forge_too_few_votes(p, chain):
    p["commit"]["sigs"] = p["commit"]["sigs"][:2]


def forge_duplicated_votes(p, chain):
    p["commit"]["sigs"] = p["commit"]["sigs"][:2] + [p["commit"]["sigs"][0]]


def forge_vote_from_a_non_validator(p, chain):
    p["commit"]["sigs"][3] = other_vote(p, crypto.KeyPair.generate())


def forge_votes_only_from_non_validators(p, chain):
    p["commit"]["sigs"] = [other_vote(p, crypto.KeyPair.generate()) for _ in range(3)]


def forge_vote_signature_flipped(p, chain):
    p["commit"]["sigs"][0][1] = flip_hex(p["commit"]["sigs"][0][1], 3)


def forge_certificate_for_another_height(p, chain):
    p["commit"]["height"] += 1


def forge_header_time_changed(p, chain):
    fields = blockmod.decode_header(bytes.fromhex(p["header"])).to_dict()
    fields["time"] += 1
    p["header"] = codec.encode(fields).hex()


def forge_height_claimed_elsewhere(p, chain):
    p["height"] += 1


def forge_certificate_view_before_the_header_view(p, chain):
    # Every validator signs, but for view 0 a header claiming it was proposed in view 3:
    # no honest replica commits a block in a view before the one it was proposed in.
    fields = blockmod.decode_header(bytes.fromhex(p["header"])).to_dict()
    fields["view"] = 3
    fields["proposer"] = chain.validator_keys[3 % len(chain.validator_keys)].public_key
    header = codec.encode(fields)
    p["header"] = header.hex()
    cert = sign_certificate(chain.chain_id, fields["height"], 0, blockmod.block_hash(header), chain.validator_keys)
    p["commit"] = blockmod.certificate_to_json(cert)


def forge_extra_key(p, chain):
    p["note"] = "trust me"


FORGERIES = [
    (forge_wrong_tx_path_entry, "tx_path"),
    (forge_wrong_results_path_entry, "results_path"),
    (forge_path_entry_dropped, "tx_path"),
    (forge_wrong_index, "tx_path"),
    (forge_index_past_the_end, "index or tx_count"),
    (forge_wrong_tx_count, "index or tx_count"),
    (forge_altered_code, "results_path"),
    (forge_altered_tx, "tx_path"),
    (forge_tx_signature_flipped, "signatures do not verify"),
    (forge_tx_bytes_not_canonical, "non_canonical"),
    (forge_tx_id_of_another_tx, "tx_id is not the hash"),
    (forge_too_few_votes, "quorum is 3"),
    (forge_duplicated_votes, "duplicate vote"),
    (forge_vote_from_a_non_validator, "not a genesis validator"),
    (forge_votes_only_from_non_validators, "not a genesis validator"),
    (forge_vote_signature_flipped, "invalid commit vote signature"),
    (forge_certificate_for_another_height, "certificate is for height"),
    (forge_header_time_changed, "block_hash differs"),
    (forge_height_claimed_elsewhere, "height differs"),
    (forge_certificate_view_before_the_header_view, "view before the block was proposed"),
    (forge_extra_key, "holds exactly the keys"),
]


@pytest.mark.parametrize("forge, reason", FORGERIES, ids=[f.__name__[len("forge_"):] for f, _ in FORGERIES])
def test_forged_proof_is_refused(chain, proof, forge, reason, tmp_path, capsys):
    forge(proof, chain)
    with pytest.raises(ProofError) as refused:
        verify_proof(proof, chain.genesis)
    assert reason in str(refused.value)
    path = tmp_path / "forged.json"
    path.write_text(json.dumps(proof))
    assert cli_main(["verify-proof", str(path), "--genesis", chain.genesis_path]) == 1
    assert "proof INVALID" in capsys.readouterr().out


def test_proof_from_another_chain_is_refused(chain, other_chain):
    foreign = all_proofs(other_chain)[other_chain.tx_ids[1][0]]
    assert verify_proof(foreign, other_chain.genesis)
    with pytest.raises(ProofError, match="another chain"):
        verify_proof(foreign, chain.genesis)


def test_proof_from_a_network_with_the_same_chain_id_is_refused(chain, twin_chain):
    # Same chain id, so the header and transaction look local; only the votes tell.
    foreign = all_proofs(twin_chain)[twin_chain.tx_ids[1][0]]
    assert verify_proof(foreign, twin_chain.genesis)
    with pytest.raises(ProofError, match="not a genesis validator"):
        verify_proof(foreign, chain.genesis)


def test_cli_refuses_a_malformed_file(chain, tmp_path):
    path = tmp_path / "garbage.json"
    path.write_text("{not json")
    assert cli_main(["verify-proof", str(path), "--genesis", chain.genesis_path]) == 2

"""Blocks fetched while catching up: trust the certificate, not the peer, and tell a
peer's fault from this node's own divergence.

* A certified header with another payload (its tx_root does not match) is the peer's
  doing: refused and counted, the node goes on (and asks another peer).
* The very payload the certified header commits to, failing re-execution here, is not:
  q validators, at least one honest, accepted those bytes, so this node's ledger
  disagrees with theirs, and it halts with the reason instead of following a chain it
  cannot reproduce.
"""
import time

from ledger import block as blockmod
from ledger import codec
from ledger.node import Node, _CatchUp
from ledger.tx import make_tx, parse_signed
from ledger.validation import build_block
from tests.chainmaker import make_chain, sign_certificate


def next_block(chain, node: Node, *, state_root: bytes | None = None):
    """A block for the node's next height, holding one new account, certified by every validator."""
    bank = chain.bank_keys["BANK0"]
    time_ms = node.tip.time + 1_000
    raw = make_tx(chain.chain_id, "account.open", {"id": "BANK0:fetched", "owner": "BANK0", "key": bank.public_key},
                  [bank], 77, time_ms + 60_000)
    checked = build_block(node.chain_context(), node.state, [parse_signed(raw)], time_ms=time_ms, view=0,
                          proposer=node.validators[0])
    fields = checked.header.to_dict()
    if state_root is not None:
        fields["state_root"] = state_root
    header = codec.encode(fields)
    certificate = sign_certificate(chain.chain_id, checked.header.height, 0, blockmod.block_hash(header),
                                   chain.validator_keys)
    return header, blockmod.encode_payload([raw]), certificate


def fetching_node(tmp_path):
    chain = make_chain(str(tmp_path / "net"), blocks=2, txs_per_block=2, validators=4)
    node = Node(chain.home)
    node._catchup = _CatchUp(next_height=node.tip.height + 1, peers=[node.validators[1]],
                             deadline_ms=int(time.time() * 1000) + 60_000)
    return chain, node


def test_a_certified_header_with_another_payload_is_the_peers_fault(tmp_path):
    chain, node = fetching_node(tmp_path)
    try:
        height = node.tip.height
        header, _, certificate = next_block(chain, node)
        other_payload = blockmod.encode_payload([])
        node._apply_fetched(node.validators[1], [[header, other_payload, certificate]])
        assert node.fatal_error is None
        assert node.stats.counters["fetch_invalid"] == 1 and node.tip.height == height
    finally:
        node.store.close()


def test_the_certified_bytes_failing_here_halt_the_node(tmp_path):
    chain, node = fetching_node(tmp_path)
    try:
        height = node.tip.height
        header, payload, certificate = next_block(chain, node, state_root=b"\x07" * 32)
        node._apply_fetched(node.validators[1], [[header, payload, certificate]])
        assert node.fatal_error is not None and "state_root does not match re-execution" in node.fatal_error
        assert node.tip.height == height  # nothing of it was committed
    finally:
        node.store.close()


def test_a_certified_block_that_checks_is_committed(tmp_path):
    chain, node = fetching_node(tmp_path)
    try:
        height = node.tip.height
        node._apply_fetched(node.validators[1], [list(next_block(chain, node))])
        assert node.fatal_error is None and node.tip.height == height + 1
    finally:
        node.store.close()

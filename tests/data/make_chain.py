"""Generate tests/data/replay_chain.json: a fixed chain for the determinism test.

Run once (and again only when the state root scheme or the execution rules change on
purpose; the diff of the JSON then shows what moved):

    .venv/bin/python tests/data/make_chain.py

Fixed seeds, fixed block times and keys derived from names make the output
reproducible byte for byte (Ed25519 signatures are deterministic). The chain mixes
all 21 transaction types, successes and failures, and expiries of both holds and
letters of credit, some of them in blocks without transactions.
"""
from __future__ import annotations

import json
import pathlib
import random
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from ledger import codec  # noqa: E402
from ledger.tx import TX_TYPES  # noqa: E402
from tests.data.ledger_harness import Ledger, public_key  # noqa: E402

OUTPUT = pathlib.Path(__file__).resolve().parent / "replay_chain.json"
SEED = 20240601
ACCOUNTS = ["alice", "bob", "carol", "dave", "buyer", "seller"]
OWNERS = {"alice": "BANK0", "bob": "BANK1", "carol": "BANK2", "dave": "BANK3", "buyer": "BANK0", "seller": "BANK1"}

INVOICE = codec.sha256(b"replay invoice")
BILL = codec.sha256(b"replay bill of lading")
PACKING = codec.sha256(b"replay packing list")


# The name of each customer's current key (account.rotate_key changes one on the way).
KEY_NAMES = {name: name for name in ACCOUNTS}


def random_payments(rng: random.Random, ledger: Ledger, count: int) -> list:
    """Transfers and pvps among the customers; the amounts make some fail."""
    txs = []
    for _ in range(count):
        source, target = rng.sample(ACCOUNTS, 2)
        currency = rng.choice(["USD", "EUR"])
        amount = rng.randint(1, 30_000)
        if rng.random() < 0.2:
            legs = [{"from": source, "to": target, "currency": currency, "amount": amount},
                    {"from": target, "to": source, "currency": rng.choice(["USD", "EUR"]),
                     "amount": rng.randint(1, 30_000)}]
            txs.append(ledger.tx("pvp", {"legs": legs, "ref": f"FX-{rng.randint(0, 999)}"},
                                 KEY_NAMES[source], KEY_NAMES[target]))
        else:
            body = {"from": source, "to": target, "currency": currency, "amount": amount}
            signer = KEY_NAMES[source] if rng.random() < 0.9 else KEY_NAMES[target]  # now and then the wrong key
            txs.append(ledger.tx("transfer", body, signer))
    return txs


def lc_body(ledger: Ledger, lc_id: str, amount: int, expires_in_ms: int) -> dict:
    return {"id": lc_id, "applicant": "buyer", "beneficiary": "seller", "advising_bank": "BANK1",
            "currency": "USD", "amount": amount, "expires": ledger.time_ms + expires_in_ms,
            "documents": ["invoice", "bill_of_lading"], "terms": "FOB Hamburg"}


def build_blocks(ledger: Ledger, rng: random.Random) -> list[tuple[int, list]]:
    """(time_ms, txs) of every block, built against the state as it evolves."""
    blocks = []

    def add(txs: list, gap_ms: int = 1_000) -> None:
        outcome = ledger.block(*txs, time_ms=ledger.time_ms + gap_ms)
        blocks.append((ledger.time_ms, txs, outcome))

    t = ledger.tx
    add([t("account.open", {"id": name, "owner": owner, "key": public_key(name)}, owner)
         for name, owner in OWNERS.items()]
        + [t("member.add", {"id": "BANK4", "name": "Bank 4", "admin_key": public_key("BANK4")},
             "BANK0", "BANK1", "BANK2"),
           t("account.open", {"id": "alice", "owner": "BANK0", "key": public_key("alice")}, "BANK0")])
    add([t("issue", {"account": "alice", "currency": "USD", "amount": 1_000_000}, "BANK0"),
         t("issue", {"account": "bob", "currency": "EUR", "amount": 500_000}, "BANK1"),
         t("issue", {"account": "buyer", "currency": "USD", "amount": 900_000}, "BANK0"),
         t("issue", {"account": "carol", "currency": "EUR", "amount": 50_000}, "BANK1"),
         t("issue", {"account": "bob", "currency": "USD", "amount": 200_000}, "BANK0"),
         t("issue", {"account": "dave", "currency": "EUR", "amount": 80_000}, "BANK1"),
         t("issue", {"account": "seller", "currency": "EUR", "amount": 70_000}, "BANK1"),
         t("issue", {"account": "carol", "currency": "USD", "amount": 5}, "BANK1"),  # not_issuer
         t("account.open", {"id": "BANK4:erin", "owner": "BANK4", "key": public_key("erin")}, "BANK4")])
    add(random_payments(rng, ledger, 12)
        + [t("redeem", {"account": "alice", "currency": "USD", "amount": 1_000}, "alice"),
           t("hold.create", {"id": "H1", "from": "alice", "to": "bob", "currency": "USD", "amount": 7_000,
                             "expires": ledger.time_ms + 4_000}, "alice"),
           t("hold.create", {"id": "H2", "from": "bob", "to": "carol", "currency": "EUR", "amount": 2_000,
                             "expires": ledger.time_ms + 60_000, "arbiter": public_key("escrow")}, "bob"),
           t("hold.create", {"id": "H3", "from": "alice", "to": "dave", "currency": "USD", "amount": 500,
                             "expires": ledger.time_ms + 60_000}, "alice")])
    add([t("hold.settle", {"id": "H2"}, "escrow"),
         t("hold.cancel", {"id": "H3"}, "dave"),
         t("hold.settle", {"id": "H3"}, "alice"),  # invalid_state: already cancelled
         t("doc.register", {"hash": INVOICE, "type": "invoice", "holder": "seller",
                            "meta": {"number": "INV-77"}}, "seller", "BANK1"),
         t("doc.register", {"hash": BILL, "type": "bill_of_lading", "holder": "seller"}, "seller", "BANK1"),
         t("doc.register", {"hash": PACKING, "type": "packing_list", "holder": "seller"}, "seller", "BANK1"),
         t("doc.register", {"hash": BILL, "type": "bill_of_lading", "holder": "buyer"}, "buyer", "BANK0"),
         t("lc.issue", lc_body(ledger, "LC1", 300_000, 120_000), "buyer", "BANK0"),
         t("lc.issue", lc_body(ledger, "LC2", 50_000, 5_000), "buyer", "BANK0")])
    add([t("lc.advise", {"id": "LC1"}, "BANK1"),
         t("lc.advise", {"id": "LC2"}, "BANK1"),
         t("account.freeze", {"account": "dave"}, "BANK3"),
         t("transfer", {"from": "alice", "to": "dave", "currency": "USD", "amount": 10}, "alice"),
         t("account.rotate_key", {"account": "carol", "new_key": public_key("carol-2")}, "carol")])
    KEY_NAMES["carol"] = "carol-2"
    # A jump in time: H1 and LC2 expire at the start of this block, before its transactions.
    add([t("lc.present", {"id": "LC1", "documents": [{"type": "invoice", "hash": INVOICE}]}, "seller"),
         t("lc.present", {"id": "LC1", "documents": [{"type": "invoice", "hash": INVOICE},
                                                     {"type": "bill_of_lading", "hash": BILL}]}, "seller"),
         t("lc.present", {"id": "LC2", "documents": [{"type": "invoice", "hash": INVOICE},
                                                     {"type": "bill_of_lading", "hash": BILL}]}, "seller"),
         t("member.rotate_key", {"id": "BANK3", "new_key": public_key("BANK3-2")}, "BANK3")],
        gap_ms=6_000)
    add([t("lc.examine", {"id": "LC1", "accept": False, "reason": "invoice amount differs"}, "BANK0"),
         t("lc.amend", {"id": "LC1", "amount": 320_000}, "BANK0", "seller"),
         t("lc.amend", {"id": "LC1", "amount": 10_000_000}, "BANK0", "seller"),  # insufficient_funds
         t("lc.present", {"id": "LC1", "documents": [{"type": "invoice", "hash": INVOICE},
                                                     {"type": "bill_of_lading", "hash": BILL},
                                                     {"type": "packing_list", "hash": PACKING}]}, "seller")]
        + random_payments(rng, ledger, 6))
    add([t("lc.examine", {"id": "LC1", "accept": True}, "BANK0"),
         t("doc.transfer", {"hash": BILL, "to": "alice"}, "buyer"),
         t("doc.transfer", {"hash": INVOICE, "to": "buyer"}, "seller"),  # not_transferable
         t("lc.issue", lc_body(ledger, "LC3", 1_000, 3_000), "buyer", "BANK0"),
         t("lc.issue", lc_body(ledger, "LC4", 2_000, 600_000), "buyer", "BANK0")])
    add([t("account.unfreeze", {"account": "dave"}, "BANK3-2"),
         t("lc.cancel", {"id": "LC4"}, "BANK0", "seller"),
         t("lc.cancel", {"id": "LC4"}, "BANK0", "seller"),  # invalid_state
         t("hold.create", {"id": "H4", "from": "bob", "to": "alice", "currency": "EUR", "amount": 1_500,
                           "expires": ledger.time_ms + 2_500}, "bob")]
        + random_payments(rng, ledger, 10))
    add([], gap_ms=5_000)  # an empty block: LC3 and H4 expire with no transaction present
    add(random_payments(rng, ledger, 15)
        + [t("member.rotate_key", {"id": "BANK2", "new_key": public_key("BANK2-2")},
             "BANK0", "BANK1", "BANK3-2", "BANK4"),
           t("member.rotate_key", {"id": "BANK1", "new_key": public_key("BANK1-2")}, "BANK0"),
           t("member.add", {"id": "BANK5", "name": "Bank 5", "admin_key": public_key("BANK5")}, "BANK0")])
    add(random_payments(rng, ledger, 20))
    return blocks


def main() -> None:
    rng = random.Random(SEED)
    ledger = Ledger()
    KEY_NAMES.update({name: name for name in ACCOUNTS})
    genesis_root = ledger.state.state_root
    blocks = build_blocks(ledger, rng)
    seen_types = {stx.type for _, txs, _ in blocks for stx in txs}
    missing = TX_TYPES - seen_types
    if missing:
        raise SystemExit(f"the chain lacks transaction types {sorted(missing)}")
    chain = {
        "about": "A fixed chain for tests/test_determinism.py, written by tests/data/make_chain.py.",
        "genesis": ledger.genesis,
        "genesis_state_root": genesis_root.hex(),
        "blocks": [{"height": height, "time": time_ms, "txs": [stx.raw.hex() for stx in txs],
                    "results": outcome.results, "state_root": outcome.state_root.hex()}
                   for height, (time_ms, txs, outcome) in enumerate(blocks, start=1)],
    }
    OUTPUT.write_text(json.dumps(chain, indent=1) + "\n")
    codes = sorted({code for _, _, outcome in blocks for code in outcome.results})
    print(f"wrote {OUTPUT} ({len(blocks)} blocks, {sum(len(txs) for _, txs, _ in blocks)} txs; codes {codes})")


if __name__ == "__main__":
    main()

"""`ledger tx` field parsing: exact major-to-minor units, times, keys, hashes, repeated fields."""
import hashlib

import pytest

from ledger import txbuilder
from ledger.crypto import KeyPair


def test_amounts_are_exact_per_currency():
    assert txbuilder.to_minor("12.50", "USD") == 1250
    assert txbuilder.to_minor("1500", "JPY") == 1500
    assert txbuilder.to_minor("0.001", "KWD") == 1
    with pytest.raises(txbuilder.UsageError):
        txbuilder.to_minor("1.5", "JPY")
    with pytest.raises(txbuilder.UsageError):
        txbuilder.to_minor("abc", "USD")
    assert txbuilder.format_amount(123456, "USD") == "1,234.56 USD"
    assert txbuilder.format_amount(1500, "JPY") == "1,500 JPY"


def test_times():
    assert txbuilder.parse_time("+2h", 1000) == 1000 + 7_200_000
    assert txbuilder.parse_time("2027-01-31T12:00:00", 0) == 1801396800000
    assert txbuilder.format_time(1801396800000) == "2027-01-31 12:00:00 UTC"
    with pytest.raises(txbuilder.UsageError):
        txbuilder.parse_time("tomorrow", 0)


def test_bodies(tmp_path):
    key = KeyPair.generate()
    key_file = tmp_path / "k.json"
    key.save(str(key_file))
    doc = tmp_path / "bl.pdf"
    doc.write_bytes(b"bill of lading")
    body = txbuilder.build_body("account.open", ["id=BANK0:a", "owner=BANK0", f"key={key_file}"], 0)
    assert body == {"id": "BANK0:a", "owner": "BANK0", "key": key.public_key}
    body = txbuilder.build_body("pvp", ["leg=A,B,USD,1.00", "leg=B,A,JPY,150"], 0)
    assert body["legs"] == [{"from": "A", "to": "B", "currency": "USD", "amount": 100},
                            {"from": "B", "to": "A", "currency": "JPY", "amount": 150}]
    body = txbuilder.build_body("lc.present", ["id=LC1", f"doc=bill_of_lading:@{doc}"], 0)
    assert body["documents"] == [{"type": "bill_of_lading", "hash": hashlib.sha256(b"bill of lading").digest()}]
    body = txbuilder.build_body("doc.register", [f"hash=@{doc}", "type=bill_of_lading", "holder=A", "meta.vessel=MV X"], 0)
    assert body["meta"] == {"vessel": "MV X"}
    body = txbuilder.build_body("lc.issue", ["id=L", "applicant=A", "beneficiary=B", "advising_bank=BANK1",
                                             "currency=USD", "amount=10", "expires=+1d", "documents=invoice,bill_of_lading"], 5)
    assert body["amount"] == 1000 and body["expires"] == 5 + 86_400_000 and body["documents"] == ["invoice", "bill_of_lading"]
    body = txbuilder.build_body("lc.examine", ["id=L", "accept=yes"], 0)
    assert body == {"id": "L", "accept": True}
    with pytest.raises(txbuilder.UsageError):
        txbuilder.build_body("transfer", ["from=A", "amount=1"], 0)  # no currency to read the amount with
    with pytest.raises(txbuilder.UsageError):
        txbuilder.build_body("transfer", ["colour=blue"], 0)
    with pytest.raises(txbuilder.UsageError):
        txbuilder.build_body("no.such", [], 0)

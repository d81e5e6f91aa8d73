"""Execution of membership: member.add and member.rotate_key thresholds.

"More than two thirds" is strict: 3 * approvals > 2 * voters. Exactly two thirds is
not enough. Every failure goes through `Ledger.expect`, which also checks that the
failed transaction changed nothing.
"""
import pytest

from ledger.views import account_view, members_view
from tests.data.ledger_harness import Ledger, make_genesis, public_key


def network(member_count: int) -> Ledger:
    return Ledger(make_genesis(member_count=member_count, issuers={"USD": "BANK0"}))


def new_member(member_id="NEWBANK", name="New Bank"):
    return {"id": member_id, "name": name, "admin_key": public_key(member_id)}


def admins(*indexes: int) -> list[str]:
    return [f"BANK{i}" for i in indexes]


# -- member.add ----------------------------------------------------------------------

def test_member_add():
    ledger = network(4)
    ledger.expect("ok", "member.add", new_member(), *admins(0, 1, 2))  # 3 of 4
    assert [m["id"] for m in members_view(ledger.state)] == ["BANK0", "BANK1", "BANK2", "BANK3", "NEWBANK"]
    assert members_view(ledger.state)[-1] == {"id": "NEWBANK", "name": "New Bank",
                                              "admin_key": public_key("NEWBANK").hex()}
    # The new member is a full member: it can open accounts for its customers ...
    ledger.expect("ok", "account.open", {"id": "NEWBANK:x", "owner": "NEWBANK", "key": public_key("x")}, "NEWBANK")
    assert account_view(ledger.state, "NEWBANK:x")["owner"] == "NEWBANK"
    # ... and it counts: with five members, three approvals are no longer enough.
    ledger.expect("insufficient_approvals", "member.add", new_member("OTHER"), *admins(0, 1, 2))
    ledger.expect("ok", "member.add", new_member("OTHER"), *admins(0, 1, 2), "NEWBANK")


@pytest.mark.parametrize("member_count, approving, code", [
    (3, 2, "insufficient_approvals"),  # exactly two thirds
    (3, 3, "ok"),
    (4, 2, "insufficient_approvals"),
    (4, 3, "ok"),
    (6, 4, "insufficient_approvals"),  # exactly two thirds
    (6, 5, "ok"),
    (1, 1, "ok"),
    (2, 1, "insufficient_approvals"),
])
def test_member_add_threshold(member_count, approving, code):
    ledger = network(member_count)
    ledger.expect(code, "member.add", new_member(), *admins(*range(approving)))


def test_member_add_failures():
    ledger = network(4)
    ledger.expect("unauthorized", "member.add", new_member(), "somebody")  # no member approved
    ledger.expect("unauthorized", "member.add", new_member(), "NEWBANK")  # nor can a candidate approve itself
    ledger.expect("insufficient_approvals", "member.add", new_member(), *admins(0, 1), "somebody")
    ledger.expect("invalid_body", "member.add", {**new_member(), "id": "new bank"}, *admins(0, 1, 2))
    ledger.expect("invalid_body", "member.add", {**new_member(), "name": "x" * 129}, *admins(0, 1, 2))
    ledger.expect("member_exists", "member.add", new_member("BANK3"), *admins(0, 1, 2))
    # Stage order: the approvals (3) are checked before member_exists (4).
    ledger.expect("insufficient_approvals", "member.add", new_member("BANK3"), *admins(0, 1))


def test_members_added_earlier_in_a_block_count_later_in_it():
    ledger = network(4)
    add_first = ledger.tx("member.add", new_member("NEWBANK"), *admins(0, 1, 2))
    too_few = ledger.tx("member.add", new_member("OTHER"), *admins(0, 1, 2))
    enough = ledger.tx("member.add", new_member("OTHER"), *admins(0, 1, 2), "NEWBANK")
    again = ledger.tx("member.add", new_member("NEWBANK"), *admins(0, 1, 2, 3), "NEWBANK")
    outcome = ledger.block(add_first, too_few, enough, again)
    assert outcome.results == ["ok", "insufficient_approvals", "ok", "member_exists"]
    assert ledger.state.member_ids() == ["BANK0", "BANK1", "BANK2", "BANK3", "NEWBANK", "OTHER"]


# -- member.rotate_key ---------------------------------------------------------------

def rotate(member_id="BANK3", new_key_name="BANK3-new"):
    return {"id": member_id, "new_key": public_key(new_key_name)}


def test_rotate_key_by_the_member_itself():
    ledger = network(4)
    ledger.expect("ok", "member.rotate_key", rotate(), "BANK3")
    assert members_view(ledger.state)[3]["admin_key"] == public_key("BANK3-new").hex()
    # The old key no longer speaks for the member; the new one does.
    body = {"id": "BANK3:x", "owner": "BANK3", "key": public_key("x")}
    ledger.expect("unauthorized", "account.open", body, "BANK3")
    ledger.expect("ok", "account.open", body, "BANK3-new")
    ledger.expect("ok", "member.add", new_member(), "BANK0", "BANK1", "BANK3-new")
    ledger.expect("insufficient_approvals", "member.add", new_member("OTHER"), "BANK0", "BANK1", "BANK3")


def test_rotate_key_by_the_other_members():
    ledger = network(4)
    ledger.expect("ok", "member.rotate_key", rotate(), *admins(0, 1, 2))  # all three others
    assert members_view(ledger.state)[3]["admin_key"] == public_key("BANK3-new").hex()


@pytest.mark.parametrize("member_count, approving_others, code", [
    (4, 3, "ok"),
    (4, 2, "insufficient_approvals"),  # exactly two thirds of the three others
    (4, 1, "insufficient_approvals"),
    (4, 0, "unauthorized"),
    (7, 4, "insufficient_approvals"),  # exactly two thirds of the six others
    (7, 5, "ok"),
    (1, 0, "unauthorized"),
])
def test_rotate_key_threshold(member_count, approving_others, code):
    ledger = network(member_count)
    target = f"BANK{member_count - 1}"
    signers = admins(*range(approving_others)) or ["somebody"]
    ledger.expect(code, "member.rotate_key", rotate(target, "recovered"), *signers)


def test_rotate_key_failures():
    ledger = network(4)
    ledger.expect("unknown_member", "member.rotate_key", rotate("BANK9"), "BANK9")
    # Stage order: unknown_member (2) beats the signers (3).
    ledger.expect("unknown_member", "member.rotate_key", rotate("BANK9"), "somebody")
    ledger.expect("invalid_body", "member.rotate_key", {"id": "BANK3", "new_key": b"short"}, "BANK3")
    # The key to be installed speaks for nobody yet.
    ledger.expect("unauthorized", "member.rotate_key", rotate("BANK3"), "BANK3-new")
    # A recovery needs the other members: the target's own admin key alone is the self case.
    ledger.expect("insufficient_approvals", "member.rotate_key", rotate("BANK3"), *admins(0, 1), "BANK3-new")

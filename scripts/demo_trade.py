"""Trade finance demo: FX payment-versus-payment and a letter of credit, end to end.

Run it against a running devnet (`scripts/devnet` in one terminal, `scripts/demo` in
another). It plays one story through the node's RPC, one committed transaction per step:

1. Four member banks open accounts for their customers: an importer (BANK0), an
   exporter (BANK1), an FX desk (BANK2) and a shipping line (BANK3). The customers' fresh
   keys are written under DIR/demo-keys/RUN/.
2. The issuers named in genesis mint money: BANK0 its currency into the importer's
   account, BANK1 the credit currency and BANK2 its own currency into the FX desk's.
3. FX payment-versus-payment: the importer buys the credit currency from the FX desk in
   one atomic `pvp` of two legs, signed by both account keys.
4. A letter of credit from issue to payment: the importer applies (lc.issue, signed by
   the importer and its bank BANK0, which reserves the amount), BANK1 advises it to the
   exporter, the exporter registers an invoice and a bill of lading (doc.register, the
   exporter's key and BANK1 vouching) and presents them. The first invoice overdraws the
   credit, so BANK0 refuses the presentation; the exporter registers a corrected
   invoice and presents again, BANK0 accepts, and in one step the exporter is paid out
   of the reservation and the bill of lading's title passes to the importer (documents
   against payment).
5. The exporter pays the shipping line's freight and redeems part of its proceeds.

Every step prints what it does (amounts in major units, dates in UTC), its result code
and height, and the curl commands that show the objects and the transaction in the
RPC. Then it checks that money is conserved over the demo's accounts (per currency,
available + held == issued - redeemed). It exits 0 when every step is `ok` and the check
holds, 1 when a step or the check fails, 2 when it cannot start (no node, missing keys,
a key directory that belongs to another network).

Every run uses fresh ids (a run suffix), so it can be run again and again against the
same devnet. `run_demo` is importable: tests/test_trade_e2e.py runs the same code
against four real node processes.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import secrets
import sys
import time
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

from ledger.crypto import KeyPair
from ledger.tx import make_tx, parse_signed
from ledger.txbuilder import format_amount, format_time, to_minor

TX_TTL_MS = 10 * 60 * 1000  # a transaction's own expiry: well inside the node's 24 h window
LC_TTL_MS = 30 * 24 * 60 * 60 * 1000  # the letter of credit runs for 30 days
WAIT_COMMIT_S = 30  # ?wait=commit&timeout=S on each submission
POLL_DEADLINE_S = 60  # then poll GET /v1/txs/{id} up to this long
RUN_ID = re.compile(r"^[a-z0-9]{1,16}$")

# The story, in major units of each currency (converted exactly with txbuilder.to_minor).
IMPORTER_FUNDING = "1200000"   # importer's currency (BANK0's), minted by BANK0
FXDESK_FUNDING = "2000000"     # credit currency (BANK1's), minted by BANK1 into the FX desk
FXDESK_OWN_FUNDING = "500000"  # BANK2's currency, minted by BANK2 into the FX desk
FX_PAY = "1085000"             # importer pays this in its currency ...
FX_RECEIVE = "1000000"         # ... for this in the credit currency (rate 1.085)
LC_AMOUNT = "950000"
INVOICE_OVERDRAWN = "955000"   # the first invoice's total: more than the credit allows
FREIGHT = "18000"
REDEEMED = "500000"

BILL_OF_LADING = "bill_of_lading"
INVOICE = "invoice"


class DemoError(Exception):
    """The demo cannot start (exit 2): no node, missing keys, an unsuitable genesis."""


class StepFailed(Exception):
    """A step was refused or committed with a result other than `ok` (exit 1)."""


@dataclass
class Step:
    number: int
    key: str  # a name unique within the run, e.g. "lc.present-1"
    tx_type: str
    tx_id: str
    height: int
    code: str


@dataclass
class Customer:
    role: str
    account: str
    bank: str
    name: str
    key: KeyPair
    key_file: str


@dataclass
class DemoRun:
    """What one run did: its ids, its steps and the money it created and destroyed."""

    run_id: str
    rpc: str
    chain: str
    key_dir: str
    doc_dir: str
    customers: dict[str, Customer] = field(default_factory=dict)
    currencies: dict[str, str] = field(default_factory=dict)  # "home", "credit", "fxdesk" -> ccy
    lc_id: str = ""
    docs: dict[str, str] = field(default_factory=dict)  # "invoice-1", "invoice-2", "bill_of_lading" -> hex
    issued: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    redeemed: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    steps: list[Step] = field(default_factory=list)

    def account(self, role: str) -> str:
        return self.customers[role].account

    def step(self, key: str) -> Step:
        return next(s for s in self.steps if s.key == key)


# ---------------------------------------------------------------------- RPC
class Rpc:
    """The few calls of the node RPC (contract section 6) that the demo needs."""

    def __init__(self, url: str, timeout: float = WAIT_COMMIT_S + 10):
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, object]:
        headers = {"Content-Type": "application/msgpack"} if body is not None else {}
        request = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                return exc.code, json.loads(raw)
            except ValueError:
                return exc.code, {"error": {"code": "http", "message": raw.decode(errors="replace")}}

    def get(self, path: str) -> dict:
        status, answer = self._request("GET", path)
        if status != 200:
            raise StepFailed(f"GET {self.url}{path} answered {status}: {answer}")
        return answer

    def submit(self, raw: bytes, tx_id: str) -> dict:
        """Submit and wait until committed; the committed status (contract section 6)."""
        status, answer = self._request("POST", f"/v1/txs?wait=commit&timeout={WAIT_COMMIT_S}", raw)
        if status == 200:
            return answer
        if status != 202:
            error = answer.get("error", {}) if isinstance(answer, dict) else {}
            raise StepFailed(f"refused ({status}): {error.get('code')}: {error.get('message')}")
        deadline = time.monotonic() + POLL_DEADLINE_S
        while time.monotonic() < deadline:
            status, answer = self._request("GET", f"/v1/txs/{tx_id}")
            if status == 200 and answer["status"] == "committed":
                return answer
            time.sleep(0.2)
        raise StepFailed(f"tx {tx_id} was not committed within {WAIT_COMMIT_S + POLL_DEADLINE_S} s")

    def curl(self, path: str) -> str:
        return f"curl -s {self.url}{path}"


# ---------------------------------------------------------------------- the demo
def _describe_balances(view: dict) -> str:
    available = ", ".join(format_amount(v, c) for c, v in view["balances"].items()) or "nothing"
    held = ", ".join(format_amount(v, c) for c, v in view["held"].items())
    return f"available {available}" + (f"; held {held}" if held else "")


class TradeDemo:
    """Plays the story step by step; `play()` returns the filled-in DemoRun."""

    def __init__(self, rpc_url: str, directory: str, run_id: str | None = None,
                 out: Callable[[str], None] = print, after_step: Callable[[Step, DemoRun], None] | None = None):
        self.rpc = Rpc(rpc_url)
        self.directory = directory
        self.out = out
        self.after_step = after_step
        run_id = run_id or secrets.token_hex(3)
        if not RUN_ID.match(run_id):
            raise DemoError(f"run id {run_id!r}: use 1..16 lowercase letters and digits")
        try:
            self.genesis = self.rpc.get("/v1/genesis")
            self.start_height = self.rpc.get("/v1/status")["height"]
        except (OSError, ValueError, StepFailed) as exc:
            raise DemoError(f"cannot reach the node at {rpc_url} ({exc}); is the devnet running? "
                            "Start it with scripts/devnet") from None
        self.run = DemoRun(run_id=run_id, rpc=self.rpc.url, chain=self.genesis["chain_id"],
                           key_dir=os.path.join(directory, "demo-keys", run_id),
                           doc_dir=os.path.join(directory, "demo-docs", run_id))
        self.banks = self._load_bank_keys()
        self.issued_by = self._currencies_by_issuer()
        if os.path.exists(self.run.key_dir):
            raise DemoError(f"run {run_id} was used before ({self.run.key_dir} exists; its keys stay as they are); "
                            "choose another --run or leave it out for a fresh one")

    # -------------------------------------------------------------- setup
    def _load_bank_keys(self) -> dict[str, KeyPair]:
        members = {m["id"]: m for m in self.genesis["members"]}
        banks = {}
        for i in range(4):
            member = f"BANK{i}"
            if member not in members:
                raise DemoError(f"the demo needs four member banks BANK0..BANK3; genesis has {sorted(members)}")
            path = os.path.join(self.directory, "keys", f"{member}.json")
            try:
                pair = KeyPair.load(path)
            except (OSError, ValueError, KeyError) as exc:
                raise DemoError(f"cannot load {member}'s admin key from {path}: {exc} "
                                "(--dir is the network directory that scripts/devnet made)") from None
            if pair.public_key.hex() != members[member]["admin_key"]:
                raise DemoError(f"{path} is not {member}'s current admin key on {self.rpc.url}: "
                                "--dir and --rpc belong to different networks?")
            banks[member] = pair
        return banks

    def _currencies_by_issuer(self) -> dict[str, list[str]]:
        issued_by: dict[str, list[str]] = defaultdict(list)
        for currency, member in self.genesis["issuers"].items():
            issued_by[member].append(currency)
        for member in ("BANK0", "BANK1", "BANK2"):
            if not issued_by.get(member):
                raise DemoError(f"{member} issues no currency in this genesis; the demo needs BANK0..BANK2 "
                                f"to issue one each (issuers: {self.genesis['issuers']})")
        return issued_by

    def _new_customer(self, role: str, bank: str, name: str) -> Customer:
        os.makedirs(self.run.key_dir, exist_ok=True)
        pair = KeyPair.generate()
        key_file = os.path.join(self.run.key_dir, f"{role}.json")
        pair.save(key_file)
        customer = Customer(role=role, account=f"{bank}:{role}-{self.run.run_id}", bank=bank, name=name,
                            key=pair, key_file=key_file)
        self.run.customers[role] = customer
        return customer

    def _write_document(self, filename: str, lines: list[str]) -> str:
        """Write a document file and return the hex SHA-256 of its bytes: the hash anchored on chain."""
        os.makedirs(self.run.doc_dir, exist_ok=True)
        data = ("\n".join(lines) + "\n").encode()
        with open(os.path.join(self.run.doc_dir, filename), "wb") as handle:
            handle.write(data)
        return hashlib.sha256(data).hexdigest()

    # -------------------------------------------------------------- one step
    def submit(self, key: str, tx_type: str, body: dict, signers: list[tuple[str, KeyPair]],
               summary: str, look: list[str]) -> Step:
        """Sign, submit with ?wait=commit, print the step; raise StepFailed unless the result is ok."""
        number = len(self.run.steps) + 1
        raw = make_tx(self.run.chain, tx_type, body, [pair for _, pair in signers],
                      nonce=secrets.randbits(63), expires=int(time.time() * 1000) + TX_TTL_MS)
        tx_id = parse_signed(raw).tx_id.hex()
        self.out(f"[{number:2d}] {tx_type}: {summary}")
        self.out(f"     signed by: {', '.join(name for name, _ in signers)}")
        try:
            answer = self.rpc.submit(raw, tx_id)
        except StepFailed as exc:
            self.out(f"     FAILED: {exc}")
            raise StepFailed(f"step {number} ({tx_type}) failed: {exc}") from None
        result = answer["result"]
        block_time = self.rpc.get(f"/v1/blocks/{answer['height']}")["header"]["time"]
        self.out(f"     result:    {result['code']} at height {answer['height']} "
                 f"(block time {format_time(block_time)})")
        for index, path in enumerate(look):
            self.out(f"     {'look:' if index == 0 else '':<10} {self.rpc.curl(path)}")
        self.out(f"     tx:        {self.rpc.curl(f'/v1/txs/{tx_id}')}")
        step = Step(number=number, key=key, tx_type=tx_type, tx_id=tx_id, height=answer["height"],
                    code=result["code"])
        self.run.steps.append(step)
        if step.code != "ok":
            self.out(f"     FAILED: {result['message']}")
            raise StepFailed(f"step {number} ({tx_type}) committed with {step.code}: {result['message']}")
        if self.after_step is not None:
            self.after_step(step, self.run)
        return step

    def show_account(self, role: str, label: str | None = None) -> dict:
        customer = self.run.customers[role]
        view = self.rpc.get(f"/v1/accounts/{customer.account}")
        self.out(f"     {label or customer.account}: {_describe_balances(view)}")
        return view

    def section(self, title: str) -> None:
        self.out("")
        self.out(f"== {title} ==")

    # -------------------------------------------------------------- the story
    def play(self) -> DemoRun:
        run = self.run
        self.out(f"Trade finance demo, run {run.run_id}, against {self.rpc.url} "
                 f"(chain {run.chain}, height {self.start_height})")
        self.out("Issuers: " + "; ".join(f"{m} issues {', '.join(c)}" for m, c in sorted(self.issued_by.items())))
        self.open_accounts()
        self.mint()
        self.fx_pvp()
        self.letter_of_credit()
        self.after_payment()
        return run

    def open_accounts(self) -> None:
        self.section("1. Four banks open accounts for their customers")
        self.out(f"   (fresh customer keys in {self.run.key_dir}/)")
        for role, bank, name in (("importer", "BANK0", "Acme Imports Inc., New York"),
                                 ("exporter", "BANK1", "Rhein Maschinenbau GmbH, Hamburg"),
                                 ("fxdesk", "BANK2", "Thames FX Ltd, London"),
                                 ("carrier", "BANK3", "Lion City Shipping Pte, Singapore")):
            customer = self._new_customer(role, bank, name)
            self.submit(f"open-{role}", "account.open",
                        {"id": customer.account, "owner": bank, "key": customer.key.public_key},
                        [(f"{bank} admin", self.banks[bank])],
                        f"{bank} opens {customer.account} for {name}",
                        [f"/v1/accounts/{customer.account}"])

    def _issue(self, key: str, role: str, currency: str, amount: str) -> None:
        issuer = self.genesis["issuers"][currency]
        account = self.run.account(role)
        minor = to_minor(amount, currency)
        self.submit(key, "issue", {"account": account, "currency": currency, "amount": minor},
                    [(f"{issuer} admin (issuer of {currency})", self.banks[issuer])],
                    f"{issuer} mints {format_amount(minor, currency)} into {account}",
                    [f"/v1/accounts/{account}"])
        self.run.issued[currency] += minor

    def mint(self) -> None:
        currencies = self.run.currencies
        currencies["home"] = self.issued_by["BANK0"][0]
        currencies["credit"] = self.issued_by["BANK1"][0]
        currencies["fxdesk"] = self.issued_by["BANK2"][0]
        self.section("2. Issuers mint money (genesis `issuers`; see GET /v1/genesis)")
        self._issue("issue-importer", "importer", currencies["home"], IMPORTER_FUNDING)
        self._issue("issue-fxdesk-credit", "fxdesk", currencies["credit"], FXDESK_FUNDING)
        self._issue("issue-fxdesk-own", "fxdesk", currencies["fxdesk"], FXDESK_OWN_FUNDING)

    def fx_pvp(self) -> None:
        run, home, credit = self.run, self.run.currencies["home"], self.run.currencies["credit"]
        importer, fxdesk = run.customers["importer"], run.customers["fxdesk"]
        pay, receive = to_minor(FX_PAY, home), to_minor(FX_RECEIVE, credit)
        self.section(f"3. FX payment-versus-payment: the importer buys {credit} for {home}")
        legs = [{"from": importer.account, "to": fxdesk.account, "currency": home, "amount": pay},
                {"from": fxdesk.account, "to": importer.account, "currency": credit, "amount": receive}]
        self.submit("pvp", "pvp", {"legs": legs, "ref": f"FX {home}/{credit} run {run.run_id}"},
                    [("importer key", importer.key), ("FX desk key", fxdesk.key)],
                    f"leg 1 {importer.account} -> {fxdesk.account} {format_amount(pay, home)}; "
                    f"leg 2 {fxdesk.account} -> {importer.account} {format_amount(receive, credit)} "
                    "(both legs settle or neither)",
                    [f"/v1/accounts/{importer.account}", f"/v1/accounts/{fxdesk.account}"])
        self.show_account("importer")
        self.show_account("fxdesk")

    def _register(self, key: str, doc_key: str, doc_type: str, filename: str, lines: list[str],
                  meta: dict[str, str]) -> None:
        exporter = self.run.customers["exporter"]
        digest = self._write_document(filename, lines)
        self.run.docs[doc_key] = digest
        self.submit(key, "doc.register",
                    {"hash": bytes.fromhex(digest), "type": doc_type, "holder": exporter.account, "meta": meta},
                    [("exporter key", exporter.key), (f"{exporter.bank} admin (the holder's bank)",
                                                      self.banks[exporter.bank])],
                    f"{doc_type} {meta['number']} held by {exporter.account}, "
                    f"hash = SHA-256 of {os.path.join(self.run.doc_dir, filename)}",
                    [f"/v1/docs/{digest}"])

    def _invoice(self, number: int, total: str) -> list[str]:
        run, credit = self.run, self.run.currencies["credit"]
        return [f"COMMERCIAL INVOICE INV-{run.run_id}-{number}",
                f"Seller: {run.customers['exporter'].name} ({run.account('exporter')})",
                f"Buyer: {run.customers['importer'].name} ({run.account('importer')})",
                "Goods: 40 CNC milling machines, CIF New York",
                f"Total: {format_amount(to_minor(total, credit), credit)}",
                f"Documentary credit: {run.lc_id}"]

    def _present(self, key: str, invoice_key: str) -> None:
        run, exporter = self.run, self.run.customers["exporter"]
        documents = [{"type": INVOICE, "hash": bytes.fromhex(run.docs[invoice_key])},
                     {"type": BILL_OF_LADING, "hash": bytes.fromhex(run.docs[BILL_OF_LADING])}]
        self.submit(key, "lc.present", {"id": run.lc_id, "documents": documents},
                    [("exporter key", exporter.key)],
                    f"{exporter.account} presents {invoice_key} {run.docs[invoice_key][:16]}... and "
                    f"bill_of_lading {run.docs[BILL_OF_LADING][:16]}... under {run.lc_id}",
                    [f"/v1/lcs/{run.lc_id}"])

    def _examine(self, key: str, accept: bool, reason: str) -> None:
        run = self.run
        verdict = "accepts" if accept else "refuses"
        self.submit(key, "lc.examine", {"id": run.lc_id, "accept": accept, "reason": reason},
                    [("BANK0 admin (issuing bank)", self.banks["BANK0"])],
                    f"BANK0 {verdict} the presentation: {reason}",
                    [f"/v1/lcs/{run.lc_id}"] + ([f"/v1/accounts/{run.account('exporter')}",
                                                 f"/v1/docs/{run.docs[BILL_OF_LADING]}"] if accept else []))

    def letter_of_credit(self) -> None:
        run, credit = self.run, self.run.currencies["credit"]
        importer, exporter = run.customers["importer"], run.customers["exporter"]
        run.lc_id = f"LC-{run.run_id}"
        amount = to_minor(LC_AMOUNT, credit)
        expires = int(time.time() * 1000) + LC_TTL_MS
        self.section("4. Letter of credit: issue, advise, present, examine, pay")
        self.submit("lc.issue", "lc.issue",
                    {"id": run.lc_id, "applicant": importer.account, "beneficiary": exporter.account,
                     "advising_bank": "BANK1", "currency": credit, "amount": amount, "expires": expires,
                     "documents": [BILL_OF_LADING, INVOICE],
                     "terms": "40 CNC milling machines, CIF New York, shipment from Hamburg; "
                              "full set of clean on-board bills of lading"},
                    [("importer key (applicant)", importer.key), ("BANK0 admin (issuing bank)", self.banks["BANK0"])],
                    f"{run.lc_id}: {importer.account} applies for {format_amount(amount, credit)} in favour of "
                    f"{exporter.account}, advising bank BANK1, expires {format_time(expires)}, "
                    f"documents {BILL_OF_LADING} + {INVOICE}",
                    [f"/v1/lcs/{run.lc_id}", f"/v1/accounts/{importer.account}"])
        self.show_account("importer", f"{importer.account} (the credit amount is now held)")
        self.submit("lc.advise", "lc.advise", {"id": run.lc_id}, [("BANK1 admin (advising bank)", self.banks["BANK1"])],
                    f"BANK1 advises {run.lc_id} to its customer {exporter.account}", [f"/v1/lcs/{run.lc_id}"])
        carrier = run.customers["carrier"]
        self._register("doc.register-invoice-1", "invoice-1", INVOICE, "invoice-1.txt",
                       self._invoice(1, INVOICE_OVERDRAWN),
                       {"number": f"INV-{run.run_id}-1", "total": format_amount(to_minor(INVOICE_OVERDRAWN, credit),
                                                                                credit)})
        self._register("doc.register-bill_of_lading", BILL_OF_LADING, BILL_OF_LADING, "bill-of-lading.txt",
                       [f"BILL OF LADING BL-{run.run_id}", f"Carrier: {carrier.name} ({carrier.account})",
                        f"Shipper: {exporter.name}", "Consignee: to order", "Vessel: MV Northern Star",
                        "Port of loading: Hamburg", "Port of discharge: New York",
                        "Cargo: 40 CNC milling machines, shipped on board"],
                       {"number": f"BL-{run.run_id}", "carrier": carrier.account, "vessel": "MV Northern Star",
                        "port_of_loading": "Hamburg", "port_of_discharge": "New York"})
        self._present("lc.present-1", "invoice-1")
        self._examine("lc.examine-refuse", False,
                      f"discrepancy: invoice total {format_amount(to_minor(INVOICE_OVERDRAWN, credit), credit)} "
                      f"exceeds the credit amount {format_amount(amount, credit)}")
        self.out(f"     {run.lc_id} is refused; the reservation stays and the exporter may present again")
        self._register("doc.register-invoice-2", "invoice-2", INVOICE, "invoice-2.txt",
                       self._invoice(2, LC_AMOUNT),
                       {"number": f"INV-{run.run_id}-2", "total": format_amount(amount, credit)})
        self._present("lc.present-2", "invoice-2")
        self._examine("lc.examine-accept", True, "documents comply")
        lc = self.rpc.get(f"/v1/lcs/{run.lc_id}")
        bill = self.rpc.get(f"/v1/docs/{run.docs[BILL_OF_LADING]}")
        self.out(f"     {run.lc_id} is {lc['status']}: history " + " -> ".join(e["type"] for e in lc["history"]))
        self.out(f"     bill of lading BL-{run.run_id}: title now with {bill['holder']} (documents against payment)")
        self.show_account("exporter", f"{exporter.account} (paid)")
        self.show_account("importer", f"{importer.account} (reservation used)")

    def after_payment(self) -> None:
        run, credit = self.run, self.run.currencies["credit"]
        exporter, carrier = run.customers["exporter"], run.customers["carrier"]
        self.section("5. The exporter pays freight and cashes out")
        freight = to_minor(FREIGHT, credit)
        self.submit("transfer-freight", "transfer",
                    {"from": exporter.account, "to": carrier.account, "currency": credit, "amount": freight,
                     "ref": f"freight BL-{run.run_id}"},
                    [("exporter key", exporter.key)],
                    f"{exporter.account} -> {carrier.account} {format_amount(freight, credit)} (freight)",
                    [f"/v1/accounts/{carrier.account}"])
        redeemed = to_minor(REDEEMED, credit)
        self.submit("redeem", "redeem", {"account": exporter.account, "currency": credit, "amount": redeemed},
                    [("exporter key", exporter.key)],
                    f"{exporter.account} redeems {format_amount(redeemed, credit)} (paid out of the ledger)",
                    [f"/v1/accounts/{exporter.account}"])
        run.redeemed[credit] += redeemed


def money_check(rpc_url: str, run: DemoRun) -> dict[str, tuple[int, int]]:
    """Per currency: (sum of available + held over the run's accounts, issued - redeemed by the run)."""
    rpc = Rpc(rpc_url)
    totals: dict[str, int] = defaultdict(int)
    for customer in run.customers.values():
        view = rpc.get(f"/v1/accounts/{customer.account}")
        for amounts in (view["balances"], view["held"]):
            for currency, value in amounts.items():
                totals[currency] += value
    currencies = sorted(set(totals) | set(run.issued) | set(run.redeemed))
    return {c: (totals[c], run.issued.get(c, 0) - run.redeemed.get(c, 0)) for c in currencies}


def run_demo(rpc_url: str, directory: str, run_id: str | None = None, out: Callable[[str], None] = print,
             after_step: Callable[[Step, DemoRun], None] | None = None) -> DemoRun:
    """Play the whole story against `rpc_url` with the member keys in `directory`/keys.

    Raises DemoError when it cannot start and StepFailed when a step is not `ok`.
    `after_step(step, run)` is called after each successful step (tests look at the state
    between steps).
    """
    return TradeDemo(rpc_url, directory, run_id, out, after_step).play()


def report(rpc_url: str, run: DemoRun, out: Callable[[str], None] = print) -> bool:
    """Print the final balances and the money check; True when money is conserved."""
    out("")
    out("== Summary ==")
    rpc = Rpc(rpc_url)
    for customer in run.customers.values():
        view = rpc.get(f"/v1/accounts/{customer.account}")
        out(f"   {customer.account:<24} {_describe_balances(view)}")
    out(f"   {rpc.curl(f'/v1/lcs/{run.lc_id}')}")
    out(f"   {rpc.curl(f'/v1/docs/{run.docs[BILL_OF_LADING]}')}")
    conserved = True
    for currency, (held, expected) in money_check(rpc_url, run).items():
        ok = held == expected
        conserved &= ok
        out(f"   money check {currency}: accounts hold {format_amount(held, currency)}, issued - redeemed = "
            f"{format_amount(expected, currency)}: {'ok' if ok else 'MISMATCH'}")
    out(f"{len(run.steps)} steps, all ok" if conserved else "money is NOT conserved")
    return conserved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default="devnet", help="the network directory holding keys/BANK<i>.json (devnet)")
    parser.add_argument("--rpc", default="http://127.0.0.1:7700", help="a node's RPC (http://127.0.0.1:7700)")
    parser.add_argument("--run", default=None, help="run id used in every object id (default: random)")
    args = parser.parse_args(argv)
    try:
        run = run_demo(args.rpc, args.dir, args.run, out=lambda line: print(line, flush=True))
    except DemoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except StepFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: lost the node at {args.rpc}: {exc}", file=sys.stderr)
        return 1
    try:
        return 0 if report(args.rpc, run) else 1
    except (StepFailed, OSError) as exc:
        print(f"error: cannot read the final state: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

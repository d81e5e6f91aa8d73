"""Start and stop real `ledger node` processes on free loopback ports for tests."""
from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

from tests.contract_client import http

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_base_port(validators: int) -> int:
    """A base port P with P..P+n-1 and P+100..P+100+n-1 all free on 127.0.0.1."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 60000)
        if all(_port_free(base + i) and _port_free(base + 100 + i) for i in range(validators)):
            return base
    raise RuntimeError("no free port range found")


def ledger_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "ledger.cli", *args]


def wait_status(rpc: str, process: subprocess.Popen | None, timeout: float = 30) -> dict:
    """The node's /v1/status once its RPC answers; RuntimeError if its process exits first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the node exited with {process.returncode}")
        try:
            status, body = http("GET", f"{rpc}/v1/status", timeout=2)
            if status == 200:
                return body
        except OSError:
            pass  # not listening yet: poll again
        time.sleep(0.05)
    raise TimeoutError(f"{rpc} did not answer within {timeout} s")


class Network:
    def __init__(self, directory: str, validators: int = 4, extra_init: tuple[str, ...] = ()):
        self.directory = directory
        self.validators = validators
        self.base_port = free_base_port(validators)
        subprocess.run(ledger_cmd("net", "init", "--validators", str(validators), "--dir", directory,
                                  "--base-port", str(self.base_port), "--chain-id", "test-chain", *extra_init),
                       check=True, cwd=ROOT, capture_output=True)
        with open(os.path.join(directory, "genesis.json")) as handle:
            self.genesis = json.load(handle)
        self.processes: dict[int, subprocess.Popen] = {}

    def home(self, i: int) -> str:
        return os.path.join(self.directory, f"node{i}")

    def rpc(self, i: int) -> str:
        return f"http://127.0.0.1:{self.base_port + i}"

    def start(self, i: int) -> None:
        log = open(os.path.join(self.directory, f"node{i}.log"), "ab")
        self.processes[i] = subprocess.Popen(ledger_cmd("node", "--home", self.home(i)), cwd=ROOT,
                                             stdout=log, stderr=subprocess.STDOUT)

    def start_all(self) -> None:
        for i in range(self.validators):
            self.start(i)

    def start_connected(self, timeout: float = 30) -> None:
        """Start every node and wait until each has linked with all its peers."""
        self.start_all()
        for i in range(self.validators):
            self.wait_connected(i, timeout)

    def wait_rpc(self, i: int, timeout: float = 30) -> dict:
        try:
            return wait_status(self.rpc(i), self.processes.get(i), timeout)
        except (RuntimeError, TimeoutError) as exc:
            raise type(exc)(f"node{i}: {exc}:\n{self.log(i)[-3000:]}") from None

    def wait_connected(self, i: int, timeout: float = 30) -> None:
        deadline = time.time() + timeout
        body = {}
        while time.time() < deadline:
            body = self.wait_rpc(i, max(1.0, deadline - time.time()))
            if all(p["connected"] for p in body["peers"]):
                return
            time.sleep(0.1)
        missing = [p["name"] for p in body.get("peers", []) if not p["connected"]]
        exited = {j: p.returncode for j, p in self.processes.items() if p.poll() is not None}
        logs = "\n".join(f"--- {name}.log ---\n{self.log(int(name[4:]))[-2000:]}"
                         for name in missing if name.startswith("node") and name[4:].isdigit())
        raise TimeoutError(f"node{i} did not connect to {missing} (exited processes: {exited}):\n{logs}")

    def wait_height(self, i: int, height: int, timeout: float = 30) -> dict:
        deadline = time.time() + timeout
        body = {}
        while time.time() < deadline:
            body = self.wait_rpc(i, max(1.0, deadline - time.time()))
            if body["height"] >= height:
                return body
            time.sleep(0.1)
        raise TimeoutError(f"node{i} stayed at height {body.get('height')} < {height}:\n{self.log(i)[-3000:]}")

    def log(self, i: int) -> str:
        try:
            with open(os.path.join(self.directory, f"node{i}.log"), errors="replace") as handle:
                return handle.read()
        except OSError:
            return ""

    def kill(self, i: int, sig: int = signal.SIGKILL) -> None:
        process = self.processes.pop(i, None)
        if process is not None and process.poll() is None:
            process.send_signal(sig)
            process.wait(timeout=20)

    def stop_all(self) -> None:
        for i in list(self.processes):
            process = self.processes[i]
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for i in list(self.processes):
            try:
                self.processes[i].wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.processes[i].kill()
                self.processes[i].wait()
        self.processes.clear()

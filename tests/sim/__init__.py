"""A seeded, deterministic simulator that drives the production `consensus.Replica`.

`simulator.Simulation` wires N replicas to an in-memory network with faults
(`network.Network`), a fake ledger per node (`ledger_app.FakeLedger`), Byzantine
behaviours (`byzantine.Byzantine`) and invariant checks after every step
(`checker.Checker`). `test_simulation.py` runs it over many seeds; `test_scenarios.py`
scripts targeted situations; `scripts/simulate` runs it from the command line.
"""

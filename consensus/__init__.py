"""PBFT consensus for the ledger: a pure, deterministic replica state machine.

`consensus.replica.Replica` takes events (`consensus.events`) and returns actions
(`consensus.actions`); `consensus.messages` is the wire format, `consensus.quorum` the
quorum and certificate rules, `consensus.wal` the write-ahead-log records. No I/O, no
clock, no randomness: the node's driver and the simulator in tests/sim drive it alike.
See docs/consensus.md.
"""

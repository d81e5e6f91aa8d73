"""Peer-to-peer links between validators: authenticated aiohttp WebSockets.

`p2p.handshake` is the challenge-response handshake with no I/O, `p2p.outbound` the
byte-bounded per-link queue, and `p2p.network.PeerNetwork` the aiohttp adapter the node
drives. Payloads are opaque bytes here; docs/p2p.md describes the wire and the rules.
"""
from p2p.network import PeerInfo, PeerNetwork

__all__ = ["PeerInfo", "PeerNetwork"]

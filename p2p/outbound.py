"""A per-link outbound queue bounded by bytes, drained by one sender task.

`put` never blocks: the caller (consensus, gossip) runs on the event loop and must not
wait for a slow peer, so a full queue refuses the payload and the caller decides what
to do (PBFT retransmits on timeouts; gossip is best effort). Bytes stay counted until
the sender has handed the payload to the transport.
"""
from __future__ import annotations

import asyncio
from collections import deque


class OutboundQueue:
    """FIFO of payloads whose total size never exceeds `bytes_max`."""

    def __init__(self, bytes_max: int):
        if bytes_max <= 0:
            raise ValueError("bytes_max must be positive")
        self.bytes_max = bytes_max
        self.bytes_queued = 0
        self._payloads: deque[bytes] = deque()
        self._nonempty = asyncio.Event()

    def __len__(self) -> int:
        return len(self._payloads)

    def put(self, payload: bytes) -> bool:
        """Append `payload`; False (nothing queued) if it would exceed `bytes_max`."""
        if self.bytes_queued + len(payload) > self.bytes_max:
            return False
        self._payloads.append(payload)
        self.bytes_queued += len(payload)
        self._nonempty.set()
        return True

    def peek(self) -> bytes:
        """The oldest payload, still counted (the sender pops it once written)."""
        return self._payloads[0]

    def pop(self) -> bytes:
        payload = self._payloads.popleft()
        self.bytes_queued -= len(payload)
        if self.bytes_queued < 0:
            raise RuntimeError("outbound queue byte count went negative")
        return payload

    async def wait_nonempty(self) -> None:
        while not self._payloads:
            self._nonempty.clear()
            await self._nonempty.wait()

    def clear(self) -> int:
        """Drop everything queued (the link is gone); return how many payloads were dropped."""
        dropped = len(self._payloads)
        self._payloads.clear()
        self.bytes_queued = 0
        return dropped

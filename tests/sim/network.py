"""The simulated network: seeded delay, loss, duplication, reordering and partitions.

Messages travel between node indices. Before GST the fault plan applies; `heal()` ends
loss and partitions. Delay, reordering and duplication stay (they are not faults a
correct protocol needs to wait out). A scripted test can add a
`message_filter(source, target, data) -> bool` that drops what it returns False for.
"""
from __future__ import annotations

import heapq
import random
from collections import Counter
from typing import Callable


class Network:
    def __init__(self, rng: random.Random, faults: Counter, delay_ticks_max: int = 2):
        self.rng = rng
        self.faults = faults
        self.delay_ticks_max = delay_ticks_max
        self.drop_probability = 0.0
        self.duplicate_probability = 0.0
        self.partition: tuple[frozenset[int], ...] | None = None
        self.message_filter: Callable[[int, int, bytes], bool] | None = None
        self._queue: list[tuple[int, int, int, int, bytes]] = []  # (tick, seq, source, target, data)
        self._sequence = 0
        self._last_delivered: dict[tuple[int, int], int] = {}
        self.sent = 0
        self.delivered = 0

    def heal(self) -> None:
        self.drop_probability = 0.0
        self.partition = None

    def separated(self, source: int, target: int) -> bool:
        if self.partition is None:
            return False
        return not any(source in side and target in side for side in self.partition)

    def send(self, now: int, source: int, target: int, data: bytes) -> None:
        self.sent += 1
        if self.message_filter is not None and not self.message_filter(source, target, data):
            self.faults["filtered"] += 1
            return
        if self.separated(source, target):
            self.faults["partition"] += 1
            return
        if self.drop_probability and self.rng.random() < self.drop_probability:
            self.faults["drop"] += 1
            return
        copies = 1
        if self.duplicate_probability and self.rng.random() < self.duplicate_probability:
            self.faults["duplicate"] += 1
            copies = 2
        for _ in range(copies):
            self._sequence += 1
            tick = now + self.rng.randint(1, self.delay_ticks_max)
            heapq.heappush(self._queue, (tick, self._sequence, source, target, data))

    def due(self, now: int) -> list[tuple[int, int, bytes]]:
        """Messages to deliver at `now`, in a seeded order; counts reorderings per link."""
        ready = []
        while self._queue and self._queue[0][0] <= now:
            ready.append(heapq.heappop(self._queue))
        self.rng.shuffle(ready)
        out = []
        for _, sequence, source, target, data in ready:
            link = (source, target)
            if self._last_delivered.get(link, 0) > sequence:
                self.faults["reorder"] += 1
            else:
                self._last_delivered[link] = sequence
            out.append((source, target, data))
        self.delivered += len(out)
        return out

    def drop_to(self, target: int) -> None:
        """A crashed node loses what was in flight to it."""
        kept = [item for item in self._queue if item[3] != target]
        lost = len(self._queue) - len(kept)
        if lost:
            self.faults["lost_in_crash"] += lost
            self._queue = kept
            heapq.heapify(self._queue)

"""Counting work per trio task step: what a task did between two checkpoints."""

from __future__ import annotations

import trio


class MostPerStep(trio.abc.Instrument):
    """The most that each of ``counts`` grew during any one task step (the code under test
    increments ``counts``; add with ``trio.lowlevel.add_instrument``)."""

    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts
        self.before: dict[str, int] = {}
        self.most = dict.fromkeys(counts, 0)

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.before = dict(self.counts)

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        for name, count in self.counts.items():
            self.most[name] = max(self.most[name], count - self.before.get(name, count))

"""The one exponential backoff: ``base``, doubling, capped, with jitter.

Why one: the supervisor's restarts, the collator's retries, the syncer's
agent restarts and its ssh master each wrote the same formula with their
own off-by-one; now each holds a :class:`Backoff` built from its
:class:`~syncsup.timings.Timings` and asks it for the n-th delay.

The jitter (a factor drawn from 0.8 to 1.2) keeps several syncs, or several
targets, that failed together from retrying in lockstep. Tests give a
seeded ``rng`` or read the bounds.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["JITTER", "Backoff"]

JITTER = (0.8, 1.2)  # the factor's range


@dataclass
class Backoff:
    """The n-th delay (n >= 1) is ``base * 2**(n-1)``, at most ``cap``,
    times the jitter; n <= 0 is no delay."""

    base: float
    cap: float
    rng: random.Random = field(default_factory=random.Random)

    def raw(self, n: int) -> float:
        """The delay without jitter."""
        if n <= 0:
            return 0.0
        return min(self.cap, self.base * 2.0 ** min(n - 1, 1000))

    def delay(self, n: int) -> float:
        """The n-th delay, with jitter."""
        return self.raw(n) * self.rng.uniform(*JITTER) if n > 0 else 0.0

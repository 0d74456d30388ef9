"""Status queries in flight, pure: the supervisor asks each running child
for its part of the status and answers whoever asked (the CLI, the metrics
thread, the status file, systemd) once every asked child answered or after
its ``timeout`` (``Timings.status_query_timeout``), with the last part it has from the silent ones.

Nothing is pushed unasked: an idle daemon exchanges no status at all, and
what ``syncsup status`` shows is at most a moment old.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from syncsup.status import StatusPart

__all__ = ["Queries"]

Consumer = Callable[[], None]


@dataclass
class _Query:
    deadline: float
    waiting: set[str]
    consumers: list[Consumer] = field(default_factory=list)


class Queries:
    """The latest part of each role and the queries waiting for new ones."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout  # seconds to wait for the children's parts
        self.parts: dict[str, StatusPart] = {}
        self._open: dict[int, _Query] = {}
        self._ids = itertools.count(1)

    def ask(self, roles: set[str], now: float, consumer: Consumer) -> int | None:
        """Register ``consumer``. Returns the id of a new query to send to
        ``roles``, or None if it joined the query already in flight (or no
        child can answer: then the consumer is called at the next expire)."""
        for query in self._open.values():
            query.consumers.append(consumer)
            return None
        qid = next(self._ids)
        self._open[qid] = _Query(now + (self.timeout if roles else 0.0), set(roles),
                                 [consumer])
        return qid

    def answer(self, qid: int, part: StatusPart) -> list[Consumer]:
        """A child's part; the consumers to call now if it was the last one
        awaited. An answer to an expired query still refreshes the part."""
        self.parts[part.role] = part
        query = self._open.get(qid)
        if query is None:
            return []
        query.waiting.discard(part.role)
        if query.waiting:
            return []
        del self._open[qid]
        return query.consumers

    def forget(self, role: str) -> list[Consumer]:
        """``role`` died: stop waiting for it (its last part stays)."""
        done: list[Consumer] = []
        for qid, query in list(self._open.items()):
            query.waiting.discard(role)
            if not query.waiting:
                del self._open[qid]
                done += query.consumers
        return done

    def expire(self, now: float) -> list[Consumer]:
        """Consumers of queries past their deadline."""
        done: list[Consumer] = []
        for qid, query in list(self._open.items()):
            if now >= query.deadline:
                del self._open[qid]
                done += query.consumers
        return done

    def next_deadline(self) -> float | None:
        return min((q.deadline for q in self._open.values()), default=None)

"""Status queries in flight (supervisor/queries.py), pure: who is asked, who
is answered, and when."""

from __future__ import annotations

from collections.abc import Callable

from syncsup.status import StatusPart, WatchStatus
from syncsup.supervisor.queries import Queries

QUERY_TIMEOUT = 0.7  # this test's own: any positive value

ROLES = {"watcher", "collator", "syncer"}


class Consumers:
    """Consumers that record when they are called."""

    def __init__(self) -> None:
        self.called: list[str] = []

    def __call__(self, name: str) -> Callable[[], None]:
        def consumer() -> None:
            self.called.append(name)
        return consumer


def call(consumers: list[Callable[[], None]]) -> None:
    for c in consumers:
        c()


def part(role: str, watches: int = 0) -> StatusPart:
    return StatusPart(role=role, watches=[WatchStatus(sync="www", watches=watches)])


def test_a_query_is_answered_when_every_asked_role_answered() -> None:
    qs, got = Queries(QUERY_TIMEOUT), Consumers()
    qid = qs.ask(set(ROLES), now=10.0, consumer=got("cli"))
    assert qid is not None
    assert qs.next_deadline() == 10.0 + QUERY_TIMEOUT
    assert qs.answer(qid, part("watcher")) == []
    assert qs.answer(qid, part("collator")) == []
    call(qs.answer(qid, part("syncer")))
    assert got.called == ["cli"]
    assert qs.next_deadline() is None
    assert set(qs.parts) == ROLES


def test_a_second_asker_joins_the_query_in_flight() -> None:
    qs, got = Queries(QUERY_TIMEOUT), Consumers()
    qid = qs.ask(set(ROLES), now=0.0, consumer=got("cli"))
    assert qid is not None
    assert qs.ask(set(ROLES), now=0.5, consumer=got("metrics")) is None  # nothing new sent
    assert qs.ask({"syncer"}, now=0.6, consumer=got("status-file")) is None
    assert qs.next_deadline() == QUERY_TIMEOUT  # the first one's deadline
    for role in sorted(ROLES):
        call(qs.answer(qid, part(role)))
    assert got.called == ["cli", "metrics", "status-file"]
    # The next asker starts a new query.
    qid2 = qs.ask(set(ROLES), now=2.0, consumer=got("cli"))
    assert qid2 is not None and qid2 != qid


def test_a_dead_role_is_no_longer_awaited() -> None:
    qs, got = Queries(QUERY_TIMEOUT), Consumers()
    qid = qs.ask({"watcher", "collator"}, now=0.0, consumer=got("cli"))
    assert qid is not None
    assert qs.answer(qid, part("collator")) == []
    call(qs.forget("watcher"))
    assert got.called == ["cli"]
    assert qs.next_deadline() is None
    assert qs.forget("watcher") == []


def test_forgetting_a_role_that_others_still_wait_for() -> None:
    qs, got = Queries(QUERY_TIMEOUT), Consumers()
    qid = qs.ask(set(ROLES), now=0.0, consumer=got("cli"))
    assert qid is not None
    qs.answer(qid, part("watcher", watches=5))
    assert qs.forget("watcher") == []  # already answered; still waiting for two
    assert qs.forget("syncer") == []
    call(qs.answer(qid, part("collator")))
    assert got.called == ["cli"]
    # The last part of a role stays after it died: status shows what was known.
    assert qs.parts["watcher"].watches[0].watches == 5


def test_silent_roles_expire() -> None:
    qs, got = Queries(QUERY_TIMEOUT), Consumers()
    qid = qs.ask(set(ROLES), now=100.0, consumer=got("cli"))
    assert qid is not None
    qs.answer(qid, part("collator"))
    assert qs.expire(100.0 + QUERY_TIMEOUT - 0.001) == []
    call(qs.expire(100.0 + QUERY_TIMEOUT))
    assert got.called == ["cli"]
    assert qs.expire(1e9) == []
    assert qs.next_deadline() is None


def test_a_late_answer_still_refreshes_the_part() -> None:
    qs, got = Queries(QUERY_TIMEOUT), Consumers()
    old = qs.ask(set(ROLES), now=0.0, consumer=got("cli"))
    assert old is not None
    qs.answer(old, part("watcher", watches=1))
    call(qs.expire(QUERY_TIMEOUT))
    new = qs.ask(set(ROLES), now=5.0, consumer=got("metrics"))
    assert new is not None
    assert qs.answer(old, part("watcher", watches=2)) == []  # answers the expired query
    assert qs.parts["watcher"].watches[0].watches == 2
    assert qs.answer(12345, part("syncer")) == []  # a query never made
    assert "syncer" in qs.parts
    # The late watcher answer did not count for the new query.
    assert qs.answer(new, part("syncer")) == []
    assert qs.answer(new, part("collator")) == []
    call(qs.answer(new, part("watcher", watches=3)))
    assert got.called == ["cli", "metrics"]


def test_nobody_to_ask_answers_at_the_next_expiry() -> None:
    qs, got = Queries(QUERY_TIMEOUT), Consumers()
    qid = qs.ask(set(), now=7.0, consumer=got("cli"))
    assert qid is not None
    assert qs.next_deadline() == 7.0
    call(qs.expire(7.0))
    assert got.called == ["cli"]


def test_several_queries_expire_together() -> None:
    qs, got = Queries(QUERY_TIMEOUT), Consumers()
    first = qs.ask({"watcher"}, now=0.0, consumer=got("a"))
    assert first is not None
    call(qs.answer(first, part("watcher")))
    second = qs.ask({"watcher"}, now=1.0, consumer=got("b"))
    qs.ask({"watcher"}, now=1.1, consumer=got("c"))
    assert second is not None
    call(qs.expire(10.0))
    assert got.called == ["a", "b", "c"]

"""When the collator listens for the syncer: at once while something waits
for its answer (a credit, a batch's outcome that a due batch or
``max_delays`` depends on), else it reads what came at its next wake-up,
at most ``delay`` after the batch went out."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from syncsup.proto import Batch, Changes
from tests.unit.test_unit_collator import Harness, sync


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def factory(*syncs: dict[str, Any], **kw: Any) -> Harness:
        h = Harness(tmp_path, list(syncs) or [sync(tmp_path)], **kw)
        made.append(h)
        return h

    yield factory
    for h in made:
        h.core.close()

def test_the_syncer_is_heard_at_once_while_a_target_waits_for_a_credit(
        make: Callable[..., Harness], tmp_path: Path) -> None:
    h = make(sync(tmp_path, targets=1))
    now = h.clock.now
    assert h.core.syncer_wanted(now) == now  # no READY yet: a syncer is starting
    h.ready("www", 0)
    assert h.core.syncer_wanted(now) is None  # a credit, nothing out: nothing waits


def test_a_batch_out_wants_its_done_by_the_next_batchs_delay(
        make: Callable[..., Harness], tmp_path: Path) -> None:
    """Under steady changes a DONE need not wake the collator: nothing
    waits for it before the next batch of the target could be due (``delay``
    after the oldest change recorded since the batch went out), and the
    batch's own outcome is read at most ``delay`` after it went out."""
    h = make(sync(tmp_path, targets=1))
    h.events("www", Changes(trees={b""}))
    h.ready("www", 0)
    h.batch()
    now = h.clock.now
    assert h.core.syncer_wanted(now) == now  # the first batch of the run: at once
    h.q().synced_this_run = True
    h.q().lease = None
    h.ready("www", 0)
    t0 = h.clock.now
    h.events("www", Changes(paths={b"a"}))
    h.clock.advance(2.0)
    h.batch()
    started = h.clock.now
    assert h.core.syncer_wanted(started) == started + 2.0
    h.clock.advance(0.5)
    h.events("www", Changes(paths={b"b"}), first=h.clock.now - 0.2)  # read before it came
    assert h.core.syncer_wanted(h.clock.now) == pytest.approx(started + 0.3 + 2.0)
    h.events("www", Changes(paths={b"c"}), first=t0)  # a watcher clock behind: never later
    assert h.core.syncer_wanted(h.clock.now) == pytest.approx(started + 2.0)
    h.clock.advance(1.5)
    assert h.core.syncer_wanted(h.clock.now) == h.clock.now  # due: polled again


@pytest.mark.parametrize("kw", [{"delay": 0}, {"delay": 60.0, "max_delays": 2}])
def test_without_a_delay_or_past_max_delays_the_done_is_wanted_at_once(
        make: Callable[..., Harness], tmp_path: Path, kw: dict[str, Any]) -> None:
    h = make(sync(tmp_path, targets=1, **kw))
    h.events("www", Changes(trees={b""}))
    h.synced()
    h.ready("www", 0)
    h.events("www", Changes(paths={b"a"}))
    h.events("www", Changes(paths={b"b"}))
    h.events("www", Changes(paths={b"c"}))
    h.core.dispatch_due()
    assert h.take(Batch)
    if kw["delay"]:
        assert h.core.syncer_wanted(h.clock.now) > h.clock.now
        h.events("www", Changes(paths={b"d", b"e"}))  # max_delays while it is out
    assert h.core.syncer_wanted(h.clock.now) == h.clock.now

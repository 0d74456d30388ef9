"""``[timings]``: every field settable, each refused below its floor or
against a relation with one line naming the key, and an empty table the
production defaults."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from syncsup import config
from syncsup.config import ConfigError
from syncsup.timings import TimingError, Timings

FAKE = Path("/tmp/x.toml")
FIELDS = dataclasses.fields(Timings)


def _doc(**timings: Any) -> dict[str, Any]:
    return {"settings": {"state_dir": "/var/lib/x"},
            "sync": [{"name": "s", "source": "/srv/s", "targets": ["/mnt/t"]}],
            "timings": timings}


def test_no_table_is_the_defaults() -> None:
    doc = _doc()
    del doc["timings"]
    assert config.parse(doc, FAKE).timings == Timings()
    assert config.parse(_doc(), FAKE).timings == Timings()


@pytest.mark.parametrize("f", [f for f in FIELDS if f.metadata["floor"] > 0],
                         ids=lambda f: f.name)
def test_below_its_floor_is_refused_naming_the_key(f: dataclasses.Field[float]) -> None:
    with pytest.raises(ConfigError) as exc:
        config.parse(_doc(**{f.name: f.metadata["floor"] / 2}), FAKE)
    assert exc.value.key == f"timings.{f.name}"
    assert "at least" in str(exc.value)


@pytest.mark.parametrize("value", ["10", True, float("nan"), float("inf"), -1.0, [1]])
def test_not_a_number_of_seconds_is_refused(value: object) -> None:
    with pytest.raises(ConfigError) as exc:
        config.parse(_doc(heartbeat_interval=value), FAKE)
    assert exc.value.key == "timings.heartbeat_interval"


@pytest.mark.parametrize(("values", "key"), [
    ({"heartbeat_interval": 1.0, "heartbeat_timeout": 1.5}, "heartbeat_timeout"),
    ({"seen_delay": 2.0, "seen_margin": 2.0}, "seen_delay"),
    ({"command_timeout": 1.0, "status_query_timeout": 1.0}, "command_timeout"),
    ({"restart_base": 2.0, "restart_cap": 1.0}, "restart_cap"),
    ({"retry_cap": 400.0}, "retry_cap"),
    ({"agent_restart": 5.0, "agent_retry": 1.0}, "agent_retry"),
])
def test_relations_that_cannot_hold_are_refused(values: dict[str, float], key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        config.parse(_doc(**values), FAKE)
    assert exc.value.key == f"timings.{key}"


def test_an_unknown_key_is_refused_with_a_hint() -> None:
    with pytest.raises(ConfigError) as exc:
        config.parse(_doc(heartbeat_timout=5), FAKE)
    assert exc.value.key == "timings.heartbeat_timout"
    assert "did you mean heartbeat_timeout" in str(exc.value)


def test_small_timings_are_accepted_and_integers_read_as_seconds() -> None:
    small = config.parse(_doc(heartbeat_interval=1, heartbeat_timeout=2, agent_timeout=0.5),
                         FAKE).timings
    assert (small.heartbeat_interval, small.heartbeat_timeout, small.agent_timeout) == (
        1.0, 2.0, 0.5)


def test_tests_cannot_build_an_impossible_one_either() -> None:
    with pytest.raises(TimingError):
        Timings(seen_delay=1.0)

"""Schedules: slots fired exactly once by racing workers, catch-up and overlap policies."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dbt_durable.errors import ConfigError
from dbt_durable.runner.schedules import ON_TIME_S, due_slots, fire_due_schedules
from dbt_durable.store.queries import Queries
from tests.conftest import Space

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 600),
    st.integers(0, 10_000),
    st.sampled_from(["none", "latest", "all"]),
    st.integers(1, 50),
    st.sampled_from(["*/5 * * * *", "0 * * * *", "15 9 * * 1-5", "* * * * *"]),
)
def test_due_slots_properties(
    after_min: int, span_min: int, catchup: str, max_catchup: int, cron: str
) -> None:
    after = T0 + timedelta(minutes=after_min, seconds=7)
    now = after + timedelta(minutes=span_min)
    slots = due_slots(cron, "Europe/Paris", after, now, catchup, max_catchup)
    assert all(after < s <= now for s in slots)
    assert slots == sorted(set(slots))
    assert len(slots) <= max_catchup
    if catchup != "all":
        assert len(slots) <= 1
    if catchup == "none" and slots:
        assert (now - slots[0]).total_seconds() < ON_TIME_S
    everything = due_slots(cron, "Europe/Paris", after, now, "all", 10**6)
    if catchup == "latest" and everything:
        assert slots == everything[-1:]


def test_time_zone_and_dst_are_real() -> None:
    # 09:00 in Paris is 08:00 UTC in winter and 07:00 UTC in summer.
    winter = due_slots(
        "0 9 * * *",
        "Europe/Paris",
        datetime(2026, 1, 10, tzinfo=UTC),
        datetime(2026, 1, 11, tzinfo=UTC),
        "all",
        10,
    )
    summer = due_slots(
        "0 9 * * *",
        "Europe/Paris",
        datetime(2026, 7, 10, tzinfo=UTC),
        datetime(2026, 7, 11, tzinfo=UTC),
        "all",
        10,
    )
    assert [s.hour for s in winter] == [8] and [s.hour for s in summer] == [7]


def _add(
    space: Space,
    name: str,
    catchup: str,
    max_catchup: int = 100,
    overlap: str = "skip",
    minutes_ago: int = 30,
    flow: str = "'SELECT 1'",
) -> None:
    client = space.client()
    client.schedule_add(
        name, "* * * * *", "UTC", {"kind": "flow", "flow": flow}, catchup, max_catchup, overlap
    )
    space.query(
        "UPDATE {state}.schedules SET created_at = now() - make_interval(mins => %s) WHERE name = %s",
        (minutes_ago, name),
    )


async def _fire(space: Space, clock: datetime | None = None) -> list[str]:
    async with await psycopg.AsyncConnection.connect(space.dsn, autocommit=True) as conn:
        return await fire_due_schedules(conn, Queries(space.schema), (lambda: clock) if clock else None)


def test_four_workers_racing_fire_each_slot_once(space: Space) -> None:
    _add(space, "every_minute", "all", minutes_ago=30)

    async def race() -> list[list[str]]:
        return list(await asyncio.gather(*[_fire(space) for _ in range(4 * 5)]))

    created = [run for batch in asyncio.run(race()) for run in batch]
    slots = space.query("SELECT run_key FROM {state}.runs WHERE flow_name = 'schedule:every_minute'")
    assert len(slots) == len({s[0] for s in slots}) == len(created)
    assert 29 <= len(slots) <= 31  # one run per slot of the last 30 minutes, no duplicates
    assert asyncio.run(_fire(space)) == []  # nothing left to fire


def test_catchup_latest_fires_one_and_none_fires_only_on_time(space: Space) -> None:
    _add(space, "latest", "latest", minutes_ago=45)
    _add(space, "none", "none", minutes_ago=45)
    now = datetime.now(UTC)
    asyncio.run(_fire(space, now))
    counts = dict(space.query("SELECT flow_name, count(*) FROM {state}.runs GROUP BY 1"))
    assert counts["schedule:latest"] == 1
    on_time = (now - now.replace(second=0, microsecond=0)).total_seconds() < ON_TIME_S
    assert counts.get("schedule:none", 0) == (1 if on_time else 0)
    # A slot that is due later fires once, whatever the policy.
    later = now + timedelta(minutes=1)
    space.query("UPDATE {state}.runs SET status = 'completed'")
    asyncio.run(_fire(space, later))
    counts = dict(space.query("SELECT flow_name, count(*) FROM {state}.runs GROUP BY 1"))
    assert counts["schedule:latest"] == 2


def test_overlap_skip_records_the_skipped_slot_on_the_blocking_run(space: Space) -> None:
    _add(space, "busy", "latest", minutes_ago=5)
    now = datetime.now(UTC)
    asyncio.run(_fire(space, now))
    assert space.query("SELECT count(*) FROM {state}.runs") == [(1,)]  # pending, never run
    asyncio.run(_fire(space, now + timedelta(minutes=2)))
    assert space.query("SELECT count(*) FROM {state}.runs") == [(1,)]
    skipped = space.query("SELECT detail ->> 'reason' FROM {state}.events WHERE kind = 'slot_skipped'")
    assert skipped and "overlap=skip" in str(skipped[0][0])


def test_bad_schedule_input_is_refused_with_the_field_named(space: Space) -> None:
    client = space.client()
    with pytest.raises(ConfigError, match="invalid cron"):
        client.schedule_add("x", "every day", "UTC", {"kind": "flow", "flow": "'SELECT 1'"})
    with pytest.raises(ConfigError, match="unknown time zone"):
        client.schedule_add("x", "0 * * * *", "Mars/Olympus", {"kind": "flow", "flow": "'SELECT 1'"})


def test_worker_fires_and_runs_a_schedule(space: Space) -> None:
    from tests.integration.test_worker import wait_for, worker

    space.query("CREATE TABLE ticks(slot text)")
    _add(space, "tick", "latest", minutes_ago=3, flow="'INSERT INTO ticks VALUES (''{schedule_slot}'')'")
    w = worker(space, "--once")
    assert w.wait(timeout=60) == 0
    wait_for(lambda: space.query("SELECT count(*) FROM ticks") == [(1,)])
    slot = space.query("SELECT slot FROM ticks")[0][0]
    assert str(slot).endswith(":00+00:00")

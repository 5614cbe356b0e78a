"""Scheduled durable refreshes: cron slots fired exactly once, whatever the number of workers.

A schedule is claimed with ``FOR UPDATE SKIP LOCKED``; each due slot becomes a run whose key is
the slot's timestamp (unique per flow), and ``last_fired_slot`` moves in the same transaction.
So a slot is fired once even when workers race, crash mid-fire, or the clock is replayed.

Catch-up after downtime: ``all`` fires every missed slot (at most ``max_catchup``, the most
recent ones), ``latest`` fires only the most recent one, ``none`` fires a slot only if it is
on time (less than ``ON_TIME_S`` late). Overlap: with ``skip`` (the default), a slot whose
previous run is still unfinished is recorded as skipped; with ``allow`` it runs alongside.
"""

from __future__ import annotations

import logging
import zoneinfo
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import psycopg
from croniter import croniter
from psycopg.types.json import Jsonb

from dbt_durable.errors import ConfigError
from dbt_durable.graph.build import compile_flow
from dbt_durable.store.queries import Queries
from dbt_durable.store.runs import build_run_params, new_run_params

log = logging.getLogger("dbt_durable.schedules")

ON_TIME_S = 60.0
CATCHUP = ("none", "latest", "all")
OVERLAP = ("skip", "allow")


def check_schedule(cron: str, tz: str, catchup: str, overlap: str = "skip") -> None:
    """Raise :class:`ConfigError` naming the bad field."""
    if not croniter.is_valid(cron):
        raise ConfigError(f"invalid cron expression {cron!r} (5 fields: minute hour day month weekday)")
    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"unknown time zone {tz!r} (use an IANA name such as Europe/Paris)") from None
    if catchup not in CATCHUP:
        raise ConfigError(f"--catchup must be one of {', '.join(CATCHUP)}, got {catchup!r}")
    if overlap not in OVERLAP:
        raise ConfigError(f"--overlap must be one of {', '.join(OVERLAP)}, got {overlap!r}")


def due_slots(
    cron: str, tz: str, after: datetime, now: datetime, catchup: str, max_catchup: int
) -> list[datetime]:
    """Slots in (after, now] to fire under the catch-up policy, oldest first, in UTC."""
    zone = zoneinfo.ZoneInfo(tz)
    it = croniter(cron, after.astimezone(zone))
    slots: list[datetime] = []
    while True:
        slot: datetime = it.get_next(datetime).astimezone(UTC)
        if slot > now:
            break
        slots.append(slot)
        if len(slots) > max(max_catchup, 1) * 4 + 1000:
            slots = slots[-max(max_catchup, 1) :]  # keep memory bounded over long downtime
    if not slots:
        return []
    if catchup == "all":
        return slots[-max(max_catchup, 1) :]
    if catchup == "latest":
        return slots[-1:]
    latest = slots[-1]
    return [latest] if (now - latest).total_seconds() < ON_TIME_S else []


def schedule_flow_name(name: str, target: dict[str, Any]) -> str:
    return str(target.get("flow_name") or f"schedule:{name}")


async def fire_due_schedules(
    conn: psycopg.AsyncConnection, q: Queries, clock: Callable[[], datetime] | None = None
) -> list[str]:
    """Fire every due slot of the login's unpaused schedules; returns the created run ids.

    Each schedule fires in a savepoint of its own: a schedule that cannot fire (a bad cron,
    time zone or flow) is paused with its error in ``last_error`` and never stops a worker.
    The runs are submitted by the login, which owns the schedule, so they run as its owner.
    """
    now = clock() if clock else datetime.now(UTC)
    created: list[str] = []
    async with conn.transaction():
        cur = await conn.execute(q.due_schedules)
        for name, cron, tz, target, catchup, max_catchup, last, made, overlap in await cur.fetchall():
            try:
                async with conn.transaction():
                    created += await _fire(
                        conn, q, name, cron, tz, target, catchup, max_catchup, last or made, overlap, now
                    )
            except psycopg.OperationalError:
                raise
            except Exception as exc:  # a bad row must not stop the worker
                log.error("schedule %r cannot fire and is paused: %s", name, exc)
                await conn.execute(q.schedule_fired, (name, None, f"{type(exc).__name__}: {exc}"[:2000]))
    return created


async def _fire(
    conn: psycopg.AsyncConnection,
    q: Queries,
    name: str,
    cron: str,
    tz: str,
    target: dict[str, Any],
    catchup: str,
    max_catchup: int,
    after: datetime,
    overlap: str,
    now: datetime,
) -> list[str]:
    check_schedule(cron, tz, catchup, overlap)
    slots = due_slots(cron, tz, after, now, catchup, max_catchup)
    if not slots:
        return []
    flow_name = schedule_flow_name(name, target)
    busy = await (await conn.execute(q.unfinished_run, (flow_name,))).fetchone()
    if overlap == "skip" and busy:
        detail = {
            "schedule": name,
            "skipped": [s.isoformat() for s in slots],
            "reason": "previous run still unfinished (overlap=skip)",
        }
        await conn.execute(q.record_event, (busy[0], "slot_skipped", Jsonb(detail)))
        await conn.execute(q.schedule_fired, (name, slots[-1], None))
        return []
    created = []
    for slot in slots:
        run_id = await _create_slot_run(conn, q, name, flow_name, target, slot)
        if run_id:
            created.append(run_id)
    await conn.execute(q.schedule_fired, (name, slots[-1], None))
    return created


async def _create_slot_run(
    conn: psycopg.AsyncConnection,
    q: Queries,
    name: str,
    flow_name: str,
    target: dict[str, Any],
    slot: datetime,
) -> str | None:
    vars = {"schedule_slot": slot.isoformat(), "schedule_name": name}
    if target.get("kind") == "dbt_build":
        params = build_run_params(flow_name, slot.isoformat(), target, vars)
    else:
        flow = compile_flow(str(target["flow"]), f"schedule {name}")
        params = new_run_params(flow, flow_name, slot.isoformat(), vars)
    row = await (await conn.execute(q.create_run, params)).fetchone()
    return str(row[0]) if row and row[1] else None

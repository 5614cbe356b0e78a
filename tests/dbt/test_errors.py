"""Errors a dbt user sees: bad flows, bad --args, a changed flow, the wrong profile type."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.dbt.conftest import REPO, DbtProject, write_model

BAD = """{{ config(materialized='durable') }}
{% call dbt_durable.flow() %}
'SELECT 1'
  ~> 'SELECT 2' ~> nope('x')
{% endcall %}
"""


def test_flow_syntax_error_names_the_model_file_line_and_column(tiny: DbtProject) -> None:
    write_model(tiny, "bad", BAD)
    done = tiny.dbt("run")  # the flow is checked when the project is parsed
    assert done.returncode == 2
    assert "models/bad.sql:4:20: unknown function 'nope'" in done.stdout
    assert "^" in done.stdout
    # Nothing was written for the invalid flow.
    assert tiny.query(f"SELECT count(*) FROM pg_namespace WHERE nspname = '{tiny.space.schema}'") == [(0,)]


def test_unknown_args_list_the_accepted_keys(tiny: DbtProject) -> None:
    write_model(
        tiny, "ok", "{{ config(materialized='durable') }}{% call dbt_durable.flow() %}'SELECT 1'{% endcall %}"
    )
    done = tiny.dbt("run-operation", "durable_run", "--args", "{selekt: ok}")
    assert done.returncode == 1
    assert "unknown argument(s) selekt" in done.stdout
    for key in ("select", "vars", "fresh", "wait"):
        assert f"{key}:" in done.stdout


def test_failed_model_resumes_and_changed_flow_needs_fresh(tiny: DbtProject) -> None:
    tiny.space.query(f"CREATE SCHEMA IF NOT EXISTS {tiny.schema}")
    tiny.space.query(f"CREATE TABLE {tiny.schema}.gate (open int)")
    tiny.space.query(f"CREATE TABLE {tiny.schema}.hits (step text)")
    body = (
        "{{ config(materialized='durable') }}{% call dbt_durable.flow() %}"
        "'INSERT INTO {{ target.schema }}.hits VALUES (''one'')' ~> 'SELECT 1 / count(*) FROM {{ target.schema }}.gate'"
        " ~> 'INSERT INTO {{ target.schema }}.hits VALUES (''two'')'{% endcall %}"
    )
    write_model(tiny, "flaky", body)
    first = tiny.dbt("run")
    assert first.returncode == 1 and "division by zero" in first.stdout
    assert "failed at step models/flaky.sql:1:" in first.stdout and "(node 0.1)" in first.stdout
    tiny.space.query(f"INSERT INTO {tiny.schema}.gate VALUES (1)")
    second = tiny.dbt("run")
    assert second.returncode == 0 and "1 skipped" in second.stdout
    assert tiny.query(f"SELECT step FROM {tiny.schema}.hits ORDER BY step") == [("one",), ("two",)]
    # A new failure, then an edited flow: refused until a fresh start is asked for.
    tiny.space.query(f"DELETE FROM {tiny.schema}.gate")
    assert tiny.dbt("run").returncode == 1
    write_model(tiny, "flaky", body.replace("''two''", "''three''"))
    changed = tiny.dbt("run")  # only a not-completed step changed: the run continues with it
    assert changed.returncode == 1 and "division by zero" in changed.stdout
    tiny.space.query(f"INSERT INTO {tiny.schema}.gate VALUES (1)")
    fresh = tiny.dbt("run", "--vars", "{durable_fresh: true}")
    assert fresh.returncode == 0, fresh.stdout[-2000:]


def test_postgres_profile_gets_one_message_saying_what_to_change(tiny: DbtProject) -> None:
    profiles = (tiny.path / "profiles.yml").read_text().replace("type: durable", "type: postgres")
    profiles = "\n".join(x for x in profiles.splitlines() if not x.strip().startswith("durable_"))
    (tiny.path / "profiles.yml").write_text(profiles)
    (tiny.path / "packages.yml").write_text(f"packages:\n  - local: {REPO}\n")
    assert tiny.dbt("deps").returncode == 0
    done = tiny.dbt("run-operation", "durable_status")
    assert done.returncode == 1
    assert "change `type: postgres` to `type: durable`" in done.stdout


def test_dbt_debug_passes_and_version_lists_the_adapter(tiny: DbtProject) -> None:
    debug = tiny.dbt("debug")
    assert debug.returncode == 0, debug.stdout[-2000:]
    assert "durable_schema" in debug.stdout
    import subprocess

    import dbt.adapters.durable
    from dbt_durable.demo import _dbt

    if Path(dbt.adapters.durable.__file__).is_relative_to(REPO):
        pytest.skip("editable install: dbt --version lists only adapters installed in site-packages")
    version = subprocess.run(_dbt() + ["--version"], capture_output=True, text=True, env=tiny.env)
    assert "- durable:" in version.stdout, version.stdout


def test_durable_schedule_config_registers_the_model_schedule(tiny: DbtProject) -> None:
    write_model(
        tiny,
        "hourly",
        "{{ config(materialized='durable', durable_schedule='0 * * * *', "
        "durable_schedule_tz='Europe/Paris') }}{% call dbt_durable.flow() %}'SELECT 1'{% endcall %}",
    )
    done = tiny.dbt("run")
    assert done.returncode == 0, done.stdout[-2000:]
    rows = tiny.query(
        "SELECT name, cron, tz, target ->> 'flow_name', target ->> 'flow' FROM {state}.schedules"
    )
    relation = f'"postgres"."{tiny.schema}"."hourly"'
    assert rows == [(relation, "0 * * * *", "Europe/Paris", relation, "'SELECT 1'")]

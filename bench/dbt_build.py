"""Durable dbt builds: ``client.start_build`` + ``client.resume`` vs a plain ``dbt build``."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from psycopg import conninfo

from bench.db import drop_schemas
from bench.pending import missing
from bench.result import Bench, ScenarioResult
from bench.scenarios import expect
from bench.stats import paired_ratios, timed
from dbt_durable.api import Client
from dbt_durable.config import Settings

METRICS = ["dbt_build_overhead"]
TARGET_SCHEMA = "bench_dbt"


def _profile(dsn: str) -> str:
    p = conninfo.conninfo_to_dict(dsn)

    def q(value: object) -> str:
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'

    return (
        "bench:\n  target: bench\n  outputs:\n    bench:\n      type: postgres\n"
        f"      host: {q(p.get('host') or 'localhost')}\n      port: {int(p.get('port') or 5432)}\n"
        f"      user: {q(p.get('user') or 'postgres')}\n      password: {q(p.get('password') or '')}\n"
        f"      dbname: {q(p.get('dbname') or 'postgres')}\n      schema: {TARGET_SCHEMA}\n      threads: 4\n"
    )


@contextmanager
def project(dsn: str, models: int) -> Iterator[Path]:
    """A dbt project of ``models`` models: chains of tables with views hanging off them."""
    folder = Path(tempfile.mkdtemp(prefix="dbt-durable-bench-project-"))
    try:
        (folder / "models").mkdir()
        (folder / "dbt_project.yml").write_text(
            "name: bench_project\nversion: '1.0'\nconfig-version: 2\nprofile: bench\nmodel-paths: [models]\n"
        )
        (folder / "profiles.yml").write_text(_profile(dsn))
        for i in range(models):
            if i == 0:
                body = "{{ config(materialized='table') }}\nselect g as id from generate_series(1, 1000) g"
            elif i % 2:
                body = f"{{{{ config(materialized='view') }}}}\nselect id from {{{{ ref('m{i - 1}') }}}}"
            else:
                body = f"{{{{ config(materialized='table') }}}}\nselect id + 1 as id from {{{{ ref('m{i - 1}') }}}}"
            (folder / "models" / f"m{i}.sql").write_text(body + "\n")
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def dbt_build(folder: Path) -> None:
    """A plain ``dbt build`` of ``folder``, as the durable build runs it (same executable)."""
    from dbt_durable.bridge.build import dbt_command

    cmd = dbt_command() + ["build", "--project-dir", str(folder), "--profiles-dir", str(folder)]
    env = dict(os.environ, DBT_SEND_ANONYMOUS_USAGE_STATS="false")
    done = subprocess.run(cmd, env=env, cwd=folder, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"dbt build failed ({done.returncode}): {done.stdout[-1500:]}")


def dbt_build_overhead(b: Bench) -> ScenarioResult:
    n = b.sizes.dbt_models
    res = ScenarioResult("dbt_build", params={"models": n, "threads": 4})
    if missing(res, "build", METRICS):
        b.log("[dbt_build] dbt_build_overhead: null (not implemented yet)")
        return res
    if n == 0:
        res.skip(METRICS, f"skipped in --{b.sizes.mode}: dbt's own start-up takes seconds per build")
        b.log(f"[dbt_build] {res.reasons[METRICS[0]]}")
        return res
    state = "bench_dbt_state"
    client = Client(Settings(dsn=b.dsn, schema=state))
    try:
        with project(b.dsn, n) as folder:
            target = {"args": [], "project_dir": str(folder), "profiles_dir": str(folder)}
            if b.sizes.dbt_warmup:
                dbt_build(folder)  # dbt's partial-parse cache, the schema, the OS's file cache
            for rep in range(b.sizes.reps):
                sides = ["durable", "plain"] if rep % 2 == 0 else ["plain", "durable"]
                for side in sides:
                    if side == "plain":
                        res.sample("dbt_build_s", timed(lambda: dbt_build(folder))[0])
                        continue

                    def durable(name: str = f"bench_build_{rep}") -> None:
                        started = client.start_build(target, name)
                        expect(client.resume(started.run_id), "completed", n)

                    res.sample("durable_build_s", timed(durable)[0])
                d, p = res.stats["durable_build_s"].values[-1], res.stats["dbt_build_s"].values[-1]
                b.log(
                    f"[dbt_build] rep {rep + 1}/{b.sizes.reps}: durable build {d:.2f}s, "
                    f"dbt build {p:.2f}s, ratio {d / p:.3f}"
                )
    finally:
        drop_schemas(b.dsn, state, TARGET_SCHEMA)
    res.stats["ratio"] = paired_ratios(res.stats["durable_build_s"], res.stats["dbt_build_s"])
    res.metrics["dbt_build_overhead"] = res.stats["ratio"].median
    return res

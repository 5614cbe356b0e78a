"""Durable dbt builds (``client.start_build`` + ``client.resume``) vs a plain ``dbt build``, per size."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from psycopg import conninfo

from bench.db import drop_schemas
from bench.pending import missing
from bench.result import Bench, ScenarioResult
from bench.scenarios import expect
from bench.sizes import Sizes
from bench.stats import Samples, paired_ratios, sides, timed
from dbt_durable.api import Client
from dbt_durable.config import Settings

METRIC = "dbt_build_overhead"  # the worst (largest) ratio over the project sizes
TARGET_SCHEMA = "bench_dbt"
STATE_SCHEMA = "bench_dbt_state"


def metrics(sizes: Sizes) -> list[str]:
    """The keys this scenario reports in this mode: the headline, then one per project size."""
    return [METRIC, *(f"{METRIC}_{models}" for models in sizes.dbt_models)]


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


def _durable_build(client: Client, target: dict[str, Any], name: str, models: int) -> None:
    """``client.start_build`` + ``client.resume``: one dbt subprocess, a checkpoint per model."""
    started = client.start_build(target, name)
    expect(client.resume(started.run_id), "completed", models)


def _pairs(b: Bench, res: ScenarioResult, models: int) -> Samples:
    """``dbt_reps`` side-by-side pairs on a fresh ``models``-model project; the per-pair ratios."""
    drop_schemas(b.dsn, STATE_SCHEMA, TARGET_SCHEMA)  # every size starts from empty schemas
    client = Client(Settings(dsn=b.dsn, schema=STATE_SCHEMA))
    durable_key, plain_key = f"durable_build_s_{models}", f"dbt_build_s_{models}"
    with project(b.dsn, models) as folder:
        target = {"args": [], "project_dir": str(folder), "profiles_dir": str(folder)}
        if b.sizes.dbt_warmup:
            dbt_build(folder)  # dbt's partial-parse cache, the schema, the OS's file cache
        for rep in range(b.sizes.dbt_reps):
            for side in sides(rep, "durable", "plain"):
                if side == "plain":
                    res.sample(plain_key, timed(lambda: dbt_build(folder))[0])
                else:
                    durable = partial(_durable_build, client, target, f"bench_build_{models}_{rep}", models)
                    res.sample(durable_key, timed(durable)[0])
            d, p = res.stats[durable_key].values[-1], res.stats[plain_key].values[-1]
            b.log(
                f"[dbt_build] {models} models, rep {rep + 1}/{b.sizes.dbt_reps}: durable build {d:.2f}s, "
                f"dbt build {p:.2f}s, ratio {d / p:.3f}"
            )
    return paired_ratios(res.stats[durable_key], res.stats[plain_key])


def dbt_build_overhead(b: Bench) -> ScenarioResult:
    """Durable build ÷ plain ``dbt build`` per project size; the headline is the worst size."""
    keys = metrics(b.sizes)
    res = ScenarioResult(
        "dbt_build", params={"models": list(b.sizes.dbt_models), "threads": 4, "reps": b.sizes.dbt_reps}
    )
    if missing(res, "build", keys):
        b.log(f"[dbt_build] {METRIC}: null (not implemented yet)")
        return res
    if not b.sizes.dbt_models:
        res.skip(keys, f"skipped in --{b.sizes.mode}: dbt's own start-up takes seconds per build")
        b.log(f"[dbt_build] {res.reasons[METRIC]}")
        return res
    try:
        for models in b.sizes.dbt_models:
            ratios = _pairs(b, res, models)
            res.stats[f"ratio_{models}"] = ratios
            res.metrics[f"{METRIC}_{models}"] = ratios.median
    finally:
        drop_schemas(b.dsn, STATE_SCHEMA, TARGET_SCHEMA)
    res.metrics[METRIC] = max(res.stats[f"ratio_{models}"].median for models in b.sizes.dbt_models)
    return res

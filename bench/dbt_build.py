"""Durable dbt builds (``client.start_build`` + ``client.resume``) vs a plain ``dbt build``, per size
of a generated project with seeds and data tests as well as models."""

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


def seeds_for(models: int) -> int:
    """Seeds in a project of ``models`` models: one per ten models, at least one."""
    return max(1, models // 10)


def nodes_for(models: int) -> int:
    """Every node ``dbt build`` runs in the generated project: models, seeds and two tests
    (``unique``, ``not_null``) per table model."""
    tables = sum(1 for i in range(models) if i == 0 or i % 2 == 0)
    return models + seeds_for(models) + 2 * tables


@contextmanager
def project(dsn: str, models: int) -> Iterator[Path]:
    """A dbt project of ``models`` models (chains of tables with views hanging off them), its
    seeds (the first model unions them) and data tests on every table, as in a real project."""
    folder = Path(tempfile.mkdtemp(prefix="dbt-durable-bench-project-"))
    try:
        (folder / "models").mkdir()
        (folder / "seeds").mkdir()
        (folder / "dbt_project.yml").write_text(
            "name: bench_project\nversion: '1.0'\nconfig-version: 2\nprofile: bench\nmodel-paths: [models]\n"
            "seed-paths: [seeds]\n"
        )
        (folder / "profiles.yml").write_text(_profile(dsn))
        seeds = seeds_for(models)
        for k in range(seeds):
            rows = "\n".join(f"{k * 1000 + j},name {j}" for j in range(1, 101))
            (folder / "seeds" / f"s{k}.csv").write_text("id,name\n" + rows + "\n")
        tests = []
        for i in range(models):
            if i == 0:
                union = " union all ".join(f"select id from {{{{ ref('s{k}') }}}}" for k in range(seeds))
                body = f"{{{{ config(materialized='table') }}}}\nselect g * 100000 + s.id as id from ({union}) s, generate_series(1, 10) g"
            elif i % 2:
                body = f"{{{{ config(materialized='view') }}}}\nselect id from {{{{ ref('m{i - 1}') }}}}"
            else:
                body = f"{{{{ config(materialized='table') }}}}\nselect id + 1 as id from {{{{ ref('m{i - 1}') }}}}"
            if i == 0 or i % 2 == 0:
                tests.append(
                    f"  - name: m{i}\n    columns:\n      - name: id\n        data_tests: [unique, not_null]\n"
                )
            (folder / "models" / f"m{i}.sql").write_text(body + "\n")
        (folder / "models" / "schema.yml").write_text("version: 2\nmodels:\n" + "".join(tests))
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
    """``client.start_build`` + ``client.resume``: one dbt subprocess, a checkpoint per node."""
    started = client.start_build(target, name)
    expect(client.resume(started.run_id), "completed", nodes_for(models))


def _pairs(b: Bench, res: ScenarioResult, models: int) -> Samples:
    """``dbt_reps`` side-by-side pairs on a fresh ``models``-model project (with its seeds and
    tests); the per-pair ratios."""
    drop_schemas(b.dsn, STATE_SCHEMA, TARGET_SCHEMA)  # every size starts from empty schemas
    durable_key, plain_key = f"durable_build_s_{models}", f"dbt_build_s_{models}"
    with project(b.dsn, models) as folder:
        client = Client(Settings(dsn=b.dsn, schema=STATE_SCHEMA, dbt_projects=(str(folder),)))
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
                f"[dbt_build] {models} models ({nodes_for(models)} nodes), rep {rep + 1}/{b.sizes.dbt_reps}: durable build {d:.2f}s, "
                f"dbt build {p:.2f}s, ratio {d / p:.3f}"
            )
    return paired_ratios(res.stats[durable_key], res.stats[plain_key])


def dbt_build_overhead(b: Bench) -> ScenarioResult:
    """Durable build ÷ plain ``dbt build`` per project size; the headline is the worst size."""
    keys = metrics(b.sizes)
    res = ScenarioResult(
        "dbt_build",
        params={
            "models": list(b.sizes.dbt_models),
            "nodes": [nodes_for(m) for m in b.sizes.dbt_models],
            "threads": 4,
            "reps": b.sizes.dbt_reps,
        },
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

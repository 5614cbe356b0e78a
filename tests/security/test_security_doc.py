"""docs/SECURITY.md's set-up, run as written (with this test's roles and database): the owner
migrates and grants, two analysts queue runs, and the documented worker command runs each on
its own login, so a step's RESET ROLE stays its submitter."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from tests.security.conftest import Tenants

DOC = Path(__file__).resolve().parents[2] / "docs" / "SECURITY.md"
DOC_ROLES = {"dd_owner": "owner", "dd_worker": "worker", "analyst_a": "a", "analyst_b": "b"}


def _blocks(lang: str) -> list[str]:
    setup = DOC.read_text().split("## Setting it up", 1)[1].split("\n## ", 1)[0]
    return [re.sub(r"^ {3}", "", b, flags=re.M) for b in re.findall(rf"```{lang}\n(.*?)```", setup, re.S)]


def _command(t: Tenants, block: str) -> list[str]:
    text = re.sub(r"#.*", "", block).replace("\\\n", " ")
    for doc_role, who in DOC_ROLES.items():
        text = text.replace(f"postgresql://{doc_role}@db/analytics", t.dsns[who])
    argv = shlex.split(text)
    assert argv[0] == "dbt-durable"
    return [sys.executable, "-m", "dbt_durable", *argv[1:]]


def test_the_documented_set_up_isolates_each_role(tenants: Tenants) -> None:
    t = tenants
    env = {
        **{k: v for k, v in os.environ.items() if k != "DBT_DURABLE_FAULT"},
        "DBT_DURABLE_SCHEMA": t.schema,
    }
    migrate, worker = _blocks("bash")
    assert subprocess.run(_command(t, migrate), env=env, capture_output=True, timeout=120).returncode == 0
    (grants,) = _blocks("sql")
    for doc_role, who in DOC_ROLES.items():
        grants = grants.replace(f"'{doc_role}'", f"'{t.role(who)}'")
    t.query("owner", grants.replace("dbt_durable.", "{state}."))
    runs = {
        who: t.client(who)
        .start(t.flow(f"'RESET ROLE' ~> 'INSERT INTO {{{who}}}.seen(label) VALUES (''doc'')'"), wait=False)
        .run_id
        for who in ("a", "b")
    }
    done = subprocess.run(
        [*_command(t, worker), "--once"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    for who, run_id in runs.items():
        assert t.status(run_id) == "completed"
        assert t.admin(f"SELECT label, sess, cur FROM {{{who}}}.seen") == [("doc", t.role(who), t.role(who))]

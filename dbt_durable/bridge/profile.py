"""Reading a dbt project's connection through dbt's own profile loader (env_var() and all)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields
from pathlib import Path

from dbt_durable.errors import ConfigError


@dataclass(frozen=True)
class DbtTarget:
    dsn: str
    schema: str
    concurrency: int
    description: str  # "profile 'x', target 'y'" for messages


def find_project(project_dir: str | None) -> Path | None:
    """The dbt project folder: ``project_dir``, else the current folder if it has dbt_project.yml."""
    folder = Path(project_dir) if project_dir else Path.cwd()
    project_file = folder / "dbt_project.yml"
    # A package without a profile (like dbt-durable's own root) is not a project to run.
    if project_file.exists() and re.search(r"^profile\s*:", project_file.read_text(), re.M):
        return folder
    if project_dir:
        raise ConfigError(f"--project-dir {project_dir}: no dbt_project.yml with a profile there")
    return None


def _profiles_dir(profiles_dir: str | None, project: Path) -> str:
    if profiles_dir:
        return profiles_dir
    if os.environ.get("DBT_PROFILES_DIR"):
        return os.environ["DBT_PROFILES_DIR"]
    for folder in (Path.cwd(), project):
        if (folder / "profiles.yml").exists():
            return str(folder)
    return str(Path.home() / ".dbt")


def load_target(project: Path, profiles_dir: str | None, target: str | None) -> DbtTarget:
    """The DSN and durable options of the project's profile and target, as dbt would read them."""
    from argparse import Namespace

    from dbt.config.profile import Profile, read_profile
    from dbt.config.project import load_raw_project
    from dbt.config.renderer import ProfileRenderer
    from dbt.flags import set_from_args
    from dbt_common.context import set_invocation_context
    from dbt_common.exceptions import DbtBaseException

    from dbt.adapters.durable.connections import DurableCredentials

    folder = _profiles_dir(profiles_dir, project)
    set_from_args(Namespace(PROFILES_DIR=folder), None)
    set_invocation_context(dict(os.environ))  # what env_var() reads
    try:
        raw_project = load_raw_project(str(project))
        profile_name = raw_project.get("profile")
        raw_profiles = read_profile(folder)
        profile = Profile.from_raw_profiles(
            raw_profiles=raw_profiles,
            profile_name=str(profile_name),
            renderer=ProfileRenderer({}),
            target_override=target,
        )
    except DbtBaseException as exc:
        raise ConfigError(f"cannot read the dbt profile (profiles dir {folder}): {exc}") from None
    creds = profile.credentials
    where = f"profile {profile.profile_name!r}, target {profile.target_name!r}"
    if not isinstance(creds, DurableCredentials):
        if creds.type != "postgres":
            raise ConfigError(f"{where} has type {creds.type!r}; dbt-durable needs type: durable or postgres")
        creds = DurableCredentials(**{f.name: getattr(creds, f.name) for f in fields(creds)})
    return DbtTarget(creds.durable_dsn(), creds.durable_schema, creds.durable_concurrency, where)

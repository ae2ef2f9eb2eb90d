"""``load_plan(path)``: a validated, frozen Plan with paths resolved against the plan's folder,
or :class:`~bcdr.errors.PlanInvalid` listing every problem with file:line:column."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

from bcdr.errors import PlanInvalid, PlanProblem, UsageError
from bcdr.plan.checks import check_plan
from bcdr.plan.model import Plan
from bcdr.plan.schema import build
from bcdr.plan.source import MAX_BYTES, read_source


def load_plan(path: str | Path) -> Plan:
    """Raises PlanInvalid (problems in the file) or UsageError (the file cannot be read)."""
    file = Path(path)
    try:
        with open(file, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise UsageError(
            "no such plan file",
            where=str(file),
            hint="`bcdr plan init --out FILE` writes a sample plan",
        ) from None
    except IsADirectoryError:
        raise UsageError("this is a folder, not a plan file", where=str(file)) from None
    except OSError as exc:
        raise UsageError(f"cannot read the plan: {exc.strerror}", where=str(file)) from None
    return parse_plan(raw, file)


def parse_plan(raw: bytes, file: Path) -> Plan:
    src = read_source(str(file), raw)
    plan = build(src, Plan, src.data) if not src.problems else None
    if plan is not None and not src.problems:
        plan = dataclasses.replace(
            plan, file=file.absolute(), digest=hashlib.sha256(raw).hexdigest()
        )
        check_plan(src, plan)
    if src.problems or plan is None:
        problems = src.problems or [PlanProblem(str(file), 1, 1, "", "the plan is not valid")]
        raise PlanInvalid(sorted(problems, key=lambda p: (p.line, p.column)))
    return resolve_paths(plan)


def _resolve(base: Path, p: str) -> str:
    return str((base / Path(p).expanduser()).resolve()) if not Path(p).is_absolute() else p


def resolve_paths(plan: Plan) -> Plan:
    base = plan.folder
    repos = {}
    for name, repo in plan.repositories.items():
        url = repo.url
        if "://" not in url:
            url = _resolve(base, url)
        enc = repo.encryption
        if enc is not None and enc.password_file is not None:
            enc = dataclasses.replace(enc, password_file=_resolve(base, enc.password_file))
        repos[name] = dataclasses.replace(repo, url=url, encryption=enc)
    backups = {
        name: dataclasses.replace(job, paths=tuple(_resolve(base, p) for p in job.paths))
        for name, job in plan.backups.items()
    }
    drills = {
        name: dataclasses.replace(
            d, scratch=_resolve(base, d.scratch) if d.scratch is not None else None
        )
        for name, d in plan.drills.items()
    }
    return dataclasses.replace(plan, repositories=repos, backups=backups, drills=drills)

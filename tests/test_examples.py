"""What a new user copies: the example plans validate, and every subcommand's --help ends with
examples (issue 35, point 4)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bcdr.cli.main import build_parser
from tests.conftest import Cli

ROOT = Path(__file__).resolve().parent.parent
PLANS = sorted((ROOT / "plans").rglob("*.yaml"))


def test_there_are_example_plans_for_an_azure_team_a_slurm_cluster_and_a_laptop() -> None:
    names = {p.name for p in PLANS}
    assert {"ml-team-azure.yaml", "slurm-cluster.yaml", "laptop.yaml"} <= names


@pytest.mark.parametrize("plan", PLANS, ids=lambda p: p.name)
def test_every_plan_shipped_validates(cli: Cli, plan: Path) -> None:
    r = cli("validate", plan)
    assert r.code == 0, r.out + r.err
    assert "valid" in r.out


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    return build_parser()[1]


@pytest.mark.parametrize("name", sorted(_subcommands()))
def test_every_subcommand_help_ends_with_examples(name: str) -> None:
    text = _subcommands()[name].format_help()
    start = text.lower().find("example", text.find("options:"))
    assert start > 0, text
    assert "bcdr " in text[start:], text[start:]


@pytest.mark.parametrize("name", sorted(_subcommands()))
def test_a_command_parsed_alone_has_every_option_it_has_among_all(name: str) -> None:
    """A command's arguments are parsed by its parser built alone (the others are not, to save
    their start-up); it must be the very parser the full build makes."""
    alone = build_parser(only=name)[1]
    assert set(alone) == {name}
    assert alone[name].format_help() == _subcommands()[name].format_help()

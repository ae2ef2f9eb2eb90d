"""Shell completions (issue 35): made from the parser, so every command and option is in them.
The bash script is loaded into a real bash and asked to complete."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_process


def _complete_in_bash(script: Path, words: list[str]) -> list[str]:
    words_text = " ".join(f"'{w}'" for w in words)
    program = (
        f"source {script}; COMP_WORDS=({words_text}); COMP_CWORD={len(words) - 1}; "
        f'COMP_LINE="{" ".join(words)}"; COMP_POINT=${{#COMP_LINE}}; '
        '_shtab_bcdr; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    proc = subprocess.run(["bash", "-c", program], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_bash_completes_commands_and_options(tmp_path: Path) -> None:
    r = run_process("completion", "bash")
    assert r.code == 0, r.err
    script = tmp_path / "bcdr.bash"
    script.write_text(r.out)
    assert {"backup", "bcdr"} & set(_complete_in_bash(script, ["bcdr", "ba"])) == {"backup"}
    assert "--immutable-days" in _complete_in_bash(script, ["bcdr", "backup", "--immu"])
    assert {"add", "remove", "list"} <= set(_complete_in_bash(script, ["bcdr", "hold", ""]))


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_zsh_and_fish_scripts_name_every_command(shell: str) -> None:
    r = run_process("completion", shell)
    assert r.code == 0, r.err
    for name in ("backup", "restore", "hold", "diff", "completion"):
        assert name in r.out
    if shell == "fish":
        assert "complete -c bcdr" in r.out
    if shutil.which(shell):  # syntax, where the shell is here
        proc = subprocess.run([shell, "-n"], input=r.out, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr

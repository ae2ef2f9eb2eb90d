"""``bcdr schedule install|remove``: a systemd service + timer, or a crontab line, that call
``bcdr tick`` every few minutes. ``bcdr tick`` itself decides what is due, so the timer only
needs to fire often; it never encodes the plan's schedule.

Units and lines are text functions (printable with ``--print``); writing them and calling
``systemctl`` / ``crontab`` is separate, so each is testable on its own.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bcdr.errors import BcdrError, UsageError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,80}$")
MARK = "# bcdr-schedule:"


@dataclass(frozen=True)
class TickCommand:
    plans: tuple[Path, ...]  # absolute
    every_minutes: int = 5
    state_dir: Path | None = None
    metrics_textfile: Path | None = None
    log_format: str = "json"

    def __post_init__(self) -> None:
        if not 1 <= self.every_minutes <= 59:
            raise UsageError(
                f"--every {self.every_minutes}: bcdr tick must run every 1 to 59 minutes",
                hint="5 is a good default; tick only runs what is due",
            )

    def argv(self) -> list[str]:
        # --quiet: cron mails whatever a job prints, so only what went wrong is printed
        argv = [sys.executable, "-m", "bcdr", "tick", *map(str, self.plans), "--quiet"]
        if self.state_dir:
            argv += ["--state-dir", str(self.state_dir)]
        if self.metrics_textfile:
            argv += ["--metrics-textfile", str(self.metrics_textfile)]
        argv += ["--log-format", self.log_format]
        return argv


def unit_name(name: str | None, plan_names: list[str]) -> str:
    """``bcdr-<plan>[-<plan>...]`` unless ``--name`` says otherwise."""
    text = name or "bcdr-" + "-".join(plan_names)
    if not NAME_RE.fullmatch(text):
        raise UsageError(
            f"{text!r} cannot name a systemd unit or crontab entry",
            hint="use --name with letters, digits, '-', '_' or '.'",
        )
    return text


def _one_line(values: list[str]) -> None:
    """Refuse a value no unit setting or crontab line can hold: a newline (it would start a
    setting or a cron entry of its own) or another control character."""
    for value in values:
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise UsageError(
                f"{value!r} holds a control character (a newline?), which a systemd unit or a "
                "crontab line cannot hold",
                hint="rename the file or folder, or choose another path",
            )


def systemd_word(arg: str) -> str:
    """One ``ExecStart=`` argument as systemd reads it back whole (systemd.syntax(7),
    systemd.service(5)): double-quoted, backslash and quote escaped, ``%`` doubled (else a
    specifier) and ``$`` doubled (else a variable)."""
    text = arg.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + text.replace("%", "%%").replace("$", "$$") + '"'


def systemd_units(
    name: str, cmd: TickCommand, *, user: bool, env_file: Path | None = None
) -> dict[str, str]:
    """``{"NAME.service": text, "NAME.timer": text}``. Every path is quoted or escaped so
    that the unit says exactly it; one with a control character is refused."""
    _one_line([*cmd.argv(), *([str(env_file)] if env_file else [])])
    if env_file and any(c.isspace() for c in str(env_file)):
        raise UsageError(
            f"--env-file {str(env_file)!r}: systemd's EnvironmentFile= takes a path without spaces",
            hint="move the file to a path without spaces",
        )
    plans = " ".join(str(p) for p in cmd.plans).replace("%", "%%")
    env = f"EnvironmentFile={str(env_file).replace('%', '%%')}\n" if env_file else ""
    service = (
        "[Unit]\n"
        f"Description=bcdr: run due backup jobs of {plans}\n"
        "Wants=network-online.target\n"
        "After=network-online.target\n\n"
        "[Service]\n"
        "Type=oneshot\n"
        f"{env}"
        f"ExecStart={' '.join(map(systemd_word, cmd.argv()))}\n"
        # SIGTERM stops the current job cleanly (nothing half-committed); give it time.
        "TimeoutStopSec=120\n"
        "Nice=10\n"
        "IOSchedulingClass=idle\n"
    )
    if not user:
        service += "PrivateTmp=true\n"
    timer = (
        "[Unit]\n"
        f"Description=bcdr: tick every {cmd.every_minutes} minutes ({name})\n\n"
        "[Timer]\n"
        f"OnCalendar=*:0/{cmd.every_minutes}\n"
        "AccuracySec=30s\n"
        "Persistent=true\n\n"
        "[Install]\n"
        "WantedBy=timers.target\n"
    )
    return {f"{name}.service": service, f"{name}.timer": timer}


def unit_dir(user: bool) -> Path:
    if user:
        base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
        return base / "systemd" / "user"
    return Path("/etc/systemd/system")


def cron_line(name: str, cmd: TickCommand, log_file: Path | None = None) -> str:
    """The crontab entry: the command quoted for /bin/sh, and every ``%`` escaped (crontab(5)
    turns an unescaped one into a newline and feeds the rest to the command's stdin)."""
    _one_line([*cmd.argv(), *([str(log_file)] if log_file else [])])
    out = f" >> {shlex.quote(str(log_file))} 2>&1" if log_file else ""
    command = f"{shlex.join(cmd.argv())}{out}".replace("%", "\\%")
    return f"*/{cmd.every_minutes} * * * * {command} {MARK}{name}"


def _run(argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise BcdrError(
            f"{argv[0]} is not installed on this machine",
            hint="use --print and install the output by hand, or the other scheduler "
            "(--cron / --systemd)",
        ) from None


def read_crontab(crontab: str = "crontab") -> str:
    proc = _run([crontab, "-l"])
    if proc.returncode != 0:
        if "no crontab" in proc.stderr.lower():
            return ""
        raise BcdrError(f"`crontab -l` failed: {proc.stderr.strip()[:200]}")
    return proc.stdout


def write_crontab(text: str, crontab: str = "crontab") -> None:
    proc = _run([crontab, "-"], stdin=text)
    if proc.returncode != 0:
        raise BcdrError(f"`crontab -` refused the new table: {proc.stderr.strip()[:200]}")


def with_line(table: str, name: str, line: str | None) -> str:
    """The crontab ``table`` with this entry replaced by ``line`` (removed when None); every
    other line is kept as it was."""
    kept = [ln for ln in table.splitlines() if not ln.rstrip().endswith(f"{MARK}{name}")]
    if line is not None:
        kept.append(line)
    return "\n".join(kept) + "\n" if kept else ""


def systemctl(user: bool, *args: str) -> str | None:
    """Run systemctl; None when it worked, else its error (one line)."""
    proc = _run(["systemctl", *(["--user"] if user else []), *args])
    if proc.returncode != 0:
        return (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
    return None


# --- installing and removing: what `bcdr schedule install|remove` does ---------------------


def install_cron(
    name: str, cmd: TickCommand, log_file: Path | None, *, print_only: bool
) -> list[str]:
    """Add (or replace) the crontab entry ``name``; with ``print_only`` only show it."""
    line = cron_line(name, cmd, log_file)
    if print_only:
        return [line]
    write_crontab(with_line(read_crontab(), name, line))
    return [f"installed crontab entry {name}: bcdr tick every {cmd.every_minutes} minutes"]


def install_systemd(
    name: str,
    cmd: TickCommand,
    *,
    user: bool,
    env_file: Path | None,
    folder: Path | None,
    print_only: bool,
    enable: bool,
) -> list[str]:
    """Write the timer and service units ``name`` (and enable the timer); what was done."""
    units = systemd_units(name, cmd, user=user, env_file=env_file)
    if print_only:
        return [f"# {fname}\n{text}" for fname, text in units.items()]
    folder = folder or unit_dir(user)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for fname, text in units.items():
            (folder / fname).write_text(text)
    except OSError as exc:
        raise UsageError(
            f"cannot write the units: {exc.strerror}",
            where=str(folder),
            hint="system units need root; use --user for your own timer, or --print",
        ) from None
    said = [f"wrote {', '.join(str(folder / f) for f in units)}"]
    scope = " --user" if user else ""
    if not enable:
        return said + [
            f"enable with: systemctl{scope} daemon-reload && "
            f"systemctl{scope} enable --now {name}.timer"
        ]
    for step in (("daemon-reload",), ("enable", "--now", f"{name}.timer")):
        problem = systemctl(user, *step)
        if problem:
            raise BcdrError(
                f"the units are written, but `systemctl {' '.join(step)}` failed: {problem}",
                hint="run it by hand once systemd is reachable (in a container there may be "
                "none: use --cron or `bcdr schedule run` instead)",
            )
    return said + [f"enabled {name}.timer: bcdr tick every {cmd.every_minutes} minutes"]


def remove_cron(name: str) -> str:
    table = read_crontab()
    new = with_line(table, name, None)
    if new == table:
        return f"no crontab entry {name}; nothing to remove"
    write_crontab(new)
    return f"removed crontab entry {name}"


def remove_systemd(name: str, *, user: bool, folder: Path | None, disable: bool) -> str:
    folder = folder or unit_dir(user)
    if disable:
        systemctl(user, "disable", "--now", f"{name}.timer")
    removed = []
    for suffix in (".timer", ".service"):
        f = folder / f"{name}{suffix}"
        if f.exists():
            f.unlink()
            removed.append(str(f))
    if disable and removed:
        systemctl(user, "daemon-reload")
    return f"removed {', '.join(removed)}" if removed else f"no units {name}.*; nothing to remove"

"""Start and stop a real single-node Slurm cluster for tests (Debian's ``slurm-wlm`` and
``munge``, installed by ``make test``; issue 33).

Everything lives under one temporary folder: munged with its own key and socket, slurmctld and
slurmd as root (no systemd), a slurm.conf for this host. What this machine needs, found when
it was first set up:

- the cgroup plugins cannot work in this container: ``ProctrackType=proctrack/linuxproc`` and
  ``TaskPlugin=task/none``;
- slurmctld wants ``ClusterName`` and, run as root, ``SlurmUser=root``;
- ``RealMemory`` above what ``slurmd -C`` reports drains the node (the node here declares 1000);
- munged wants ``--pid-file``, and a socket folder with every folder above it open to all;
  Slurm finds it through ``AuthInfo=socket=``;
- **every** Slurm command must see ``SLURM_CONF`` (``env``), or it looks the controller up in
  DNS, off this machine;
- ``MinJobAge`` is short, so finished jobs leave the queue quickly.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.azurite import free_port

DAEMONS = ("munged", "slurmctld", "slurmd")


def missing() -> list[str]:
    """The programs this machine lacks (``make test`` installs them)."""
    return [
        name
        for name in (*DAEMONS, "sbatch", "squeue", "scontrol", "scancel")
        if shutil.which(name) is None
    ]


class SlurmCluster:
    def __init__(self, workdir: Path, *, cpus: int = 2):
        self.dir = workdir
        self.cpus = cpus
        self.host = socket.gethostname()
        self.conf = workdir / "slurm.conf"
        # munged wants every folder above its socket open to all (pytest's are 0700), and a
        # socket's path is short: a folder of its own in /tmp
        self._sockdir = Path(tempfile.mkdtemp(prefix="bcdr-munge-"))
        self.socket = self._sockdir / "munge.socket"
        self._pids: dict[str, Path] = {
            "munged": workdir / "munge" / "munged.pid",
            "slurmctld": workdir / "slurmctld.pid",
            "slurmd": workdir / f"slurmd-{self.host}.pid",
        }

    @property
    def env(self) -> dict[str, str]:
        """The environment for Slurm commands and for bcdr run against this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def start(self) -> SlurmCluster:
        lacking = missing()
        if lacking:
            raise RuntimeError(
                f"{', '.join(lacking)} missing: run `make test` (it installs Debian's "
                "slurm-wlm and munge)"
            )
        d = self.dir
        for sub in ("munge", "state", "spool", "log"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(d / "munge", 0o700)
        os.chmod(self._sockdir, 0o755)
        key = d / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        self._run(
            "munged",
            f"--key-file={key}",
            f"--socket={self.socket}",
            f"--pid-file={self._pids['munged']}",
            f"--log-file={d / 'munge' / 'munged.log'}",
            f"--seed-file={d / 'munge' / 'seed'}",
        )
        self.conf.write_text(self._slurm_conf())
        self._run("slurmctld")
        self._run("slurmd")
        self._wait_idle()
        return self

    def _slurm_conf(self) -> str:
        d = self.dir
        return f"""\
ClusterName=bcdrtest
SlurmctldHost={self.host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.socket}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
StateSaveLocation={d / "state"}
SlurmdSpoolDir={d / "spool"}/slurmd-%n
SlurmctldPidFile={self._pids["slurmctld"]}
SlurmdPidFile={d}/slurmd-%n.pid
SlurmctldLogFile={d / "log"}/slurmctld.log
SlurmdLogFile={d / "log"}/slurmd-%n.log
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
MinJobAge=30
ReturnToService=2
MpiDefault=none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""

    def _run(self, *argv: str) -> None:
        r = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"{argv[0]} did not start: {r.stderr.strip() or r.stdout}")

    def _wait_idle(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        out = ""
        while time.monotonic() < deadline:
            out = self.command("sinfo", "-h", "-o", "%T", check=False)
            if out.strip() == "idle":
                return
            time.sleep(0.2)
        raise RuntimeError(f"the Slurm node did not become idle: {out!r}; see {self.dir}/log")

    def command(self, *argv: str, check: bool = True) -> str:
        r = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=60)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {r.stderr.strip()}")
        return r.stdout

    def stop(self) -> None:
        for name in reversed(DAEMONS):
            pidfile = self._pids[name]
            try:
                pid = int(pidfile.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
            else:
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self._sockdir, ignore_errors=True)

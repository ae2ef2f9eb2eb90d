"""Start and stop Azurite (the Azure Storage emulator, npm package ``azurite``) for tests.

``make test`` installs it into ``node_modules`` (package.json). Each server listens on a free
loopback port with telemetry off; by default it keeps everything in memory, or in ``location``
so that it can be stopped and started again with its data (the fault test).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
AZURITE_BIN = ROOT / "node_modules" / ".bin" / "azurite-blob"
ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Azurite:
    def __init__(self, workdir: Path, *, location: Path | None = None, port: int | None = None):
        if not AZURITE_BIN.exists():
            raise RuntimeError(
                f"{AZURITE_BIN} is missing: run `make test` (it installs azurite with npm ci)"
            )
        self.workdir = workdir
        self.location = location
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
            f"BlobEndpoint={self.endpoint};"
        )

    def start(self) -> Azurite:
        args = [
            str(AZURITE_BIN),
            "--skipApiVersionCheck",
            "--disableTelemetry",
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(self.port),
        ]
        if self.location is None:
            args.append("--inMemoryPersistence")
        else:
            args += ["--location", str(self.location)]
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / f"azurite-{self.port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"azurite exited: see {self.workdir}/azurite-{self.port}.log")
            try:
                urllib.request.urlopen(f"{self.endpoint}?comp=list", timeout=1)
            except urllib.error.HTTPError:
                return self  # it answers (403 without a signature): up
            except OSError:
                time.sleep(0.1)
                continue
            return self
        raise RuntimeError("azurite did not start within 30 s")

    def stop(self) -> None:
        """Stop gracefully (SIGTERM, so a persistent server flushes its metadata)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def env(self, var: str = "AZURE_STORAGE_CONNECTION_STRING") -> dict[str, str]:
        return {var: self.connection_string}

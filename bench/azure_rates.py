"""Upload and download rates to Azure Blob Storage through Azurite (in memory, loopback).

The same 256 MiB of incompressible files are backed up and restored with 1 connection (the
baseline) and with the default 8; rates come from bcdr's own ``--json`` transfer figures.
Each is measured straight against Azurite and through a loopback proxy that adds a round trip
of ``BENCH_RTT_MS`` (default 20 ms, another region) to every request, which is what parallel
connections exist to hide. Azurite is one Node.js process sharing the 2 cores with bcdr, so
absolute rates are the emulator's; the ratios to one connection are what carries over.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.azurite import ACCOUNT, Azurite  # noqa: E402

CS = "BENCH_AZURE_CS"
BCDR = [sys.executable, "-m", "bcdr"]


RTT_S = float(os.environ.get("BENCH_RTT_MS", "20")) / 1000


class LatencyProxy:
    """Forwards loopback TCP to ``port``, waiting one round trip before each request (when the
    client starts sending again after the server answered)."""

    def __init__(self, port: int, rtt: float):
        self.target, self.rtt = port, rtt
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        ready.wait()

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        sr, sw = await asyncio.open_connection("127.0.0.1", self.target)
        answered = [True]

        async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter, up: bool) -> None:
            try:
                while data := await r.read(1 << 16):
                    if up and answered[0]:
                        answered[0] = False
                        await asyncio.sleep(self.rtt)
                    if not up:
                        answered[0] = True
                    w.write(data)
                    await w.drain()
            except ConnectionError:
                pass
            finally:
                w.close()

        await asyncio.gather(pump(cr, sw, True), pump(sr, cw, False))


def _corpus(path: Path) -> None:
    if path.exists():
        return
    path.mkdir(parents=True)
    for i in range(32):
        (path / f"shard-{i:02d}.bin").write_bytes(os.urandom(4 * 2**20))
    (path / "big.bin").write_bytes(os.urandom(128 * 2**20))


def _bcdr(args: list[str], env: dict[str, str]) -> dict[str, object]:
    proc = subprocess.run(
        [*BCDR, *args, "--json"], env={**os.environ, **env}, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"bcdr {args[0]} failed: {proc.stderr}")
    doc: dict[str, object] = json.loads(proc.stdout)
    return doc


def bench_azure(out: Path) -> list[dict[str, float]]:
    corpus = out / "azure-corpus"
    _corpus(corpus)
    server = Azurite(out / "azurite").start()
    proxy = LatencyProxy(server.port, RTT_S)
    rows = []
    try:
        env = {CS: server.connection_string}
        for rtt, n in ((0.0, 1), (0.0, 8), (RTT_S, 1), (RTT_S, 8)):
            endpoint = server.endpoint.replace(
                str(server.port), str(proxy.port) if rtt else str(server.port)
            )
            url = f"azure://{ACCOUNT}/bench-{n}-{int(rtt * 1000)}"
            base = ["--repo", url, "--azure-connection-string-env", CS, "--connections", str(n)]
            base += ["--azure-endpoint", endpoint]
            _bcdr(["init", *base], env)
            up = _bcdr(["backup", str(corpus), *base], env)["uploaded"]
            target = out / f"azure-restore-{n}"
            shutil.rmtree(target, ignore_errors=True)
            down = _bcdr(["restore", "latest", "--target", str(target), *base], env)["downloaded"]
            shutil.rmtree(target, ignore_errors=True)
            assert isinstance(up, dict) and isinstance(down, dict)
            rows.append(
                {
                    "rtt_ms": rtt * 1000,
                    "connections": n,
                    "upload_mib_s": up["bytes_per_second"] / 2**20,
                    "download_mib_s": down["bytes_per_second"] / 2**20,
                    "bytes": up["bytes"],
                }
            )
    finally:
        server.stop()
    for r in rows:
        one = next(b for b in rows if b["rtt_ms"] == r["rtt_ms"] and b["connections"] == 1)
        r["upload_ratio"] = r["upload_mib_s"] / one["upload_mib_s"]
        r["download_ratio"] = r["download_mib_s"] / one["download_mib_s"]
    return rows


if __name__ == "__main__":
    for row in bench_azure(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "bench" / "out"):
        print(row)

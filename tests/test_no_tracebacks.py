"""No traceback for a user's mistake or a strange endpoint: a repository path that is a file,
an endpoint that answers 200 to everything but is not Azure Blob Storage, and Ctrl-C at any
moment of a command, its start and its exit included."""

from __future__ import annotations

import http.server
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_process, write_tree

KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UFeWCq2UFeWCq2UFeWCq2UFeWCq2UFeWCq2UFeWCq=="
)


class _Anything(http.server.BaseHTTPRequestHandler):
    """200 and a small JSON body to every request: a web server, not a blob service."""

    def _ok(self) -> None:
        body = b'{"format": 1}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_PUT = do_HEAD = do_DELETE = _ok

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def not_blob_storage() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Anything)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        yield (
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
            f"AccountKey={KEY};BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"
        )
    finally:
        server.shutdown()


@pytest.mark.parametrize(
    "command",
    [
        ["snapshots"],
        ["check"],
        ["ls", "latest"],
        ["restore", "latest", "--target", "OUT"],
        ["backup", "SRC"],
        ["prune"],
        ["unlock"],
        ["forget", "--keep-last", "1"],
        ["repair", "index"],
    ],
    ids=lambda c: c[0],
)
def test_an_endpoint_that_is_not_blob_storage_gets_a_clear_error(
    tmp_path: Path, not_blob_storage: str, command: list[str]
) -> None:
    src = write_tree(tmp_path / "src", {"a": b"1"})
    args = [str(tmp_path / "out") if a == "OUT" else str(src) if a == "SRC" else a for a in command]
    r = run_process(
        *args,
        "--repo",
        "azure://devstoreaccount1/bcdr",
        "--azure-connection-string-env",
        "CONN",
        env={"CONN": not_blob_storage},
        timeout=120,
    )
    assert r.code == 1 and "Traceback" not in r.err, r.err
    assert "is not Azure Blob Storage's" in r.err and "check the blob endpoint" in r.err
    assert KEY not in r.err + r.out


@pytest.mark.parametrize("repo", ["file", "file/sub"])
def test_a_repository_path_through_a_file_is_a_clear_error(tmp_path: Path, repo: str) -> None:
    (tmp_path / "file").write_text("not a folder")
    for command in (["init"], ["snapshots"], ["check"]):
        r = run_process(*command, "--repo", tmp_path / repo)
        assert r.code == 1 and "Traceback" not in r.err, r.err
        assert "is a file, not a folder" in r.err and "check the --repo path" in r.err


@pytest.mark.slow
def test_ctrl_c_at_any_moment_prints_no_traceback(tmp_path: Path, repo: str) -> None:
    src = write_tree(tmp_path / "src", {f"f{i}": bytes([i]) * 30_000 for i in range(40)})
    assert run_process("backup", "--repo", repo, src).code == 0
    rng = random.Random(11)
    for n in range(24):
        command = rng.choice([["snapshots"], ["check"], ["backup", str(src)], ["ls", "latest"]])
        proc = subprocess.Popen(
            [sys.executable, "-m", "bcdr", *command, "--repo", repo],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        # from bcdr's first import to the command's exit (a signal inside the interpreter's
        # own start-up, the first few milliseconds, is Python's to report, not bcdr's)
        time.sleep(rng.uniform(0.3, 0.8))
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert "Traceback" not in err and "Exception ignored" not in err, (n, command, err)
        assert proc.returncode in (0, 130, -signal.SIGINT), (n, command, proc.returncode, err)

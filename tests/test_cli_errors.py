"""A user's mistake or an environmental failure gets a clear message and exit code, never a
traceback, and never leaves a half-written snapshot."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Result, run_process, tmpfs, write_tree


def _clean(r: Result) -> None:
    assert "Traceback" not in r.err and "Traceback" not in r.out, r.err


def test_missing_repository(tmp_path: Path) -> None:
    r = run_process("snapshots", "--repo", tmp_path / "nope")
    _clean(r)
    assert r.code == 1 and "no repository here" in r.err and "bcdr init" in r.err


def test_not_a_repository(tmp_path: Path) -> None:
    (tmp_path / "stuff.txt").write_text("hello")
    r = run_process("snapshots", "--repo", tmp_path)
    _clean(r)
    assert r.code == 1 and "not a bcdr repository" in r.err


def test_init_refuses_existing_and_non_empty(tmp_path: Path, repo: str) -> None:
    r = run_process("init", "--repo", repo)
    _clean(r)
    assert r.code == 1 and "already exists" in r.err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "f").write_text("x")
    r = run_process("init", "--repo", tmp_path / "other")
    _clean(r)
    assert r.code == 2 and "not empty" in r.err


def test_init_over_an_init_that_did_not_finish_says_so(tmp_path: Path) -> None:
    """init writes the key, then the config (whose presence marks a repository): one that
    stopped between the two left only keys/, and is told apart from a folder of other data."""
    assert run_process("init", "--repo", tmp_path / "repo").code == 0
    (tmp_path / "repo" / "config").unlink()  # as if it had stopped before writing it
    r = run_process("init", "--repo", tmp_path / "repo")
    _clean(r)
    assert r.code == 2 and "only the key file(s) of an init that did not finish" in r.err, r.err
    assert "delete the keys/ folder and run init again" in r.err
    shutil.rmtree(tmp_path / "repo" / "keys")
    assert run_process("init", "--repo", tmp_path / "repo").code == 0


def test_of_two_inits_at_once_one_makes_the_repository(tmp_path: Path) -> None:
    """The config is written last and never over another: the init that loses the race
    takes its key back and says so, and the winner's repository opens."""
    from bcdr.errors import RepositoryExists
    from bcdr.repository.repo import Repository
    from bcdr.storage.local import LocalStorage

    class Racing(LocalStorage):
        def put(self, key: str, data: bytes) -> bool:
            if key.startswith("keys/"):  # both found the folder empty; the other is faster
                Repository.init(LocalStorage(self.root), password=None)
            return super().put(key, data)

    with pytest.raises(RepositoryExists, match="another init created a repository here"):
        Repository.init(Racing(tmp_path / "repo"), password=None)
    assert len(list((tmp_path / "repo" / "keys").iterdir())) == 1  # the winner's only
    Repository.open(LocalStorage(tmp_path / "repo")).load_index()


def test_corrupted_config(repo: str) -> None:
    Path(repo, "config").write_bytes(b"{garbage")
    r = run_process("snapshots", "--repo", repo)
    _clean(r)
    assert r.code == 1 and "not valid JSON" in r.err


@pytest.mark.parametrize(
    ("sizes", "said"),
    [
        ("1,2,3", "MIN 1 is not a size from 64 to 1048576 bytes"),
        ("4096,1024,8192", "MIN <= AVG <= MAX does not hold (4096, 1024, 8192)"),
        ("2000000,2000000,4000000", "MIN 2000000 is not a size"),
        ("524288,524288,33554432", "MAX 33554432 is not a size from 1024 to 16777216"),
    ],
)
def test_chunk_sizes_fastcdc_refuses_are_a_usage_error_and_create_nothing(
    tmp_path: Path, sizes: str, said: str
) -> None:
    # init wrote the config and key, then failed on pyfastcdc's ValueError with a traceback,
    # leaving a repository that neither opened nor could be created again
    r = run_process("init", "--repo", tmp_path / "repo", "--chunk-size", sizes)
    _clean(r)
    assert r.code == 2 and f"chunk sizes (MIN,AVG,MAX): {said}" in r.err, r.err
    assert not (tmp_path / "repo").exists()


def test_a_config_with_chunk_sizes_fastcdc_refuses_is_reported(repo: str) -> None:
    cfg = Path(repo, "config")
    doc = json.loads(cfg.read_bytes())
    doc["chunker"]["min_size"] = 1
    cfg.write_text(json.dumps(doc))
    r = run_process("backup", "--repo", repo, repo)
    _clean(r)
    assert r.code == 1 and "config is missing or has a bad field: chunker: MIN 1" in r.err, r.err


def test_unknown_format_version_refused(repo: str) -> None:
    cfg = Path(repo, "config")
    doc = json.loads(cfg.read_bytes())
    doc["version"] = 99
    cfg.write_text(json.dumps(doc))
    r = run_process("backup", "--repo", repo, repo)
    _clean(r)
    assert r.code == 1 and "format version 99 is not supported" in r.err


def test_wrong_and_missing_password_never_echo_secrets(tmp_path: Path) -> None:
    url = tmp_path / "enc"
    secret = "correct horse battery staple"
    r = run_process("init", "--repo", url, "--encrypt", env={"BCDR_PASSWORD": secret})
    assert r.code == 0, r.err
    wrong = "wrong-password-value-123"
    r = run_process("snapshots", "--repo", url, env={"BCDR_PASSWORD": wrong})
    _clean(r)
    assert r.code == 1 and "wrong password" in r.err
    assert wrong not in r.err + r.out and secret not in r.err + r.out
    env = {k: v for k, v in os.environ.items() if not k.startswith("BCDR_")}
    proc = subprocess.run(
        [sys.executable, "-m", "bcdr", "snapshots", "--repo", str(url)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 2 and "BCDR_PASSWORD" in proc.stderr
    r = run_process("init", "--repo", tmp_path / "enc2", "--encrypt", env={"BCDR_PASSWORD": ""})
    assert r.code == 2 and "needs a password" in r.err


def test_password_file(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("from-a-file\n")
    env = {"BCDR_PASSWORD_FILE": str(pw), "BCDR_PASSWORD": ""}
    assert run_process("init", "--repo", tmp_path / "r", "--encrypt", env=env).code == 0
    assert run_process("snapshots", "--repo", tmp_path / "r", env=env).code == 0
    r = run_process(
        "snapshots",
        "--repo",
        tmp_path / "r",
        env={"BCDR_PASSWORD_FILE": str(tmp_path / "missing"), "BCDR_PASSWORD": ""},
    )
    _clean(r)
    assert r.code == 2 and "cannot read the password file" in r.err


def test_missing_source_writes_nothing(tmp_path: Path, repo: str) -> None:
    r = run_process("backup", "--repo", repo, tmp_path / "missing")
    _clean(r)
    assert r.code == 1 and "do not exist" in r.err
    assert not os.listdir(Path(repo, "snapshots")) if Path(repo, "snapshots").exists() else True


def test_usage_errors(tmp_path: Path, repo: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "BCDR_REPO"}
    proc = subprocess.run(
        [sys.executable, "-m", "bcdr", "snapshots"], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 2 and "no repository given" in proc.stderr
    r = run_process("snapshots", "--repo", "s3://bucket/x")
    assert r.code == 2 and "unknown repository URL scheme" in r.err
    r = run_process("restore", "--repo", repo, "deadbeef", "--target", tmp_path / "t")
    _clean(r)
    assert r.code == 1 and "no snapshot with id" in r.err
    r = run_process("check", "--repo", repo, "--read-data-subset", "250")
    assert r.code == 2 and "(0, 100]" in r.err
    r = run_process("backup", "--repo", repo)  # paths are optional with --files-from
    assert r.code == 2 and "nothing to back up" in r.err and "--files-from" in r.err


def test_restore_refuses_non_empty_target(tmp_path: Path, repo: str) -> None:
    src = write_tree(tmp_path / "src", {"a": b"1"})
    assert run_process("backup", "--repo", repo, src).code == 0
    target = write_tree(tmp_path / "target", {"existing": b"keep me"})
    r = run_process("restore", "--repo", repo, "latest", "--target", target)
    _clean(r)
    assert r.code == 2 and "--overwrite" in r.err
    assert (target / "existing").read_bytes() == b"keep me"
    r = run_process("restore", "--repo", repo, "latest", "--target", target, "--overwrite")
    assert r.code == 0 and (target / "existing").read_bytes() == b"keep me"


def test_restore_into_the_repositorys_own_folder_is_refused(tmp_path: Path, repo: str) -> None:
    src = write_tree(tmp_path / "src", {"a": b"1"})
    assert run_process("backup", "--repo", repo, src).code == 0
    before = sorted(p.relative_to(repo) for p in Path(repo).rglob("*"))
    (tmp_path / "link").symlink_to(repo)
    for target in (Path(repo) / "restored", tmp_path / "link" / "restored"):
        r = run_process("restore", "--repo", repo, "latest", "--target", target)
        _clean(r)
        assert r.code == 2 and "is inside the repository" in r.err, r.err
    assert sorted(p.relative_to(repo) for p in Path(repo).rglob("*")) == before


@pytest.mark.parametrize(
    ("job", "said"),
    [
        ("", "a job needs a name"),
        ("  ", "a job needs a name"),
        ("a\nb", "is not a name"),  # listings and reports show one job per line
        ("x" * 201, "is not a name"),
    ],
)
def test_a_backup_job_name_is_one_line_of_text(
    tmp_path: Path, repo: str, job: str, said: str
) -> None:
    src = write_tree(tmp_path / "src", {"a": b"1"})
    r = run_process("backup", "--repo", repo, "--job", job, src)
    _clean(r)
    assert r.code == 2 and said in r.err, r.err
    assert run_process("snapshots", "--repo", repo, "--json").json() == []
    r = run_process("backup", "--repo", repo, "--job", "Nightly checkpoints, é", src)
    assert r.code == 0, r.err


def test_json_error_output(tmp_path: Path) -> None:
    r = run_process("snapshots", "--repo", tmp_path / "nope", "--json")
    doc = json.loads(r.out)
    assert r.code == 1 and doc["error"] == "RepositoryNotFound" and doc["hint"]


DROP_DAC = [
    "setpriv",
    "--inh-caps=-dac_override,-dac_read_search",
    "--bounding-set=-dac_override,-dac_read_search",
]


def _without_dac_override(*args: object) -> Result:
    """Run bcdr as root without the capabilities that bypass file modes (like a normal user)."""
    if shutil.which("setpriv") is None:
        pytest.fail("setpriv (util-linux) is needed for permission tests")
    proc = subprocess.run(
        [*DROP_DAC, sys.executable, "-m", "bcdr", *map(str, args)], capture_output=True, text=True
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def test_unreadable_file_gives_partial_backup(tmp_path: Path, repo: str) -> None:
    src = write_tree(tmp_path / "src", {"ok.txt": b"fine", "secret.txt": b"no access"})
    os.chmod(src / "secret.txt", 0o000)
    r = _without_dac_override("backup", "--repo", repo, src)
    _clean(r)
    assert r.code == 3, r.err
    assert "secret.txt" in r.err and "Permission denied" in r.err
    r = run_process("ls", "--repo", repo, "latest", "--json")
    paths = [e["path"] for e in json.loads(r.out)["entries"]]
    assert str(src / "ok.txt") in paths and str(src / "secret.txt") not in paths
    r = run_process("snapshots", "--repo", repo, "--json")
    assert json.loads(r.out)[0]["skipped"][0]["path"] == str(src / "secret.txt")


def test_permission_denied_on_repository(tmp_path: Path, repo: str) -> None:
    src = write_tree(tmp_path / "src", {"a": b"x"})
    os.chmod(Path(repo, "keys"), 0o000)
    r = _without_dac_override("backup", "--repo", repo, src)
    _clean(r)
    assert r.code == 1 and "permission denied" in r.err.lower()


def test_a_restore_target_this_user_cannot_read_is_refused(tmp_path: Path, repo: str) -> None:
    """A folder one may write into but not list (mode 0300): the restore must read it to
    see that it is empty and to find what a killed restore left, so it says so up front."""
    src = write_tree(tmp_path / "src", {"a": b"x"})
    assert run_process("backup", "--repo", repo, src).code == 0
    target = tmp_path / "write-only"
    target.mkdir(mode=0o300)
    for more in ((), ("--overwrite",)):
        r = _without_dac_override("restore", "--repo", repo, "latest", "--target", target, *more)
        _clean(r)
        assert r.code == 2, r.err
        assert f"cannot read the restore target {target}: Permission denied" in r.err
        assert "give this user read access to it" in r.err
    os.chmod(target, 0o700)
    assert list(target.iterdir()) == []


def test_disk_full_commits_nothing_and_next_backup_works(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", "3m") as mnt:
        repo = mnt / "repo"
        assert run_process("init", "--repo", repo).code == 0
        small = write_tree(tmp_path / "small-src", {"a": b"small file"})
        assert run_process("backup", "--repo", repo, small).code == 0
        big = write_tree(tmp_path / "big-src", {"big": os.urandom(6 * 1024 * 1024)})
        r = run_process("backup", "--repo", repo, big)
        _clean(r)
        assert r.code == 1 and "no space left" in r.err
        # the pack being filled (written into tmp/ as it goes) was discarded with the backup
        assert not (repo / "tmp").exists() or list((repo / "tmp").iterdir()) == []
        r = run_process("snapshots", "--repo", repo, "--json")
        assert len(json.loads(r.out)) == 1  # the failed backup committed no snapshot
        r = run_process("check", "--repo", repo, "--read-data")
        assert r.code == 0, r.out
        out = tmp_path / "out"
        assert run_process("restore", "--repo", repo, "latest", "--target", out).code == 0


def test_backing_up_the_root_folder_is_refused_not_stored_empty(repo: str) -> None:
    r = run_process("backup", "--repo", repo, "/")
    _clean(r)
    assert r.code == 1 and "backing up / itself is not supported" in r.err
    assert not os.listdir(Path(repo, "snapshots")) if Path(repo, "snapshots").exists() else True

"""Evidence records: ``evidence/<name>`` = ``seal(json, aad=b"evidence")``, one per job run.

A record says what a run did and why, in facts an auditor can check: for a forget, the policy
and, per snapshot, kept or removed with the reasons; for a prune, what was marked, swept and
kept. Records are immutable and content-named like every other object. (The hash chain that
makes deletion and reordering detectable, and ``bcdr evidence verify``, come with the
compliance reports.)
"""

from __future__ import annotations

import getpass
import json
import socket
from collections.abc import Iterator, Mapping

from bcdr import __version__
from bcdr.errors import CorruptObject, ObjectNotFound
from bcdr.repository.hashing import object_name
from bcdr.repository.repo import Repository

PREFIX = "evidence/"
EVIDENCE_AAD = b"evidence"


def write_record(repo: Repository, kind: str, facts: Mapping[str, object]) -> str:
    """Store one record; returns its name."""
    doc = {
        "kind": kind,
        "time": repo.clock.now().isoformat(),
        "hostname": socket.gethostname(),
        "username": getpass.getuser(),
        "program_version": __version__,
        "facts": dict(facts),
    }
    sealed = repo.cipher.seal(json.dumps(doc, sort_keys=True).encode(), EVIDENCE_AAD)
    name = object_name(sealed)
    repo.storage.put(f"{PREFIX}{name}", sealed)
    return name


def read_records(repo: Repository, kind: str | None = None) -> Iterator[dict[str, object]]:
    """Every readable record (of ``kind``), oldest first, each with its ``id``."""
    out = []
    for info in repo.storage.list(PREFIX):
        name = info.key.removeprefix(PREFIX)
        try:
            sealed = repo.storage.get(info.key)
        except ObjectNotFound:
            continue
        if object_name(sealed) != name:
            raise CorruptObject(f"evidence {name[:12]}: content does not match its name")
        doc = json.loads(repo.cipher.open(sealed, EVIDENCE_AAD, f"evidence {name[:12]}"))
        if kind is None or doc.get("kind") == kind:
            out.append({**doc, "id": name})
    yield from sorted(out, key=lambda d: (str(d["time"]), str(d["id"])))

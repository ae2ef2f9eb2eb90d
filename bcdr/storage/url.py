"""Open a Storage from a repository URL (``/path``, ``file:///path``; Azure in a later issue)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from bcdr.errors import UsageError
from bcdr.storage.base import Storage
from bcdr.storage.local import LocalStorage


def open_storage(url: str, *, base_dir: Path | None = None) -> Storage:
    """Return the Storage for ``url``; relative paths resolve against ``base_dir`` (or cwd).

    Raises UsageError for a scheme this bcdr does not support.
    """
    if not url:
        raise UsageError("no repository given", hint="pass --repo URL or set BCDR_REPO")
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise UsageError(
                f"file URL with a host is not supported: {url}",
                hint="use file:///absolute/path",
            )
        return LocalStorage(Path(unquote(parsed.path)))
    if parsed.scheme in ("",) or (len(parsed.scheme) == 1 and url[1:2] == ":"):
        path = Path(url).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        return LocalStorage(path.absolute())
    if parsed.scheme == "azure":
        raise UsageError(
            f"Azure repositories are not available in this build yet: {parsed.scheme}://...",
            hint="use a local path or file:/// URL for now",
        )
    raise UsageError(
        f"unknown repository URL scheme {parsed.scheme!r} in {url!r}",
        hint="use a path, file:///path or azure://ACCOUNT/CONTAINER[/PREFIX]",
    )

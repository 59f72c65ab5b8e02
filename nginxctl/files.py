"""Writing files on the machine nginxctl runs on: atomically, and never over someone else's change."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from .errors import UsageError


def write_atomic(path: str | os.PathLike[str], text: str, *, expect: str | None = None) -> None:
    """Write `text` to `path` so that readers see the old file or the new one, never a part.

    An existing file must be writable by its mode bits (a read-only file is refused, even as root,
    who could replace it). With `expect`, the file must still hold exactly `expect` (refuses a file
    changed since it was read). Raises UsageError; on any failure the file is untouched.
    """
    given = Path(path)
    # A symlink is written through (the file it points to changes, the link stays), as an editor does.
    target = given.resolve() if given.is_symlink() else given
    if target.is_dir():
        raise UsageError(f"cannot write {given}: it is a folder; nothing written")
    if target.exists() and not target.is_file():
        raise UsageError(f"cannot write {given}: not a regular file (a device, a pipe or a socket); nothing written")
    if target.exists() and not target.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
        raise UsageError(f"cannot write {target}: the file is read-only; nothing changed")
    if expect is not None:
        try:
            current = target.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot edit {target}: {exc.strerror}") from None
        if current != expect:
            raise UsageError(f"{target} changed since nginxctl read it; nothing changed: run the command again")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    except OSError as exc:
        raise UsageError(f"cannot write {target}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, target.stat().st_mode & 0o7777 if target.exists() else 0o644)
        if expect is not None and target.read_text(encoding="utf-8") != expect:
            raise UsageError(f"{target} changed since nginxctl read it; nothing changed: run the command again")
        os.replace(tmp, target)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise UsageError(f"cannot write {target}: {exc.strerror}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

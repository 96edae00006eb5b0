"""Atomic replacement of files and directories: a reader sees the old version or the new one, never
neither and never a mix, whatever moment a crash or SIGKILL picks."""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import shutil
from pathlib import Path

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2  # linux/fs.h


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to a sibling temp file, then rename it over `path` (atomic on POSIX)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


@functools.cache
def _renameat2():
    """libc's renameat2 (Linux, glibc 2.28+), from the C library this process already runs on; or None."""
    try:
        return getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    except OSError:
        return None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step (renameat2 RENAME_EXCHANGE); False where unsupported."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EPERM):  # no such flag here, or seccomp
        return False
    raise OSError(err, os.strerror(err), str(a))


def replace_dir(new: Path, final: Path) -> Path:
    """Put the finished directory `new` at `final`, replacing what is there.

    A directory cannot be renamed over a non-empty one, so the two are swapped in one system call
    and the old one is then removed from `new`'s name: at every instant `final` holds a complete
    directory. Where the swap is unsupported (not Linux, or a filesystem without RENAME_EXCHANGE),
    the old directory is first moved aside to `final.old`, which leaves a moment with no `final`."""
    new, final = Path(new), Path(final)
    if not final.exists():
        os.rename(new, final)
        return final
    if _exchange(new, final):
        shutil.rmtree(new, ignore_errors=True)  # now the old version; the save itself is complete
        return final
    aside = final.with_name(final.name + ".old")
    shutil.rmtree(aside, ignore_errors=True)
    os.rename(final, aside)
    os.rename(new, final)
    shutil.rmtree(aside)
    return final

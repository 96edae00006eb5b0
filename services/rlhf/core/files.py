"""Atomic replacement of files and directories: a reader sees the old version or the new one, never
neither and never a mix, whatever moment a crash or SIGKILL picks."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
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


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:  # not Linux, or glibc older than 2.28
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):  # a filesystem without the flag
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
        shutil.rmtree(new)  # now the old version
        return final
    aside = final.with_name(final.name + ".old")
    shutil.rmtree(aside, ignore_errors=True)
    os.rename(final, aside)
    os.rename(new, final)
    shutil.rmtree(aside)
    return final

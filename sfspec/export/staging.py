"""Where a bundle is built: a hidden directory beside the target, renamed into place only when complete.

A reader sees the earlier bundle or the new one, never a mix, and a failed export (a full disk, a
parity failure) leaves the earlier bundle as it was. On Linux the two directories are exchanged in
one step, so the path always holds a whole bundle; where the kernel or file system cannot exchange,
the earlier bundle is renamed aside just before the new one takes its place, and for that moment
the path holds nothing. Only an earlier bundle or an empty directory is ever replaced.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from sfspec.export.errors import ExportError
from sfspec.export.formats import EXPORT_FORMATS
from sfspec.io import current_umask, fsync_dir


@contextlib.contextmanager
def staged_bundle(out_dir: Path) -> Iterator[Path]:
    """A staging directory to write the bundle into; renamed to ``out_dir`` when the block succeeds.

    On any failure the staging directory is removed and ``out_dir`` is untouched; a write failure
    (OSError) becomes an ExportError naming the file and what to do.
    """
    check_target(out_dir)
    staging = None
    try:
        staging = _make_staging(out_dir)
        yield staging
        _swap_into_place(staging, out_dir)
    except OSError as exc:
        raise ExportError(_write_failure(exc, out_dir)) from None
    finally:
        if staging is not None and staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def check_target(out_dir: Path) -> None:
    """Refuse to replace anything but an earlier bundle (or an empty directory)."""
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise ExportError(f"{out_dir}: exists and is not a directory; choose another --out")
    if not out_dir.is_dir():
        return
    try:
        names = os.listdir(out_dir)
    except OSError as exc:
        raise ExportError(f"{out_dir}: cannot read it ({exc.strerror})") from None
    ours = EXPORT_FORMATS.bundle_names()
    foreign = sorted(n for n in names if n not in ours and not n.endswith((".tmp", ".partial")))
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise ExportError(
            f"{out_dir} holds files that are not a bundle's ({shown}); not replacing it: choose another --out"
        )


def _make_staging(out_dir: Path) -> Path:
    """A fresh directory beside the target, with the mode a plain mkdir would give."""
    parent = out_dir.absolute().parent
    for folder in (parent, *parent.parents):
        if folder.exists() and not folder.is_dir():
            raise ExportError(f"cannot write the bundle {out_dir}: {folder} is not a directory")
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=parent))
    os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp makes 0700
    return staging


def _swap_into_place(staging: Path, out_dir: Path) -> None:
    """Put the finished bundle at ``out_dir``; an earlier bundle there is removed only afterwards.

    Where the kernel can exchange two directories in one step (Linux's ``renameat2`` with
    ``RENAME_EXCHANGE``), ``out_dir`` is a whole bundle at every moment. Elsewhere the earlier
    bundle is renamed aside first, so for the moment between the two renames there is none.
    """
    target = out_dir.absolute()
    if not target.exists():
        os.rename(staging, target)
    elif exchange(staging, target):
        shutil.rmtree(staging, ignore_errors=True)  # the earlier bundle, now at the staging path
    else:
        old = target.parent / f".{target.name}.old-{os.getpid()}-{staging.name[-8:]}"
        os.rename(target, old)
        try:
            os.rename(staging, target)
        except OSError:
            os.rename(old, target)  # put the earlier bundle back
            raise
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(target.parent)


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


@functools.cache
def _renameat2() -> Callable[..., int] | None:
    """libc's renameat2 (glibc 2.28 and later, Linux only), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically; False where this system or file system cannot (then nothing moved)."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
        return False  # an old kernel, or a file system without exchange (EPERM: seccomp filters in containers)
    raise OSError(code, os.strerror(code), str(b))


def _write_failure(exc: OSError, out_dir: Path) -> str:
    where = f" ({exc.filename})" if exc.filename else ""
    message = f"cannot write the bundle {out_dir}: {exc.strerror or exc}{where}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        message += "; free some space and export again"
    return message + ("; the earlier bundle there is unchanged" if out_dir.is_dir() else "")

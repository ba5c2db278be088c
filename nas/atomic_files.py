"""Files and folders that appear whole or not at all: written under a hidden temp name beside their place, then
renamed over it."""
from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

FOLDER_SUFFIX = ".tmpdir"  # of temp folders; not ".tmp", which `remove_stale_temps` takes for files
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2  # <fcntl.h>, <linux/fs.h>


def _default_mode(folder: bool = False) -> int:
    """The permissions a plain open() (or mkdir) gives under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if folder else 0o666) & ~umask


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temp path beside `path`; on success it replaces `path` (flushed to disk), on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _default_mode())  # after the write: mkstemp makes 0600 files, and so do writers that replace it
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_write(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete the temp files that killed atomic writes left in `folder`; call it only where one process writes."""
    stale = sorted(Path(folder).glob(".*.tmp"))
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


@contextmanager
def atomic_folder(path: str | Path):
    """Yield an empty hidden temp folder beside the folder `path` to write files into; when the block ends, it
    replaces `path` as a whole (flushed to disk, with the permissions of plain files and folders).

    A crash at any point leaves at `path` the folder that was there (or none) or the complete new one, plus at most
    one hidden temp folder, which the next write of `path` removes; an exception (a Ctrl-C too) removes it at once.
    The replacement is one atomic exchange on Linux; elsewhere, or on a file system without it, the old folder is
    renamed aside first, and a crash between the two renames leaves nothing at `path`."""
    path = Path(os.path.realpath(path))  # a symlink to a folder: write the folder it points to
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_folders(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=FOLDER_SUFFIX, dir=path.parent))
    try:
        yield tmp
        _make_durable(tmp)
        _replace_folder(tmp, path)
        _fsync(path.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the unfinished folder, or after an exchange the old one


def remove_stale_folders(path: str | Path) -> list[Path]:
    """Delete the temp folders that killed writes of the folder `path` left beside it."""
    path = Path(path)
    stale = sorted(path.parent.glob(f".{path.name}.*{FOLDER_SUFFIX}"))
    for tmp in stale:
        shutil.rmtree(tmp, ignore_errors=True)
    return stale


def _make_durable(folder: Path) -> None:
    for file in sorted(folder.iterdir()):
        os.chmod(file, _default_mode())  # some writers (safetensors) create 0600 files
        _fsync(file)
    os.chmod(folder, _default_mode(folder=True))  # mkdtemp makes 0700 folders
    _fsync(folder)


def _replace_folder(new: Path, path: Path) -> None:
    """Put the folder `new` at `path`; an old folder at `path` ends up at `new`."""
    if not path.exists():
        os.rename(new, path)
    elif not _exchange(new, path):
        aside = new.with_name(new.name.removesuffix(FOLDER_SUFFIX) + ".old" + FOLDER_SUFFIX)
        os.rename(path, aside)
        os.rename(new, path)
        os.rename(aside, new)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux's renameat2 with RENAME_EXCHANGE); False where the system or the file
    system has no such call."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None) if sys.platform == "linux" else None
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _fsync(path: str | Path) -> None:
    """Flush a file or a folder (its entries) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()

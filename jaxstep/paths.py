"""One path layer for every file a run reads or writes: local paths and URLs
(`gs://bucket/run`, `s3://...`) through `etils.epath` (gs:// needs `gcsfs`).

    write_text(join(workdir, "summary.json"), text)    # atomic locally; one object write remotely
    if agree(isfile(path)): ...                        # process 0 decides, every process follows
    local = local_copy("gs://bucket/run/sft/export")   # a local folder to load a model from
    upload_folder(local_tmp, join(workdir, "export"))  # a folder written locally, copied out

Helpers that write do so on the calling process; callers write shared files on process 0
only and let the others wait at a barrier (`jaxstep.parallel.placement.sync`).
"""
from __future__ import annotations

import atexit
import builtins
import logging
import os
import posixpath
import shutil
import tempfile
import time
from typing import IO

from etils import epath

logger = logging.getLogger(__name__)


def is_remote(path) -> bool:
    """True for URLs (`gs://`, `s3://`, ...), False for local paths."""
    return "://" in os.fspath(path)


def as_path(path) -> epath.Path:
    return epath.Path(os.fspath(path))


def join(base, *parts: str) -> str:
    """`os.path.join` that keeps URLs as URLs."""
    base = os.fspath(base)
    return posixpath.join(base, *parts) if is_remote(base) else os.path.join(base, *parts)


def absolute(path) -> str:
    """A local path made absolute; a URL unchanged (without a trailing slash)."""
    path = os.fspath(path)
    return path.rstrip("/") if is_remote(path) else os.path.abspath(path)


def parent(path) -> str:
    """The folder holding `path` (of its absolute form)."""
    path = absolute(path)
    return posixpath.dirname(path) if is_remote(path) else os.path.dirname(path)


def basename(path) -> str:
    return posixpath.basename(absolute(path))


def exists(path) -> bool:
    return bool(path) and as_path(path).exists()


def isdir(path) -> bool:
    return bool(path) and as_path(path).is_dir()


def isfile(path) -> bool:
    return bool(path) and as_path(path).is_file()


def makedirs(path) -> None:
    as_path(path).mkdir(parents=True, exist_ok=True)


def open(path, mode: str = "r") -> IO:  # noqa: A001 - the file layer's open
    """`open` for local paths and URLs (text modes read and write UTF-8)."""
    if is_remote(path):
        return as_path(path).open(mode)
    return builtins.open(os.fspath(path), mode, **({} if "b" in mode else {"encoding": "utf-8"}))



def read_text(path) -> str:
    with open(path, "r") as f:
        return f.read()


def write_text(path, text: str) -> str:
    """Writes `text` to `path` whole: locally beside it then renamed (a reader never sees
    a partial file); remotely as one object (an object store's writes are atomic)."""
    path = os.fspath(path)
    makedirs(parent(path))
    if is_remote(path):
        as_path(path).write_text(text)
        return path
    tmp = path + ".tmp"
    with builtins.open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


def remove(path) -> None:
    """Removes a file or folder if it exists."""
    p = as_path(path)
    if p.is_dir():
        p.rmtree()
    elif p.exists():
        p.unlink()


def copy_file(src, dst) -> None:
    """Copies one file between any two places (local or remote)."""
    if not is_remote(src) and not is_remote(dst):
        shutil.copyfile(src, dst)
        return
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)


def _copy_tree(src: str, dst: str) -> None:
    makedirs(dst)
    for child in as_path(src).iterdir():
        name = child.name
        if child.is_dir():
            _copy_tree(join(src, name), join(dst, name))
        else:
            copy_file(join(src, name), join(dst, name))


def upload_folder(local: str, dst: str) -> str:
    """Puts the local folder `local` at `dst` (replacing what was there); returns `dst`."""
    if not is_remote(dst):
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(local, dst)
        return dst
    remove(dst)
    _copy_tree(local, dst)
    return dst


def move(src: str, dst: str) -> str:
    """Moves the file or folder `src` to `dst` (which must not exist); returns `dst`. A
    local rename; remotely (no renames in an object store) a copy, then `src` removed."""
    if exists(dst):
        raise FileExistsError(f"{dst} already exists")
    if not is_remote(src) and not is_remote(dst):
        os.replace(src, dst)
        return dst
    if isdir(src):
        _copy_tree(src, dst)
    else:
        copy_file(src, dst)
    remove(src)
    return dst


_LOCAL_COPIES: dict[str, str] = {}


def local_dir(prefix: str = "jaxstep_") -> str:
    """A fresh local temporary folder, removed when the process exits."""
    folder = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, folder, True)
    return folder


def local_copy(path: str) -> str:
    """A local folder or file with the content of `path`: `path` itself when local (or a
    hub name); a URL is downloaded once per process into a temporary folder."""
    if not path or not is_remote(path):
        return path
    path = absolute(path)
    if path not in _LOCAL_COPIES:
        started = time.time()
        dst = join(local_dir("jaxstep_remote_"), basename(path))
        if isdir(path):
            _copy_tree(path, dst)
        elif exists(path):
            copy_file(path, dst)
        else:
            raise FileNotFoundError(f"{path} does not exist")
        logger.info("downloaded %s to %s (%.1f s)", path, dst, time.time() - started)
        _LOCAL_COPIES[path] = dst
    return _LOCAL_COPIES[path]


class Staged:
    """A file written through a local copy: appends and re-opens go to `local`, and
    `push()` copies it to `path` (remote paths have no appends). Local paths are used
    directly (`local == path`, `push` does nothing).

    `resume=True` starts the local copy from what `path` holds.
    """

    def __init__(self, path: str, *, resume: bool = True):
        self.path = os.fspath(path)
        self.remote = is_remote(self.path)
        if not self.remote:
            self.local = self.path
            return
        self.local = join(local_dir("jaxstep_staged_"), posixpath.basename(self.path))
        if resume and exists(self.path):
            copy_file(self.path, self.local)

    def push(self) -> None:
        if self.remote and os.path.exists(self.local):
            makedirs(parent(self.path))
            copy_file(self.local, self.path)


def agree(flag: bool) -> bool:
    """Process 0's `flag` on every process (a collective when there are several), so that
    decisions such as "this stage is done" are the same everywhere."""
    import jax
    if jax.process_count() == 1:
        return bool(flag)
    import numpy as np
    from jax.experimental import multihost_utils
    return bool(multihost_utils.broadcast_one_to_all(np.asarray(bool(flag), np.int32)))

"""A fake `gs://` bucket for tests: `gs://<bucket>/<key>` is `<root>/<bucket>/<key>` on
the local disk.

`etils.epath` sends `gs://` paths to fsspec's "gcs" filesystem when TensorFlow is not
installed; `install(root)` registers a local-disk filesystem under that name, so every
file jaxstep writes through `jaxstep.paths` (summaries, exports, metrics, reports,
reward-model data) lands under `root`. Orbax writes checkpoint arrays through
TensorStore's own GCS driver, which no fsspec filesystem can stand in for, so
`install` also points `jaxstep.checkpoint` at the same local folder.

Launched runs: `python tests/fake_bucket.py <root> <jaxstep.main flags...>` installs the
fake bucket, then runs `python -m jaxstep.main <flags...>`.
"""
from __future__ import annotations

import os
import sys

import fsspec
from fsspec.implementations.local import LocalFileSystem

PREFIXES = ("gs://", "gcs://")


def local_path(root: str, path) -> str:
    """The local file behind `gs://...` (other paths unchanged)."""
    path = os.fspath(path)
    for prefix in PREFIXES:
        if path.startswith(prefix):
            return os.path.join(root, path[len(prefix):])
    return path


def install(root) -> str:
    """Registers the fake bucket under `root` (created); returns `root`."""
    root = os.path.abspath(os.fspath(root))
    os.makedirs(root, exist_ok=True)

    class FakeGCS(LocalFileSystem):
        protocol = ("gs", "gcs")

        def __init__(self, *args, finalize_on_close=None, **kwargs):  # gcsfs's argument
            super().__init__(*args, **kwargs)

        @classmethod
        def _strip_protocol(cls, path):
            if isinstance(path, (list, tuple)):
                return type(path)(cls._strip_protocol(p) for p in path)
            return LocalFileSystem._strip_protocol(local_path(root, path))

    for name in ("gs", "gcs"):
        fsspec.register_implementation(name, FakeGCS, clobber=True)
    from etils.epath import backend
    backend.fsspec_backend._get_filesystem.cache_clear()  # forget a real gcsfs instance

    from jaxstep import checkpoint
    if not hasattr(checkpoint, "_real_as_path"):
        checkpoint._real_as_path = checkpoint._as_path
    checkpoint._as_path = lambda directory: checkpoint._real_as_path(local_path(root, directory))
    return root


def uninstall() -> None:
    """Undoes `install`: fsspec's own gs/gcs filesystems, the real checkpoint paths."""
    registry = sys.modules["fsspec.registry"]  # (`fsspec.registry` is its read-only view)
    for name in ("gs", "gcs"):
        registry._registry.pop(name, None)
    from etils.epath import backend
    backend.fsspec_backend._get_filesystem.cache_clear()
    from jaxstep import checkpoint
    if hasattr(checkpoint, "_real_as_path"):
        checkpoint._as_path = checkpoint._real_as_path


if __name__ == "__main__":
    install(sys.argv[1])
    import runpy
    sys.argv = ["jaxstep.main", *sys.argv[2:]]
    runpy.run_module("jaxstep.main", run_name="__main__", alter_sys=True)

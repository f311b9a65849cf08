"""Host memory: glibc's malloc on transparent huge pages for XLA's large CPU buffers.

XLA's CPU runtime allocates a program's temporaries afresh on every call (the PPO update
of `bench/ppo_step.py`: 2.65 GiB), and glibc serves blocks that large with `mmap`, so
each call faults them in again 4 KiB at a time: about 680k minor page faults and a
second of kernel time per update on a 2-core machine. glibc's tunable
`glibc.malloc.hugetlb=1` (glibc 2.35+) makes malloc ask for transparent huge pages
(`madvise`), and the same update faults about 3k times. The math is untouched: the
same programs run on the same numbers.

Tunables are read when a process starts, so `python -m jaxstep.main` (and the
benchmarks) re-execute themselves once, before importing JAX, with the tunable added
to `GLIBC_TUNABLES` (`reexec_with_huge_pages`): same process id, same command line.
Nothing happens off Linux, with another C library or an older glibc, when the kernel's
transparent huge pages are `[never]`, when `GLIBC_TUNABLES` already sets
`glibc.malloc.hugetlb`, or with `JAXSTEP_MALLOC_HUGEPAGES=0`. The benchmarks run their
peer library in the environment as it was before (`environ_before`): each side as it
runs by default.
"""
from __future__ import annotations

import os
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT = "JAXSTEP_MALLOC_HUGEPAGES"  # "0": leave malloc as it is
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"
BEFORE = "JAXSTEP_GLIBC_TUNABLES_BEFORE"  # set by the re-exec: GLIBC_TUNABLES as it was
_ABSENT = "<unset>"


def _glibc_version() -> tuple[int, int] | None:
    """(major, minor) of the running glibc, or None (another C library, not Linux)."""
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()  # e.g. "glibc 2.36"
        major, minor = version.split(".")[:2]
        return (int(major), int(minor)) if name == "glibc" else None
    except (AttributeError, OSError, ValueError):
        return None


def _thp_mode() -> str | None:
    """The kernel's transparent-huge-page mode (`always`, `madvise`, `never`), or None."""
    try:
        with open(THP_MODE_FILE) as f:
            text = f.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def huge_pages_env(environ: dict, *, platform: str = sys.platform, glibc: tuple[int, int] | None = None,
                   thp_mode: str | None = None) -> dict | None:
    """The environment to re-execute with (`environ` plus the tunable), or None when
    there is nothing to do (see the module docstring for when)."""
    if environ.get(OPT_OUT, "1") == "0" or not platform.startswith("linux"):
        return None
    if glibc is None or glibc < (2, 35) or thp_mode in (None, "never"):
        return None
    tunables = environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" in tunables:
        return None
    return dict(environ, GLIBC_TUNABLES=f"{tunables}:{TUNABLE}" if tunables else TUNABLE,
                **{BEFORE: environ.get("GLIBC_TUNABLES", _ABSENT)})


def environ_before(environ: dict) -> dict:
    """`environ` as it was before `reexec_with_huge_pages` added the tunable (for a child
    process that should run as it would on its own, e.g. a benchmark's peer library)."""
    if BEFORE not in environ:
        return dict(environ)
    env = {k: v for k, v in environ.items() if k not in (BEFORE, "GLIBC_TUNABLES")}
    if environ[BEFORE] != _ABSENT:
        env["GLIBC_TUNABLES"] = environ[BEFORE]
    return env


def reexec_with_huge_pages() -> None:
    """Replaces this process with itself (same pid, `sys.orig_argv`) under
    `GLIBC_TUNABLES=...glibc.malloc.hugetlb=1`; returns at once when there is nothing to
    do. Call it first thing in an entry point, before JAX is imported."""
    env = huge_pages_env(dict(os.environ), glibc=_glibc_version(), thp_mode=_thp_mode())
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)

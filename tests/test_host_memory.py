"""`jaxstep.host_memory`: when the entry points re-execute with glibc's huge-page
tunable, that the re-exec keeps the process and its command line, and that the tunable
cuts the page faults of a large buffer (counted by the kernel, `ru_minflt`)."""
import os
import subprocess
import sys

import pytest

from jaxstep import host_memory
from jaxstep.host_memory import BEFORE, TUNABLE, environ_before, huge_pages_env

HOST = dict(platform="linux", glibc=(2, 36), thp_mode="madvise")


def test_when_the_environment_gets_the_tunable():
    assert huge_pages_env({}, **HOST) == {"GLIBC_TUNABLES": TUNABLE, BEFORE: "<unset>"}
    mine = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "A": "1"}
    assert huge_pages_env(mine, **HOST) == {
        "GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1", "A": "1",
        BEFORE: "glibc.malloc.arena_max=2"}
    assert huge_pages_env({}, **dict(HOST, thp_mode="always"))["GLIBC_TUNABLES"] == TUNABLE
    # a peer process gets the environment as it was before
    assert environ_before(huge_pages_env(mine, **HOST)) == mine
    assert environ_before(huge_pages_env({"A": "1"}, **HOST)) == {"A": "1"}
    assert environ_before(mine) == mine
    # nothing to do:
    assert huge_pages_env({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, **HOST) is None  # the user's choice
    assert huge_pages_env({"JAXSTEP_MALLOC_HUGEPAGES": "0"}, **HOST) is None
    assert huge_pages_env({}, **dict(HOST, platform="darwin")) is None
    assert huge_pages_env({}, **dict(HOST, glibc=None)) is None  # musl
    assert huge_pages_env({}, **dict(HOST, glibc=(2, 34))) is None  # no hugetlb tunable before 2.35
    assert huge_pages_env({}, **dict(HOST, thp_mode="never")) is None
    assert huge_pages_env({}, **dict(HOST, thp_mode=None)) is None


def _host_qualifies() -> bool:
    return huge_pages_env({}, glibc=host_memory._glibc_version(), thp_mode=host_memory._thp_mode()) is not None


def _run(code: str, **env) -> str:
    full = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "JAXSTEP_MALLOC_HUGEPAGES")}
    return subprocess.run([sys.executable, "-c", code, "arg1"], env=dict(full, **env), capture_output=True,
                          text=True, check=True, timeout=120).stdout


REEXEC = """
import os, sys
from jaxstep import host_memory
print("before", os.getpid(), flush=True)
host_memory.reexec_with_huge_pages()
print("after", os.getpid(), sys.argv[1:], os.environ.get("GLIBC_TUNABLES"))
"""


def test_reexec_keeps_the_process_and_its_arguments():
    if not _host_qualifies():
        pytest.skip("this host has no glibc >= 2.35 with transparent huge pages: nothing to re-execute")
    lines = _run(REEXEC).splitlines()
    # the code ran twice: once before the exec, once after it (where there is nothing left to do)
    assert [line.split()[0] for line in lines] == ["before", "before", "after"]
    pid = lines[0].split()[1]
    assert lines[1].split()[1] == pid and lines[2].split()[1] == pid
    assert lines[2].endswith(f"['arg1'] {TUNABLE}")  # GLIBC_TUNABLES was unset here (_run)
    assert _run(REEXEC, JAXSTEP_MALLOC_HUGEPAGES="0").splitlines()[-1].endswith("['arg1'] None")


FAULTS = """
import resource
from jaxstep import host_memory
host_memory.reexec_with_huge_pages()
import ctypes
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
size = 2 ** 29  # 512 MiB straight from malloc, as XLA's CPU runtime takes its buffers (numpy
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt  # madvises huge pages by itself)
ctypes.memset(libc.malloc(size), 1, size)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_the_tunable_cuts_the_page_faults_of_a_large_buffer():
    if not _host_qualifies():
        pytest.skip("this host has no glibc >= 2.35 with transparent huge pages")
    plain = int(_run(FAULTS, JAXSTEP_MALLOC_HUGEPAGES="0"))
    huge = int(_run(FAULTS))
    assert plain > 100_000  # 512 MiB in 4 KiB pages: 131072 faults
    assert huge < plain / 20  # 2 MiB pages: 256 (a few more where the kernel has none free)

"""Shared test setup: 8 fake CPU devices, float32, and the real data folder."""
import os

# Must be set before jax is imported anywhere: gives the mesh tests 8 CPU devices.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def shared_data_dir() -> pathlib.Path | None:
    """The real GSM8K/MATH/PRM800K files: $JAXSTEP_SHARED_DATA or ../shared/data."""
    env = os.environ.get("JAXSTEP_SHARED_DATA")
    path = pathlib.Path(env) if env else REPO_ROOT.parent / "shared" / "data"
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """Path to the real data; fails in CI (CI=true) when missing, skips elsewhere."""
    path = shared_data_dir()
    if path is None:
        msg = "real data folder ../shared/data not found (set JAXSTEP_SHARED_DATA)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="module")
def tpu():
    """The TPU compiler (libtpu, the `[tpu]` extra): skip without it, fail under CI."""
    from jaxstep.parallel import aot  # noqa: PLC0415 (only the AOT tests need it)
    if not aot.libtpu_available():
        msg = 'the TPU compiler is not installed (pip install -e ".[tpu]")'
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)

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
    _needs(aot.libtpu_available(), 'the TPU compiler is not installed (pip install -e ".[tpu]")')


@pytest.fixture(scope="module")
def cuda_plugin():
    """The CUDA PJRT plugin (the `[gpu-plan]` extra): skip without it, fail under CI."""
    from jaxstep.parallel import gpu_targets  # noqa: PLC0415 (only the GPU plan tests need it)
    _needs(gpu_targets.plugin_available(), 'the CUDA PJRT plugin is not installed (pip install -e ".[gpu-plan]")')


def _needs(found: bool, msg: str) -> None:
    """An optional compiler the tests need: skip without it, fail under CI (CI=true)."""
    if not found:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture(scope="module")
def compilation_cache(tmp_path_factory):
    """A persistent compilation cache for one test module (`pytestmark =
    pytest.mark.usefixtures("compilation_cache")`): a resumed stage run (a new process
    in real life) recompiles the same programs, which then take a second, not 20."""
    import jax  # here, after XLA_FLAGS is set above
    from jax._src import compilation_cache as cache
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    old = {n: getattr(jax.config, n) for n in names}
    cache.reset_cache()
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    yield
    for n, v in old.items():
        jax.config.update(n, v)
    cache.reset_cache()


@pytest.fixture(scope="module")
def tiny_chain(tmp_path_factory):
    """The PPO stage tests' inputs, once per module: a tiny random policy exported as
    `<root>/sft/export` and a PRM and an ORM from it (`run_helpers.build_tiny_chain` on
    `run_helpers.tiny_ppo_config()`)."""
    from run_helpers import build_tiny_chain, tiny_ppo_config  # imports jax: after XLA_FLAGS
    return build_tiny_chain(tmp_path_factory.mktemp("ppo_chain"), tiny_ppo_config())

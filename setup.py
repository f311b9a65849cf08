"""jaxstep: RL from process and outcome reward models for math reasoning, in JAX/Flax."""
from setuptools import find_packages, setup

# Pinned to the versions the test suite runs against.
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "ml-collections==1.1.0",
    "absl-py==2.5.1",
    "transformers==5.23.0",
    "datasets==5.2.0",
    "tokenizers==0.23.3",
    # Sentencepiece tokenizer folders (spm.model, e.g. DeBERTa-v3): transformers converts
    # them with both packages when they have no tokenizer.json.
    "sentencepiece==0.2.3",
    "protobuf==7.36.2",
    "safetensors==0.8.0",
    "math-verify==0.9.0",
    "grain==0.2.18",
    "tensorboardX==2.6.5",
    "tqdm==4.70.1",
    "matplotlib==3.11.2",
    "numpy>=2.0",
]

EXTRAS_REQUIRE = {
    # torch is used only by the tests, to check our models against transformers'
    # PyTorch implementations. 2.13.0 is the CPU build.
    "test": ["pytest==9.2.0", "torch==2.13.0"],
    # libtpu (a 213 MB wheel, 684 MB installed): runs on TPU VMs, and also compiles for a
    # TPU slice on any machine (jaxstep.parallel.aot; tests/test_aot.py skips without it
    # and fails with CI=true, so CI installs this extra too).
    # gcsfs: gs:// workdirs and data (etils.epath reads and writes them through fsspec).
    "tpu": ["jax[tpu]==0.10.2", "gcsfs==2026.10.1"],
    "gcs": ["gcsfs==2026.10.1"],
    "gpu": ["jax[cuda12]==0.10.2"],
    # The CUDA PJRT plugin alone (about 180 MB, no CUDA libraries): the plan stage compiles
    # for h100-N / h200-N GPUs on any machine (jaxstep.parallel.gpu_targets;
    # tests/test_plan_gpu.py skips without it and fails with CI=true).
    "gpu-plan": ["jax-cuda12-plugin==0.10.2"],
    "tfds": ["tensorflow-datasets==4.9.10", "array-record"],
}

setup(
    name="jaxstep",
    version="0.1.0",
    description="PPO on process (PRM) and outcome (ORM) reward models for math reasoning, in JAX/Flax.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["jaxstep", "jaxstep.*"]),
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={"console_scripts": ["jaxstep=jaxstep.main:run_main"]},
)

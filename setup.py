"""qpo_jax: query-dependent prompt optimisation by multi-loop offline RL, in JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name="qpo_jax",
    version="0.1.0",
    description="Reference JAX/Flax implementation of QPO (query-dependent prompt optimization)",
    packages=find_packages(include=["qpo_jax", "qpo_jax.*"]) + ["qpo_jax.configs"],
    package_dir={"qpo_jax.configs": "configs"},  # an installed user has the configs too
    entry_points={"console_scripts": ["qpo-jax = qpo_jax.cli:run"]},
    # TweetEval emotion (see its NOTICE) and our source prompts: the embedded default task
    package_data={"qpo_jax": ["data/tweet_emotion/*", "data/prompts/*.yaml"]},
    python_requires=">=3.11",  # tested on 3.11 (CI); Colab runs 3.12, where jaxlib 0.10.2 has wheels too
    install_requires=[
        "jax==0.10.2",
        "jaxlib==0.10.2",
        "flax==0.12.8",
        "optax==0.2.8",
        "orbax-checkpoint",
        "ml-collections",
        "absl-py",
        "numpy>=2",
        "ml_dtypes",
        "transformers>=5,<6",
        "tokenizers",
        "tensorflow-datasets",
        "gguf==0.19.0",
        "safetensors",
        "crc32c",  # TFRecord framing checksums (masked CRC-32C)
        "pyyaml",
        "matplotlib",
        "tensorboardX",  # TensorBoard event files without TensorFlow
        "tqdm",
    ],
    extras_require={
        # torch==2.13.0 is the CPU wheel on the build machines' disk; HF's GGUF
        # loader (the reference in tests) needs accelerate.
        "test": ["pytest", "pytest-xdist==3.8.0",  # `-n 2`: the suite on both cores
                 "torch==2.13.0", "accelerate",
                 "tfrecord",  # an independent TFRecord reader for the store's tests
                 "nbclient", "nbformat", "ipykernel",  # the colab/ notebooks run in tests
                 "openai",  # the servers are tested with the OpenAI client
                 "filelock",  # JAX locks the suite's shared compile cache with it (conftest)
                 # qpo_jax.dspy_adapter is tested with DSPy; experiments/compare_optimizers.py
                 # runs its MIPROv2 (which needs optuna) and GEPA
                 "dspy==3.4.1", "optuna==5.1.0"],
    },
)

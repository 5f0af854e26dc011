"""lifejax: the whole LLM training lifecycle in one JAX code path."""

import setuptools

# Why each dependency is here is written in README.md ("Dependencies").
INSTALL_REQUIRES = [
    "jax>=0.10.2,<0.13",
    "jaxlib>=0.10.2,<0.13",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.5,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    "grain>=0.2.15,<0.3",
    # 0.2.1, not 0.2.3: 0.2.3's generated protobuf code needs protobuf 7, while
    # apache-beam caps protobuf below 7; 0.2.1 imports with either.
    "sentencepiece==0.2.1",
    "gin-config>=0.5,<0.6",
    "seqio>=0.0.19,<0.1",
    "tensorflow-datasets>=4.9.7,<5",
    "tensorflow>=2.18,<2.22",
    "numpy>=1.26,<3",
    "pyarrow>=15",
    "array-record>=0.8,<0.9",
    "tensorboardX>=2.6,<3",
    "matplotlib>=3.8,<4",
    "tqdm>=4.66,<5",
    "pyyaml>=6,<7",
    "safetensors>=0.4,<1",
    "absl-py>=2,<3",
    "importlib_resources>=6",  # TFDS builders defined in a module need it
    "jinja2>=3.1,<4",  # exporting chat templates in the HF (Jinja) format
    "tokenizers>=0.21,<1",  # HF tokenizer.json: import, export, run dirs
    "py3langid==0.4.0",  # language ID for curation; its model ships in the wheel
]

EXTRAS = {
    "hf": ["transformers>=4.45,<6", "torch==2.13.0"],
    "beam": ["apache-beam>=2.60,<3"],
    "curation": ["datasketch>=1.6,<3", "rensa==0.5.0"],
    "notebook": ["nbclient>=0.10,<1", "nbformat>=5.10,<6", "ipykernel>=6.29,<8"],
    "eval": ["lm-eval==0.4.13"],
}
EXTRAS["test"] = sorted(
    {"pytest>=8,<10", "hypothesis>=6,<7", "pytest-xdist>=3.5,<4"}
    | set(EXTRAS["hf"])
    | set(EXTRAS["beam"])
    | set(EXTRAS["curation"])
    | set(EXTRAS["notebook"])
    | set(EXTRAS["eval"])
)

setuptools.setup(
    name="lifejax",
    version="0.1.0",
    description="The whole LLM training lifecycle in one JAX code path.",
    packages=setuptools.find_packages(include=["lifejax", "lifejax.*"]),
    # The synthetic world's word tables (sentence templates, slot choices).
    package_data={"lifejax.world": ["grammars/*.json"]},
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)

"""Build the megatron_mio package and its pybind11 extension (megatron_mio._C) from csrc/."""

import glob

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import find_packages, setup

# The console scripts: one per tool (tools/<name>.py is a shim over the same main).
CONSOLE_SCRIPTS = {
    "mio-pretrain": "megatron_mio.pretrain:main",
    "mio-build-tokenizer": "megatron_mio.commands.build_tokenizer:main",
    "mio-preprocess": "megatron_mio.commands.preprocess_data:main",
    "mio-merge-datasets": "megatron_mio.commands.merge_datasets:main",
    "mio-pack-stats": "megatron_mio.commands.pack_stats:main",
    "mio-plan-parallelism": "megatron_mio.commands.plan_parallelism:main",
    "mio-convert-from-hf": "megatron_mio.commands.convert_from_hf:main",
    "mio-convert-to-hf": "megatron_mio.commands.convert_to_hf:main",
    "mio-compare-logits": "megatron_mio.commands.compare_logits:main",
    "mio-generate": "megatron_mio.commands.generate:main",
    "mio-tokenize-speech": "megatron_mio.commands.tokenize_speech:main",
    "mio-decode-speech": "megatron_mio.commands.decode_speech:main",
    "mio-build-wheelhouse": "megatron_mio.commands.build_wheelhouse:main",
    "mio-checkpoint": "megatron_mio.checkpoint.__main__:main",
}

ext_modules = [
    Pybind11Extension(
        "megatron_mio._C",
        sorted(glob.glob("csrc/*.cpp")),
        cxx_std=17,
        extra_compile_args=["-O3"],
    ),
]

setup(
    name="megatron_mio",
    version="0.1.0",
    description="Megatron-Core training system for MIO, an any-to-any multimodal LLM",
    packages=find_packages(include=["megatron_mio", "megatron_mio.*"]),
    ext_modules=ext_modules,
    cmdclass={"build_ext": build_ext},
    entry_points={"console_scripts": [f"{name}={target}" for name, target in CONSOLE_SCRIPTS.items()]},
    python_requires=">=3.10",
    install_requires=[
        "megatron-core>=0.19,<0.20",
        "torch>=2.4",
        "sentencepiece",
        "numpy",
        "transformers",
        "safetensors",
        "tqdm",
        "pyyaml",
        "tensorboard",
        "nltk",
        "psutil",
    ],
    extras_require={
        # GPU extras: optional, imported only when present (apex: build from source, see README).
        "gpu": ["transformer-engine[pytorch]", "flash-attn"],
        "test": ["pytest", "hypothesis", "matplotlib", "wandb"],
        # Speech codec (megatron_mio.codec): install speechtokenizer itself with --no-deps, as
        # ci/install_audio.sh does: its metadata pulls torchaudio, which replaces torch.
        "speech": ["soundfile", "soxr", "einops"],
    },
)

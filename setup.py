"""Build the megatron_mio package and its pybind11 extension (megatron_mio._C) from csrc/."""

import glob

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import find_packages, setup

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
        "test": ["pytest", "hypothesis", "matplotlib"],
        # Speech codec (megatron_mio.codec): install speechtokenizer itself with --no-deps, as
        # ci/install_audio.sh does: its metadata pulls torchaudio, which replaces torch.
        "speech": ["soundfile", "soxr", "einops"],
    },
)

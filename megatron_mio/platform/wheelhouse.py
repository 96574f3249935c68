"""A wheelhouse for a node without internet (``tools/build_wheelhouse.py``).

Clusters' compute nodes, and a lent GPU node, often have no internet and a CUDA PyTorch image that
already holds torch, triton, numpy, transformers and friends.  The wheelhouse holds what such an
image lacks: this project's wheel with its compiled extension (built here by an interpreter of
the target's Python version), megatron-core, and the rest of the project's requirements, followed
through their own requirements and stopped at every package the image provides.  On the node:

    pip install --no-index --no-deps --target DIR WHEELHOUSE/*.whl     # then PYTHONPATH=DIR
    pip install --no-index --find-links WHEELHOUSE megatron_mio        # into an environment with torch

Each wheel is fetched by ``pip download --no-deps`` for the target's platform tags, and its
``Requires-Dist`` read from the wheel itself (markers evaluated for the target), so that torch
and its CUDA libraries are never resolved or downloaded.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from email.parser import Parser
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

from megatron_mio.atomic import atomic_directory

REPO = Path(__file__).resolve().parents[2]
MANIFEST = "wheelhouse.json"

# What a CUDA PyTorch image (NGC-style, or the lent node: torch 2.11 + CUDA 13, transformers 5.x)
# already has: torch and what torch and transformers require, and the build/runtime basics.
CUDA_TORCH_IMAGE = frozenset(canonicalize_name(name) for name in (
    "torch", "triton", "numpy", "transformers", "sentencepiece", "safetensors", "pybind11", "psutil",
    "pyyaml", "tqdm", "packaging", "filelock", "fsspec", "jinja2", "markupsafe", "networkx", "sympy", "mpmath",
    "typing-extensions", "setuptools", "wheel", "pip", "huggingface-hub", "hf-xet", "tokenizers", "regex",
    "requests", "urllib3", "idna", "certifi", "charset-normalizer", "typer-slim", "typer", "click",
    "shellingham", "rich", "markdown-it-py", "mdurl", "pygments", "httpx", "httpcore", "h11", "anyio", "sniffio",
))


class WheelhouseError(RuntimeError):
    """A wheelhouse cannot be built as asked; the message says what to change."""


@dataclasses.dataclass(frozen=True)
class WheelhouseConfig:
    output: Path
    python: str = sys.executable  # builds the project's wheel: its version is the target's
    python_version: str = "3.12"
    platform: str = "manylinux_2_28_x86_64"
    provided: frozenset = CUDA_TORCH_IMAGE
    source: Path = REPO


def target_environment(config: WheelhouseConfig) -> dict:
    """The marker environment of the target node (Linux, CPython ``python_version``)."""
    machine = "x86_64" if config.platform.endswith("x86_64") else config.platform.rsplit("_", 1)[-1]
    return {"python_version": config.python_version, "python_full_version": f"{config.python_version}.0",
            "implementation_name": "cpython", "platform_python_implementation": "CPython",
            "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
            "platform_machine": machine, "implementation_version": f"{config.python_version}.0",
            "platform_release": "", "platform_version": "", "extra": ""}


def wheel_requirements(wheel: Path, environment: dict) -> list[Requirement]:
    """The wheel's ``Requires-Dist`` that apply on the target (no extras)."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(archive.read(name).decode("utf-8"))
    requirements = [Requirement(text) for text in metadata.get_all("Requires-Dist") or []]
    return [r for r in requirements if r.marker is None or Marker(str(r.marker)).evaluate(environment)]


def _run(command: list[str], what: str) -> None:
    proc = subprocess.run([str(part) for part in command], capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [line for line in (proc.stderr + proc.stdout).splitlines() if "is ignored" not in line]
        raise WheelhouseError(f"{what} failed: " + " / ".join(lines[-8:]))


def check_builder(config: WheelhouseConfig) -> None:
    """The project's wheel holds a compiled extension: the interpreter that builds it must be the
    target's version."""
    proc = subprocess.run([config.python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                          capture_output=True, text=True)
    found = proc.stdout.strip() if proc.returncode == 0 else f"not runnable ({proc.stderr.strip()[-200:]})"
    if found != config.python_version:
        raise WheelhouseError(
            f"--python {config.python} is Python {found}, but the wheelhouse targets {config.python_version}: "
            f"the extension megatron_mio._C is compiled for the interpreter that builds it; pass a "
            f"{config.python_version} interpreter with setuptools and pybind11 (e.g. .venv/bin/python)")


# What the project's wheel is built from; copied, so that nothing stale in the checkout's build/
# (a module deleted since the last build) ends up in the wheel, and nothing is written there.
WHEEL_SOURCES = ("setup.py", "pyproject.toml", "csrc", "megatron_mio")


def build_project_wheel(config: WheelhouseConfig, into: Path) -> Path:
    """This checkout as a wheel, its C++ extension compiled by ``config.python``."""
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / "megatron_mio-source"
        source.mkdir()
        for name in WHEEL_SOURCES:
            origin = config.source / name
            if origin.is_dir():
                shutil.copytree(origin, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyc"))
            else:
                shutil.copy2(origin, source / name)
        _run([config.python, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", into,
              source], "building the project's wheel (pip wheel --no-build-isolation)")
    return next(into.glob("megatron_mio-*.whl"))


def platform_tags(platform: str) -> list[str]:
    """``platform`` and the older glibc tags a node that runs it also runs (pip does not expand a
    custom ``--platform`` itself): manylinux_2_28_x86_64 -> manylinux_2_28 .. 2_17, manylinux2014."""
    head, _, rest = platform.partition("manylinux_2_")
    minor, _, machine = rest.partition("_")
    if head or not minor.isdigit():
        return [platform]
    tags = [f"manylinux_2_{m}_{machine}" for m in range(int(minor), 16, -1)]
    return tags + [f"manylinux2014_{machine}"]


def download_wheel(requirement: Requirement, config: WheelhouseConfig, into: Path) -> Path:
    """One wheel for the target's tags, without its dependencies."""
    before = set(into.glob("*.whl"))
    spec = f"{requirement.name}{requirement.specifier}"
    _run([config.python, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
          *(f"--platform={tag}" for tag in platform_tags(config.platform)), "--python-version",
          config.python_version, "--implementation", "cp", "-d", into, spec],
         f"downloading {spec} for Python {config.python_version} on {config.platform}")
    new = set(into.glob("*.whl")) - before
    if not new:  # already there (downloaded for another requirement)
        return next(w for w in into.glob("*.whl")
                    if parse_wheel_filename(w.name)[0] == canonicalize_name(requirement.name))
    return new.pop()


def collect(config: WheelhouseConfig, into: Path) -> list[Path]:
    """The project's wheel and, transitively, every requirement the target image does not provide."""
    environment = target_environment(config)
    project = build_project_wheel(config, into)
    wheels = {"megatron-mio": project}
    pending = wheel_requirements(project, environment)
    while pending:
        requirement = pending.pop(0)
        name = canonicalize_name(requirement.name)
        if name in config.provided:
            continue
        if name in wheels:
            version = parse_wheel_filename(wheels[name].name)[1]
            if not requirement.specifier.contains(Version(str(version)), prereleases=True):
                raise WheelhouseError(f"{requirement} conflicts with {wheels[name].name} already in the wheelhouse")
            continue
        wheels[name] = download_wheel(requirement, config, into)
        pending += wheel_requirements(wheels[name], environment)
    return sorted(wheels.values())


def build(config: WheelhouseConfig) -> dict:
    """Build the wheelhouse in ``config.output`` (replaced whole when complete); its manifest."""
    check_builder(config)
    with atomic_directory(config.output) as staging, tempfile.TemporaryDirectory() as scratch:
        wheels = collect(config, Path(scratch))
        for wheel in wheels:
            wheel.rename(staging / wheel.name)
        manifest = {
            "python_version": config.python_version, "platform": config.platform,
            "provided_by_the_image": sorted(config.provided),
            "wheels": {w.name: (staging / w.name).stat().st_size for w in wheels},
            "install": {"read-only image": "pip install --no-index --no-deps --target DIR WHEELHOUSE/*.whl",
                        "environment with torch": "pip install --no-index --find-links WHEELHOUSE megatron_mio"},
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest

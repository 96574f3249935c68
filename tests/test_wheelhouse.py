"""The wheelhouse for an offline node (tools/build_wheelhouse.py): built from PyPI here, installed
with --no-index into an empty target, imported from there in a fresh process, as docs/gpu.md does."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from tests.distributed import REPO_ROOT

MIB = 2**20


def _fresh_python(code: str, pythonpath: list, cwd) -> dict:
    """``code`` (which prints one JSON line) in a new interpreter that sees only ``pythonpath``
    in front of its own site-packages, run away from the repository."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join(map(str, pythonpath))
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_wheelhouse_installs_offline_and_imports_from_its_target(tmp_path):
    from megatron_mio.commands import build_wheelhouse

    wheelhouse = tmp_path / "whl"
    assert build_wheelhouse.main(["--output", str(wheelhouse), "--max-mib", "60"]) == 0
    manifest = json.loads((wheelhouse / "wheelhouse.json").read_text())
    names = sorted(manifest["wheels"])
    assert any(n.startswith("megatron_mio-") and "-cp312-cp312-" in n for n in names), names
    assert any(n.startswith("megatron_core-0.19.") and "cp312" in n for n in names), names
    # What the node's CUDA PyTorch image has never travels (torch and its CUDA libraries above all).
    assert not [n for n in names if n.split("-")[0] in ("torch", "triton", "numpy", "transformers")
                or n.startswith("nvidia")], names
    assert sum(manifest["wheels"].values()) < 60 * MIB
    with zipfile.ZipFile(next(wheelhouse.glob("megatron_mio-*.whl"))) as wheel:
        assert any(n.startswith("megatron_mio/_C.cpython-312-") for n in wheel.namelist())

    target = tmp_path / "site"  # the runbook's install: no index, no dependency resolution
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--target",
                    str(target), *map(str, sorted(wheelhouse.glob("*.whl")))], check=True, timeout=600)
    where = "import json, megatron_mio._C, megatron.core, megatron_mio.model; print(json.dumps({m.__name__: m.__file__ for m in (megatron_mio._C, megatron.core, megatron_mio.model)}))"
    found = _fresh_python(where, [target], cwd=tmp_path)
    assert all(path.startswith(str(target)) for path in found.values()), found

    # The runbook's layout: the copied checkout (no compiled extension in it) in front of the
    # target. The checkout's code runs; the extension comes from the installed wheel.
    checkout = tmp_path / "checkout"
    shutil.copytree(REPO_ROOT / "megatron_mio", checkout / "megatron_mio",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    found = _fresh_python(where, [checkout, target], cwd=tmp_path)
    assert found["megatron_mio._C"].startswith(str(target))
    assert found["megatron_mio.model"] == str(checkout / "megatron_mio" / "model" / "__init__.py")
    assert found["megatron.core"].startswith(str(target))

    # And the GPU check's sections see that target through the caller's PYTHONPATH.
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(PYTHONPATH=str(target), MIO_USE_CPU="0")
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "bench/gpu_check.py"), "--dry-run", "--sections", ""],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    row = next(line for line in proc.stdout.splitlines() if "megatron.core imports" in line)
    assert "| PASS |" in row and f"from {target}" in row


# ---- the parts, without the network ------------------------------------------------------------


def _wheel_with_requirements(path, requirements: list[str]):
    with zipfile.ZipFile(path, "w") as wheel:
        metadata = "Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n"
        metadata += "".join(f"Requires-Dist: {r}\n" for r in requirements)
        wheel.writestr("demo-1.0.dist-info/METADATA", metadata)
    return path


def test_requirements_are_read_for_the_target_not_for_this_machine(tmp_path):
    from megatron_mio.platform.wheelhouse import WheelhouseConfig, target_environment, wheel_requirements

    wheel = _wheel_with_requirements(tmp_path / "demo-1.0-py3-none-any.whl", [
        "numpy>=1.0", 'tomli; python_version < "3.11"', 'uvloop; sys_platform == "linux"',
        'pywin32; sys_platform == "win32"', 'pytest; extra == "test"', 'nvidia-nccl; platform_machine == "x86_64"',
    ])
    environment = target_environment(WheelhouseConfig(output=tmp_path / "out"))
    assert [r.name for r in wheel_requirements(wheel, environment)] == ["numpy", "uvloop", "nvidia-nccl"]


def test_older_glibc_tags_are_accepted_too():
    from megatron_mio.platform.wheelhouse import platform_tags

    tags = platform_tags("manylinux_2_28_x86_64")
    assert tags[0] == "manylinux_2_28_x86_64" and "manylinux_2_17_x86_64" in tags and tags[-1] == "manylinux2014_x86_64"
    assert platform_tags("win_amd64") == ["win_amd64"]


def test_an_interpreter_of_another_version_is_refused_in_one_line(tmp_path, capsys):
    from megatron_mio.commands import build_wheelhouse

    other = shutil.which("python3.11") or "/usr/bin/python3"
    status = build_wheelhouse.main(["--output", str(tmp_path / "whl"), "--python", other, "--python-version", "3.12"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1
    assert f"--python {other} is Python 3.11" in err and "megatron_mio._C" in err
    assert not (tmp_path / "whl").exists()

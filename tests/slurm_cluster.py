"""What the Slurm tests share: commands with their output on failure, a one-node cluster of a
module's own (ci/slurm/start.sh), and the trainer's outputs in a checkpoint directory.

Slurm must be installed (``bash ci/slurm/install.sh``, which CI runs before pytest); without it
the tests fail, they never skip.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from megatron_mio.checkpoint.layout import read_tracker
from tests.distributed import REPO_ROOT

CI = REPO_ROOT / "ci/slurm"

# Slurm holds a requeued job for two minutes (Reason=BeginTime); the tests release it, but not at
# once: slurmd refuses a credential issued in the same second as the previous run's revocation
# ("Killing non-startable batch JobId=1: Job credential revoked"; seen here).  Send it once.
RELEASE_REQUEUED_JOB = "StartTime=now+2"


def run(cmd, env=None, timeout=120, check=True, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else "(no log)"


def ensure_slurm_installed() -> None:
    install = run(["bash", CI / "install.sh"], timeout=600, check=False)
    if install.returncode != 0:
        pytest.fail("Slurm is not installed and ci/slurm/install.sh could not install it "
                    f"(run it as root before the tests):\n{install.stdout}\n{install.stderr}")


@contextlib.contextmanager
def one_node_cluster(prefix: str):
    """Start munged/slurmctld/slurmd in a state directory of their own; yield the client
    environment (no SLURM_* of an enclosing job); stop the daemons by PID afterwards."""
    ensure_slurm_installed()
    state = tempfile.mkdtemp(prefix=prefix)
    try:
        started = run(["bash", CI / "start.sh", state], timeout=120, check=False)
        if started.returncode != 0:
            pytest.fail(f"could not start the one-node Slurm cluster:\n{started.stdout}\n{started.stderr}")
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        env["SLURM_CONF"] = started.stdout.strip().splitlines()[-1]
        yield env
    finally:
        run(["bash", CI / "stop.sh", state], check=False)
        shutil.rmtree(state, ignore_errors=True)


def metrics(ckpt: Path) -> list[dict]:
    """The records the trainer appended to ``ckpt/metrics.jsonl`` (the launch scripts' place)."""
    path = ckpt / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def latest(ckpt: Path) -> int | None:
    return read_tracker(ckpt)

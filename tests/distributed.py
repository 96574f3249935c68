"""Launch real multi-rank runs for tests: torchrun, the gloo backend, the CPU platform.

``run_torchrun(script, nproc, args)`` starts ``nproc`` processes of ``script`` exactly as a user
would (``python -m torch.distributed.run``), with ``MIO_USE_CPU=1``.  If any rank fails, the
test fails with the combined output of every rank, tracebacks included.  Workers report results
by writing files (usually JSON) into a directory the test passes them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


# Set by torchrun (or by a test that joined a process group in-process): a child must get its own.
RENDEZVOUS_VARIABLES = {
    "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
    "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_env(extra: dict | None = None) -> dict:
    """The environment of a CPU run: one thread per process, the CPU platform switched on."""
    env = {k: v for k, v in os.environ.items() if k not in RENDEZVOUS_VARIABLES}
    env.update(
        MIO_USE_CPU="1",
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]),
        PYTHONWARNINGS="ignore",
        TORCH_CPP_LOG_LEVEL="ERROR",
    )
    env.update(extra or {})
    return env


def run_torchrun(
    script: str | os.PathLike,
    nproc: int,
    args: list[str] | tuple[str, ...] = (),
    *,
    timeout: float = 600,
    env: dict | None = None,
    module: bool = False,
    check: bool = True,
) -> subprocess.CompletedProcess:
    """Run ``script`` (or ``-m module``) on ``nproc`` torchrun ranks; raise with all output on
    failure (``check=False``: return the failed run, for tests of how a run fails)."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run",
        "--nproc-per-node", str(nproc),
        "--master-addr", "127.0.0.1",
        "--master-port", str(free_port()),
    ]
    cmd += ["-m", str(script)] if module else [str(script)]
    cmd += [str(a) for a in args]
    proc = subprocess.run(
        cmd, cwd=REPO_ROOT, env=cpu_env(env), capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{nproc}-rank run failed (exit {proc.returncode}): {' '.join(cmd)}\n"
            f"--- stdout ---\n{proc.stdout[-20000:]}\n--- stderr ---\n{proc.stderr[-20000:]}"
        )
    return proc


def read_rank_results(directory: str | os.PathLike, nproc: int, stem: str = "rank") -> list[dict]:
    """Read ``{stem}{r}.json`` written by each rank; a missing file is a loud failure."""
    results = []
    for rank in range(nproc):
        path = Path(directory) / f"{stem}{rank}.json"
        if not path.exists():
            raise AssertionError(f"rank {rank} wrote no result file {path}")
        results.append(json.loads(path.read_text()))
    return results

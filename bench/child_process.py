"""Child processes of the GPU check and the training benchmark.

On a node where the packages were installed with ``pip install --target DIR`` and are found
through ``PYTHONPATH=DIR``, a child that gets ``PYTHONPATH=<repo>`` instead loses megatron-core.
So every child here gets the caller's environment with the repository put in front; it runs in
its own process group under a time limit (a hang is killed with everything it started), and a
failure is an exception whose message ends with the tail of the child's stderr.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class ChildFailed(RuntimeError):
    """A child exited non-zero or ran past its limit; the message carries its stderr tail."""

    def __init__(self, message: str, stdout: str = "", stderr: str = ""):
        super().__init__(message)
        self.stdout, self.stderr = stdout, stderr


def child_env(extra: dict | None = None, environ=None) -> dict:
    """The caller's environment (``extra`` added), the repository first on ``PYTHONPATH``.

    Entries the caller put on ``PYTHONPATH`` stay, after the repository, in their order.
    """
    environ = dict(os.environ if environ is None else environ)
    environ.update(extra or {})
    kept = [entry for entry in environ.get("PYTHONPATH", "").split(os.pathsep) if entry and entry != str(REPO)]
    environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *kept])
    return environ


def tail(text: str, lines: int = 15, chars: int = 1500) -> str:
    """The last lines of a child's output, on one line (for a table cell)."""
    last = [line.strip() for line in text.strip().splitlines()[-lines:] if line.strip()]
    return " / ".join(last)[-chars:]


def run_child(command: list, *, timeout_s: float, env: dict | None = None, cwd: Path = REPO,
              stdout=subprocess.PIPE, own_group: bool = True) -> subprocess.CompletedProcess:
    """Run ``command``; return it finished with status 0, else raise :class:`ChildFailed`.

    ``env`` defaults to :func:`child_env`.  ``own_group``: the child leads a new process group,
    and past ``timeout_s`` the whole group is killed (compile workers and checkpoint writers
    included); without it (a child of a child that is itself killed as a group) only the child is.
    What it printed before is kept.
    """
    proc = subprocess.Popen([str(part) for part in command], cwd=cwd, env=child_env() if env is None else env,
                            stdout=stdout, stderr=subprocess.PIPE, text=True, start_new_session=own_group)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill(proc, own_group)
        out, err = proc.communicate()
        raise ChildFailed(f"no result within {timeout_s:.0f} s (killed); stderr tail: {tail(err or '')}",
                          out or "", err or "") from None
    finally:
        if proc.poll() is None:  # interrupted while waiting: take the children down too
            _kill(proc, own_group)
    if proc.returncode != 0:
        raise ChildFailed(f"exit status {proc.returncode}; stderr tail: {tail(err or '')}", out or "", err or "")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _kill(proc: subprocess.Popen, group: bool) -> None:
    try:
        if group:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
    except ProcessLookupError:
        pass

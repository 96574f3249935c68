"""The multi-node launch for real: examples/pretrain_stage1.sh on a two-node Slurm cluster.

ci/slurm/start_two_nodes.sh makes two "nodes" on this machine, each a network namespace with its
own hostname, address and slurmd (mio-n1 also runs slurmctld); the launch goes through the same
path a 16-node job takes: ``sbatch -N 2`` -> srun, one task per node -> per node, torchrun with
``--node-rank $SLURM_NODEID`` and the master at the first node's address -> gloo over the veth
pair, on the interface each node chose (its hostname maps to 127.0.1.1, so gloo's default would
not reach the other node).  A tiny CPU model at TP=2 x PP=2: the first node holds pipeline stage
0, the second stage 1, two processes each.

* the two-node job trains with the losses of a one-node run of the same layout, and its
  checkpoint resumes on one node with the losses of the uninterrupted run;
* USR1 to the batch shell reaches the trainers of both nodes, which save one checkpoint; the job
  requeues and resumes, every iteration exactly once;
* a node lost mid-run (link cut, its slurmd and processes killed): the job ends within seconds,
  and a resubmission resumes from the last complete checkpoint;
* starting and stopping the cluster leaves no namespace or daemon behind, also when the start fails.

The tests need root with network namespaces (the CI machine has them); without, they fail and
say why, they never skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from megatron_mio.checkpoint.layout import TRACKER, iteration_dir
from tests.distributed import REPO_ROOT
from tests.slurm_cluster import CI, RELEASE_REQUEUED_JOB, ensure_slurm_installed, latest, metrics, read, run

pytestmark = pytest.mark.slurm

SCRIPT = REPO_ROOT / "examples/pretrain_stage1.sh"
NODES = ("mio-n1", "mio-n2")
ITERS = 10
GLOBAL_BATCH = 4  # examples/configs/tiny_cpu.yaml
SEQ_LENGTH = 256
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
            "BOOT_FAIL", "DEADLINE", "PREEMPTED"}


def _netns_names() -> set[str]:
    return {line.split()[0] for line in run(["ip", "netns", "list"]).stdout.splitlines() if line.strip()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _processes_mentioning(text: str) -> list[int]:
    """Pids whose command line mentions ``text`` (every daemon of a cluster names its STATE)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                if text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def _netns_pids(state: Path) -> list[int]:
    """Every process in the cluster's namespaces (daemons, job steps, trainers)."""
    pids = []
    for line in (state / "nodes").read_text().splitlines():
        out = run(["ip", "netns", "pids", line.split()[1]], check=False).stdout
        pids += [int(pid) for pid in out.split()]
    return pids


def _assert_removed(state: Path, pids: list[int] = ()) -> None:
    """Nothing the cluster in ``state`` created is left: its namespaces (with their veth ends and
    addresses), its daemons, and the processes ``pids`` that ran in its namespaces."""
    created = [line.split()[1] for line in (state / "nodes").read_text().splitlines()]
    assert len(created) == len(NODES)
    assert not set(created) & _netns_names(), f"namespaces left: {set(created) & _netns_names()}"
    host_addresses = run(["ip", "-o", "addr", "show"]).stdout
    assert "10.42.0." not in host_addresses, host_addresses  # (it never had them; nor has it now)
    assert not _processes_mentioning(str(state)), f"daemons left: {_processes_mentioning(str(state))}"
    assert not [pid for pid in pids if _alive(pid)], f"processes left: {[p for p in pids if _alive(p)]}"


class Cluster:
    """Clients of the two-node cluster: Slurm commands run on mio-n1, where slurmctld is."""

    def __init__(self, state: Path, conf: str):
        self.state = state
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        self.env["SLURM_CONF"] = conf

    def on_node(self, node: str, cmd: list, env=None, **kw) -> subprocess.CompletedProcess:
        return run(["bash", CI / "on_node.sh", self.state, node, *cmd], env=env or self.env, **kw)

    def client(self, cmd: list, env=None, **kw) -> subprocess.CompletedProcess:
        return self.on_node(NODES[0], cmd, env=env, **kw)

    def sbatch(self, env: dict, log: Path, *options: str) -> str:
        """Submit the stage-I script; returns the job id.  The nodes have no GPUs (override the
        script's --gpus-per-node=8); -O lets a node run more processes than it has CPUs."""
        cmd = ["sbatch", "--parsable", "-O", "--gpus-per-node=0", "--time=15", f"--output={log}",
               *options, SCRIPT]
        return self.client(cmd, env=env, cwd=REPO_ROOT).stdout.strip().split(";")[0]

    def job(self, job: str) -> dict:
        """The job's fields; {} once the controller has forgotten it.  A busy controller (two
        cores shared with the trainers) can time out a query: asked again then."""
        for _ in range(20):
            proc = self.client(["scontrol", "show", "job", "-o", job], check=False)
            if proc.returncode == 0:
                return dict(item.split("=", 1) for item in proc.stdout.split() if "=" in item)
            if "Invalid job id" in proc.stderr:
                return {}
            print(f"scontrol show job {job} failed ({proc.returncode}), asking again: {proc.stderr.strip()}")
            time.sleep(0.5)
        raise AssertionError(f"scontrol show job {job} keeps failing: {proc.stderr}")

    def wait(self, job: str, log: Path, restarts: int = 0, timeout: float = 400) -> str:
        """Wait until the job has completed after ``restarts`` requeues; returns its log.  A
        requeued job is held two minutes (Reason=BeginTime): released here (RELEASE_REQUEUED_JOB)."""
        deadline = time.time() + timeout
        unseen_since = None
        released = False
        while time.time() < deadline:
            fields = self.job(job)
            if not fields:
                # For a moment while it requeues a job, the controller may not show it.
                unseen_since = unseen_since or time.time()
                assert time.time() - unseen_since < 15, f"job {job} left the controller unseen:\n{read(log)}"
                time.sleep(0.3)
                continue
            unseen_since = None
            if fields.get("JobState") == "PENDING" and fields.get("Reason") == "BeginTime" and not released:
                self.client(["scontrol", "update", f"JobId={job}", RELEASE_REQUEUED_JOB])
                released = True
            text = read(log)
            # While requeueing, a job briefly shows a terminal state: done means terminal after
            # the last run's launch has exited.
            if (fields.get("JobState") in TERMINAL and int(fields.get("Restarts", 0)) >= restarts
                    and text.count("training exited with status") >= restarts + 1):
                assert (fields["JobState"], fields.get("ExitCode")) == ("COMPLETED", "0:0"), \
                    f"job {job}: {fields['JobState']} exit {fields.get('ExitCode')}\n{text}"
                return text
            time.sleep(0.3)
        raise AssertionError(f"job {job} did not finish in {timeout}s:\n{read(log)}")


def _start(state: Path, **env) -> subprocess.CompletedProcess:
    return run(["bash", CI / "start_two_nodes.sh", state], env=dict(os.environ, **env),
                timeout=180, check=False)


@pytest.fixture(scope="module")
def cluster():
    ensure_slurm_installed()
    state = Path(tempfile.mkdtemp(prefix="mio-slurm2-"))
    try:
        started = _start(state)
        if started.returncode != 0:
            pytest.fail(f"could not start the two-node Slurm cluster:\n{started.stdout}\n{started.stderr}")
        yield Cluster(state, started.stdout.strip().splitlines()[-1])
        running = _netns_pids(state)
        assert running, "no process in the nodes' namespaces"
        stopped = run(["bash", CI / "stop_two_nodes.sh", state], check=False)
        assert stopped.returncode == 0, stopped.stderr
        _assert_removed(state, running)
    finally:
        run(["bash", CI / "stop_two_nodes.sh", state], check=False)
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="module")
def stage1_data(tmp_path_factory, mio_tokenizer_dir):
    """The synthetic corpus as a stage-I dataset (tools/preprocess_data.py) and a mixture naming it."""
    from megatron_mio.data.synthetic import write_sample_corpus

    root = tmp_path_factory.mktemp("stage1_data")
    corpus = write_sample_corpus(root / "corpus", seed=0)
    prefix = root / "stage1"
    run([sys.executable, REPO_ROOT / "tools/preprocess_data.py", "--input", corpus["pretrain"],
          "--output-prefix", prefix, "--tokenizer", mio_tokenizer_dir, "--stage", "1",
          "--seq-length", str(SEQ_LENGTH)], cwd=REPO_ROOT, timeout=300,
         env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))  # this tree's package, not an installed one
    mixture = root / "stage1_tiny.yaml"
    mixture.write_text(f"types:\n  pretrain: {{weight: 1, prefixes: [{prefix}]}}\n")
    return {"DATA_CONFIG": str(mixture), "TOKENIZER": mio_tokenizer_dir}


def _train_env(base: dict, data: dict, ckpt: Path, procs_per_node: int, extra: str = "", **settings) -> dict:
    """The tiny CPU run at TP=2 x PP=2, configured only through the script's environment."""
    env = dict(base)
    env.update(
        USE_CPU="1", TP="2", PP="2", GPUS_PER_NODE=str(procs_per_node), MODEL="tiny",
        MIO_REPO=str(REPO_ROOT), PYTHON=sys.executable,
        STAGE_CONFIG=str(REPO_ROOT / "examples/configs/tiny_cpu.yaml"),
        LOAD_DIR="", CKPT_DIR=str(ckpt), TRAIN_ITERS=str(ITERS),
        EXTRA_ARGS=f"--seq-length {SEQ_LENGTH} --attention-backend torch {extra}".strip(),
        PYTHONWARNINGS="ignore", **data, **settings,
    )
    return env


def _same_as_reference(records: list[dict], reference: list[dict]) -> None:
    """Each iteration trained on the reference's batches with the reference's loss, exactly."""
    by_iteration = {r["iteration"]: r for r in reference}
    for record in records:
        ref = by_iteration[record["iteration"]]
        for key in ("loss", "tokens_text", "tokens_image", "tokens_speech", "consumed_samples"):
            assert record[key] == ref[key], (record["iteration"], key, record[key], ref[key])


def _assert_two_node_launch(text: str) -> None:
    """Both nodes ran torchrun with their own node rank, on the interface toward the master."""
    assert "launcher=srun nodes=2 procs/node=2 TP=2 PP=2 master=10.42.0.1:" in text, text
    for rank, node in enumerate(NODES):
        assert (f"node {rank} of 2 ({node}): node rank {rank}, master 10.42.0.1:" in text
                and "GLOO_SOCKET_IFNAME=eth0 NCCL_SOCKET_IFNAME=eth0 (toward 10.42.0.1)" in text), text


@pytest.fixture(scope="module")
def reference(tmp_path_factory, stage1_data):
    """The same layout on one machine, uninterrupted: plain bash -> one torchrun, 4 processes."""
    ckpt = tmp_path_factory.mktemp("reference")
    base = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env = _train_env(base, stage1_data, ckpt, procs_per_node=4)
    proc = run(["bash", SCRIPT], env=env, timeout=400, check=False, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    assert "launcher=local nodes=1 procs/node=4" in proc.stderr
    records = metrics(ckpt)
    assert [r["iteration"] for r in records] == list(range(1, ITERS + 1))
    return records


def test_start_failure_and_stop_leave_nothing_behind(cluster):
    """A start that fails after creating everything (the nodes given no time to come up) removes
    it, next to the module's cluster, which is checked the same way after it is stopped."""
    state = Path(tempfile.mkdtemp(prefix="mio-slurm2-failed-"))
    try:
        started = _start(state, MIO_SLURM_READY_TIMEOUT="0")
        assert started.returncode != 0
        assert "did not both accept jobs within 0s" in started.stderr, started.stderr
        assert "removing what was created" in started.stderr
        _assert_removed(state)
    finally:
        run(["bash", CI / "stop_two_nodes.sh", state], check=False)
        shutil.rmtree(state, ignore_errors=True)
    assert len(cluster.client(["sinfo", "-h", "-N"]).stdout.splitlines()) == len(NODES)


def test_two_node_job_matches_one_node_and_resumes_on_one_node(cluster, stage1_data, reference, tmp_path):
    ckpt = tmp_path / "ckpt"
    half = ITERS // 2
    env = _train_env(cluster.env, stage1_data, ckpt, procs_per_node=2, extra=f"--exit-interval {half}")
    log = tmp_path / "two_nodes.out"
    text = cluster.wait(cluster.sbatch(env, log, "--nodes=2"), log)
    _assert_two_node_launch(text)
    records = metrics(ckpt)
    assert [r["iteration"] for r in records] == list(range(1, half + 1))
    _same_as_reference(records, reference)
    assert latest(ckpt) == half
    assert sorted(p.name for p in iteration_dir(ckpt, half).glob("__*_0.distcp")) == \
        [f"__{rank}_0.distcp" for rank in range(4)]  # every rank of both nodes wrote its shard

    # The checkpoint of the two-node job continues on one node (4 processes, the same layout)
    # exactly as the uninterrupted run did: weights, optimizer, schedule, RNG, data position.
    env = _train_env(cluster.env, stage1_data, ckpt, procs_per_node=4)
    log = tmp_path / "one_node.out"
    text = cluster.wait(cluster.sbatch(env, log, "--nodes=1", f"--nodelist={NODES[0]}"), log)
    assert f"resuming from {ckpt} (iteration {half})" in text
    assert "launcher=srun nodes=1 procs/node=4" in text
    records = metrics(ckpt)
    assert [r["iteration"] for r in records] == list(range(1, ITERS + 1))
    _same_as_reference(records, reference)


def test_usr1_reaches_both_nodes_which_save_requeue_and_resume(cluster, stage1_data, reference, tmp_path):
    ckpt = tmp_path / "ckpt"
    log = tmp_path / "job.out"
    env = _train_env(cluster.env, stage1_data, ckpt, procs_per_node=2)
    job = cluster.sbatch(env, log, "--nodes=2")
    deadline = time.time() + 300
    while not any(r["iteration"] >= 2 for r in metrics(ckpt)):
        assert cluster.job(job).get("JobState") in ("PENDING", "RUNNING"), f"job ended early:\n{read(log)}"
        assert time.time() < deadline, f"no training progress:\n{read(log)}"
        time.sleep(0.1)
    # The warning --signal=B:USR1@N sends, to the batch shell on the first node.
    cluster.client(["scancel", "--signal=USR1", "--batch", job])
    text = cluster.wait(job, log, restarts=1)
    _assert_two_node_launch(text)
    assert "got SIGUSR1" in text and "requeueing job" in text and "restart=1" in text, text
    # srun relayed the signal to both nodes: each of the four trainers received it.
    assert text.count("received SIGUSR1") == 4, text

    records = metrics(ckpt)
    iterations = [r["iteration"] for r in records]
    assert iterations == list(range(1, ITERS + 1)), iterations  # every iteration exactly once
    assert [r["consumed_samples"] for r in records] == [GLOBAL_BATCH * i for i in iterations]
    saved = sorted(int(p.name.removeprefix("iter_")) for p in ckpt.glob("iter_*"))
    preempted_at = saved[0]
    assert 2 <= preempted_at < ITERS and saved == [preempted_at, ITERS] and latest(ckpt) == ITERS, saved
    assert f"resuming from {ckpt} (iteration {preempted_at})" in text
    _same_as_reference(records, reference)


def test_lost_node_fails_the_job_fast_and_resubmission_resumes(cluster, stage1_data, reference, tmp_path):
    """Runs last: it takes mio-n2 down for the rest of the module."""
    ckpt = tmp_path / "ckpt"
    log = tmp_path / "job.out"
    env = _train_env(cluster.env, stage1_data, ckpt, procs_per_node=2, SAVE_INTERVAL="3",
                     extra="--distributed-timeout-minutes 1")
    # --no-requeue: the job stays failed and is resubmitted by hand (with the script's --requeue,
    # Slurm would requeue it itself once enough nodes are up).
    job = cluster.sbatch(env, log, "--nodes=2", "--no-requeue")
    deadline = time.time() + 300
    while not ((ckpt / TRACKER).exists()
               and any(r["iteration"] >= 4 for r in metrics(ckpt))):
        assert cluster.job(job).get("JobState") in ("PENDING", "RUNNING"), f"job ended early:\n{read(log)}"
        assert time.time() < deadline, f"no checkpoint:\n{read(log)}"
        time.sleep(0.1)

    lost_at = time.time()
    run(["bash", CI / "lose_node.sh", cluster.state, NODES[1]])
    # The survivors wait on a peer that never answers.  The job must end before the trainers'
    # distributed timeout (1 minute) would end it: Slurm declares the silent node DOWN after
    # SlurmdTimeout (10 s in ci/slurm) and ends the job with NODE_FAIL.
    while (fields := cluster.job(job)).get("JobState") not in TERMINAL:
        assert time.time() - lost_at < 60, \
            f"job still {fields.get('JobState')} 60 s after losing a node:\n{read(log)}"
        time.sleep(0.3)
    took = time.time() - lost_at
    assert fields["JobState"] == "NODE_FAIL", fields
    sinfo = cluster.client(["sinfo", "-h", "-N", "-o", "%N %T"]).stdout
    assert f"{NODES[1]} down" in sinfo, sinfo
    print(f"job {job} ended {fields['JobState']} {took:.1f} s after {NODES[1]} was lost")

    last_complete = latest(ckpt)
    assert last_complete in (3, 6, 9), last_complete
    before = len(metrics(ckpt))
    # Resubmitted on the node that is left, all four processes there.
    env = _train_env(cluster.env, stage1_data, ckpt, procs_per_node=4, SAVE_INTERVAL="3")
    log2 = tmp_path / "resubmitted.out"
    text = cluster.wait(cluster.sbatch(env, log2, "--nodes=1", f"--nodelist={NODES[0]}"), log2)
    assert f"resuming from {ckpt} (iteration {last_complete})" in text
    resumed = metrics(ckpt)[before:]
    assert [r["iteration"] for r in resumed] == list(range(last_complete + 1, ITERS + 1))
    _same_as_reference(resumed, reference)
    assert latest(ckpt) == ITERS

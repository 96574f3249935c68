"""The launch scripts under a real one-node Slurm cluster (ci/slurm), on the CPU.

* ``sbatch examples/pretrain_stage3.sh`` with a tiny CPU configuration through the environment
  variables (tiny model, data made with tools/preprocess_data.py, TP=2 on two processes);
* preemption: the warning signal (``scancel --signal=USR1 --batch``, what ``--signal=B:USR1@N``
  sends) reaches the trainers mid-run; they save and exit 0, the job requeues itself, resumes
  from the checkpoint and finishes with exit 0, and every iteration saw exactly the batches of
  an uninterrupted run (same per-modality token counts and losses, consumed samples continuous);
* a second submission (``sbatch --wait``) exits 0 after resuming from the last checkpoint;
* examples/convert_yi_to_mio.sh on a tiny stand-in for Yi-6B;
* the multi-node command (srun per node, torchrun with a static rendezvous at the first host and
  each node's --node-rank; tests/test_slurm_two_nodes.py runs it on two nodes for real).

The cluster is started for this module and its daemons stopped by PID afterwards.  Slurm must
be installed (``bash ci/slurm/install.sh``, which CI runs before pytest); without it these tests
fail, they never skip.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from megatron_mio.checkpoint.layout import write_tracker
from tests.distributed import REPO_ROOT
from tests.slurm_cluster import RELEASE_REQUEUED_JOB, latest, metrics, one_node_cluster, read, run

pytestmark = pytest.mark.slurm

SCRIPT = REPO_ROOT / "examples/pretrain_stage3.sh"
ITERS = 24  # the preempted job's length
GLOBAL_BATCH = 4  # examples/configs/tiny_cpu.yaml
SEQ_LENGTH = 128


@pytest.fixture(scope="module")
def slurm_env():
    """Start munged/slurmctld/slurmd for this module; yield the client environment."""
    with one_node_cluster("mio-slurm-") as env:
        yield env


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory, mio_tokenizer_dir):
    """A stage-III dataset of the synthetic corpus, made with tools/preprocess_data.py, and a
    mixture YAML naming it."""
    from megatron_mio.data.synthetic import write_sample_corpus

    root = tmp_path_factory.mktemp("slurm_data")
    corpus = write_sample_corpus(root / "corpus", seed=0)
    prefix = root / "stage3"
    run([sys.executable, str(REPO_ROOT / "tools/preprocess_data.py"), "--input", corpus["pretrain"],
          "--output-prefix", str(prefix), "--tokenizer", mio_tokenizer_dir, "--stage", "3",
          "--seq-length", str(SEQ_LENGTH)], cwd=REPO_ROOT, timeout=300)
    mixture = root / "stage3_tiny.yaml"
    mixture.write_text(f"types:\n  pretrain: {{weight: 1, prefixes: [{prefix}]}}\n")
    return {"DATA_CONFIG": str(mixture), "TOKENIZER": mio_tokenizer_dir}


def _train_env(base: dict, data: dict, ckpt: Path, iters: int) -> dict:
    """The tiny CPU run, configured only through the script's environment variables."""
    env = {k: v for k, v in base.items() if not k.startswith("SLURM_") or k == "SLURM_CONF"}
    env.update(
        USE_CPU="1", TP="2", PP="1", MODEL="tiny", MIO_REPO=str(REPO_ROOT), PYTHON=sys.executable,
        STAGE_CONFIG=str(REPO_ROOT / "examples/configs/tiny_cpu.yaml"),
        LOAD_DIR="", CKPT_DIR=str(ckpt), TRAIN_ITERS=str(iters),
        EXTRA_ARGS=f"--seq-length {SEQ_LENGTH} --attention-backend torch",
        PYTHONWARNINGS="ignore", **data,
    )
    return env


def _sbatch(env: dict, log: Path) -> str:
    """Submit the stage-III script; returns the job id.  The test node has no GPUs: override the
    script's --gpus-per-node=8; -O lets the job use more processes than the node's CPUs."""
    cmd = ["sbatch", "--parsable", "-O", "--gpus-per-node=0", "--time=15", f"--output={log}", str(SCRIPT)]
    return run(cmd, env=env, cwd=REPO_ROOT).stdout.strip().split(";")[0]


def _sbatch_wait(env: dict, log: Path) -> str:
    """``sbatch --wait``: returns the job's log once it exited 0."""
    cmd = ["sbatch", "--wait", "-O", "--gpus-per-node=0", "--time=15", f"--output={log}", str(SCRIPT)]
    proc = run(cmd, env=env, cwd=REPO_ROOT, timeout=400, check=False)
    text = read(log)
    assert proc.returncode == 0, f"job failed ({proc.returncode}): {proc.stdout}{proc.stderr}\n{text}"
    return text


TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
            "BOOT_FAIL", "DEADLINE", "PREEMPTED"}


def _job_fields(env: dict, job: str) -> dict:
    out = run(["scontrol", "show", "job", "-o", job], env=env, check=False).stdout
    return dict(item.split("=", 1) for item in out.split() if "=" in item)


def _wait(env: dict, job: str, log: Path, restarts: int = 0, timeout: float = 400) -> tuple[str, bool]:
    """Wait until the job has finished after ``restarts`` requeues; returns (log text, whether a
    requeue hold was released).  (``sbatch --wait`` can return early while a job is requeued,
    so the state is polled here.)  Slurm holds a requeued job for two minutes (Reason=BeginTime):
    the test releases it (RELEASE_REQUEUED_JOB)."""
    deadline = time.time() + timeout
    released = False
    unseen_since = None
    while time.time() < deadline:
        fields = _job_fields(env, job)
        if not fields:
            # Right after a requeue the controller can show no record for a moment.
            unseen_since = unseen_since or time.time()
            assert time.time() - unseen_since < 15, f"job {job} left the controller unseen:\n{read(log)}"
            time.sleep(0.3)
            continue
        unseen_since = None
        if fields.get("JobState") == "PENDING" and fields.get("Reason") == "BeginTime" and not released:
            run(["scontrol", "update", f"JobId={job}", RELEASE_REQUEUED_JOB], env=env)
            released = True
        text = read(log)
        # While Slurm requeues a job it briefly shows a terminal state (FAILED, Restarts already
        # counted): done means a terminal state after the last run's launch has exited.
        runs_done = text.count("training exited with status")
        if (fields.get("JobState") in TERMINAL and int(fields.get("Restarts", 0)) >= restarts
                and f"restart={restarts}" in text and runs_done >= restarts + 1):
            assert fields["JobState"] == "COMPLETED" and fields.get("ExitCode") == "0:0", \
                f"job {job}: {fields.get('JobState')} exit {fields.get('ExitCode')}\n{text}"
            return text, released
        if fields.get("JobState") in TERMINAL and text.count("requeueing job") < restarts:
            raise AssertionError(f"job {job} ended ({fields.get('JobState')}, exit "
                                 f"{fields.get('ExitCode')}) without requeueing:\n{text}")
        time.sleep(0.3)
    raise AssertionError(f"job {job} did not finish in {timeout}s:\n{read(log)}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_data):
    """An uninterrupted run of the same configuration, outside Slurm (plain bash -> torchrun)."""
    ckpt = tmp_path_factory.mktemp("reference")
    env = _train_env(dict(os.environ), tiny_data, ckpt, ITERS)
    proc = run(["bash", str(SCRIPT)], env=env, timeout=400, check=False, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    assert "launcher=local" in proc.stderr
    records = metrics(ckpt)
    assert [r["iteration"] for r in records] == list(range(1, ITERS + 1))
    return records


def _same_batches(records: list[dict], reference: list[dict]) -> None:
    """Each iteration trained on the reference run's batches: identical token counts per
    modality and the same loss."""
    by_iteration = {r["iteration"]: r for r in reference}
    for record in records:
        ref = by_iteration[record["iteration"]]
        for key in ("tokens_text", "tokens_image", "tokens_speech", "consumed_samples"):
            assert record[key] == ref[key], (record["iteration"], key)
        assert record["loss"] == pytest.approx(ref["loss"], rel=1e-5), record["iteration"]


def test_preempted_job_saves_requeues_and_resumes_then_resubmission_continues(
        slurm_env, tiny_data, reference, tmp_path):
    ckpt = tmp_path / "ckpt"
    log = tmp_path / "job.out"
    env = _train_env(slurm_env, tiny_data, ckpt, ITERS)
    job = _sbatch(env, log)

    # Mid-run: send the warning signal to the batch shell, as --signal=B:USR1@N does.
    deadline = time.time() + 300
    while not any(r["iteration"] >= 4 for r in metrics(ckpt)):
        assert _job_fields(slurm_env, job).get("JobState") in ("PENDING", "RUNNING"), \
            f"job ended before the signal:\n{read(log)}"
        assert time.time() < deadline, f"no training progress:\n{read(log)}"
        time.sleep(0.1)
    run(["scancel", "--signal=USR1", "--batch", job], env=slurm_env)
    text, released = _wait(slurm_env, job, log, restarts=1)
    assert released, f"the job was not requeued:\n{text}"
    assert "got SIGUSR1" in text and "requeueing job" in text, text
    assert "launcher=srun" in text and "restart=1" in text, text

    records = metrics(ckpt)
    iterations = [r["iteration"] for r in records]
    # Every iteration exactly once: nothing repeated, nothing lost across the requeue.
    assert iterations == list(range(1, ITERS + 1)), iterations
    assert [r["consumed_samples"] for r in records] == [GLOBAL_BATCH * i for i in iterations]
    saved = sorted(int(p.name.removeprefix("iter_")) for p in ckpt.glob("iter_*"))
    preempted_at = saved[0]
    assert 4 <= preempted_at < ITERS and saved[-1] == ITERS == latest(ckpt), saved
    assert f"resuming from {ckpt} (iteration {preempted_at})" in text
    _same_batches(records, reference)

    # A second submission with more iterations resumes from the last checkpoint.
    env = _train_env(slurm_env, tiny_data, ckpt, ITERS + 2)
    text = _sbatch_wait(env, tmp_path / "job2.out")
    assert f"resuming from {ckpt} (iteration {ITERS})" in text
    records = metrics(ckpt)
    assert [r["iteration"] for r in records][-3:] == [ITERS, ITERS + 1, ITERS + 2]
    assert records[-1]["consumed_samples"] == GLOBAL_BATCH * (ITERS + 2)
    assert latest(ckpt) == ITERS + 2


def test_multi_node_command(slurm_env, tmp_path):
    """Inside a 16-node allocation: one srun task per node, each running torchrun through
    mio_node_exec with its own node rank, the rendezvous at the first host from `scontrol show
    hostnames` (not a node of this cluster, so its name; a port from the job id, since this shell
    is not on that node), resume from CKPT_DIR, EXTRA_ARGS last."""
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    write_tracker(ckpt, 100)
    tokenizer = tmp_path / "tokenizer"
    tokenizer.mkdir()
    env = {k: v for k, v in slurm_env.items() if not k.startswith("SLURM_") or k == "SLURM_CONF"}
    env.update(TOKENIZER=str(tokenizer), SLURM_JOB_ID="4242", SLURM_JOB_NUM_NODES="16",
               SLURM_JOB_NODELIST="gpu[003-018]", SLURM_CPUS_ON_NODE="96",
               GPUS_PER_NODE="8", TP="2", PP="4", CKPT_DIR=str(ckpt), DRY_RUN="1",
               EXTRA_ARGS="--lr 1e-5", MIO_REPO=str(REPO_ROOT))
    proc = run(["bash", str(REPO_ROOT / "examples/pretrain_stage1.sh")], env=env)
    cmd = proc.stdout
    assert cmd.startswith("srun --nodes 16 --ntasks 16 --ntasks-per-node 1"), cmd
    assert "--cpus-per-task 96" in cmd  # the node's CPUs for its one torchrun task
    assert "--nnodes 16" in cmd and "--nproc-per-node 8" in cmd
    assert "mio_node_exec" in cmd and "examples/launch_common.sh" in cmd
    assert r"--nnodes 16 --node-rank \$SLURM_NODEID --master-addr gpu003 --master-port 24242" in cmd
    assert f"--config {REPO_ROOT}/examples/configs/stage1.yaml" in cmd
    assert "--tensor-model-parallel-size 2 --pipeline-model-parallel-size 4" in cmd
    assert f"--tokenizer-model {tokenizer}" in cmd
    assert f"--load {ckpt}" in cmd and "--finetune" not in cmd
    assert cmd.rstrip().endswith("--lr 1e-5")
    # Without a checkpoint of its own, stage 1 starts from LOAD_DIR's weights (fresh optimizer).
    start = tmp_path / "yi"
    start.mkdir()
    write_tracker(start, 1)
    env.update(CKPT_DIR=str(tmp_path / "fresh"), LOAD_DIR=str(start))
    cmd = run(["bash", str(REPO_ROOT / "examples/pretrain_stage1.sh")], env=env).stdout
    assert f"--load {start} --finetune" in cmd
    # A LOAD_DIR without a checkpoint is refused with a clear message.
    env.update(LOAD_DIR=str(tmp_path / "missing"))
    proc = run(["bash", str(REPO_ROOT / "examples/pretrain_stage1.sh")], env=env, check=False)
    assert proc.returncode != 0 and "has no checkpoint" in proc.stderr


def test_convert_yi_to_mio_script(tmp_path, sentencepiece_model_path):
    """examples/convert_yi_to_mio.sh on a tiny stand-in for Yi-6B-Base (a random Llama with a
    SentencePiece tokenizer.model): MIO tokenizer built, extended checkpoint written where
    pretrain_stage1.sh looks for it."""
    import sentencepiece
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from megatron_mio.model.presets import get_preset

    preset = get_preset("tiny")
    vocab = sentencepiece.SentencePieceProcessor(model_file=sentencepiece_model_path).get_piece_size()
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=preset.hidden_size, intermediate_size=preset.ffn_hidden_size,
        num_hidden_layers=preset.num_layers, num_attention_heads=preset.num_attention_heads,
        num_key_value_heads=preset.num_query_groups, rms_norm_eps=preset.norm_epsilon,
        rope_parameters={"rope_type": "default", "rope_theta": preset.rotary_base},
        max_position_embeddings=preset.max_position_embeddings, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    yi = tmp_path / "Yi-6B"
    LlamaForCausalLM(config).save_pretrained(yi)
    shutil.copy(sentencepiece_model_path, yi / "tokenizer.model")
    env = dict(os.environ, YI_DIR=str(yi), TOKENIZER=str(tmp_path / "tok"), OUTPUT=str(tmp_path / "init"),
               TP="2", PYTHONWARNINGS="ignore", MIO_REPO=str(REPO_ROOT))
    run(["bash", str(REPO_ROOT / "examples/convert_yi_to_mio.sh")], env=env, timeout=300, cwd=tmp_path)
    assert (tmp_path / "init/latest_checkpointed_iteration.txt").read_text().strip() == "0"
    from megatron_mio.tokenizer import MIOTokenizer

    assert len(MIOTokenizer(str(tmp_path / "tok")).modality_table()) >= vocab + 12_292

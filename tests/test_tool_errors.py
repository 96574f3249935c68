"""Every tool answers a mistake with one clear line and exit status 2, starts fast and quietly,
and speaks one flag language (issue 24's table, the tools' rows; issue 21's flag aliases).

The rows run the commands' ``main`` in this process (what ``tools/<tool>.py`` and the ``mio-*``
console scripts call); the start-up test runs every entry point for real, in a subprocess.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from megatron_mio import cli
from megatron_mio.commands import (
    build_tokenizer, compare_logits, convert_from_hf, convert_to_hf, generate, pack_stats,
)
from megatron_mio.checkpoint import __main__ as checkpoint_query
from megatron_mio.checkpoint.layout import CHECKPOINT_CONFIG, iteration_dir, write_tracker
from tests.distributed import REPO_ROOT
from tests.test_convert import save_random_llama, tiny_llama_config
from tests.test_packed_dataset import modality_table, write_corpus


@pytest.fixture(autouse=True)
def restore_process_state():
    """``main`` quiets the libraries for its process: undo that for the next test."""
    environ = dict(os.environ)
    levels = {name: logging.getLogger(name).level for name in cli._LIBRARY_LOGGERS}
    yield
    os.environ.clear()
    os.environ.update(environ)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def call(main, *argv) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of one command line, argparse's exits included."""
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main([str(a) for a in argv])
        except SystemExit as exit_:
            status = exit_.code
    return status, out.getvalue(), err.getvalue()


def one_error_line(result: tuple[int, str, str], prog: str, *culprit: str) -> str:
    """Exit status 2 and a single ``prog: error: ...`` line that holds every ``culprit`` text."""
    status, _, err = result
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == cli.EXIT_INPUT_ERROR, err
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), err
    for text in culprit:
        assert text in lines[0], lines[0]
    return lines[0]


@contextlib.contextmanager
def read_only(directory: Path):
    """``directory`` made unwritable for this process.  Root ignores file modes, so for root it
    becomes a read-only bind mount of itself (what a read-only file system does to anyone)."""
    directory = Path(directory)
    if os.geteuid() != 0:
        directory.chmod(0o555)
        try:
            yield directory
        finally:
            directory.chmod(0o755)
        return
    subprocess.run(["mount", "--bind", directory, directory], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", directory], check=True)
        yield directory
    finally:
        subprocess.run(["umount", directory], check=True)


# --------------------------------------------------------------------------- build_tokenizer

def test_build_tokenizer_base_that_is_no_tokenizer(tmp_path):
    not_tokenizer = tmp_path / "some_dir"
    not_tokenizer.mkdir()
    one_error_line(call(build_tokenizer.main, "--base", not_tokenizer, "--output", tmp_path / "out"),
                   "build_tokenizer", f"{not_tokenizer}: not a tokenizer directory", "tokenizer.model")
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text('{"text": "hello"}\n')
    one_error_line(call(build_tokenizer.main, "--base", jsonl, "--output", tmp_path / "out"),
                   "build_tokenizer", f"{jsonl}: not a SentencePiece .model file")
    assert not (tmp_path / "out").exists()


def test_build_tokenizer_output_checked_before_work(tmp_path, sentencepiece_model_path):
    a_file = tmp_path / "file"
    a_file.write_text("")
    one_error_line(call(build_tokenizer.main, "--base", sentencepiece_model_path, "--output", a_file),
                   "build_tokenizer", f"--output {a_file}: is a file, not a directory")
    locked = tmp_path / "locked"
    locked.mkdir()
    with read_only(locked):
        one_error_line(call(build_tokenizer.main, "--base", sentencepiece_model_path, "--output", locked / "tok"),
                       "build_tokenizer", f"--output {locked / 'tok'}", "not writable")
    assert list(locked.iterdir()) == []


# --------------------------------------------------------------------------- pack_stats

@pytest.fixture
def small_dataset(tmp_path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    write_corpus(str(data / "d"), [20, 30, 40, 50] * 5)
    return data


def test_pack_stats_read_only_data_names_cache_dir(small_dataset, tmp_path):
    argv = ["--data-path", small_dataset / "d", "--seq-length", "64"]
    with read_only(small_dataset):
        one_error_line(call(pack_stats.main, *argv), "pack_stats",
                       "not writable", "pass --cache-dir DIR")
        status, out, _ = call(pack_stats.main, *argv, "--cache-dir", tmp_path / "cache")
    assert status == 0 and "packs" in out


def test_pack_stats_wrong_tokenizer_and_missing_modality_table(small_dataset, tmp_path):
    argv = ["--data-path", small_dataset / "d", "--seq-length", "64"]
    one_error_line(call(pack_stats.main, *argv, "--tokenizer", tmp_path / "nope"),
                   "pack_stats", f"--tokenizer {tmp_path / 'nope'}: ", "no such directory")
    one_error_line(call(pack_stats.main, *argv, "--modality-table", tmp_path / "table.npy"),
                   "pack_stats", f"--modality-table {tmp_path / 'table.npy'}: no such file")
    (tmp_path / "bad.npy").write_text("not numpy")
    one_error_line(call(pack_stats.main, *argv, "--modality-table", tmp_path / "bad.npy"),
                   "pack_stats", f"--modality-table {tmp_path / 'bad.npy'}: not a modality table")
    np.save(tmp_path / "table.npy", modality_table())
    assert call(pack_stats.main, *argv, "--modality-table", tmp_path / "table.npy")[0] == 0


def test_pack_stats_no_document_fits_says_what_to_do(tmp_path):
    write_corpus(str(tmp_path / "long"), [100, 120, 300])
    one_error_line(call(pack_stats.main, "--data-path", tmp_path / "long", "--seq-length", "64"),
                   "pack_stats", "has no packs", "the shortest has 100 tokens",
                   "raise --seq-length to at least 100")


# --------------------------------------------------------------------------- conversion

@pytest.fixture(scope="module")
def hf_model(tmp_path_factory, sentencepiece_model_path) -> Path:
    import sentencepiece

    vocab = sentencepiece.SentencePieceProcessor(model_file=sentencepiece_model_path).get_piece_size()
    return save_random_llama(tmp_path_factory.mktemp("hf") / "tiny", tiny_llama_config(vocab, num_hidden_layers=2))


@pytest.fixture(scope="module")
def megatron_checkpoint(tmp_path_factory, hf_model) -> Path:
    from megatron_mio.convert import convert_from_hf as convert

    save = tmp_path_factory.mktemp("mg") / "ckpt"
    convert(str(hf_model), str(save), progress=False)
    return save


def test_convert_read_only_output(hf_model, megatron_checkpoint, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    with read_only(locked):
        one_error_line(call(convert_from_hf.main, "--hf-dir", hf_model, "--output", locked / "mg"),
                       "convert_from_hf", f"--output {locked / 'mg'}", "not writable")
        one_error_line(call(convert_to_hf.main, "--load", megatron_checkpoint, "--output", locked / "hf"),
                       "convert_to_hf", f"--output {locked / 'hf'}", "not writable")
    assert list(locked.iterdir()) == []


def test_converters_refuse_an_existing_output_without_force(megatron_checkpoint, hf_model, tmp_path):
    taken = tmp_path / "taken"
    (taken / "keep").mkdir(parents=True)
    for main, prog, source in ((convert_to_hf.main, "convert_to_hf", ("--load", megatron_checkpoint)),
                               (convert_from_hf.main, "convert_from_hf", ("--hf-dir", hf_model))):
        one_error_line(call(main, *source, "--output", taken), prog,
                       f"--output {taken}: already exists; pass --force to replace it")
    assert [p.name for p in taken.iterdir()] == ["keep"]


def test_convert_to_hf_truncated_distcp_is_named(megatron_checkpoint, tmp_path):
    damaged = tmp_path / "ckpt"
    shutil.copytree(megatron_checkpoint, damaged)
    shard = sorted(iteration_dir(damaged, 0).glob("*.distcp"))[0]
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    one_error_line(call(convert_to_hf.main, "--load", damaged, "--output", tmp_path / "hf"),
                   "convert_to_hf", f"{shard} has ", "its index needs", "--iteration")
    assert not (tmp_path / "hf").exists() and not list(tmp_path.glob(".hf.tmp-*"))


def test_convert_from_hf_truncated_safetensors_is_named(hf_model, tmp_path):
    damaged = tmp_path / "hf"
    shutil.copytree(hf_model, damaged)
    weights = damaged / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    one_error_line(call(convert_from_hf.main, "--hf-dir", damaged, "--output", tmp_path / "mg"),
                   "convert_from_hf", f"{weights}: not a readable safetensors file")
    assert not (tmp_path / "mg").exists()


def test_convert_from_hf_model_that_already_has_the_mio_tokens(tmp_path, mio_tokenizer_dir, mio_tokenizer):
    """An exported MIO model comes back with its tokenizer: nothing to extend, no error."""
    hf = save_random_llama(tmp_path / "hf", tiny_llama_config(len(mio_tokenizer), num_hidden_layers=2))
    status, out, err = call(convert_from_hf.main, "--hf-dir", hf, "--output", tmp_path / "mg",
                            "--tokenizer", mio_tokenizer_dir)
    assert status == 0, err
    assert f"vocabulary {len(mio_tokenizer)} -> {len(mio_tokenizer)}" in out


def test_convert_to_hf_bad_shard_size(megatron_checkpoint, tmp_path):
    one_error_line(call(convert_to_hf.main, "--load", megatron_checkpoint, "--output", tmp_path / "hf",
                        "--max-shard-size", "lots"),
                   "convert_to_hf", "argument --max-shard-size: 'lots' is not a size", "e.g. 2GB")
    assert cli.byte_size("1GiB") == 2**30 and cli.byte_size("500MB") == 500 * 10**6


# --------------------------------------------------------------------------- generate

@pytest.fixture(scope="module")
def mio_model(tmp_path_factory, mio_tokenizer_dir, mio_tokenizer) -> Path:
    """A random 2-layer Llama over the MIO vocabulary with its tokenizer: an export's layout."""
    directory = tmp_path_factory.mktemp("mio_model")
    save_random_llama(directory, tiny_llama_config(len(mio_tokenizer), num_hidden_layers=2))
    for item in (p for p in Path(mio_tokenizer_dir).iterdir() if p.is_file()):
        shutil.copy(item, directory / item.name)
    return directory


def generate_argv(model: Path, *extra) -> list:
    return ["--hf-dir", model, "--prompt", "Describe this image.", "--max-new-tokens", "4", "--device", "cpu",
            *extra]


@pytest.mark.parametrize("count", [31, 41])
def test_generate_image_codes_must_be_32(mio_model, count):
    codes = ",".join(str(i) for i in range(count))
    one_error_line(call(generate.main, *generate_argv(mio_model, "--image-codes", codes)),
                   "generate", f"--image-codes: an image is exactly 32 codes, got {count}")


def test_generate_negative_code_is_named(mio_model):
    codes = ",".join(["-1"] + [str(i) for i in range(31)])
    one_error_line(call(generate.main, *generate_argv(mio_model, "--image-codes", codes)),
                   "generate", "--image-codes: code -1 is outside [0, 8192)")


def test_generate_not_a_mio_model(hf_model, tmp_path):
    one_error_line(call(generate.main, *generate_argv(hf_model)), "generate",
                   f"--hf-dir {hf_model}: no tokenizer.json in it", "not an exported MIO model")
    one_error_line(call(generate.main, *generate_argv(tmp_path / "nope")), "generate",
                   f"--hf-dir {tmp_path / 'nope'}: no such directory")


def test_generate_num_return_sequences_zero(mio_model):
    one_error_line(call(generate.main, *generate_argv(mio_model, "--num-return-sequences", "0")),
                   "generate", "argument --num-return-sequences: must be at least 1, got 0")


def test_generate_cuda_without_a_gpu(mio_model):
    import torch

    device = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"
    argv = [a if a != "cpu" else device for a in generate_argv(mio_model)]
    one_error_line(call(generate.main, *argv), "generate", f"--device {device}: ")


def test_generate_read_only_output_before_generating(mio_model, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    with read_only(locked):
        status, out, err = result = call(generate.main, *generate_argv(mio_model, "--output", locked / "out.json"))
    one_error_line(result, "generate", f"--output {locked / 'out.json'}", "not writable")
    assert out == "" and "LlamaForCausalLM" not in err  # the model was never loaded


def test_generate_writes_its_output(mio_model, tmp_path):
    """The checks above refuse only mistakes: the same command with good inputs generates."""
    status, _, err = call(generate.main, *generate_argv(mio_model, "--output", tmp_path / "out.json",
                                                       "--image-codes", ",".join(["7"] * 32)))
    assert status == 0, err
    assert '"generated_ids"' in (tmp_path / "out.json").read_text()


# --------------------------------------------------------------------------- compare_logits

def test_compare_logits_layout_needs_torchrun(hf_model, megatron_checkpoint, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    one_error_line(call(compare_logits.main, "--hf-dir", hf_model, "--load", megatron_checkpoint, "--tp", "2"),
                   "compare_logits", "--tp 2 x --pp 1 needs 2 processes", "torchrun --nproc-per-node 2")


def test_compare_logits_missing_hf_dir_before_any_model(megatron_checkpoint, tmp_path):
    before = set(sys.modules)
    one_error_line(call(compare_logits.main, "--hf-dir", tmp_path / "nope", "--load", megatron_checkpoint),
                   "compare_logits", f"--hf-dir {tmp_path / 'nope'}: no such directory")
    assert not {m for m in set(sys.modules) - before if m.startswith("megatron.core.models")}


# --------------------------------------------------------------------------- checkpoint latest

def test_checkpoint_latest_does_not_trust_a_tracker_without_its_checkpoint(tmp_path):
    write_tracker(tmp_path, 7)
    status, out, err = call(checkpoint_query.main, "latest", tmp_path)
    assert (status, out) == (checkpoint_query.DAMAGED, "")
    assert "the tracker names iteration 7" in err and "iter_0000007" in err
    iteration_dir(tmp_path, 7).mkdir()
    (iteration_dir(tmp_path, 7) / CHECKPOINT_CONFIG).write_text("{}")
    assert call(checkpoint_query.main, "latest", tmp_path)[:2] == (0, "7\n")


# --------------------------------------------------------------------------- flags shared by all

COMMANDS = {"build_tokenizer": build_tokenizer, "pack_stats": pack_stats, "convert_from_hf": convert_from_hf,
            "convert_to_hf": convert_to_hf, "generate": generate, "compare_logits": compare_logits}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_flag_mistakes_are_one_line_with_status_2(name):
    """argparse's own errors too: one line, no usage block (--help shows that)."""
    one_error_line(call(COMMANDS[name].main, "--no-such-flag"), name, "the following arguments are required")


def test_unknown_flag_is_one_line_with_status_2():
    one_error_line(call(build_tokenizer.main, "--base", "b", "--output", "o", "--no-such-flag"),
                   "build_tokenizer", "unrecognized arguments: --no-such-flag")


@pytest.mark.parametrize("name,short,long,value", [
    ("pack_stats", "--tokenizer", "--tokenizer-model", "tok"),
    ("convert_from_hf", "--tokenizer", "--tokenizer-model", "tok"),
    ("convert_from_hf", "--tp", "--tensor-model-parallel-size", "4"),
    ("convert_from_hf", "--pp", "--pipeline-model-parallel-size", "2"),
    ("convert_to_hf", "--tokenizer", "--tokenizer-model", "tok"),
    ("convert_to_hf", "--preset", "--model-preset", "yi-6b"),
    ("compare_logits", "--tokenizer", "--tokenizer-model", "tok"),
    ("compare_logits", "--tp", "--tensor-model-parallel-size", "4"),
    ("compare_logits", "--pp", "--pipeline-model-parallel-size", "2"),
])
def test_trainer_spellings_are_aliases(name, short, long, value):
    required = {"pack_stats": ["--data-path", "p", "--seq-length", "8"], "convert_from_hf": ["--hf-dir", "h", "--output", "o"],
                "convert_to_hf": ["--load", "l", "--output", "o"], "compare_logits": ["--hf-dir", "h", "--load", "l"]}[name]
    parser = COMMANDS[name].build_parser()
    assert parser.parse_args([*required, short, value]) == parser.parse_args([*required, long, value])
    assert str(getattr(parser.parse_args([*required, long, value]), short.lstrip("-"))) == value


def test_choices_spelled_in_commands_match_the_library():
    """The commands spell a few choice lists so that --help imports no torch: they must agree."""
    from megatron_mio.convert.vocab import NEW_TOKEN_INITS
    from megatron_mio.inference.presets import MODALITIES
    from megatron_mio.inference.prompt import MODES

    assert convert_from_hf.NEW_TOKEN_INITS == NEW_TOKEN_INITS
    assert generate.MODALITIES == MODALITIES and generate.MODES == MODES


def test_pretrain_keeps_the_trainer_flags_apart_from_version_and_verbose():
    from megatron_mio.pretrain import split_common_flags

    common, rest = split_common_flags(["--config", "c.yaml", "-v", "--lr", "-1", "--use-cpu"])
    assert common.verbose and rest == ["--config", "c.yaml", "--lr", "-1", "--use-cpu"]


# --------------------------------------------------------------------------- start-up of every tool

ENTRY_POINTS = {path.stem: [str(path)] for path in sorted((REPO_ROOT / "tools").glob("*.py"))}
ENTRY_POINTS["pretrain"] = ["-m", "megatron_mio.pretrain"]
ENTRY_POINTS["checkpoint"] = ["-m", "megatron_mio.checkpoint"]
HEAVY = ("torch", "megatron", "transformers")
# Python warnings (``UserWarning: ...`` and the source line under it), our own ``warning:``
# lines, torch's C++ log lines (``W1203 07:13:18 ...``) such as "No CUDA runtime is found".
_WARNING = re.compile(r"Warning: |^\s*warnings\.warn\(|^warning: |No CUDA runtime|^[WE]\d{4} ")


def run_entry_point(name: str, *argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}  # as a user's shell runs it
    env["PYTHONPATH"] = str(REPO_ROOT)
    return subprocess.run([sys.executable, "-X", "importtime", *ENTRY_POINTS[name], *argv], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_help_is_quiet_and_imports_nothing_heavy(name):
    """``--help`` imports none of torch / megatron / transformers (what makes it answer in a
    fraction of a second; the times are in docs/benchmarks.md) and prints only the help."""
    proc = run_entry_point(name, "--help")
    imported = [line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
    other = [line for line in proc.stderr.splitlines() if not line.startswith("import time:")]
    assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stderr[-3000:]
    assert not other, other
    assert not [line for line in proc.stdout.splitlines() if _WARNING.search(line)], proc.stdout
    assert not [m for m in imported if m.split(".")[0] in HEAVY]


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_version_everywhere(name):
    proc = run_entry_point(name, "--version")
    assert proc.returncode == 0 and "(megatron_mio)" in proc.stdout, proc.stdout + proc.stderr[-2000:]


@pytest.mark.slow
def test_pretrain_prints_only_its_own_lines(tmp_path):
    """A 3-iteration run with a save: no config dumps, library notices or deprecation warnings
    (among them megatron-core's "async save is deprecated"); ``-v`` would show them."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    env.update(PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "megatron_mio.pretrain", "--use-cpu", "--mock-data", "--model-preset", "tiny",
         "--num-layers", "2", "--vocab-size", "300", "--seq-length", "64", "--micro-batch-size", "1",
         "--global-batch-size", "2", "--lr", "3e-3", "--train-iters", "3", "--log-interval", "1",
         "--no-bias-swiglu-fusion", "--no-bias-dropout-fusion", "--save", str(tmp_path / "ckpt")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = (proc.stdout + proc.stderr).splitlines()
    ours = re.compile(r"^\d{4}-\d\d-\d\d [\d:,]+ megatron_mio\.|^ iteration +\d+/")
    assert not [line for line in lines if not ours.match(line)], lines
    assert sum(line.startswith(" iteration") for line in lines) == 3

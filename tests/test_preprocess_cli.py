"""The preprocess_data and merge_datasets command lines as a user meets them: each mistake is one
line naming the culprit, exit status 2 and nothing written; --help and argument errors import
none of torch, megatron, transformers; no line that is not ours; Ctrl-C is one line; one run per
prefix at a time; progress on a terminal and in a log."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PREPROCESS = [sys.executable, str(REPO / "tools/preprocess_data.py")]
MERGE = [sys.executable, str(REPO / "tools/merge_datasets.py")]
HEAVY = ("torch", "megatron", "transformers")
GOOD = {"type": "language", "text": "A small dog walks along the river bank at sunset."}


def _env(**extra) -> dict:
    """The user's environment: warnings not silenced from outside, our tree first."""
    env = {k: v for k, v in os.environ.items()
           if k != "PYTHONWARNINGS" and not k.startswith("SLURM_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return {**env, **extra}


def _run(command, args, **env) -> subprocess.CompletedProcess:
    return subprocess.run(command + [str(a) for a in args], capture_output=True, text=True,
                          env=_env(**env), timeout=600, check=False)


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _write_jsonl(path: Path, samples, blank: bool = False) -> Path:
    path.write_text("".join(("\n" if blank else json.dumps(s) + "\n") for s in samples))
    return path


def _nothing_written(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if not p.name.endswith(".jsonl"))


def _base(tmp_path: Path, tokenizer: str, data: Path | None = None) -> list:
    data = data or _write_jsonl(tmp_path / "in.jsonl", [GOOD] * 3)
    return ["--input", data, "--output-prefix", tmp_path / "out" / "P", "--tokenizer", tokenizer,
            "--stage", "1"]


def _one_error_line(result, *needles: str, prog: str = "preprocess_data") -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = _lines(result.stderr)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{prog}: error: ")
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# ------------------------------------------------------------------------------ fast and quiet
IMPORT_PROBE = """
import sys
from megatron_mio.commands import {module} as command
try:
    status = command.main({argv!r})
except SystemExit as exit:
    status = exit.code
heavy = sorted({{m.split('.')[0] for m in sys.modules}} & {heavy!r})
print("HEAVY", heavy, "STATUS", status)
"""


@pytest.mark.parametrize("module,argv,status", [
    ("preprocess_data", ["--help"], 0),
    ("preprocess_data", ["--version"], 0),
    ("preprocess_data", ["--input", "a.jsonl", "--output-prefix", "P", "--tokenizer", "T",
                         "--stage", "9"], 2),
    ("preprocess_data", ["--input", "a.jsonl", "--output-prefix", "P", "--tokenizer", "T",
                         "--stage", "1", "--max-speech-seconds", "-1"], 2),
    ("preprocess_data", ["--input", "missing.jsonl", "--output-prefix", "P", "--tokenizer",
                         "T", "--stage", "1"], 2),
    ("merge_datasets", ["--help"], 0),
    ("merge_datasets", ["--version"], 0),
    ("merge_datasets", ["--output-prefix", "P"], 2),
])
def test_help_version_and_argument_errors_import_nothing_heavy(tmp_path, module, argv, status):
    probe = IMPORT_PROBE.format(module=module, argv=argv, heavy=set(HEAVY))
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            env=_env(), cwd=tmp_path, timeout=120, check=False)
    assert f"HEAVY [] STATUS {status}" in result.stdout, (result.stdout, result.stderr)
    assert not re.search(r"warn", result.stderr, re.IGNORECASE), result.stderr
    if argv == ["--version"]:
        assert re.search(r"\(megatron_mio\) \S+", result.stdout)
    if status == 2:
        assert _lines(result.stderr)[-1].startswith(f"{module}: error: ")


def test_max_speech_seconds_must_be_positive(tmp_path, mio_tokenizer_dir):
    result = _run(PREPROCESS, _base(tmp_path, mio_tokenizer_dir) + ["--max-speech-seconds", "-1"])
    assert result.returncode == 2
    assert re.search(r"error: argument --max-speech-seconds: must be positive, got -1",
                     _lines(result.stderr)[-1])
    assert not (tmp_path / "out").exists()


def test_a_run_prints_only_our_lines(tmp_path, mio_tokenizer_dir):
    pair = {"type": "image_text_pair", "image": list(range(32)), "caption": "A dog " * 30}
    data = _write_jsonl(tmp_path / "in.jsonl", [GOOD, pair, GOOD])
    result = _run(PREPROCESS, _base(tmp_path, mio_tokenizer_dir, data) + ["--seq-length", "40"])
    assert result.returncode == 0, result.stderr
    assert len(_lines(result.stdout)) == 1 and "2 documents" in result.stdout
    ours = [line for line in _lines(result.stderr) if not PROGRESS_LINE.match(line)]
    assert ours and all(line.startswith("preprocess_data: warning: ") for line in ours), ours
    verbose = _run(PREPROCESS, _base(tmp_path, mio_tokenizer_dir, data) + ["-v"])
    assert verbose.returncode == 0
    assert any(not line.startswith("preprocess") for line in _lines(verbose.stderr))


# ------------------------------------------------------------------------------ the table's rows
def test_output_prefix_that_is_a_directory(tmp_path, mio_tokenizer_dir):
    (tmp_path / "out").mkdir()
    args = _base(tmp_path, mio_tokenizer_dir)
    args[3] = f"{tmp_path / 'out'}/"
    _one_error_line(_run(PREPROCESS, args), f"--output-prefix {tmp_path / 'out'}/ is a directory",
                    f"{tmp_path / 'out' / 'data'}")
    assert list((tmp_path / "out").iterdir()) == []
    args[3] = tmp_path / "out"  # an existing directory without the slash
    _one_error_line(_run(PREPROCESS, args), "is a directory")


def test_input_that_is_a_directory(tmp_path, mio_tokenizer_dir):
    (tmp_path / "corpus").mkdir()
    args = _base(tmp_path, mio_tokenizer_dir)
    args[1] = tmp_path / "corpus"
    _one_error_line(_run(PREPROCESS, args), f"--input {tmp_path / 'corpus'} is a directory",
                    "*.jsonl")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("blank", [False, True])
def test_empty_input(tmp_path, mio_tokenizer_dir, blank):
    data = _write_jsonl(tmp_path / "in.jsonl", [None] * (5 if blank else 0), blank=True)
    result = _run(PREPROCESS, _base(tmp_path, mio_tokenizer_dir, data))
    line = _one_error_line(result, str(data), "no samples (empty, or blank lines only)",
                           "nothing written") if blank else None
    if not blank:  # an empty file is named twice: a warning first, then the error
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert _lines(result.stderr) == [f"preprocess_data: warning: --input {data} is empty",
                                         _lines(result.stderr)[1]]
        line = _lines(result.stderr)[1]
        assert line.startswith("preprocess_data: error: ") and "no samples" in line
    assert line and _nothing_written(tmp_path / "out") == []


def test_slurm_array_task_id_not_an_integer(tmp_path, mio_tokenizer_dir):
    result = _run(PREPROCESS, _base(tmp_path, mio_tokenizer_dir), SLURM_ARRAY_TASK_ID="abc",
                  SLURM_ARRAY_TASK_COUNT="3")
    _one_error_line(result, "SLURM_ARRAY_TASK_ID='abc' is not an integer",
                    "--num-shards and --shard-index")
    assert not (tmp_path / "out").exists()
    # The flags win over the environment.
    result = _run(PREPROCESS, _base(tmp_path, mio_tokenizer_dir) + ["--num-shards", "1"],
                  SLURM_ARRAY_TASK_ID="abc", SLURM_ARRAY_TASK_COUNT="3")
    assert result.returncode == 0, result.stderr


def test_ctrl_c_is_one_line_and_leaves_nothing(tmp_path, mio_tokenizer_dir):
    data = _write_jsonl(tmp_path / "in.jsonl", [GOOD] * 40_000)
    out = tmp_path / "out"
    out.mkdir()
    command = PREPROCESS + [str(a) for a in _base(tmp_path, mio_tokenizer_dir, data)] + [
        "--workers", "2"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=_env(), start_new_session=True)
    lock = out / ".P.lock"
    deadline = time.monotonic() + 120
    while not lock.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lock.exists(), process.communicate()
    time.sleep(1.0)  # the workers are rendering
    os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole group
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert _lines(stderr) == ["preprocess_data: interrupted"], stderr
    assert stdout == "" and list(out.iterdir()) == []


def test_a_second_writer_of_one_prefix_is_refused(tmp_path, mio_tokenizer_dir):
    from megatron_mio.data.prefix_lock import prefix_lock

    (tmp_path / "out").mkdir()
    with prefix_lock(str(tmp_path / "out" / "P")):
        result = _run(PREPROCESS, _base(tmp_path, mio_tokenizer_dir))
        _one_error_line(result, f"--output-prefix {tmp_path / 'out' / 'P'} is being written by "
                                f"process {os.getpid()}", "wait for it")
    assert _nothing_written(tmp_path / "out") == []
    assert _run(PREPROCESS, _base(tmp_path, mio_tokenizer_dir)).returncode == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir())[0] == "P.bin"
    assert not (tmp_path / "out" / ".P.lock").exists()


def test_two_runs_on_one_prefix_at_once_one_succeeds(tmp_path, mio_tokenizer_dir):
    data = _write_jsonl(tmp_path / "in.jsonl", [GOOD] * 3000)
    command = PREPROCESS + [str(a) for a in _base(tmp_path, mio_tokenizer_dir, data)]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=_env()) for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in runs]
    assert sorted(code for code, _ in results) == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert "is being written by process" in refused and len(_lines(refused)) == 1


# ------------------------------------------------------------------------------ progress
PROGRESS_LINE = re.compile(r"^preprocess: [\d,]+ samples, [\d,]+ tokens \([\d,]+ tok/s\), "
                           r"\d+% of the input, \S+ elapsed, ETA \S+$")


def test_progress_lines_in_a_log(tmp_path, mio_tokenizer_dir):
    data = _write_jsonl(tmp_path / "in.jsonl", [GOOD] * 2000)
    result = _run(PREPROCESS, _base(tmp_path, mio_tokenizer_dir, data)
                  + ["--progress-interval", "0.001"])
    assert result.returncode == 0, result.stderr
    lines = _lines(result.stderr)
    assert len(lines) >= 3 and all(PROGRESS_LINE.match(line) for line in lines), lines
    samples = [int(re.match(r"preprocess: ([\d,]+)", line)[1].replace(",", "")) for line in lines]
    assert samples == sorted(samples) and samples[-1] <= 2000


def test_progress_bar_on_a_terminal(tmp_path, mio_tokenizer_dir):
    data = _write_jsonl(tmp_path / "in.jsonl", [GOOD] * 2000)
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # 120 columns
    process = subprocess.Popen(PREPROCESS + [str(a) for a in _base(tmp_path, mio_tokenizer_dir,
                                                                   data)],
                               stdout=subprocess.PIPE, stderr=secondary, env=_env())
    os.close(secondary)
    seen = b""
    while True:
        ready, _, _ = select.select([primary], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(primary, 4096)
            except OSError:  # the terminal closed: the command ended
                break
            if not chunk:
                break
            seen += chunk
        elif process.poll() is not None:
            break
    os.close(primary)
    assert process.wait(timeout=600) == 0
    text = seen.decode(errors="replace")
    assert "preprocess" in text and "\r" in text, text  # a bar redrawn in place
    assert re.search(r"[\d,]+ samples, [\d,]+ tok/s", text), text
    assert "100%" in text


# ------------------------------------------------------------------------------ merge_datasets
def test_merge_datasets_errors_and_quiet_success(tmp_path, mio_tokenizer_dir):
    data = _write_jsonl(tmp_path / "in.jsonl", [GOOD] * 4)
    for index in range(2):
        args = _base(tmp_path, mio_tokenizer_dir, data) + ["--num-shards", "2", "--shard-index",
                                                           str(index)]
        assert _run(PREPROCESS, args).returncode == 0
    shards = f"{tmp_path / 'out' / 'P'}-*"
    result = _run(MERGE, ["--input", shards, "--output-prefix", tmp_path / "merged"])
    assert result.returncode == 0 and _lines(result.stderr) == [], result.stderr
    assert _lines(result.stdout) == [f"2 datasets -> {tmp_path / 'merged'}: 4 documents, "
                                     f"{_lines(result.stdout)[0].split(', ')[-1]}"]
    _one_error_line(_run(MERGE, ["--input", tmp_path / "nothing-*", "--output-prefix",
                                 tmp_path / "m2"]), "matches no dataset", prog="merge_datasets")
    _one_error_line(_run(MERGE, ["--input", shards, "--output-prefix", f"{tmp_path}/"]),
                    "is a directory", prog="merge_datasets")
    assert not list(tmp_path.glob("m2*"))

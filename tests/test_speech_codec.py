"""The speech codec on real speech (Debian's espeak-ng, resampled and remixed by sox) through a
SpeechTokenizer of the published base configuration with random weights: 50 frames per second,
codes in range, four equal lists, decode lengths, a saved and reloaded checkpoint; then
tools/tokenize_speech.py (JSONL that preprocess_data.py turns into the tokenizer's <spch>
layout, shards, resume, the skip report, progress) and tools/decode_speech.py on generate.py's
output format; and that installing the extra kept the pinned torch."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from megatron_mio.codec.audio import SAMPLE_RATE, read_audio
from megatron_mio.codec.speech import BASE_CONFIG, CodecError, SpeechCodec
from megatron_mio.commands import decode_speech, tokenize_speech

REPO = Path(__file__).resolve().parents[1]
SENTENCES = {
    "alpha": "Speech goes in as codes.",
    "bravo": "Codes come back out as sound.",
    "charlie": "Four lists of equal length.",
}
CALIBRATION = "The codebooks start from these frames."
LONG = "This sentence is a little longer than the others, so that it runs past the limit we set."
MAX_SECONDS = 4.0


def speak(text: str, path: Path, rate: int | None = None, channels: int | None = None) -> Path:
    """espeak-ng's 22.05 kHz mono wav, converted by sox when a rate, channels or format differs."""
    for program in ("espeak-ng", "sox"):
        if shutil.which(program) is None:
            raise RuntimeError(f"{program} is missing: bash ci/install_audio.sh installs it")
    raw = path.with_name(path.stem + ".espeak.wav")
    subprocess.run(["espeak-ng", "-w", str(raw), text], check=True)
    if rate is None and channels is None and path.suffix == ".wav":
        raw.rename(path)
        return path
    options = (["-r", str(rate)] if rate else []) + (["-c", str(channels)] if channels else [])
    subprocess.run(["sox", str(raw), *options, str(path)], check=True)
    raw.unlink()
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """alpha.wav (22.05 kHz mono), bravo.flac (44.1 kHz stereo), charlie.wav (8 kHz mono), each
    with its transcription in a .txt beside it."""
    directory = tmp_path_factory.mktemp("clips")
    formats = {"alpha": (".wav", None, None), "bravo": (".flac", 44100, 2),
               "charlie": (".wav", 8000, None)}
    for name, text in SENTENCES.items():
        suffix, rate, channels = formats[name]
        speak(text, directory / f"{name}{suffix}", rate, channels)
        (directory / f"{name}.txt").write_text(text + "\n")
    return directory


@pytest.fixture(scope="module")
def bad_clips(clips, tmp_path_factory) -> Path:
    """The clips plus one file of each kind tokenize_speech skips."""
    import soundfile

    directory = tmp_path_factory.mktemp("bad_clips")
    for path in clips.iterdir():
        shutil.copy(path, directory / path.name)
    (directory / "garbled.wav").write_bytes(b"RIFF but not really a wave file")
    (directory / "garbled.txt").write_text("unreadable\n")
    soundfile.write(str(directory / "silent.wav"), np.zeros(0, dtype=np.float32), SAMPLE_RATE)
    (directory / "silent.txt").write_text("empty\n")
    speak(LONG, directory / "long.wav")
    (directory / "long.txt").write_text(LONG + "\n")
    speak("No text file for this one.", directory / "untranscribed.wav")
    return directory


@pytest.fixture(scope="module")
def codec(tmp_path_factory) -> SpeechCodec:
    import torch

    torch.manual_seed(0)
    model = SpeechCodec.from_config(BASE_CONFIG)
    calibration = speak(CALIBRATION, tmp_path_factory.mktemp("calibration") / "c.wav")
    model.initialize_codebooks(read_audio(calibration), seed=0)
    return model


@pytest.fixture(scope="module")
def codec_dir(codec, tmp_path_factory) -> Path:
    return codec.save(tmp_path_factory.mktemp("speechtokenizer"))


def clip_paths(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix in (".wav", ".flac"))


def test_read_audio_resamples_to_16khz_mono(clips, tmp_path):
    import soundfile

    original = clips / "alpha.wav"
    remixed = speak(SENTENCES["alpha"], tmp_path / "alpha.flac", rate=44100, channels=2)
    assert soundfile.info(str(remixed)).channels == 2
    a, b = read_audio(original), read_audio(remixed)
    seconds = soundfile.info(str(original)).duration
    assert a.dtype == b.dtype == np.float32 and a.ndim == b.ndim == 1
    assert abs(a.size - seconds * SAMPLE_RATE) <= 1 and abs(b.size - a.size) <= 1
    n = min(a.size, b.size)
    assert np.corrcoef(a[:n], b[:n])[0, 1] > 0.99  # the same speech, not just the same length


@pytest.mark.slow
def test_encode_gives_four_equal_lists_at_50_frames_per_second(codec, clips):
    waveforms = [read_audio(p) for p in clip_paths(clips)]
    batched = codec.encode(waveforms)
    for waveform, codes in zip(waveforms, batched):
        frames = math.ceil(waveform.size / 320)
        assert codes.content.shape == (frames,) and codes.timbre.shape == (3, frames)
        assert 0 <= frames - 50 * waveform.size / SAMPLE_RATE < 1  # 50 per second, tail rounded up
        for layer in (codes.content, *codes.timbre):
            assert layer.dtype == np.int64 and 0 <= layer.min() and layer.max() < 1024
        assert len(np.unique(codes.content)) > 10  # the codes follow the audio
    for waveform, codes in zip(waveforms, batched):  # padding changes codes, not lengths
        alone = codec.encode([waveform])[0]
        assert alone.content.shape == codes.content.shape


def test_decode_lengths_full_and_content_only(codec, clips):
    codes = codec.encode([read_audio(clips / "alpha.wav")])[0]
    full = codec.decode(codes.content, codes.timbre)
    content_only = codec.decode(codes.content)
    assert full.shape == content_only.shape == (codes.content.size * 320,)
    assert full.dtype == np.float32 and np.isfinite(full).all()
    assert not np.array_equal(full, content_only)  # the timbre layers were used
    with pytest.raises(CodecError, match=r"timbre\[1\]: 3 codes but content has"):
        codec.decode(codes.content, [codes.timbre[0], codes.timbre[1][:3], codes.timbre[2]])
    with pytest.raises(CodecError, match="0..1023"):
        codec.decode([5, 1024])


@pytest.mark.slow
def test_saved_checkpoint_reloads_to_identical_codes(codec, codec_dir, clips, tmp_path):
    (tmp_path / "mio").mkdir()
    (tmp_path / "mio" / "SpeechTokenizer").symlink_to(codec_dir)  # MIO's model directory layout
    waveforms = [read_audio(p) for p in clip_paths(clips)]
    expected = codec.encode(waveforms)
    for directory in (codec_dir, tmp_path / "mio"):
        reloaded = SpeechCodec.from_directory(directory).encode(waveforms)
        for a, b in zip(expected, reloaded):
            assert np.array_equal(a.content, b.content) and np.array_equal(a.timbre, b.timbre)


def test_bad_codec_directories_say_what_is_wrong(codec_dir, tmp_path):
    with pytest.raises(CodecError, match="no config.json"):
        SpeechCodec.from_directory(tmp_path)
    shutil.copy(codec_dir / "SpeechTokenizer.pt", tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**BASE_CONFIG, "sample_rate": 24000}))
    with pytest.raises(CodecError, match="sample_rate is 24000, MIO's speech tokens need 16000"):
        SpeechCodec.from_directory(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**BASE_CONFIG, "n_filters": 32}))
    with pytest.raises(CodecError, match="SpeechTokenizer.pt: does not match config.json"):
        SpeechCodec.from_directory(tmp_path)


@pytest.fixture(scope="module")
def tokenized(bad_clips, codec_dir, tmp_path_factory):
    """One tokenize_speech run over the clips and the bad files, as TTS pairs."""
    prefix = tmp_path_factory.mktemp("tokenized") / "speech"
    rc, err = run_tokenize(["--input", str(bad_clips), "--codec", str(codec_dir),
                            "--output-prefix", str(prefix), "--max-seconds", str(MAX_SECONDS),
                            "--direction", "tts"])
    assert rc == 0, err
    return prefix, err


def run_tokenize(argv: list[str]) -> tuple[int, str]:
    """tokenize_speech.main in a subprocess-free way, capturing its stderr."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = tokenize_speech.main(argv)
    return rc, err.getvalue()


@pytest.mark.slow
def test_tokenized_jsonl_preprocesses_into_the_spch_layout(tokenized, codec, clips,
                                                           mio_tokenizer, mio_tokenizer_dir):
    from megatron_mio.data.indexed import open_dataset
    from megatron_mio.data.preprocess import PreprocessConfig, preprocess

    prefix, _ = tokenized
    samples = [json.loads(line) for line in Path(f"{prefix}.jsonl").read_text().splitlines()]
    assert [Path(s["audio"]).stem for s in samples] == sorted(SENTENCES)
    for sample in samples:  # --batch-size 1: the codes of the audio file encoded alone
        expected = codec.encode([read_audio(sample["audio"])])[0]
        assert sample["speech"] == expected.to_json()
        assert sample["transcription"] == SENTENCES[Path(sample["audio"]).stem]
    report = preprocess(PreprocessConfig(inputs=[f"{prefix}.jsonl"],
                                         output_prefix=str(prefix) + "-packed",
                                         tokenizer=mio_tokenizer_dir, stage="1")).report.to_json()
    assert report["documents_written"] == len(samples) and report["skipped"]["count"] == 0
    tokens, _ = open_dataset(str(prefix) + "-packed")
    for document, sample in zip(tokens, samples):
        spch = mio_tokenizer.speech_ids(sample["speech"]["content"], sample["speech"]["timbre"])
        assert spch.size == 4 * len(sample["speech"]["content"]) + 2
        assert np.array_equal(document[-spch.size - 1: -1], spch) or \
            np.array_equal(document[-spch.size:], spch)


def test_skip_report_names_each_file_and_reason(tokenized, bad_clips):
    prefix, err = tokenized
    report = json.loads(Path(f"{prefix}.report.json").read_text())
    reasons = {Path(s["audio"]).name: s["reason"] for s in report["skipped"]["items"]}
    assert reasons == {"garbled.wav": "unreadable", "silent.wav": "empty",
                       "long.wav": "over_max_seconds", "untranscribed.wav": "no_transcription"}
    assert report["files"] == 7 and report["written"] == 3
    for name, reason in reasons.items():
        assert re.search(rf"skipped \S*{name}: {reason}", err), err
    assert "> --max-seconds 4" in err
    assert re.search(r"7/7 files, [\d.]+ s of audio, [\d.]+ s of audio per s", err), err


def test_shards_follow_the_slurm_array_and_resume(clips, codec_dir, tmp_path, monkeypatch):
    prefix = tmp_path / "sharded"
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "4")
    common = ["--input", str(clips), "--codec", str(codec_dir), "--output-prefix", str(prefix)]
    for task in ("4", "5"):
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", task)
        rc, err = run_tokenize(common)
        assert rc == 0, err
    shards = [Path(f"{prefix}-0000{i}-of-00002.jsonl") for i in range(2)]
    stems = [[Path(json.loads(line)["audio"]).stem for line in shard.read_text().splitlines()]
             for shard in shards]
    assert stems == [["alpha"], ["bravo", "charlie"]]
    before = shards[1].stat().st_mtime_ns
    rc, err = run_tokenize(common)  # task 5 again: already written
    assert rc == 0 and "shard 1 of 2 already written" in err and "files ->" not in err
    assert shards[1].stat().st_mtime_ns == before
    rc, err = run_tokenize(common + ["--shard-index", "2"])
    assert rc == 2 and "--shard-index must be in 0..1" in err


def test_tokenize_from_a_manifest(clips, codec_dir, tmp_path):
    manifest = tmp_path / "manifest.jsonl"
    lines = [{"audio": str(clips / "bravo.flac"), "transcription": SENTENCES["bravo"],
              "id": "b-1", "direction": "asr"}]
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    rc, err = run_tokenize(["--input", str(manifest), "--codec", str(codec_dir),
                            "--output-prefix", str(tmp_path / "m")])
    assert rc == 0, err
    (sample,) = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert sample["id"] == "b-1" and sample["direction"] == "asr"
    manifest.write_text("{not json\n")
    rc, err = run_tokenize(["--input", str(manifest), "--codec", str(codec_dir),
                            "--output-prefix", str(tmp_path / "m2")])
    assert rc == 2 and f"{manifest}:1: not JSON" in err


def test_decode_speech_writes_each_generated_span(codec, codec_dir, clips, mio_tokenizer, tmp_path):
    import soundfile

    from megatron_mio.inference.parse import parse_output

    codes = codec.encode([read_audio(clips / "alpha.wav")])[0]
    ids = (mio_tokenizer.encode_text("Here:") + mio_tokenizer.speech_ids(codes.content,
                                                                         codes.timbre).tolist()
           + mio_tokenizer.speech_ids(codes.content[:50]).tolist()
           + mio_tokenizer.speech_ids(codes.content[:10]).tolist()[:-1])  # never closed
    result = {"prompt": "p", "generated_ids": ids, **parse_output(mio_tokenizer, ids)}
    assert [s["complete"] for s in result["speech"]] == [True, True, False]
    generated = tmp_path / "out.json"
    generated.write_text(json.dumps([result], indent=2))
    out = tmp_path / "wavs"
    assert decode_speech.main(["--input", str(generated), "--codec", str(codec_dir),
                               "--output-dir", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["result0_speech0.wav", "result0_speech1.wav"]
    for name, frames in (("result0_speech0.wav", codes.content.size), ("result0_speech1.wav", 50)):
        info = soundfile.info(str(out / name))
        assert info.samplerate == 16000 and info.channels == 1 and info.frames == frames * 320
    decoded, _ = soundfile.read(str(out / "result0_speech0.wav"), dtype="float32")
    expected = codec.decode(codes.content, codes.timbre)
    assert np.abs(decoded - np.clip(expected, -1, 1)).max() < 1e-3  # 16-bit PCM rounding


def test_install_keeps_the_pinned_torch_and_skips_the_trainer(codec):
    import torch

    pinned = re.search(r"TORCH_VERSION=\$\{MIO_TORCH_VERSION:-([\d.]+)\}",
                       (REPO / "tools" / "setup_venv.sh").read_text()).group(1)
    assert torch.__version__.split("+")[0] == pinned
    assert "speechtokenizer.model" in sys.modules
    assert "speechtokenizer.trainer" not in sys.modules  # its imports need torchaudio & co.


def test_sbatch_example_runs_a_task_and_skips_it_when_resubmitted(clips, codec_dir, tmp_path):
    """examples/tokenize_speech.sh as one array task would run it (Slurm's variables set by hand;
    tests/test_preprocess_slurm.py covers sbatch itself for the preprocessing twin)."""
    import os

    env = {**os.environ, "INPUT": str(clips), "OUTPUT_PREFIX": str(tmp_path / "pairs"),
           "CODEC": str(codec_dir), "PYTHON": sys.executable, "MIO_REPO": str(REPO),
           "PYTHONPATH": str(REPO), "SLURM_ARRAY_TASK_COUNT": "2", "SLURM_ARRAY_TASK_ID": "1",
           "SLURM_ARRAY_TASK_MIN": "0", "EXTRA_ARGS": "--device cpu"}
    script = [str(REPO / "examples" / "tokenize_speech.sh")]
    first = subprocess.run(["bash", *script], env=env, capture_output=True, text=True, check=False)
    assert first.returncode == 0, first.stderr
    shard = tmp_path / "pairs-00001-of-00002.jsonl"
    assert [Path(json.loads(line)["audio"]).stem for line in shard.read_text().splitlines()] == \
        ["bravo", "charlie"]
    again = subprocess.run(["bash", *script], env=env, capture_output=True, text=True, check=False)
    assert again.returncode == 0 and "shard 1 of 2 already written" in again.stderr

"""Audio + transcriptions -> MIO JSONL speech samples (content + three timbre code lists).

    python tools/tokenize_speech.py --input DIR_OR_MANIFEST.jsonl --codec SPEECHTOKENIZER_DIR \
        --output-prefix P [--batch-size 1] [--max-seconds 15] [--direction asr|tts] \
        [--device cuda] [--num-shards N --shard-index I]

The input is a directory (each audio file beside a transcription of the same stem, ``a.wav`` +
``a.txt``) or a JSONL manifest of ``{"audio": path, "transcription": text}`` lines (paths relative
to the manifest; ``direction`` and ``id`` are kept).  Writes P.jsonl of ``speech_text_pair``
samples for tools/preprocess_data.py, and P.report.json naming every file skipped (unreadable,
empty, over --max-seconds, no transcription).  Inside a Slurm array job --num-shards and
--shard-index default to the array's task count and index, and shard I of N is written to
P-0000I-of-0000N.jsonl; a shard whose .jsonl exists is skipped, so a rerun of the array redoes
only the shards that did not finish (examples/tokenize_speech.sh).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from megatron_mio.data.input_ranges import shard_output_prefix
from megatron_mio import cli
from megatron_mio.cli import UsageError

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".aiff", ".aif")
MAX_PRINTED_SKIPS = 20


@dataclasses.dataclass(frozen=True)
class TokenizeSpeechConfig:
    input: str
    codec: str
    output_prefix: str
    batch_size: int = 1
    max_seconds: float = 15.0
    direction: str | None = None
    device: str | None = None
    num_shards: int = 1
    shard_index: int = 0
    log_interval: float = 30.0


@dataclasses.dataclass(frozen=True)
class Item:
    audio: str
    transcription: str | None
    extra: dict  # manifest keys passed through (direction, id)


def build_parser() -> argparse.ArgumentParser:
    parser = cli.make_parser("tokenize_speech", __doc__)
    parser.add_argument("--input", required=True,
                        help="a directory of audio files + same-stem .txt transcriptions, or a "
                             "JSONL manifest of {\"audio\": path, \"transcription\": text}")
    parser.add_argument("--codec", required=True,
                        help="SpeechTokenizer directory (config.json + SpeechTokenizer.pt), or a "
                             "MIO model directory holding one in SpeechTokenizer/")
    parser.add_argument("--output-prefix", required=True,
                        help="writes PREFIX.jsonl and PREFIX.report.json")
    parser.add_argument("--batch-size", type=int, default=1,
                        help="waveforms per encoder call, grouped by length: faster on a GPU, "
                             "but the encoder's bidirectional LSTM sees the zero padding, so "
                             "some codes differ from encoding each file alone (the default)")
    parser.add_argument("--max-seconds", type=float, default=15.0,
                        help="longer audio is skipped and reported (MIO trains on <= 15 s)")
    parser.add_argument("--direction", choices=["asr", "tts"], default=None,
                        help="written into every sample (default: the manifest's, else none: "
                             "preprocess_data.py then picks ASR/TTS per sample)")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--log-interval", type=float, default=30.0,
                        help="seconds between progress lines")
    parser.add_argument("--num-shards", type=int, default=None,
                        help="split the input into this many parts (default: "
                             "SLURM_ARRAY_TASK_COUNT, else 1)")
    parser.add_argument("--shard-index", type=int, default=None,
                        help="which part to write, from 0 (default: SLURM_ARRAY_TASK_ID - "
                             "SLURM_ARRAY_TASK_MIN, else 0)")
    return parser


def config_from_args(args: argparse.Namespace) -> TokenizeSpeechConfig:
    num_shards, shard_index = cli.resolve_shard(args.num_shards, args.shard_index)
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise UsageError(f"--shard-index must be in 0..{num_shards - 1} and --num-shards "
                         f">= 1, got {shard_index} of {num_shards}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.max_seconds <= 0:
        raise UsageError(f"--max-seconds must be > 0, got {args.max_seconds}")
    return TokenizeSpeechConfig(
        input=args.input, codec=args.codec, output_prefix=args.output_prefix,
        batch_size=args.batch_size, max_seconds=args.max_seconds, direction=args.direction,
        device=args.device, num_shards=num_shards, shard_index=shard_index,
        log_interval=args.log_interval)


def list_items(path: str) -> list[Item]:
    """The input's items in a fixed order (sorted paths, or the manifest's line order)."""
    source = Path(path)
    if source.is_dir():
        audio = sorted(p for p in source.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
        if not audio:
            raise UsageError(f"--input {path}: no audio files ({', '.join(AUDIO_SUFFIXES)})")
        return [Item(str(p), _read_transcription(p.with_suffix(".txt")), {}) for p in audio]
    if not source.is_file():
        raise UsageError(f"--input {path}: no such file or directory")
    return _manifest_items(source)


def _read_transcription(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None


def _manifest_items(path: Path) -> list[Item]:
    items = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as error:
                raise UsageError(f"{path}:{number}: not JSON ({error.msg})") from None
            if not isinstance(entry, dict) or not isinstance(entry.get("audio"), str):
                raise UsageError(f"{path}:{number}: expected an object with an \"audio\" path")
            audio = path.parent / entry["audio"]
            text = entry.get("transcription")
            text = text.strip() if isinstance(text, str) and text.strip() else None
            extra = {k: entry[k] for k in ("direction", "id") if k in entry}
            items.append(Item(str(audio), text, extra))
    if not items:
        raise UsageError(f"--input {path}: an empty manifest")
    return items


def shard_items(items: list[Item], num_shards: int, shard_index: int) -> list[Item]:
    """A contiguous part of the items; the parts of all shards together are the input, once."""
    low = len(items) * shard_index // num_shards
    return items[low: len(items) * (shard_index + 1) // num_shards]


class Progress:
    """A line every ``interval`` seconds: files done, audio seconds, seconds of audio per second."""

    def __init__(self, total: int, interval: float):
        self.total, self.interval = total, interval
        self.start = self.last = time.monotonic()
        self.done = 0
        self.audio_seconds = 0.0

    def advance(self, files: int, audio_seconds: float) -> None:
        self.done += files
        self.audio_seconds += audio_seconds
        now = time.monotonic()
        if files and (now - self.last >= self.interval or self.done == self.total):
            self.last = now
            print(f"tokenize_speech: {self.done}/{self.total} files, "
                  f"{self.audio_seconds:.1f} s of audio, {self.rate():.2f} s of audio per s",
                  file=sys.stderr, flush=True)

    def rate(self) -> float:
        return self.audio_seconds / max(time.monotonic() - self.start, 1e-9)


class ShardWriter:
    """Reads, filters and encodes one shard's items; collects samples and skips in input order."""

    def __init__(self, config: TokenizeSpeechConfig, codec, progress: Progress):
        self.config, self.codec, self.progress = config, codec, progress
        self.samples: dict[int, dict] = {}  # the current window's, by input position
        self.skipped: list[dict] = []

    def skip(self, item: Item, reason: str, detail: str) -> None:
        self.skipped.append({"audio": item.audio, "reason": reason, "detail": detail})

    def load(self, item: Item):
        """The 16 kHz waveform, or None after recording why the item is skipped."""
        from megatron_mio.codec.audio import AudioError, audio_seconds, read_audio

        if item.transcription is None:
            self.skip(item, "no_transcription", "no transcription (a same-stem .txt file, or "
                                                "the manifest's \"transcription\")")
            return None
        try:
            seconds = audio_seconds(item.audio)  # header only: long files are never decoded
            if seconds > self.config.max_seconds:
                self.skip(item, "over_max_seconds",
                          f"{seconds:.2f} s > --max-seconds {self.config.max_seconds:g}")
                return None
            waveform = read_audio(item.audio)
        except AudioError as error:
            self.skip(item, "unreadable", str(error))
            return None
        if waveform.size == 0:
            self.skip(item, "empty", "no audio samples")
            return None
        return waveform

    def encode_window(self, window: list[tuple[int, Item]]) -> None:
        """Encode a window of items in batches of similar length (less padding)."""
        from megatron_mio.codec.audio import SAMPLE_RATE

        loaded = [(i, item, self.load(item)) for i, item in window]
        loaded = sorted((x for x in loaded if x[2] is not None), key=lambda x: x[2].size)
        size = self.config.batch_size
        for start in range(0, len(loaded), size):
            batch = loaded[start: start + size]
            codes = self.codec.encode([waveform for _, _, waveform in batch])
            for (index, item, waveform), speech in zip(batch, codes):
                self.samples[index] = self.sample(item, speech, waveform.size / SAMPLE_RATE)
            self.progress.advance(len(batch), sum(w.size for _, _, w in batch) / SAMPLE_RATE)
        self.progress.advance(len(window) - len(loaded), 0.0)

    def sample(self, item: Item, speech, seconds: float) -> dict:
        sample = {"type": "speech_text_pair", "speech": speech.to_json(),
                  "transcription": item.transcription}
        direction = self.config.direction or item.extra.get("direction")
        if direction is not None:
            sample["direction"] = direction
        if "id" in item.extra:
            sample["id"] = item.extra["id"]
        sample["audio"] = item.audio
        sample["seconds"] = round(seconds, 3)
        return sample


def tokenize_shard(config: TokenizeSpeechConfig, items: list[Item], codec) -> dict:
    """Encode ``items`` into PREFIX.jsonl, one window at a time (a shard's codes never sit in
    memory at once); PREFIX.report.json is written first and the .jsonl renamed into place last,
    so its presence marks the shard done.  Returns the report."""
    from megatron_mio.atomic import atomic_file, write_text

    progress = Progress(len(items), config.log_interval)
    writer = ShardWriter(config, codec, progress)
    window = config.batch_size * 8
    numbered = list(enumerate(items))
    prefix = shard_output_prefix(config.output_prefix, config.shard_index, config.num_shards)
    written = 0
    with atomic_file(f"{prefix}.jsonl") as tmp, open(tmp, "w", encoding="utf-8") as out:
        for start in range(0, len(numbered), window):
            writer.encode_window(numbered[start: start + window])
            out.writelines(json.dumps(writer.samples[index], separators=(",", ":")) + "\n"
                           for index in sorted(writer.samples))  # input order within the window
            written += len(writer.samples)
            writer.samples.clear()
        out.flush()
        report = {
            "settings": dataclasses.asdict(config), "codec": codec.describe(),
            "shard": {"index": config.shard_index, "count": config.num_shards},
            "files": len(items), "written": written,
            "audio_seconds": round(progress.audio_seconds, 3),
            "seconds": round(time.monotonic() - progress.start, 3),
            "audio_seconds_per_second": round(progress.rate(), 3),
            "skipped": {"count": len(writer.skipped),
                        "by_reason": _count_reasons(writer.skipped), "items": writer.skipped},
        }
        write_text(f"{prefix}.report.json", json.dumps(report, indent=2) + "\n")
    return report


def _count_reasons(skipped: list[dict]) -> dict:
    counts: dict[str, int] = {}
    for entry in skipped:
        counts[entry["reason"]] = counts.get(entry["reason"], 0) + 1
    return dict(sorted(counts.items()))


def print_summary(report: dict, prefix: str) -> None:
    for entry in report["skipped"]["items"][:MAX_PRINTED_SKIPS]:
        print(f"tokenize_speech: skipped {entry['audio']}: {entry['reason']}: {entry['detail']}",
              file=sys.stderr)
    more = report["skipped"]["count"] - MAX_PRINTED_SKIPS
    if more > 0:
        print(f"tokenize_speech: ... {more} more skipped, listed in {prefix}.report.json",
              file=sys.stderr)
    print(f"tokenize_speech: {report['written']} of {report['files']} files -> {prefix}.jsonl "
          f"({report['audio_seconds']:.1f} s of audio in {report['seconds']:.1f} s, "
          f"{report['audio_seconds_per_second']:.2f} s of audio per s); skipped "
          f"{report['skipped']['count']} {report['skipped']['by_reason']}", file=sys.stderr)


def run(config: TokenizeSpeechConfig) -> int:
    prefix = shard_output_prefix(config.output_prefix, config.shard_index, config.num_shards)
    if Path(f"{prefix}.jsonl").exists():
        print(f"tokenize_speech: shard {config.shard_index} of {config.num_shards} already "
              f"written: {prefix}.jsonl (delete it to redo)", file=sys.stderr)
        return 0
    cli.check_writable(f"{prefix}.jsonl", "--output-prefix")
    items = shard_items(list_items(config.input), config.num_shards, config.shard_index)
    import torch

    from megatron_mio.codec.speech import SpeechCodec

    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    codec = SpeechCodec.from_directory(config.codec, device=device)
    print(f"tokenize_speech: shard {config.shard_index} of {config.num_shards}: {len(items)} "
          f"files; {codec.describe()}", file=sys.stderr, flush=True)
    print_summary(tokenize_shard(config, items, codec), prefix)
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cli.quiet_libraries(args.verbose)
    from megatron_mio.codec.audio import AudioError, MissingExtraError
    from megatron_mio.codec.speech import CodecError

    return cli.run("tokenize_speech", lambda: run(config_from_args(args)),
                   input_errors=(CodecError, AudioError, MissingExtraError))

"""The laptop quickstart (``bash examples/quickstart.sh``): the whole MIO pipeline on a tiny model.

The shell script runs the steps; this module holds the two that are Python:

``prepare WORKDIR``
    a small sample corpus of every data type (language, image-text, video-text, speech-text,
    interleaved, SFT chats), a tiny SentencePiece base model trained on its text, the MIO
    tokenizer on top of it, the corpus tokenized into indexed datasets, and a stage mixture
    (``WORKDIR/data.yaml``) for the trainer;
``summary WORKDIR``
    the loss at the start and end of training, overall and per modality, from the trainer's
    ``--metrics-file``, a PNG of the loss curves, and the paths of everything produced.

Training (through ``examples/pretrain_stage3.sh``, the cluster launch script), the export to
Hugging Face and generation (``tools/convert_to_hf.py``, ``tools/generate.py``) run in between.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from megatron_mio import cli
from megatron_mio.atomic import atomic_file, write_text
from megatron_mio.tokenizer.vocab import Modality

SEQ_LENGTH = 512  # small enough for 2 CPU cores
# Every sample must fit SEQ_LENGTH whole (pairs and speech segments are never cut), so speech is
# short here: generated speech is four codebooks (4 tokens per code, 50 codes/s), and a voice
# chat (user speech in, assistant speech out: 5 tokens per code) shares a piece with its ~110-
# token system prompt: 1.4 s is 70 codes, 350 + ~25 tokens of ChatML.
SPEECH_SECONDS = (0.6, 1.4)
MODALITIES = tuple(m.label for m in Modality)


def _paths(workdir: Path) -> dict[str, Path]:
    return {
        "corpus": workdir / "corpus",
        "base_model": workdir / "base_sentencepiece" / "base.model",
        "tokenizer": workdir / "tokenizer",
        "data": workdir / "data",
        "mixture": workdir / "data.yaml",
        "checkpoints": workdir / "checkpoints",
        "metrics": workdir / "checkpoints" / "metrics.jsonl",
        "hf": workdir / "hf_model",
        "generation": workdir / "generation.json",
        "plot": workdir / "loss_curves.png",
    }


def write_quickstart_corpus(directory: Path, scale: int = 2) -> dict:
    """The synthetic corpus of every data type, each sample short enough for SEQ_LENGTH."""
    from megatron_mio.data.synthetic import write_sample_corpus

    return write_sample_corpus(directory, seed=0, scale=scale, speech_seconds=SPEECH_SECONDS)


def prepare(workdir: Path, scale: int = 2) -> dict[str, Path]:
    """Corpus, base SentencePiece model, MIO tokenizer, indexed datasets and the mixture YAML."""
    from megatron_mio.data.preprocess import PreprocessConfig, preprocess
    from megatron_mio.data.synthetic import sample_text_lines
    from megatron_mio.tokenizer import build_mio_tokenizer, train_sentencepiece

    paths = _paths(workdir)
    corpus = write_quickstart_corpus(paths["corpus"], scale)
    print(f"corpus: {corpus['pretrain']} and {corpus['sft']}")
    paths["base_model"].parent.mkdir(parents=True, exist_ok=True)
    train_sentencepiece(sample_text_lines(n=2000, seed=0), paths["base_model"], vocab_size=1000)
    build_mio_tokenizer(str(paths["base_model"]), paths["tokenizer"])
    print(f"tokenizer: {paths['tokenizer']} (1,000 SentencePiece pieces + the 12,292 MIO tokens)")

    paths["data"].mkdir(parents=True, exist_ok=True)
    prefixes = {}
    for name, source, stage in (("pretrain", corpus["pretrain"], "2"), ("sft", corpus["sft"], "sft")):
        prefix = paths["data"] / name
        result = preprocess(PreprocessConfig(inputs=[str(source)], output_prefix=str(prefix),
                                             tokenizer=str(paths["tokenizer"]), stage=stage,
                                             seq_length=SEQ_LENGTH, progress=False))
        prefixes[name] = prefix
        counts = {k: v for k, v in result.report.to_json().items() if isinstance(v, int)}
        print(f"preprocessed {source} -> {prefix}.bin/.idx (+ loss masks): {json.dumps(counts)}")
        for line in result.report.warnings():  # none: the corpus is made to fit SEQ_LENGTH
            print(f"quickstart: warning: {prefix}: {line}", file=sys.stderr)
    # Pre-training documents of every type, plus chats (trained on assistant turns only).
    mixture = (
        "description: MIO quickstart (synthetic samples of every data type)\n"
        "types:\n"
        f"  pretrain: {{weight: 3, prefixes: [{prefixes['pretrain']}]}}\n"
        f"  sft: {{weight: 1, prefixes: [{prefixes['sft']}]}}\n"
    )
    write_text(paths["mixture"], mixture)
    print(f"mixture: {paths['mixture']}")
    return paths


def read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no metrics; did training run?")
    return [json.loads(line) for line in path.read_text().splitlines()
            if line.strip() and "loss" in json.loads(line)]


def loss_table(records: list[dict]) -> list[tuple[str, float | None, float | None]]:
    """(series, first logged value, last logged value) for the loss and each modality's loss."""
    rows = []
    for key in ("loss", *(f"loss_{m}" for m in MODALITIES)):
        values = [r[key] for r in records if r.get(key) is not None]
        rows.append((key, values[0] if values else None, values[-1] if values else None))
    return rows


def plot(records: list[dict], output: Path) -> Path:
    """The loss curves (overall and per modality) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for key in ("loss", *(f"loss_{m}" for m in MODALITIES)):
        points = [(r["iteration"], r[key]) for r in records if r.get(key) is not None]
        if points:
            ax.plot(*zip(*points), label=key, linewidth=2 if key == "loss" else 1)
    ax.set_xlabel("iteration")
    ax.set_ylabel("cross-entropy per token")
    ax.set_title("MIO quickstart: tiny model on the CPU")
    ax.legend()
    fig.tight_layout()
    with atomic_file(output, suffix=".png") as tmp:  # matplotlib picks the format by the suffix
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return output


def summary(workdir: Path) -> int:
    paths = _paths(workdir)
    records = read_metrics(paths["metrics"])
    print("\n=== MIO quickstart summary ===")
    print(f"trained {records[-1]['iteration']} iterations "
          f"({records[-1]['consumed_samples']} packed sequences of {SEQ_LENGTH} tokens)")
    print(f"{'loss':<14}{'start':>10}{'end':>10}")
    for key, first, last in loss_table(records):
        fmt = lambda v: f"{v:10.3f}" if v is not None else f"{'-':>10}"  # noqa: E731
        print(f"{key:<14}{fmt(first)}{fmt(last)}")
    png = plot(records, paths["plot"])
    if paths["generation"].exists():
        generation = json.loads(paths["generation"].read_text())
        print(f"transformers generated {len(generation.get('generated_ids', []))} tokens from "
              f"{paths['hf']} ({generation.get('modality')}, {generation.get('decoding')}): "
              f"{generation.get('text', '')!r}")
    print("outputs:")
    for key in ("tokenizer", "data", "checkpoints", "metrics", "hf", "generation"):
        print(f"  {key:<12} {paths[key]}")
    print(f"  {'plot':<12} {png}")
    return 0


def main(argv=None) -> int:
    parser = cli.make_parser("quickstart", "steps of examples/quickstart.sh")
    parser.add_argument("step", choices=["prepare", "summary"])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--scale", type=int, default=2, help="corpus size multiplier (prepare)")
    args = parser.parse_args(argv)
    cli.quiet_libraries(args.verbose)
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.step == "prepare":
        prepare(args.workdir, args.scale)
        return 0
    return summary(args.workdir)


if __name__ == "__main__":
    sys.exit(main())

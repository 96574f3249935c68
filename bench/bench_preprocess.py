#!/usr/bin/env python
"""Preprocessing throughput: direct code mapping vs inline ``<imgN>`` strings + AutoTokenizer,
and the preprocess tool at 1 vs 2 workers.

    python bench/bench_preprocess.py [--scale 1] [--worker-samples 200000] [--skip-paths]

The worker comparison runs ``preprocess()`` end to end (JSONL in, files out, worker start-up
included) on ``--worker-samples`` mostly caption samples (90% caption pairs, 5% interleaved
pages, 5% ASR speech pairs), checks that both runs wrote identical files, and reports the main
process' own time per document (planning, appending the workers' datasets, writing the index):
the ceiling of adding workers is documents/s = 1 / that cost.

Mix: caption pairs (32 image codes + one sentence), 15 s TTS speech pairs (750 content codes x 4
codebooks), interleaved pages (paragraphs and images).  Both paths are checked to give the same
ids before anything is timed.  The base is a SentencePiece Unigram model trained here (4,000
pieces); Yi's 64,000-piece model makes text encoding a little slower on both paths.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import tempfile
import time

import numpy as np

from megatron_mio.data import sample_types as ST
from megatron_mio.data import synthetic
from megatron_mio.data import templates as T
from megatron_mio.data.preprocess import PreprocessConfig, preprocess
from megatron_mio.tokenizer import MIOTokenizer, build_mio_tokenizer, train_sentencepiece


def make_mix(scale: int, seed: int = 0) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    samples = synthetic.pretraining_samples(seed, n_language=0, n_image_pairs=400 * scale,
                                            n_video_pairs=0, n_speech_pairs=0,
                                            n_interleaved=60 * scale)
    captions = [s for s in samples if s["type"] == "image_text_pair"]
    pages = [s for s in samples if s["type"] == "interleaved"]
    speech = synthetic.pretraining_samples(seed + 1, n_language=0, n_image_pairs=0, n_video_pairs=0,
                                           n_speech_pairs=80 * scale, n_interleaved=0,
                                           speech_seconds=(15.0, 15.0))
    tts = [{**s, "direction": "tts"} for s in speech if "timbre" in s["speech"]]
    for s in captions:
        s["direction"] = rng.choice(["caption", "generation"])
    return {"caption pairs": captions, "15 s TTS speech": tts, "interleaved pages": pages}


def time_call(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def compare_paths(mix, tokenizer: MIOTokenizer, auto) -> list[dict]:
    renderer = T.TemplateRenderer(tokenizer, "2")
    rows = []
    for name, samples in mix.items():
        parsed = [ST.parse_sample(s) for s in samples]
        docs = [ST.render(renderer, p, np.random.default_rng(i)) for i, p in enumerate(parsed)]
        strings = [T.format_document(d, tokenizer) for d in docs]
        direct = [ST.render_sample(renderer, p, np.random.default_rng(i))[0]
                  for i, p in enumerate(parsed)]
        assert all(auto(s)["input_ids"] == d.tolist() for s, d in zip(strings, direct)), name
        n_tokens = sum(d.size for d in direct)

        def run_direct():
            for i, p in enumerate(parsed):
                ST.render_sample(renderer, p, np.random.default_rng(i))

        def run_format():
            for d in docs:
                T.format_document(d, tokenizer)

        def run_auto():
            for s in strings:
                auto(s)

        t_direct, t_format, t_auto = time_call(run_direct), time_call(run_format), time_call(run_auto)
        rows.append({"mix": name, "samples": len(samples), "tokens": n_tokens,
                     "direct_tok_s": n_tokens / t_direct, "auto_tok_s": n_tokens / t_auto,
                     "format_plus_auto_tok_s": n_tokens / (t_format + t_auto),
                     "speedup_vs_auto": t_auto / t_direct,
                     "speedup_vs_format_plus_auto": (t_format + t_auto) / t_direct})
    return rows


def worker_corpus(n: int, seed: int = 0) -> list[dict]:
    """``n`` mostly caption samples: 90% caption pairs, 5% interleaved pages, 5% ASR pairs."""
    n_pairs, n_pages = n * 90 // 100, n * 5 // 100
    return synthetic.pretraining_samples(seed, n_language=0, n_image_pairs=n_pairs,
                                         n_video_pairs=0, n_speech_pairs=n - n_pairs - n_pages,
                                         n_interleaved=n_pages)


def compare_workers(samples: list[dict], tokenizer_dir: str, workdir: str) -> list[dict]:
    data = synthetic.write_jsonl(os.path.join(workdir, "mix.jsonl"), samples)
    rows, outputs = [], []
    for workers in (1, 2):
        prefix = os.path.join(workdir, f"w{workers}")
        config = PreprocessConfig(inputs=[data], output_prefix=prefix, tokenizer=tokenizer_dir,
                                  stage="2", workers=workers, progress=False)
        result = preprocess(config)  # includes starting the worker processes
        report = result.report.to_json()
        main_seconds = dataclasses.asdict(result.main_seconds)
        main = sum(main_seconds.values())
        rows.append({"workers": workers, "samples": len(samples),
                     "documents": report["documents_written"],
                     "tokens": report["tokens"]["total"], "seconds": result.seconds,
                     "tok_s": report["tokens"]["total"] / result.seconds,
                     "main_seconds": main_seconds,
                     "main_us_per_document": 1e6 * main / report["documents_written"]})
        outputs.append({s: open(prefix + s, "rb").read() for s in (".bin", ".idx", ".loss_mask.bin",
                                                                  ".loss_mask.idx")})
    assert outputs[0] == outputs[1], "1 and 2 workers wrote different files"
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=1)
    parser.add_argument("--worker-samples", type=int, default=200_000)
    parser.add_argument("--skip-paths", action="store_true", help="only the worker comparison")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as workdir:
        model = train_sentencepiece(synthetic.sample_text_lines(n=20000, seed=0),
                                    os.path.join(workdir, "base.model"), vocab_size=4000)
        tokenizer_dir = os.path.join(workdir, "tokenizer")
        build_mio_tokenizer(model, tokenizer_dir)
        tokenizer, auto = MIOTokenizer(tokenizer_dir), AutoTokenizer.from_pretrained(tokenizer_dir)
        mix = make_mix(args.scale)
        paths = [] if args.skip_paths else compare_paths(mix, tokenizer, auto)
        workers = compare_workers(worker_corpus(args.worker_samples), tokenizer_dir, workdir)
    print(f"{'mix':<20}{'samples':>8}{'tokens':>9}{'direct tok/s':>14}{'auto tok/s':>12}"
          f"{'fmt+auto tok/s':>16}{'x auto':>8}{'x fmt+auto':>11}")
    for r in paths:
        print(f"{r['mix']:<20}{r['samples']:>8}{r['tokens']:>9}{r['direct_tok_s']:>14,.0f}"
              f"{r['auto_tok_s']:>12,.0f}{r['format_plus_auto_tok_s']:>16,.0f}"
              f"{r['speedup_vs_auto']:>8.1f}{r['speedup_vs_format_plus_auto']:>11.1f}")
    base = workers[0]["tok_s"]
    for r in workers:
        print(f"preprocess_data --workers {r['workers']}: {r['samples']} samples, {r['tokens']} "
              f"tokens in {r['seconds']:.2f} s = {r['tok_s']:,.0f} tok/s ({r['tok_s'] / base:.2f}x)")
    r = workers[1]
    per_doc = r["main_us_per_document"]
    tokens_per_doc = r["tokens"] / r["documents"]
    per_worker = workers[0]["tok_s"]
    print(f"main process with 2 workers: {r['main_seconds']} -> {per_doc:.2f} us per document; "
          f"ceiling {1e6 / per_doc:,.0f} documents/s = {tokens_per_doc * 1e6 / per_doc:,.0f} "
          f"tok/s at {tokens_per_doc:.0f} tokens/document; 64 workers at the 1-worker rate would "
          f"need {64 * per_worker:,.0f} tok/s")
    print(f"load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())}, cpus: {os.cpu_count()}")
    print(json.dumps({"paths": paths, "workers": workers}))


if __name__ == "__main__":
    main()

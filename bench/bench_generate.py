"""MIO's grammar while generating: well-formed rates with and without it, and what it costs.

1. Well-formed rate (``megatron_mio.inference.well_formed``: every span complete, and an image; a
   video of 2-8 frames; speech with its four equal codebook parts) of image, video and speech
   answers over ``--seeds`` seeds, each modality's Table 8 preset (sampling, top-p 0.7), with
   the grammar and without it (``--no-grammar``, the behaviour before it), for a randomly
   initialised model of the ``tiny`` preset's shape over a freshly built MIO tokenizer, and for
   each ``--model-dir`` given (e.g. the quickstart's ``quickstart/hf_model``).
2. Cost: tokens per CPU-second of greedy decoding of the random tiny model (one thread),
   exactly ``--speed-tokens`` new tokens per call, with and without the processor (calls
   alternating), median of ``--repeats`` calls, measured in this one run; and the share of the
   CPU time spent inside the processor (less sensitive to a busy machine than the ratio).

    python bench/bench_generate.py [--model-dir quickstart/hf_model] [--seeds 20]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

MODALITIES = ("image", "video", "speech")


def random_model_dir(root: Path) -> Path:
    """A MIO tokenizer on a small SentencePiece model, and a random ``tiny`` Llama over it, in
    the shape ``tools/convert_to_hf.py`` exports."""
    from transformers import LlamaForCausalLM

    from megatron_mio.convert.hf_config import llama_config
    from megatron_mio.data.synthetic import sample_text_lines
    from megatron_mio.model.presets import get_preset
    from megatron_mio.tokenizer import MIOTokenizer, build_mio_tokenizer, train_sentencepiece

    base = train_sentencepiece(sample_text_lines(n=2000, seed=0), root / "base.model", vocab_size=1000)
    build_mio_tokenizer(base, root / "model")
    tok = MIOTokenizer(root / "model")
    config = llama_config(get_preset("tiny"), len(tok), torch.float32,
                          {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id})
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    model.save_pretrained(root / "model")
    return root / "model"


def well_formed_rates(generator, seeds: int, speech_tokens: int) -> dict:
    from megatron_mio.inference import well_formed

    rates = {}
    for modality in MODALITIES:
        budget = speech_tokens if modality == "speech" else None
        for grammar in (False, True):
            good = 0
            for seed in range(seeds):
                [result] = generator.generate("Please show me a cat.", modality=modality, max_new_tokens=budget,
                                              grammar=grammar, seed=seed)
                good += well_formed(generator.tokenizer, result["generated_ids"], modality)
            rates[modality, grammar] = good
    return rates


class TimedProcessor:
    """The processor, with the CPU time spent inside it summed up."""

    def __init__(self, processor):
        self.processor, self.seconds = processor, 0.0

    def __call__(self, input_ids, scores):
        start = time.process_time()
        out = self.processor(input_ids, scores)
        self.seconds += time.process_time() - start
        return out


def greedy_tokens_per_second(generator, modality: str, tokens: int, repeats: int) -> tuple[float, float, float]:
    """(tokens/CPU-s without, with the processor, the processor's share of the latter's CPU
    time): calls alternate, so both see the same machine load."""
    from megatron_mio.inference import MIOGrammarLogitsProcessor
    from megatron_mio.inference.prompt import chat_prompt_ids

    tok, model = generator.tokenizer, generator.model
    prompt = torch.tensor([chat_prompt_ids(tok, "Please show me a cat.")])
    times, shares = {False: [], True: []}, []
    for _ in range(repeats + 1):  # the first pair warms up and is dropped
        for grammar in (False, True):
            timed = TimedProcessor(MIOGrammarLogitsProcessor(generator.grammar, prompt.shape[1], tokens, modality))
            start = time.process_time()  # CPU time of this one-thread process: robust to a busy machine
            with torch.no_grad():
                out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, num_beams=1,
                                     max_new_tokens=tokens, min_new_tokens=tokens,
                                     logits_processor=[timed] if grammar else [],
                                     eos_token_id=tok.im_end_id, pad_token_id=tok.pad_id)
            elapsed = time.process_time() - start
            times[grammar].append(elapsed)
            if grammar:
                shares.append(timed.seconds / elapsed)
            assert out.shape[1] - prompt.shape[1] == tokens
    plain, ruled = (tokens / statistics.median(times[g][1:]) for g in (False, True))
    return plain, ruled, statistics.median(shares[1:])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", action="append", default=[], help="exported MIO models to rate too")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--speech-tokens", type=int, default=400,
                        help="max_new_tokens for speech (the preset's 3,200 is slow on a CPU)")
    parser.add_argument("--speed-tokens", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--speed-only", action="store_true", help="skip the well-formed rates")
    args = parser.parse_args()
    from transformers.utils import logging

    from megatron_mio.inference import Generator

    logging.disable_progress_bar()
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="bench_generate_"))
    try:
        models = {"random tiny": random_model_dir(root), **{d: Path(d) for d in args.model_dir}}
        generators = {name: Generator(str(path), device="cpu") for name, path in models.items()}
        print(f"well-formed answers of {args.seeds} seeds (Table 8 presets; speech max_new_tokens "
              f"{args.speech_tokens}):\n")
        print("| model | modality | without grammar | with grammar |")
        print("|---|---|---|---|")
        for name, generator in generators.items() if not args.speed_only else ():
            rates = well_formed_rates(generator, args.seeds, args.speech_tokens)
            for modality in MODALITIES:
                print(f"| {name} | {modality} | {rates[modality, False]}/{args.seeds} | "
                      f"{rates[modality, True]}/{args.seeds} |")

        generator = generators["random tiny"]
        print(f"\ngreedy decoding, random tiny model, {args.speed_tokens} new tokens, "
              f"median of {args.repeats}, 1 thread:\n")
        print("| answer | without processor (tok/CPU-s) | with processor (tok/CPU-s) | ratio "
              "| processor's share of CPU time |")
        print("|---|---|---|---|---|")
        for modality in ("text", "speech"):
            plain, ruled, share = greedy_tokens_per_second(generator, modality, args.speed_tokens, args.repeats)
            print(f"| {modality} | {plain:.0f} | {ruled:.0f} | {ruled / plain:.3f} | {share:.1%} |")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

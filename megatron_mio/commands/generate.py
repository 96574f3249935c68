"""Generate with an exported MIO model (a convert_to_hf.py directory) and parse the output.

    python tools/generate.py --hf-dir mio-hf --prompt "Draw a cat." --modality image --output out.json

Uses MIO's ChatML template with the std or voice system prompt, the paper's decoding preset for
the requested output modality, and MIO's grammar while generating (--no-grammar turns it off):
the answer opens with the requested span (voice mode: speech), images have 32 codes, videos 2-8
frames, speech its four equal codebook parts, and every span closes within --max-new-tokens.
Writes text, image code lists and speech code lists as JSON (for the SEED-Tokenizer /
SpeechTokenizer decoders): one object for one prompt and sequence, else a list of them.
"""

import argparse
import json
import sys

from megatron_mio.atomic import write_text
from megatron_mio.inference.presets import MODALITIES
from megatron_mio.inference.prompt import MODES


def codes(text: str) -> list[int]:
    return [int(c) for c in text.split(",") if c.strip()]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hf-dir", required=True)
    p.add_argument("--prompt", required=True, action="append", help="the user's text (repeatable: a batch)")
    p.add_argument("--modality", choices=MODALITIES, default=None,
                   help="requested output modality (default: speech in voice mode, else text)")
    p.add_argument("--mode", choices=MODES, default="std", help="system prompt")
    p.add_argument("--image-codes", type=codes, default=None, help="input image: 32 comma-separated codes")
    p.add_argument("--speech-codes", type=codes, default=None, help="input speech: content codes")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: the modality preset's")
    p.add_argument("--num-return-sequences", type=int, default=1, help="sequences per prompt")
    p.add_argument("--no-grammar", action="store_true", help="generate without MIO's grammar")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=None, help="JSON file (default: stdout)")
    args = p.parse_args(argv)
    from transformers.utils import logging as hf_logging

    from megatron_mio.inference import Generator

    hf_logging.disable_progress_bar()  # the weight-loading bar; the line below says what loaded

    try:
        generator = Generator(args.hf_dir, device=args.device)
        print(f"generate: {generator.describe()}", file=sys.stderr)
        results = generator.generate(
            args.prompt, modality=args.modality, mode=args.mode, image_codes=args.image_codes,
            speech_codes=args.speech_codes, max_new_tokens=args.max_new_tokens,
            num_return_sequences=args.num_return_sequences, grammar=not args.no_grammar, seed=args.seed)
    except (ValueError, OSError) as err:
        print(f"generate: error: {err}", file=sys.stderr)
        return 2
    text = json.dumps(results[0] if len(results) == 1 else results, indent=2)
    if args.output:
        write_text(args.output, text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

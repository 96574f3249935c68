#!/usr/bin/env python
"""Generate with an exported MIO model (a convert_to_hf.py directory) and parse the output.

    python tools/generate.py --hf-dir mio-hf --prompt "Draw a cat." --modality image --output out.json

Uses MIO's ChatML template with the std or voice system prompt and the paper's decoding preset
for the requested output modality; writes text, image code lists and speech code lists as JSON
(for the SEED-Tokenizer / SpeechTokenizer decoders).
"""

import argparse
import json
import sys

from megatron_mio.convert.decoding import MODALITIES


def codes(text: str) -> list[int]:
    return [int(c) for c in text.split(",") if c.strip()]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hf-dir", required=True)
    p.add_argument("--prompt", required=True, help="the user's text")
    p.add_argument("--modality", choices=MODALITIES, default="text", help="expected output modality")
    p.add_argument("--mode", choices=("std", "voice"), default="std", help="system prompt")
    p.add_argument("--image-codes", type=codes, default=None, help="input image: 32 comma-separated codes")
    p.add_argument("--speech-codes", type=codes, default=None, help="input speech: content codes")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: the modality preset's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=None, help="JSON file (default: stdout)")
    args = p.parse_args(argv)
    from megatron_mio.convert.generation import generate

    result = generate(args.hf_dir, args.prompt, modality=args.modality, mode=args.mode,
                      image_codes=args.image_codes, speech_codes=args.speech_codes,
                      max_new_tokens=args.max_new_tokens, seed=args.seed)
    text = json.dumps(result, indent=2)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

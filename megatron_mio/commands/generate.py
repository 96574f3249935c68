"""Generate with an exported MIO model (a convert_to_hf directory) and parse the output.

    mio-generate --hf-dir mio-hf --prompt "Draw a cat." --modality image --output out.json

Uses MIO's ChatML template with the std or voice system prompt, the paper's decoding preset for
the requested output modality, and MIO's grammar while generating (--no-grammar turns it off):
the answer opens with the requested span (voice mode: speech), images have 32 codes, videos 2-8
frames, speech its four equal codebook parts, and every span closes within --max-new-tokens.
Writes text, image code lists and speech code lists as JSON (for the SEED-Tokenizer /
SpeechTokenizer decoders): one object for one prompt and sequence, else a list of them.
"""

from __future__ import annotations

import argparse
import json
import re
import sys

from megatron_mio import cli

PROG = "generate"
# megatron_mio.inference.presets.MODALITIES and inference.prompt.MODES, spelled here so that
# --help imports no torch (tests/test_tool_errors.py checks that they agree).
MODALITIES = ("text", "image", "speech", "video")
MODES = ("std", "voice")
CODE_FLAGS = ("--image-codes", "--speech-codes")
_CODE_LIST = re.compile(r"-?\d+(\s*,\s*-?\d+)*\s*,?")


def codes(text: str) -> list[int]:
    try:
        return [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers") from None


def join_code_lists(argv: list[str]) -> list[str]:
    """``--image-codes -1,5,...`` as ``--image-codes=-1,5,...``: argparse takes a value that starts
    with '-' for a flag, so a list that starts with a (wrong) negative code would be reported as a
    missing value instead of as the out-of-range code it is."""
    joined, i = [], 0
    while i < len(argv):
        if argv[i] in CODE_FLAGS and i + 1 < len(argv) and _CODE_LIST.fullmatch(argv[i + 1]):
            joined.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            joined.append(argv[i])
            i += 1
    return joined


def build_parser():
    p = cli.make_parser(PROG, __doc__)
    p.add_argument("--hf-dir", required=True, help="a convert_to_hf output directory")
    p.add_argument("--prompt", required=True, action="append", help="the user's text (repeatable: a batch)")
    p.add_argument("--modality", choices=MODALITIES, default=None,
                   help="requested output modality (default: speech in voice mode, else text)")
    p.add_argument("--mode", choices=MODES, default="std", help="system prompt")
    p.add_argument("--image-codes", type=codes, default=None,
                   help="input image: 32 comma-separated codes in [0, 8192)")
    p.add_argument("--speech-codes", type=codes, default=None,
                   help="input speech: comma-separated content codes in [0, 1024)")
    p.add_argument("--max-new-tokens", type=cli.positive_int, default=None,
                   help="default: the modality preset's")
    p.add_argument("--num-return-sequences", type=cli.positive_int, default=1, help="sequences per prompt")
    p.add_argument("--no-grammar", action="store_true", help="generate without MIO's grammar")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=None, help="JSON file (default: stdout)")
    return p


def check_codes(args) -> None:
    from megatron_mio.tokenizer.vocab import IMAGE_CODEBOOK_SIZE, IMAGE_CODES_PER_IMAGE, SPEECH_CODEBOOK_SIZE

    if args.image_codes is not None and len(args.image_codes) != IMAGE_CODES_PER_IMAGE:
        raise cli.UsageError(f"--image-codes: an image is exactly {IMAGE_CODES_PER_IMAGE} codes, "
                             f"got {len(args.image_codes)}")
    if args.speech_codes is not None and not args.speech_codes:
        raise cli.UsageError("--speech-codes: no codes given")
    for flag, values, size in (("--image-codes", args.image_codes, IMAGE_CODEBOOK_SIZE),
                               ("--speech-codes", args.speech_codes, SPEECH_CODEBOOK_SIZE)):
        bad = [c for c in values or () if not 0 <= c < size]
        if bad:
            raise cli.UsageError(f"{flag}: code {bad[0]} is outside [0, {size})")


def check_device(device: str | None) -> None:
    import torch

    if device is None:
        return
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise cli.UsageError(f"--device {device}: not a device (e.g. cpu, cuda, cuda:1)") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise cli.UsageError(f"--device {device}: no CUDA device is available here (use --device cpu)")


def check_model_dir(hf_dir: str) -> None:
    from pathlib import Path

    from megatron_mio.tokenizer.build import TOKENIZER_JSON

    directory = Path(hf_dir)
    if not directory.is_dir():
        raise cli.UsageError(f"--hf-dir {hf_dir}: no such directory")
    missing = [name for name in ("config.json", TOKENIZER_JSON) if not (directory / name).is_file()]
    if missing:
        raise cli.UsageError(f"--hf-dir {hf_dir}: no {' and no '.join(missing)} in it, so not an exported "
                             "MIO model (mio-convert-to-hf writes one)")


def generate(args) -> int:
    check_codes(args)
    if args.output:
        cli.check_writable(args.output, "--output")
    check_model_dir(args.hf_dir)
    check_device(args.device)
    from transformers.utils import logging as hf_logging

    from megatron_mio.inference import Generator

    hf_logging.disable_progress_bar()  # the weight-loading bar; the line below says what loaded
    try:
        generator = Generator(args.hf_dir, device=args.device)
    except (ValueError, OSError) as error:
        raise cli.UsageError(f"--hf-dir {args.hf_dir}: {error}") from None
    print(f"{PROG}: {generator.describe()}", file=sys.stderr)
    results = generator.generate(
        args.prompt, modality=args.modality, mode=args.mode, image_codes=args.image_codes,
        speech_codes=args.speech_codes, max_new_tokens=args.max_new_tokens,
        num_return_sequences=args.num_return_sequences, grammar=not args.no_grammar, seed=args.seed)
    text = json.dumps(results[0] if len(results) == 1 else results, indent=2)
    if args.output:
        from megatron_mio.atomic import write_text

        write_text(args.output, text + "\n")
    else:
        print(text)
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(join_code_lists(argv))
    cli.quiet_libraries(args.verbose)
    # Generator.generate's ValueErrors are about the request (a mode/modality combination, more
    # sequences than beams).
    return cli.run(PROG, lambda: generate(args), input_errors=(ValueError,))

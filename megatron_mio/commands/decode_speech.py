"""tools/generate.py's JSON -> one 16 kHz wav per generated speech span.

    python tools/decode_speech.py --input out.json --codec SPEECHTOKENIZER_DIR --output-dir wavs

Span j of result i (generate.py writes one result object, or a list of them: one per prompt and
returned sequence) becomes OUTPUT_DIR/result{i}_speech{j}.wav.  Speech with timbre (MIO's output
layout) decodes all four layers; content-only speech (the input layout) decodes the content
layer alone.  Incomplete spans (``complete: false``: the layout broke or ``</spch>`` never came)
are skipped and named unless --include-incomplete, which decodes their content codes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from megatron_mio import cli
from megatron_mio.cli import UsageError


@dataclasses.dataclass(frozen=True)
class SpeechSpan:
    result: int
    index: int
    content: list
    timbre: list | None
    complete: bool

    def file_name(self) -> str:
        return f"result{self.result}_speech{self.index}.wav"


def build_parser() -> argparse.ArgumentParser:
    parser = cli.make_parser("decode_speech", __doc__)
    parser.add_argument("--input", required=True, help="the JSON file tools/generate.py wrote")
    parser.add_argument("--codec", required=True,
                        help="SpeechTokenizer directory (config.json + SpeechTokenizer.pt), or a "
                             "MIO model directory holding one in SpeechTokenizer/")
    parser.add_argument("--output-dir", required=True, help="where the wav files go")
    parser.add_argument("--include-incomplete", action="store_true",
                        help="decode the content codes of incomplete spans too")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    return parser


def read_spans(path: str) -> list[SpeechSpan]:
    """Every speech span of the generate.py output at ``path``, in order."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"--input {path}: no such file") from None
    except json.JSONDecodeError as error:
        raise UsageError(f"--input {path}: not JSON ({error.msg}, line {error.lineno})") from None
    results = data if isinstance(data, list) else [data]
    spans = []
    for i, result in enumerate(results):
        if not isinstance(result, dict) or not isinstance(result.get("speech"), list):
            raise UsageError(f"--input {path}: result {i} has no \"speech\" list (expected "
                             f"tools/generate.py's output)")
        for j, span in enumerate(result["speech"]):
            spans.append(SpeechSpan(i, j, span.get("content") or [], span.get("timbre"),
                                    bool(span.get("complete", True))))
    return spans


def decode_spans(spans: list[SpeechSpan], codec, output_dir: Path, include_incomplete: bool,
                 input_name: str) -> list[Path]:
    from megatron_mio.codec.audio import SAMPLE_RATE, write_wav
    from megatron_mio.codec.speech import CodecError

    written = []
    for span in spans:
        name = output_dir / span.file_name()
        timbre = span.timbre
        if not span.complete:
            if not include_incomplete or not span.content:
                print(f"decode_speech: skipped result {span.result} speech {span.index}: "
                      f"incomplete span (--include-incomplete decodes its content codes)",
                      file=sys.stderr)
                continue
            timbre = None  # a broken layout's timbre lists need not match the content
        try:
            waveform = codec.decode(span.content, timbre)
        except CodecError as error:  # codes out of range, lists of unequal length
            raise CodecError(f"{input_name}: result {span.result} speech {span.index}: "
                             f"{error}") from None
        write_wav(name, waveform, SAMPLE_RATE)
        layers = "content + timbre" if timbre is not None else "content only"
        print(f"{name}\t{waveform.size / SAMPLE_RATE:.2f} s\t{layers}")
        written.append(name)
    return written


def run(args: argparse.Namespace) -> int:
    spans = read_spans(args.input)
    cli.check_writable(args.output_dir, "--output-dir")
    if not spans:
        print(f"decode_speech: {args.input} holds no speech spans", file=sys.stderr)
        return 0
    import torch

    from megatron_mio.codec.speech import SpeechCodec

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    codec = SpeechCodec.from_directory(args.codec, device=device)
    written = decode_spans(spans, codec, Path(args.output_dir), args.include_incomplete,
                           args.input)
    print(f"decode_speech: {len(written)} of {len(spans)} speech spans -> {args.output_dir}",
          file=sys.stderr)
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cli.quiet_libraries(args.verbose)
    from megatron_mio.codec.audio import AudioError, MissingExtraError
    from megatron_mio.codec.speech import CodecError

    return cli.run("decode_speech", lambda: run(args),
                   input_errors=(CodecError, AudioError, MissingExtraError))

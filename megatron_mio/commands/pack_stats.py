"""What a mixture will feed the model, before launching: packs, fill, drops, modality shares.

    mio-pack-stats --data-config examples/data/stage1.yaml --seq-length 2800 \\
        --tokenizer /path/to/mio_tokenizer [--seed 1234] [--json]
    mio-pack-stats --data-path 0.7 /d/pairs 0.3 /d/speech --seq-length 2800

Builds (or reuses) the cached pack indices exactly as training will.  Without --tokenizer or
--modality-table every token counts as text.
"""

from __future__ import annotations

import errno
import json
import sys

from megatron_mio import cli

PROG = "pack_stats"


def build_parser():
    parser = cli.make_parser(PROG, __doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data-config", help="stage mixture YAML")
    source.add_argument("--data-path", nargs="+", help="PREFIX or WEIGHT PREFIX pairs (Megatron-style)")
    parser.add_argument("--seq-length", type=cli.positive_int, required=True)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--window", type=cli.positive_int, default=None,
                        help="packing window, documents (default: 10,000, what training uses)")
    parser.add_argument("--max-documents-per-pack", type=cli.non_negative_int, default=0)
    table = parser.add_mutually_exclusive_group()
    table.add_argument(*cli.TOKENIZER_FLAGS, dest="tokenizer",
                       help="MIO tokenizer directory (for the modality table)")
    table.add_argument("--modality-table", help=".npy uint8 table: Modality per token id")
    parser.add_argument("--cache-dir", help="where index caches go (default: next to the data)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    return parser


def modality_table(args):
    """The table of ``--tokenizer`` / ``--modality-table`` (None: every token is text)."""
    if args.tokenizer:
        from megatron_mio.tokenizer.mio_tokenizer import MIOTokenizer

        try:
            return MIOTokenizer(args.tokenizer).modality_table()
        except (OSError, ValueError) as error:
            raise cli.UsageError(f"--tokenizer {args.tokenizer}: {error}") from None
    if args.modality_table:
        from megatron_mio.data.sampler import load_modality_table

        try:
            return load_modality_table(args.modality_table)
        except FileNotFoundError:
            raise cli.UsageError(f"--modality-table {args.modality_table}: no such file") from None
        except (OSError, ValueError) as error:
            raise cli.UsageError(f"--modality-table {args.modality_table}: not a modality table "
                                 f"saved with numpy.save ({error})") from None
    return None


def print_text(stats: dict) -> None:
    print(f"seq_length {stats['seq_length']}: {stats['packs']:,} packs, "
          f"efficiency {100 * stats['efficiency']:.2f}% (real tokens / slots, mixture-weighted)")
    print(f"documents dropped as longer than seq_length: {stats['dropped_too_long']:,}")
    print(f"mean documents per pack: {stats['mean_documents_per_pack']:.2f}; "
          f"cu_seqlens length {stats['cu_seqlens_length']}")
    shares = ", ".join(f"{name} {100 * v:.1f}%" for name, v in stats["token_share"].items())
    print(f"share of training tokens: {shares}")
    print(f"{'type':<20} {'weight':>7} {'documents':>11} {'packs':>9} {'fill':>7} {'dropped':>8} "
          f"{'docs/pack':>9} {'coverage':>8}  prefix")
    for d in stats["datasets"]:
        coverage = "n/a" if d["coverage"] is None else f"{100 * d['coverage']:.2f}%"
        print(f"{d['type'][:20]:<20} {d['weight']:>7.3f} {d['documents']:>11,} {d['packs']:>9,} "
              f"{100 * d['efficiency']:>6.2f}% {d['dropped_too_long']:>8,} "
              f"{d['mean_documents_per_pack']:>9.2f} {coverage:>8}  {d['prefix']}")
    print("coverage: packed tokens / tokens the preprocessing report says were written "
          "(n/a: no P.report.json)")


_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def build_statistics(args) -> dict:
    from megatron_mio.data.mixture import build_mixture_dataset, mixture_statistics, read_mixture
    from megatron_mio.data.packed_dataset import PackingConfig
    from megatron_mio.data.packing import DEFAULT_WINDOW

    table = modality_table(args)  # a bad --tokenizer fails before any index is built
    packing = PackingConfig(args.seq_length, seed=args.seed, window=args.window or DEFAULT_WINDOW,
                            max_documents_per_pack=args.max_documents_per_pack,
                            cache_dir=args.cache_dir)
    mixture = read_mixture(args.data_config, args.data_path)
    try:
        blend = build_mixture_dataset(mixture, packing, num_samples=0)
    except OSError as error:
        if error.errno not in _NOT_WRITABLE:
            raise
        where = "--cache-dir" if args.cache_dir else "the data's directory (the default cache place)"
        hint = "choose a writable --cache-dir" if args.cache_dir else "pass --cache-dir DIR, a writable directory"
        raise cli.UsageError(f"cannot write the index cache {error.filename}: {where} is not "
                             f"writable; {hint}") from None
    return mixture_statistics(blend, table)


def report(args) -> int:
    if args.cache_dir:
        cli.check_writable(args.cache_dir, "--cache-dir", directory=True)
    stats = build_statistics(args)
    if args.json:
        print(json.dumps(stats, indent=1))
    else:
        print_text(stats)
    for warning in stats["warnings"]:
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    return 0


def report_or_usage_error(args) -> int:
    from megatron_mio.data.mixture import MixtureError
    from megatron_mio.data.validate import DataFileError

    try:
        return report(args)
    except (MixtureError, DataFileError) as error:  # they name the file, line and field
        raise cli.UsageError(str(error)) from None


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cli.quiet_libraries(args.verbose)
    return cli.run(PROG, lambda: report_or_usage_error(args))

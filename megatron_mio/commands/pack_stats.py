"""What a mixture will feed the model, before launching: packs, fill, drops, modality shares.

    python tools/pack_stats.py --data-config examples/data/stage1.yaml --seq-length 2800 \
        --tokenizer /path/to/mio_tokenizer [--seed 1234] [--json]
    python tools/pack_stats.py --data-path 0.7 /d/pairs 0.3 /d/speech --seq-length 2800

Builds (or reuses) the cached pack indices exactly as training will.  Without --tokenizer or
--modality-table every token counts as text.
"""

import argparse
import json
import sys


from megatron_mio import platform  # noqa: E402

platform.quiet_import_warnings()  # before megatron-core is imported

from megatron_mio.data.mixture import (  # noqa: E402
    MixtureError, build_mixture_dataset, mixture_statistics, read_mixture,
)
from megatron_mio.data.packed_dataset import PackingConfig  # noqa: E402
from megatron_mio.data.packing import DEFAULT_WINDOW  # noqa: E402
from megatron_mio.data.sampler import load_modality_table  # noqa: E402
from megatron_mio.data.validate import DataFileError  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data-config", help="stage mixture YAML")
    source.add_argument("--data-path", nargs="+", help="PREFIX or WEIGHT PREFIX pairs (Megatron-style)")
    parser.add_argument("--seq-length", type=int, required=True)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--window", type=int, default=DEFAULT_WINDOW, help="packing window, documents")
    parser.add_argument("--max-documents-per-pack", type=int, default=0)
    table = parser.add_mutually_exclusive_group()
    table.add_argument("--tokenizer", help="MIO tokenizer directory (for the modality table)")
    table.add_argument("--modality-table", help=".npy uint8 table: Modality per token id")
    parser.add_argument("--cache-dir", help="where index caches go (default: next to the data)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    return parser.parse_args(argv)


def modality_table(args):
    if args.tokenizer:
        from megatron_mio.tokenizer.mio_tokenizer import MIOTokenizer

        return MIOTokenizer(args.tokenizer).modality_table()
    return load_modality_table(args.modality_table)


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


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        packing = PackingConfig(args.seq_length, seed=args.seed, window=args.window,
                                max_documents_per_pack=args.max_documents_per_pack,
                                cache_dir=args.cache_dir)
        blend = build_mixture_dataset(read_mixture(args.data_config, args.data_path), packing,
                                      num_samples=0)
        stats = mixture_statistics(blend, modality_table(args))
    except (MixtureError, DataFileError, ValueError) as err:
        print(f"pack_stats: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(stats, indent=1))
    else:
        print_text(stats)
    for warning in stats["warnings"]:
        print(f"pack_stats: warning: {warning}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

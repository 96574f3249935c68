"""Build a wheelhouse for a node without internet: this project's wheel (with its compiled
extension), megatron-core, and every requirement that a CUDA PyTorch image does not already have.

    python tools/build_wheelhouse.py --output .whl                 # Python 3.12, x86-64 (the defaults)
    # on the node (no internet), into a read-only image:
    pip install --no-index --no-deps --target /tmp/mio-site .whl/*.whl && export PYTHONPATH=/tmp/mio-site
    # or into an environment that has torch:
    pip install --no-index --find-links .whl megatron_mio

The project's wheel is compiled by --python, which must be the target's Python version (the
repository's .venv is). docs/gpu.md is the runbook for one GPU node.
"""

from __future__ import annotations

import sys

from megatron_mio import cli

PROG = "build_wheelhouse"


def build_parser():
    parser = cli.make_parser(PROG, __doc__)
    parser.add_argument("--output", default=".whl", help="the wheelhouse directory, replaced when complete (default: .whl)")
    parser.add_argument("--python", default=sys.executable,
                        help="the interpreter that compiles the project's wheel (default: this one)")
    parser.add_argument("--python-version", default="3.12", help="the node's Python (default: %(default)s)")
    parser.add_argument("--platform", default="manylinux_2_28_x86_64",
                        help="the node's wheel platform tag (default: %(default)s)")
    parser.add_argument("--also-provided", default="", metavar="NAMES",
                        help="comma-separated packages the node already has, besides a CUDA PyTorch image's")
    parser.add_argument("--max-mib", type=float, default=None,
                        help="refuse a wheelhouse larger than this (the GPU runbook's copy limit: 60)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cli.quiet_libraries(args.verbose)
    return cli.run(PROG, lambda: _build(args), input_errors=(_wheelhouse_error(),))


def _wheelhouse_error():
    from megatron_mio.platform.wheelhouse import WheelhouseError

    return WheelhouseError


def _build(args) -> int:
    from pathlib import Path

    from packaging.utils import canonicalize_name

    from megatron_mio.platform import wheelhouse

    output = cli.check_writable(args.output, "--output")
    extra = {canonicalize_name(name) for name in args.also_provided.split(",") if name.strip()}
    config = wheelhouse.WheelhouseConfig(output=Path(output).resolve(), python=args.python,
                                         python_version=args.python_version, platform=args.platform,
                                         provided=wheelhouse.CUDA_TORCH_IMAGE | extra)
    manifest = wheelhouse.build(config)
    total = sum(manifest["wheels"].values())
    for name, size in manifest["wheels"].items():
        print(f"{size / 2**20:8.2f} MiB  {name}")
    print(f"{total / 2**20:8.2f} MiB  in {output} ({len(manifest['wheels'])} wheels, manifest {wheelhouse.MANIFEST})")
    if args.max_mib is not None and total > args.max_mib * 2**20:
        raise cli.UsageError(f"the wheelhouse is {total / 2**20:.1f} MiB, over --max-mib {args.max_mib:g}; "
                             "name what the node already has with --also-provided")
    print(f"on the node: pip install --no-index --no-deps --target DIR {output}/*.whl && export PYTHONPATH=DIR")
    return 0

#!/usr/bin/env python
"""Shim: `megatron_mio/commands/merge_datasets.py` (console script `mio-merge-datasets`)."""
from megatron_mio.commands.merge_datasets import main

if __name__ == "__main__":
    raise SystemExit(main())

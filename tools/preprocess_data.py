#!/usr/bin/env python
"""Shim: `megatron_mio/commands/preprocess_data.py` (console script `mio-preprocess`)."""
from megatron_mio.commands.preprocess_data import main

if __name__ == "__main__":
    raise SystemExit(main())

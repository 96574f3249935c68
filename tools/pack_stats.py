#!/usr/bin/env python
"""Shim: `megatron_mio/commands/pack_stats.py` (console script `mio-pack-stats`)."""
from megatron_mio.commands.pack_stats import main

if __name__ == "__main__":
    raise SystemExit(main())

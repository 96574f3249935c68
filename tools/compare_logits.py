#!/usr/bin/env python
"""Shim: `megatron_mio/commands/compare_logits.py` (console script `mio-compare-logits`)."""
from megatron_mio.commands.compare_logits import main

if __name__ == "__main__":
    raise SystemExit(main())

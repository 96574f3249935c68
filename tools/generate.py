#!/usr/bin/env python
"""Shim: `megatron_mio/commands/generate.py` (console script `mio-generate`)."""
from megatron_mio.commands.generate import main

if __name__ == "__main__":
    raise SystemExit(main())

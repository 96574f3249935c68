#!/usr/bin/env python
"""Shim: `megatron_mio/commands/convert_to_hf.py` (console script `mio-convert-to-hf`)."""
from megatron_mio.commands.convert_to_hf import main

if __name__ == "__main__":
    raise SystemExit(main())

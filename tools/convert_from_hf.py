#!/usr/bin/env python
"""Shim: `megatron_mio/commands/convert_from_hf.py` (console script `mio-convert-from-hf`)."""
from megatron_mio.commands.convert_from_hf import main

if __name__ == "__main__":
    raise SystemExit(main())

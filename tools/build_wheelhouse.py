#!/usr/bin/env python
"""Shim: `megatron_mio/commands/build_wheelhouse.py` (console script `mio-build-wheelhouse`)."""
from megatron_mio.commands.build_wheelhouse import main

if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python
"""Shim: `megatron_mio/commands/build_tokenizer.py` (console script `mio-build-tokenizer`)."""
from megatron_mio.commands.build_tokenizer import main

if __name__ == "__main__":
    raise SystemExit(main())

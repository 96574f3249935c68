#!/usr/bin/env python
"""Shim: `megatron_mio/commands/tokenize_speech.py` (console script `mio-tokenize-speech`)."""
from megatron_mio.commands.tokenize_speech import main

if __name__ == "__main__":
    raise SystemExit(main())

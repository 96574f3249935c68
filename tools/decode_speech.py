#!/usr/bin/env python
"""Shim: `megatron_mio/commands/decode_speech.py` (console script `mio-decode-speech`)."""
from megatron_mio.commands.decode_speech import main

if __name__ == "__main__":
    raise SystemExit(main())

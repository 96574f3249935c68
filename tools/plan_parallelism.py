#!/usr/bin/env python
"""Shim: `megatron_mio/commands/plan_parallelism.py` (console script `mio-plan-parallelism`)."""
from megatron_mio.commands.plan_parallelism import main

if __name__ == "__main__":
    raise SystemExit(main())

"""The MIO trainer on megatron-core: arguments, loop, optimizer, checkpoints, metrics.

Entry point: ``python -m megatron_mio.pretrain`` (see :func:`megatron_mio.training.trainer.pretrain`).
"""

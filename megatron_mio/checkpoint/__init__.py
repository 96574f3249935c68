"""The on-disk checkpoint: ``layout`` names its files and state keys, ``description`` is the
model record every checkpoint carries.  Training and conversion both read and write through here.

Nothing is imported here, so that ``python -m megatron_mio.checkpoint`` (``layout`` only) starts
without torch.
"""

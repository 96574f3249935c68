"""megatron_mio: the training system for MIO, an any-to-any multimodal LLM on megatron-core."""

__version__ = "0.1.0"

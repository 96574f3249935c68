"""megatron_mio: the training system for MIO, an any-to-any multimodal LLM on megatron-core."""

__version__ = "0.1.0"

# A checkout put in front of an installed wheel on PYTHONPATH (the GPU runbook, docs/gpu.md): the
# checkout's modules run, and the compiled extension, which a checkout holds only once built, is
# found in the installed copy.
__path__ = __import__("pkgutil").extend_path(__path__, __name__)

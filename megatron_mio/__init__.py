"""megatron_mio: the training system for MIO, an any-to-any multimodal LLM on megatron-core."""

__version__ = "0.1.0"


def _extension_from_an_installed_copy(path: list) -> list:
    """A checkout without its compiled extension, in front of an installed wheel on PYTHONPATH
    (the GPU runbook, docs/gpu.md): the checkout's modules run, and ``megatron_mio._C`` is found
    in the installed copy.  A checkout that holds its extension is left alone."""
    import os
    import pkgutil

    here = path[0]
    if any(name.startswith("_C.") for name in os.listdir(here)):
        return path
    with_extension = [entry for entry in pkgutil.extend_path(path, __name__)[len(path):]
                      if any(name.startswith("_C.") for name in os.listdir(entry))]
    return path + with_extension


__path__ = _extension_from_an_installed_copy(__path__)

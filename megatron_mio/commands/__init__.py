"""The bodies of the command-line tools: one module per tool, each with ``main(argv=None) -> int``.

``tools/<name>.py`` and the console scripts (``mio-<name>``, setup.py) are thin shims over these.
A command parses its flags before importing anything heavy (``megatron_mio/cli.py``).
"""

"""The ``mailtether`` command line, one module per command.

Internal: the public names are re-exported from :mod:`mailtether`.
"""

__all__: list[str] = []

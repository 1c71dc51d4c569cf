"""Stores: the Store protocol, shared helpers, and one module per backend.

Internal: the public names are re-exported from :mod:`mailtether`.
"""

__all__: list[str] = []

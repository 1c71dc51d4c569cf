"""POP3: the connection and the poller.

Internal: the public names are re-exported from :mod:`mailtether`.
"""

__all__: list[str] = []

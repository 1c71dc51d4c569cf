"""IMAP: settings, connection, bulk fetch, keepalive watchdog and the listener.

Internal: the public names are re-exported from :mod:`mailtether`.
"""

__all__: list[str] = []

"""SMTP: the connection check (``mailtether check smtps://…``).

Internal: :func:`mailtether.check` is the public way in.
"""

__all__: list[str] = []

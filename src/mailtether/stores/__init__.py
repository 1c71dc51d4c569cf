"""Stores: the Store protocol, what the backends share, and one module per backend.

- ``_protocol``: the :class:`~mailtether.Store` protocol and its value types;
- ``_shared``: argument checks, write planning and helpers every backend uses;
- ``_pool``: the connection pool, and ``_sql_records``: the records' statements, of the two
  SQL backends;
- ``_memory``, ``_sqlite``, ``_redis`` (its Lua scripts in ``_redis_scripts``, its lease
  connection in ``_redis_line``),
  ``_postgres`` (its call watchdog in ``_postgres_watchdog``, its started writes in
  ``_postgres_started``): one module per backend;
- ``_url``: :func:`~mailtether.store_from_url`.

Internal: the public names are re-exported from :mod:`mailtether`.
"""

__all__: list[str] = []

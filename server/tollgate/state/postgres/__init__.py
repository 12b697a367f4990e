"""The fleet's shared state store on PostgreSQL: the same protocols as the SQLite store, for every replica."""

from tollgate.state.postgres._store import SCHEMES, PgOptions, PgStore, is_postgres_url, redact

__all__ = ["SCHEMES", "PgOptions", "PgStore", "is_postgres_url", "redact"]

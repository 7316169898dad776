"""The job database engines behind the JobStore actor (docs/architecture.md section 6).

SQLite is the embedded default: one file, WAL, the non-terminal jobs kept in memory.
PostgreSQL (``store.url``) is the engine for several gateways (section 14). Each engine is
thread-free code the actor drives from its own thread; what they share is ``_base``.
"""

from actors.stores._pg_reader import PgJobReader
from actors.stores._postgres import PgJobDB
from actors.stores._rows import BatchOutcome, Recovery, WriteMessage, is_volatile
from actors.stores._schema import MIGRATIONS, SCHEMA_VERSION, Migration, migrate
from actors.stores._sqlite import BUSY_TIMEOUT_S, JobDB

__all__ = [
    "BUSY_TIMEOUT_S",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "BatchOutcome",
    "JobDB",
    "Migration",
    "PgJobDB",
    "PgJobReader",
    "Recovery",
    "WriteMessage",
    "is_volatile",
    "migrate",
]

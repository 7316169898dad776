"""The job database engines behind the JobStore actor (docs/architecture.md section 6).

SQLite is the embedded default: one file, WAL, the non-terminal jobs kept in memory.
Each engine is thread-free code the actor drives from its own thread.
"""

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
    "Recovery",
    "WriteMessage",
    "is_volatile",
    "migrate",
]

"""What the writer thread needs from a database backend."""

from collections.abc import Sequence
from typing import Protocol

from .records import Interception


class BadRecordError(Exception):
    """The database refused the data itself (not the connection): retrying won't help."""


class Sink(Protocol):
    """A database backend, used only from the writer thread.

    ``open`` connects (or reconnects) and migrates the schema; ``write`` stores a
    batch in one transaction, idempotently. Both raise on failure: BadRecordError
    when the data is at fault, anything else means "the database is unavailable".
    """

    @property
    def description(self) -> str: ...  # for logs: masked URL or file path, never a secret

    def open(self) -> None: ...

    def write(self, batch: Sequence[Interception]) -> None: ...

    def close(self) -> None: ...

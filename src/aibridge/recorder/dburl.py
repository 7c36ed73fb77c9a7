"""Database URLs: which backend, where, and how to print one without its password."""

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from aibridge.masked_url import mask_url

DEFAULT_DATABASE_URL = "sqlite:///aibridge.db"


@dataclass(frozen=True, slots=True)
class DatabaseURL:
    backend: Literal["sqlite", "postgresql"]
    url: str  # as given; may hold a password, so never log it: use ``mask_url``
    sqlite_path: Path | None = None  # set for sqlite only


def parse_database_url(url: str | None) -> DatabaseURL:
    """Parse ``sqlite:///rel.db``, ``sqlite:////abs.db``, ``postgresql://...``, ``postgres://...``."""
    url = url or DEFAULT_DATABASE_URL
    masked = mask_url(url)
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "sqlite":
        if not url.lower().startswith("sqlite:///"):
            raise ValueError(
                f"invalid SQLite URL {masked!r}: use sqlite:///relative/path.db "
                "or sqlite:////absolute/path.db"
            )
        path = url[len("sqlite:///") :].split("?", 1)[0]
        if not path or path == ":memory:":
            raise ValueError(
                f"invalid SQLite URL {masked!r}: a file path is required "
                "(an in-memory database would lose every record)"
            )
        return DatabaseURL("sqlite", url, Path(path))
    if scheme in ("postgresql", "postgres"):
        return DatabaseURL("postgresql", url)
    raise ValueError(
        f"unsupported database URL {masked!r}: expected sqlite:///path.db "
        "or postgresql://user@host/dbname"
    )

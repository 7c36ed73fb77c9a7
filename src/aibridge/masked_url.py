"""Printing a service URL (database, Redis) without the credentials it may carry."""

import re

# Query parameters that carry a password in libpq / asyncpg / redis-py URLs.
_SECRET_PARAM = re.compile(r"(?i)((?:^|&)[^=&]*password=)[^&]*")


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, safe for logs and errors.

    Deliberately not a URL parser: a password holding an unescaped ``#``, ``/`` or
    ``?`` makes ``urlsplit`` see no password at all. Everything between ``://`` and
    the last ``@`` is userinfo here (the user name is kept), and ``password=``-style
    query parameters are masked too.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "***" if "@" in url or "password" in url.lower() else url
    if "@" in rest:
        userinfo, _, rest = rest.rpartition("@")
        user = userinfo.partition(":")[0]
        rest = f"{user}:***@{rest}" if user else f"***@{rest}"
    base, q, query = rest.partition("?")
    if q:
        rest = base + "?" + _SECRET_PARAM.sub(r"\1***", query)
    return f"{scheme}://{rest}"

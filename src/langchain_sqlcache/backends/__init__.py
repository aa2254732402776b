"""What each database family does its own way: one module per family, one interface.

``postgres`` (Postgres), ``mysql`` (MySQL and MariaDB) and ``sqlite`` each implement
:class:`~langchain_sqlcache.backends.base.Backend`: engine defaults and connect arguments,
the upsert and the whole-value write, the migration lock, how text compares and what their
errors mean. The rest of the package asks :func:`backend_for` and never tests a dialect's
name; a new backend (CockroachDB, say) is a module here and a line in ``FAMILIES``.

The modules are imported on first use, so that importing the package costs none of them and
they may import the package's other modules (models, statements) freely.
"""

from __future__ import annotations

import functools
import importlib
from typing import TYPE_CHECKING

from sqlalchemy.engine import URL

from langchain_sqlcache.errors import ConfigurationError

if TYPE_CHECKING:
    from sqlalchemy.engine import Dialect

    from langchain_sqlcache.backends.base import Backend

FAMILIES: dict[str, str] = {
    "postgresql": "postgres",
    "mysql": "mysql",
    "mariadb": "mysql",
    "sqlite": "sqlite",
}
"""SQLAlchemy's dialect names, and the module here that serves each."""


def backend_for(which: str | Dialect | URL) -> Backend:
    """The backend of a dialect, given by name, by a Dialect or by a URL.

    Raises:
        ConfigurationError: A database the cache does not support.

    """
    if isinstance(which, str):
        return _backend_named(which)
    if isinstance(which, URL):
        return _backend_named(which.get_backend_name())
    return _backend_named(which.name)  # a Dialect: the hot path's (an update asks once)


@functools.cache
def _backend_named(name: str) -> Backend:
    module = FAMILIES.get(name)
    if module is None:
        msg = (
            f"unsupported database backend {name!r}; "
            f"langchain-sqlcache supports {', '.join(FAMILIES)}"
        )
        raise ConfigurationError(msg)
    backend: Backend = importlib.import_module(f"{__name__}.{module}").BACKEND
    return backend

"""A sync and an async round trip on SQLite, Postgres and MariaDB/MySQL, as an installed user.

Run by ``nox -s installed`` in a venv that holds only ``langchain-sqlcache[all]`` from the
wheel: it proves that the package imports, migrates (the ``langchain-sqlcache`` command and
the migration scripts inside the wheel) and caches on each backend with each driver.

The servers are those of the tests: ``SQLCACHE_TEST_POSTGRES_URL`` and
``SQLCACHE_TEST_MYSQL_URL``, by default the local ones. Exits 1 at the first failure.
"""

import asyncio
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, Generation

import langchain_sqlcache
from langchain_sqlcache import SQLCache

URLS = {
    "sqlite": f"sqlite:///{Path(tempfile.mkdtemp()) / 'round_trip.db'}",
    "postgresql": os.environ.get(
        "SQLCACHE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
    ),
    "mysql": os.environ.get("SQLCACHE_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test"),
}
VALUE = [
    Generation(text="plain", generation_info={"finish_reason": "stop"}),
    ChatGeneration(message=AIMessage(content="chat", additional_kwargs={"n": 1})),
]


def round_trip(name: str, url: str) -> None:
    """Migrate as a deploy would, then write and read back with each family of methods."""
    command = Path(sys.executable).with_name("langchain-sqlcache")
    subprocess.run([str(command), "db", "upgrade", "--url", url], check=True)  # noqa: S603
    cache = SQLCache(url, namespace=f"round-trip-{uuid.uuid4().hex}", on_error="raise")
    cache.update("sync prompt", "llm", VALUE)
    expect(cache.lookup("sync prompt", "llm"), "sync round trip")
    cache.close()

    async def async_round_trip() -> None:
        await cache.aupdate("async prompt", "llm", VALUE)
        expect(await cache.alookup("async prompt", "llm"), "async round trip")
        expect(await cache.alookup("sync prompt", "llm"), "sync write, async read")
        await cache.aclear()
        await cache.aclose()

    asyncio.run(async_round_trip())
    print(f"{name}: sync and async round trips passed")


def expect(found: object, what: str) -> None:
    """Fail unless ``found`` is the value written."""
    if found != VALUE:
        msg = f"{what}: got {found!r}"
        raise AssertionError(msg)


def main() -> int:
    """Run the round trips on every backend; 1 if one failed."""
    print(f"langchain-sqlcache {langchain_sqlcache.__version__} from {langchain_sqlcache.__file__}")
    for name, url in URLS.items():
        try:
            round_trip(name, url)
        except Exception as exc:  # noqa: BLE001 - reported, then the exit code says it
            print(f"{name}: FAILED: {type(exc).__name__}: {exc}")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmarks of langchain-sqlcache, run as scripts from the repository's root.

After `.venv/bin/pip install -e '.[test,bench]'`:

- `.venv/bin/python bench/performance.py [--quick] [--backends sqlite,postgresql,mysql]
  [--sizes 1000,100000,1000000] [--output docs/benchmarks.md]`: SQLCache against the
  raw-driver floor and LangChain's SQLAlchemy caches (latency, async throughput, statements
  per update, growth to a million entries, memory, where a hit's time goes); writes
  docs/benchmarks.md. Its docstring says what it measures and how long it takes.
- `.venv/bin/python bench/lifecycle.py`: what record_hits costs a hit, stats() at a million
  entries, and its index an update (docs/lifecycle.md).
- `.venv/bin/python bench/transfer.py`: moving a cache between environments with export and
  import (docs/transfer.md).
- `.venv/bin/python bench/commit_floor.py`: an update beside the cheapest durable write of
  each backend (quoted in docs/benchmarks.md).

Each runs on SQLite (a temporary file) and on the Postgres and MariaDB/MySQL servers at
$SQLCACHE_TEST_POSTGRES_URL / $SQLCACHE_TEST_MYSQL_URL (the local servers by default).

A script run by path has bench/ itself on sys.path, not the repository's root: each script
puts the root first, so that the modules here import as `bench.<module>` (and the tests'
helpers as `tests.<module>`), the names mypy and `python -m bench.<script>` give them.
"""

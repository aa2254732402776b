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

They run on SQLite (a temporary file) and on the Postgres and MariaDB/MySQL servers at
$SQLCACHE_TEST_POSTGRES_URL / $SQLCACHE_TEST_MYSQL_URL (the local servers by default;
transfer.py moves a SQLite cache to Postgres, or to its --target).

performance.py is made of the modules of this package:

- plan: the subjects' names, the constants the scenarios share, the Plan of a full and a
  --quick run; results: the records of what is measured; backends: the scratch database on
  each backend; workload: the values and prompts written, the clock and the log.
- floors: SQLCache's lookup sent by hand through the raw drivers, sync and async; peers:
  LangChain's SQLAlchemyCache and SQLAlchemyMd5Cache.
- The scenarios, one module each: latency, throughput, round_trips, growth, memory,
  components (the parts of a hit, timed one by one) and profiling.
- Where a measurement needs more than the LangChain API (the key of an entry, the engines,
  the wrappers a lookup runs through), it uses the cache's stated interface:
  ``cache.settings`` and ``cache.store`` (see docs/architecture.md), never a private name.
- tables and report: the Markdown tables, the targets, the report and its plot.

A script run by path has bench/ itself on sys.path, not the repository's root: a script that
imports from here puts the root first, so that these modules import as `bench.<module>` (and
the tests' helpers as `tests.<module>`), the names mypy and `python -m bench.<script>` give
them.
"""

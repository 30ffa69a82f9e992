"""`manage.py bench`: norm's throughput and latency, each beside a baseline from the same run.

Not part of the product: the command (notify/management/commands/bench.py) drives
real PostgreSQL, Redis, gunicorn and Celery workers; see docs/BENCHMARKS.md.
"""

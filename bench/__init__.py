"""Benchmarks for encord-ingest: `make bench` (bench/run.py)."""

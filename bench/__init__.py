"""Benchmarks: each bench_*.py module has a main() that prints our figures beside the reference tools'."""

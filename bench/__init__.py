"""Benchmarks: each part's `bench/bench_<part>.py` exposes `run(quick) -> list[row]`."""

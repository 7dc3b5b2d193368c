"""vxnet benchmarks: `python -m bench` runs every module in `bench.__main__.MODULES`.

Each benchmark module exposes `NAME` (a short title) and `run(opts) -> Report`; the runner
prints every report's table and rewrites docs/benchmarks.md. Benchmarks measure and report;
they never pass or fail on a timing.
"""

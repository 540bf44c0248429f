"""taskcast benchmarks: ``python -m bench`` measures latency, throughput, connections,
producer cost and recovery against real processes on loopback, next to two baselines
(a thin Redis-stream relay and celery-progress style polling).

Not part of the test suite; ``python -m bench --quick`` is the seconds-long smoke run
that tests/test_bench_smoke.py exercises.
"""

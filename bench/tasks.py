"""Functions the benchmarks enqueue with raw django-q2 (the baseline)."""

from nextevent.redis import get_redis


def raw_noop(counter: str) -> None:
    # One INCR so the benchmark can see completion (django-q2 keeps no successes here).
    get_redis().incr(counter)

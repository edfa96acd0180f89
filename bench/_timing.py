"""Shared by the bench/bench_*.py scripts: interleaved timing of several functions in one process."""
import statistics
import time


def interleaved_medians(fns, repeats):
    """Median wall time of each function after one warm-up call each (tracing, compiling), the calls
    interleaved so that load changes hit all alike."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]

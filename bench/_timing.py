"""Shared by the bench/bench_*.py scripts: interleaved timing of several functions in one process."""
import statistics
import time


def interleaved_medians(fns, repeats, clock=time.perf_counter):
    """Median time of each function after one warm-up call each (tracing, compiling), the calls
    interleaved so that load changes hit all alike. ``clock``: wall time by default;
    ``time.process_time`` (this process's CPU time) on a loaded machine with the process pinned."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            t0 = clock()
            fn()
            ts.append(clock() - t0)
    return [statistics.median(ts) for ts in times]

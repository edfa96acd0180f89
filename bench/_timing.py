"""Shared by the bench/bench_*.py scripts: interleaved timing of several functions in one process, and
pinning a process to one core. Imports no backend."""
import os
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


def pin_to_one_core(core=None) -> int:
    """Run this process (and every thread it starts from now on) on one core; returns the core. Call it
    before the backend starts: OpenMP / oneDNN pools (torch's intra-op threads among them) and
    TensorFlow's thread pools then get one thread."""
    core = max(os.sched_getaffinity(0)) if core is None else core
    os.sched_setaffinity(0, {core})
    os.environ.update(OMP_NUM_THREADS="1", TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1")
    return core

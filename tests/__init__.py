import os

# One BLAS thread per process: pytest-xdist already runs a worker per core, and the servers, subprocesses and
# GPy fits they start add more. OpenBLAS's threads, more than the cores, spin waiting for one another on the small
# matrices these tests use: a sparse GPy fit took 10x the CPU time with two threads on a busy 2-core machine.
# Read when numpy loads its OpenBLAS, so set before anything imports numpy: this package runs before its conftest.
# A value already set wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

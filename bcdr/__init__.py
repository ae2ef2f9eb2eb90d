"""bcdr: backup and disaster recovery for AI datasets and model checkpoints."""

import os

__version__ = "0.1.0"

# bcdr uses numpy for index columns only, never BLAS; OpenBLAS would otherwise start a thread
# per core that spins waiting for work (measured: 1.4% of a restore's CPU on 2 cores).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

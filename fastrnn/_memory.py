"""Reuse of large array memory from one layer call to the next.

A training step allocates its big arrays afresh each time (gate
pre-activations, caches, gradients: megabytes each). glibc serves such blocks
from ``mmap`` and unmaps them on ``free``, so every step touches new pages, at
one page fault per 4 KiB: 1,768 faults in an S3 RNN step (B=64, T=100, H=128,
two threads), which ran in 5.3 ms instead of 7.3 ms when the same process kept
its memory (glibc's ``MALLOC_MMAP_THRESHOLD_`` raised, for the experiment).

Inside :func:`reuse_array_memory` (every layer call runs inside it, in each of
its threads), NumPy allocates array data through an allocator of the Cython
extension that keeps freed blocks of 256 KiB to 64 MiB, up to
``fastrnn._config.REUSED_MEMORY_BYTES`` in all (the oldest go first), and hands
one out again for a request of up to a quarter less. Arrays allocated there
keep that allocator for life: an output the caller holds returns its block
when it is freed, whenever that is (unless the bound has been set to 0
since). Zero-filled arrays always take fresh memory (clearing a kept block
cost more: an S5 RNN step 10% slower). NumPy tracks handler allocations for
tracemalloc itself, so arrays from here stay visible to it.

Measured (2 threads, interleaved A/B, medians of 11, against reuse off):
S3 RNN 6.8 -> 5.3 ms, S3 GRU 18.0 -> 16.0 ms, S4 GRU 1.19 -> 0.88 ms, S5 LSTM
1.04 -> 0.96 s, S5 RNN 262 -> 234 ms, S7 RNN 7.3 -> 5.3 ms; none slower. Peak
memory of three S5 steps: LSTM 949 -> 975 MiB, RNN 402 -> 384 MiB (blocks
up to 16 MiB only: the same; unbounded: +88 MiB).

Without the Cython extension these are no-ops.
"""

import os
from contextlib import contextmanager

from . import _config

try:
    from ._kernels._cython_kernels import REUSE_HANDLER as _HANDLER
    from ._kernels._cython_kernels import _reuse_after_fork
    from ._kernels._cython_kernels import reused_bytes as _reused_bytes
    from ._kernels._cython_kernels import set_array_allocator as _set_allocator
    from ._kernels._cython_kernels import set_reuse_limit as _set_limit
except ImportError:  # extension not built: NumPy's own allocator throughout
    _HANDLER = _set_allocator = _set_limit = _reused_bytes = _reuse_after_fork = None


@contextmanager
def reuse_array_memory():
    """Within (in this thread): NumPy's array data comes from, and large
    blocks return to, the reusing allocator. The layers run every batch slice
    inside it."""
    if _HANDLER is None:
        yield
        return
    if _config.REUSED_MEMORY_BYTES <= 0:
        _set_limit(0)  # off: blocks of arrays allocated before are freed too
        yield
        return
    _set_limit(_config.REUSED_MEMORY_BYTES)
    previous = _set_allocator(_HANDLER)
    try:
        yield
    finally:
        _set_allocator(previous)


def reused_bytes():
    """Bytes of freed array memory kept for reuse now."""
    return 0 if _reused_bytes is None else int(_reused_bytes())


def release_memory():
    """Give the kept blocks back to the system (the pool refills on the next call)."""
    if _set_limit is not None:
        _set_limit(0)


if _reuse_after_fork is not None and hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reuse_after_fork)

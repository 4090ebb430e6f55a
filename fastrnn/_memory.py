"""Reuse of large array memory from one layer call to the next.

A training step allocates its big arrays afresh each time (gate
pre-activations, caches, gradients: megabytes each). glibc serves such blocks
from ``mmap`` and unmaps them on ``free``, so every step touches new pages, at
one page fault per 4 KiB: 1,768 faults in an S3 RNN step (B=64, T=100, H=128,
two threads), which ran in 5.3 ms instead of 7.3 ms when the same process kept
its memory (glibc's ``MALLOC_MMAP_THRESHOLD_`` raised, for the experiment).

Inside :func:`reuse_array_memory` (every layer call runs inside it, in each of
its threads), NumPy allocates array data through an allocator of the Cython
extension that keeps freed blocks of 128 KiB or more, up to
``fastrnn._config.REUSED_MEMORY_BYTES`` in all (the oldest go first), and hands
one out again for a request of up to a quarter less, zero-filled ones
(``np.zeros``) included, cleared. It never keeps more than the most bytes of
such blocks that were in use at once (:func:`blocks_in_use`): a training step
keeps what its next step takes, and calls of ever new shapes (a service's
batches) no more than the largest of them needed. Arrays allocated there keep that allocator
for life: an output the caller holds returns its block when it is freed,
whenever that is (unless the bound has been set to 0 since). The estimators'
``fit`` calls :func:`release_memory` when it ends (``partial_fit`` does not:
its next call reuses the blocks), and every prediction (estimators' and
:mod:`fastrnn.serving`'s) trims the kept blocks to
``fastrnn._config.KEPT_AFTER_PREDICT_BYTES`` (64 MiB) when it ends: a
service's requests keep reusing theirs, and a large batch does not leave
hundreds of MiB behind. Fresh blocks of
4 MiB or more ask for transparent huge pages, as NumPy's allocator does. NumPy
tracks handler allocations for tracemalloc itself, so arrays from here stay
visible to it.

Measured (2 threads, interleaved A/B, medians of 11, against reuse off):
S3 RNN 7.0 -> 5.5 ms, S3 GRU 21.5 -> 20.7 ms, S4 GRU 1.20 -> 0.92 ms, S7 RNN
7.6 -> 5.3 ms. Peak RSS: S3 LSTM step 121 -> 129 MiB.

Blocks of 4 MiB and more were left to glibc at first, and zero-filled arrays
always took fresh memory. glibc then served them from its heap or from mmap
depending on what had been freed before (its mmap threshold follows the
largest block freed), so some steps faulted in megabytes of fresh pages, at
~13 us per 4 KiB page on this virtual machine: an S6 step spent 18 ms of 96
in the kernel, an S5 LSTM step 90 ms of 710. Keeping every size, clearing kept
blocks for ``np.zeros``, and a bound of 1 GiB (an S5 LSTM step reuses 450 MiB)
took that to 0-4 ms. The kernels' own work buffers (packed weights, row
buffers) then faulted instead, glibc's mmap threshold no longer raised by big
frees: they come from the kept blocks too. S6 steps now fault 0-80 times
(900-6,700 with the reuse off). Old and new trees in alternating processes
(three to five rounds): S6 0.88-0.94 of the time, S3 GRU 0.84-1.01, S5 RNN 0.93-0.98,
S4 LSTM 0.93-0.98, S3 LSTM 0.94-1.03, S2 LSTM 0.97-0.99; S1 0.97-1.00.
Peak RSS after 8 steps did not grow (S5 LSTM 883 -> 853 MiB, S6 296 -> 239,
S3 94 -> 91). Keeping every block without the bound of the most in use at
once, 600 LSTM inference calls of random shapes (B 1-256, T 10-300) kept 404
MiB (peak RSS 488 MiB); with it, 63 MiB (205), where blocks up to 4 MiB had
kept 46 (192).

Without the Cython extension these are no-ops.
"""

import os
from contextlib import contextmanager

from . import _config

def _numpy_hugepages():
    """Whether NumPy's allocator asks for huge pages for big arrays (it does on
    Linux kernels from 4.6 on, unless turned off)."""
    try:  # NumPy 2
        from numpy._core.multiarray import _get_madvise_hugepage
    except ImportError:
        try:  # NumPy 1.x
            from numpy.core.multiarray import _get_madvise_hugepage
        except ImportError:
            return False
    return bool(_get_madvise_hugepage())


try:
    from ._kernels._cython_kernels import set_reuse_hugepages as _set_hugepages
    from ._kernels._cython_kernels import REUSE_HANDLER as _HANDLER
    from ._kernels._cython_kernels import _reuse_after_fork
    from ._kernels._cython_kernels import reused_bytes as _reused_bytes
    from ._kernels._cython_kernels import blocks_in_use as _blocks_in_use
    from ._kernels._cython_kernels import set_array_allocator as _set_allocator
    from ._kernels._cython_kernels import set_reuse_limit as _set_limit
except ImportError:  # extension not built: NumPy's own allocator throughout
    _HANDLER = _set_allocator = _set_limit = _reused_bytes = _reuse_after_fork = None
    _blocks_in_use = None
    _set_hugepages = None


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


def blocks_in_use():
    """``(now, most)``: bytes of arrays (and kernel buffers) of 128 KiB or
    more from the reusing allocator not freed yet, now and at most at once
    since :func:`release_memory`; no more than ``most`` is kept."""
    return (0, 0) if _blocks_in_use is None else tuple(int(v) for v in _blocks_in_use())


def trim_memory(n_bytes):
    """If more than ``n_bytes`` of blocks are kept, keep at most ``n_bytes``
    (the oldest go first) until the next layer call restores
    ``fastrnn._config.REUSED_MEMORY_BYTES``; 0 is :func:`release_memory`. The
    predictors call it when a prediction ends."""
    if _set_limit is None or (n_bytes > 0 and _reused_bytes() <= n_bytes):
        return  # (the common case of a service's small requests: one C call)
    if n_bytes <= 0:
        release_memory()
    else:
        _set_limit(min(int(n_bytes), max(_config.REUSED_MEMORY_BYTES, 0)))


def release_memory():
    """Give the kept blocks back to the system (the pool refills on the next
    call), and count the most in use at once anew."""
    if _set_limit is not None:
        _set_limit(0)


if _set_hugepages is not None:
    _set_hugepages(_numpy_hugepages())  # NumPy's setting, as at import

if _reuse_after_fork is not None and hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reuse_after_fork)

"""Every tunable of fastrnn in one place.

The kernel backend used when a layer or estimator says ``backend='auto'`` is
taken, in this order, from :func:`set_backend`, from the environment variable
``FASTRNN_BACKEND``, and otherwise chosen automatically (the first of
``AUTO_ORDER`` that loads).
"""

import contextvars
import os
import threading
from contextlib import contextmanager

#: Order in which ``'auto'`` tries the backends: the compiled ones first.
AUTO_ORDER = ("cython", "numba", "reference")

_VALID = ("auto", "cython", "numba", "reference")

#: Where the layers split a batch over Python threads (see :func:`batch_threads`;
#: float64 and the backends without the kernels' own row split, see
#: ``fastrnn.nn._RNNBase._splits_rows``), each thread gets at least this many
#: samples: below, a thread's share is too small to pay for starting it.
MIN_SAMPLES_PER_THREAD = 32

#: In eval mode a layer runs its kernel this many time steps at a time, so that
#: its memory beyond the input and output does not grow with the sequence length
#: where a kernel keeps the input terms of all its steps (in training, the whole
#: sequence is kept anyway).
INFERENCE_BLOCK_STEPS = 128

#: The layers keep up to this many bytes of freed array memory for their next
#: call (see :mod:`fastrnn._memory`); 0 turns the reuse off. An S5 LSTM step
#: (B=128, T=200, H=512) reuses 450 MiB; with 256 MiB kept it spent 110 ms of
#: its 730 in the kernel's page faults, against 4 ms of 630.
REUSED_MEMORY_BYTES = 1 << 30

#: What a prediction (fastrnn._inference) leaves kept of that memory when it
#: ends: a service's requests reuse theirs from one to the next, and a large
#: batch (4096 sequences of 200 steps through an LSTM(128, 128): 429 MiB kept)
#: does not leave hundreds of MiB behind.
KEPT_AFTER_PREDICT_BYTES = 64 << 20

_backend = None


def set_backend(name):
    """Set the backend that ``backend='auto'`` resolves to, for the whole process.

    Parameters
    ----------
    name : {'auto', 'cython', 'numba', 'reference'} or None
        ``None`` or ``'auto'`` restores the automatic choice (which still honours
        the ``FASTRNN_BACKEND`` environment variable).

    Examples
    --------
    >>> import fastrnn
    >>> fastrnn.set_backend("reference")
    >>> fastrnn.get_backend()
    'reference'
    >>> fastrnn.set_backend(None)
    """
    global _backend
    if name is not None and name not in _VALID:
        raise ValueError(f"unknown backend {name!r}; expected one of {_VALID}")
    _backend = None if name == "auto" else name


def get_backend():
    """The backend name that ``'auto'`` currently stands for (may be ``'auto'``)."""
    if _backend is not None:
        return _backend
    env = os.environ.get("FASTRNN_BACKEND", "auto").strip().lower() or "auto"
    if env not in _VALID:
        raise ValueError(
            f"environment variable FASTRNN_BACKEND={env!r}; expected one of {_VALID}"
        )
    return env


class thread_limit:
    """Context manager: run BLAS (and PyTorch, if already imported) on ``n``
    threads, restoring the previous settings on exit.

    For benchmarks and demos that compare libraries at one thread count. The
    layers take their thread count from BLAS's setting (see
    :func:`batch_threads`), so this also sets how many threads they split a
    large batch over. PyTorch is never imported here, only limited when the
    caller already has it. Not meant to overlap with another thread's
    ``thread_limit``: each restores what it found on entry.
    """

    def __init__(self, n):
        self.n = int(n)

    def __enter__(self):
        import sys

        from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

        self._blas = threadpool_limits(limits=self.n, user_api="blas")
        self._torch = sys.modules.get("torch")
        if self._torch is not None:
            self._torch_threads = self._torch.get_num_threads()
            self._torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc):
        self._blas.restore_original_limits()
        if self._torch is not None:
            self._torch.set_num_threads(self._torch_threads)


_blas_lock = threading.Lock()
_blas_users = 0
_blas_saved = None
_blas_libs = None


def _blas_controllers():
    """threadpoolctl's controllers of the BLAS libraries loaded (NumPy's and
    SciPy's OpenBLAS), found once: scanning the loaded libraries costs ~2 ms."""
    global _blas_libs
    if _blas_libs is None:
        from threadpoolctl import ThreadpoolController  # a dependency of scikit-learn

        _blas_libs = ThreadpoolController().select(user_api="blas").lib_controllers
    return _blas_libs


_layer_threads = contextvars.ContextVar("fastrnn_layer_threads", default=None)


@contextmanager
def layer_threads(n):
    """Within (in this thread): layers split a batch over up to ``n`` threads,
    whatever BLAS's setting; ``n`` None leaves the choice to BLAS's setting.
    The estimators' ``n_jobs`` goes through here."""
    token = _layer_threads.set(n)
    try:
        yield
    finally:
        _layer_threads.reset(token)


def batch_threads(batch_size, threads=None):
    """Threads a layer's forward (and backward) of ``batch_size`` samples is split over.

    ``threads`` (:func:`available_threads` when None: as set by
    :func:`layer_threads`, the estimators' ``n_jobs``, else as many as BLAS
    may use, the process's setting: ``OPENBLAS_NUM_THREADS``, threadpoolctl,
    :class:`thread_limit`), at most one per
    ``MIN_SAMPLES_PER_THREAD`` samples. While one split forward runs, BLAS is on
    one thread, so a forward started meanwhile from another thread runs whole
    rather than oversubscribing the cores.
    """
    if batch_size < 2 * MIN_SAMPLES_PER_THREAD:
        return 1
    if threads is None:
        threads = available_threads()
    return max(1, min(threads, batch_size // MIN_SAMPLES_PER_THREAD))


def available_threads():
    """Threads a layer may use: as set by :func:`layer_threads`, else as many
    as BLAS may use."""
    n = _layer_threads.get()
    if n is None:
        n = max((lib.num_threads for lib in _blas_controllers()), default=1)
    return n


@contextmanager
def single_threaded_blas():
    """Run BLAS on one thread while any caller is inside; the first to enter
    saves the settings and the last to leave restores them, so overlapping
    calls from several threads leave the process as they found it.

    Used while a layer runs batch slices on several threads, and around the
    estimators' ``fit``: training is a long chain of small matrix products (one
    per time step), for which a second BLAS thread costs more than it saves; on
    a busy 2-core machine OpenBLAS's spinning threads made a fit up to 100 times
    slower (the digits demo: 32 s instead of 0.2 s for five epochs).

    The setting is process-wide (OpenBLAS has no per-thread one in the pthreads
    builds NumPy and SciPy ship). If another thread changes it meanwhile, for
    example with threadpoolctl's ``threadpool_limits``, whichever of the two
    leaves last restores what it found on entry: do not overlap the two.
    """
    global _blas_users, _blas_saved
    libs = _blas_controllers()
    with _blas_lock:
        if _blas_users == 0:
            _blas_saved = [lib.num_threads for lib in libs]
            for lib in libs:
                lib.set_num_threads(1)
        _blas_users += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0:
                for lib, n in zip(libs, _blas_saved):
                    lib.set_num_threads(n)


def blas_held_single_threaded():
    """Whether some caller is inside :func:`single_threaded_blas` (a split layer,
    an estimator's fit), so that BLAS runs on one thread: a cheap flag, unlike
    asking BLAS, and process-wide like the setting. It reports fastrnn's own
    request only; a limit set otherwise (:class:`thread_limit`,
    ``OPENBLAS_NUM_THREADS``) is not seen. It chooses code
    (:func:`fastrnn._blas.matmul`), never a result."""
    return _blas_users > 0


#: After running a batch slice, a pool thread polls for the next one this many
#: seconds before it blocks: a training step hands it its forward's slice and
#: then its backward's, and a blocked thread takes 50-100 us to wake on a
#: virtual machine whose idle cores halt (see :class:`SlicePool`).
POOL_SPIN_SECONDS = 1e-3

#: A thread waiting for a pool thread's slice polls this long before it blocks.
WAIT_SPIN_SECONDS = 2e-3


class _PlainFlags:
    """:class:`~fastrnn._kernels._cython_kernels.SpinFlags` without the
    extension: the same flags, never polled (``wait`` gives up at once, and the
    threads block)."""

    def __init__(self, n):
        self._v = [0] * n

    def get(self, i):
        return self._v[i]

    def set(self, i, value):
        self._v[i] = value

    def wait(self, i, value, seconds):
        return self._v[i] == value


def _spin_flags(n):
    try:
        from ._kernels._cython_kernels import SpinFlags
    except ImportError:
        return _PlainFlags(n)
    return SpinFlags(n)


class _Task:
    """One batch slice handed to a :class:`SlicePool` thread (or run on the
    calling thread when none was free); :meth:`result` waits for it."""

    __slots__ = ("_pool", "_worker", "_seq", "_job", "_value", "_error", "_finished")

    def __init__(self, pool, worker, seq, fn, arg):
        self._pool, self._worker, self._seq = pool, worker, seq
        self._job = (fn, arg)
        self._value = self._error = None
        self._finished = False

    def _run(self, catch=BaseException):
        fn, arg = self._job
        self._job = None  # hold no slice's data once it has run
        try:
            self._value = fn(arg)
        except catch as exc:  # handed to the caller by result()
            self._error = exc

    def wait(self):
        """Block until the slice has run. Interrupted (Ctrl-C), it may be
        called again; a slice never waited for still frees its thread."""
        if not self._finished:
            self._pool._wait_for(self)

    def result(self):
        """The slice's return value, or its exception raised here."""
        self.wait()
        if self._error is not None:
            raise self._error
        return self._value


class SlicePool:
    """``n`` kept daemon threads that run a split layer's batch slices
    (:func:`fastrnn.nn._map_parts`).

    A slice is handed over through flags (:class:`SpinFlags`) that the pool
    thread polls, without the GIL, for :data:`POOL_SPIN_SECONDS` after its last
    slice before it blocks on a condition; the caller polls the same way for
    :data:`WAIT_SPIN_SECONDS` while the slice runs. On this project's virtual
    machines a blocked thread takes 50-100 us to wake (an idle virtual core
    halts; the host takes it off the CPU after ~200 us), and a queue-based
    executor paid that twice per split call, plus ~50 us in the caller to wake
    the worker: S2 RNN, 0.23 ms of a 4.9 ms call.

    Several callers may use the pool at once: a slice for which no thread is
    free runs on the calling thread, as the cores are busy anyway. A thread
    frees itself when its slice has run, whether or not anyone waits for it
    (a caller interrupted while waiting). The threads live as long as the
    process.
    """

    def __init__(self, n):
        self.size = n
        # per thread: flag 2i, a slice posted (1); flag 2i + 1, the sequence
        # number of the last slice it finished (a hint to poll on: the task's
        # own _finished decides)
        self._flags = _spin_flags(2 * n)
        self._posted = [threading.Condition() for _ in range(n)]
        self._finished = [threading.Condition() for _ in range(n)]
        self._sleeping = [False] * n   # thread i blocked waiting for a slice
        self._waiting = [0] * n        # callers blocked waiting for i's slices
        self._jobs = [None] * n
        self._seq = 0
        self._lock = threading.Lock()
        self._free = list(range(n - 1, -1, -1))  # popped from the end: 0 first
        for i in range(n):
            threading.Thread(target=self._serve, args=(i,), daemon=True,
                             name=f"fastrnn-{i}").start()

    def start(self, fn, arg):
        """Run ``fn(arg)`` on a free pool thread, or here and now if none is
        free; returns a task whose :meth:`~_Task.result` gives the value (an
        exception of the slice is raised there; one that is not an
        ``Exception``, such as KeyboardInterrupt, raised here at once when the
        slice runs here)."""
        with self._lock:
            i = self._free.pop() if self._free else None
            self._seq = self._seq % 0x7FFFFFFE + 1  # 1..2^31 - 2: a C int, never 0
            seq = self._seq
        task = _Task(self, i, seq, fn, arg)
        if i is None:
            task._run(catch=Exception)
            task._finished = True
            return task
        self._jobs[i] = task
        with self._posted[i]:
            self._flags.set(2 * i, 1)
            if self._sleeping[i]:
                self._posted[i].notify()
        return task

    def _wait_for(self, task):
        i, done = task._worker, 2 * task._worker + 1
        if self._flags.wait(done, task._seq, WAIT_SPIN_SECONDS) and task._finished:
            return
        with self._finished[i]:
            # a count: a caller still waking from the thread's last slice and
            # one waiting for its next may overlap
            self._waiting[i] += 1
            try:
                while not task._finished:
                    self._finished[i].wait()
            finally:
                self._waiting[i] -= 1

    def _serve(self, i):
        flags, posted = self._flags, self._posted[i]
        while True:
            if not flags.wait(2 * i, 1, POOL_SPIN_SECONDS):
                with posted:
                    while flags.get(2 * i) != 1:
                        self._sleeping[i] = True
                        posted.wait()
                    self._sleeping[i] = False
            flags.set(2 * i, 0)
            task = self._jobs[i]
            self._jobs[i] = None
            task._run()
            # free before finished: whoever sees its slice done finds the
            # thread free again (a slice posted meanwhile waits in its flag)
            with self._lock:
                self._free.append(i)  # last freed, first taken: it is still polling
            with self._finished[i]:
                task._finished = True
                flags.set(2 * i + 1, task._seq)
                if self._waiting[i]:
                    self._finished[i].notify_all()
            del task  # hold no slice's result while idle


_pool = None
_pool_lock = threading.Lock()


def thread_pool(n):
    """A process-wide :class:`SlicePool` of at least ``n`` threads for the
    layers' batch slices.

    Starting threads costs about 0.3 ms, as much as a whole small forward pass,
    so the pool is kept. A larger one replaces it when ``n`` asks for more
    threads; the old one's threads stay (another caller may be about to use
    them), blocked once idle, for the life of the process.

    (OpenBLAS's ``openblas_set_num_threads_local`` would let each worker keep
    its own BLAS on one thread, but in the pthreads builds that NumPy and SciPy
    ship it changes the process-wide count: hence :func:`single_threaded_blas`.)
    """
    global _pool

    with _pool_lock:
        if _pool is None or _pool.size < n:
            _pool = SlicePool(max(n, os.cpu_count() or 1))
        return _pool


def _after_fork_in_child():
    """A forked child has the parent's locks, counters and pool objects, but not
    its other threads: start afresh, restoring BLAS if a split held it."""
    global _blas_lock, _blas_users, _pool_lock, _pool
    _blas_lock, _pool_lock = threading.Lock(), threading.Lock()
    if _blas_users:
        for lib, n in zip(_blas_controllers(), _blas_saved):
            lib.set_num_threads(n)
    _blas_users = 0
    _pool = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

# cython: language_level=3, cdivision=True
# boundscheck, wraparound, initializedcheck: set in setup.py only (a header one would win)
"""Cython backend: the kernel contract compiled ahead of time.

Same six functions, argument order and in-place semantics as
:mod:`fastrnn._kernels.reference` (see :mod:`fastrnn._kernels` for the
contract). Each public function checks shapes (cheap, O(B)), allocates its work
buffers once, then runs the whole time loop ``with nogil``: per step one
product for the recurrent term on the active prefix of the batch, then short
element-wise loops over the gates. In float32 on AVX-512 the product runs on
the call's weights packed once into panels (see the packed-panel section);
elsewhere it is a BLAS call (GEMM, or GEMV when a single sample is active).

Transcendentals. Every nonlinearity is a ``tanh`` (the sigmoid is
``0.5 * tanh(0.5 * x) + 0.5``, finite for any input, the reference's formula).
A scalar libm ``tanh`` call cannot be vectorised by the compiler without
``-ffast-math``/libmvec and costs ~14 ns, ten times NumPy's SIMD ``np.tanh``,
which made a fused one-pass loop slower than the NumPy reference. So each step
applies ``tanh`` to whole rows of gates at once through NumPy's own float32 /
float64 ``tanh`` inner loop (the C function behind ``np.tanh``, taken from the
ufunc's public loop table and called without the GIL): the same function as
the reference, hence bit-identical transcendentals, with NumPy's run-time CPU
dispatch (SSE/AVX2/AVX-512). The arithmetic between those calls is plain
loops without calls or branches, which gcc vectorises. If the loop cannot be
found or does not reproduce ``np.tanh`` bit for bit at import, libm's
``tanhf``/``tanh`` is used instead (see ``TANH_SOURCE``).

Row-major arrays are handed to the column-major BLAS as their transposes: a
C-contiguous ``(rows, cols)`` matrix is a Fortran ``(cols, rows)`` matrix with
leading dimension ``cols``.
"""

cimport numpy as cnp
from cython cimport floating
from libc.math cimport tanh, tanhf
from libc.stdint cimport int64_t
from libc.stdlib cimport calloc
from libc.string cimport memcpy, memset
from scipy.linalg.cython_blas cimport dgemm, dgemv, sgemm, sgemv

import os

import numpy as np

cnp.import_array()


# ------------------------------------------------------- subnormal numbers

cdef extern from *:
    """
    #if defined(__SSE__) || defined(_M_X64) || (defined(_M_IX86_FP) && _M_IX86_FP >= 1)
    #include <xmmintrin.h>
    #define FASTRNN_FTZ_DAZ 0x8040u  /* MXCSR flush-to-zero | denormals-are-zero */
    static unsigned int fastrnn_get_ftz(void) { return _mm_getcsr() & FASTRNN_FTZ_DAZ; }
    static void fastrnn_set_ftz(unsigned int bits) {
        _mm_setcsr((_mm_getcsr() & ~FASTRNN_FTZ_DAZ) | (bits & FASTRNN_FTZ_DAZ));
    }
    #define FASTRNN_HAS_FTZ 1
    #else
    static unsigned int fastrnn_get_ftz(void) { return 0; }
    static void fastrnn_set_ftz(unsigned int bits) { (void)bits; }
    #define FASTRNN_HAS_FTZ 0
    #endif
    """
    unsigned int fastrnn_get_ftz() nogil
    void fastrnn_set_ftz(unsigned int bits) nogil
    const int FASTRNN_HAS_FTZ
    const unsigned int FASTRNN_FTZ_DAZ


#: Whether :func:`set_flush_denormals` can act on this CPU (x86 with SSE).
HAS_FLUSH_DENORMALS = bool(FASTRNN_HAS_FTZ)

#: The bits :func:`set_flush_denormals` sets: MXCSR's flush-to-zero (0x8000)
#: and denormals-are-zero (0x0040).
FLUSH_DENORMALS_BITS = FASTRNN_FTZ_DAZ


def set_flush_denormals(unsigned int bits):
    """Set the calling thread's flush-to-zero and denormals-are-zero bits to
    ``bits & FLUSH_DENORMALS_BITS`` (x86's MXCSR; a no-op elsewhere) and return
    the previous ones, so that they can be restored exactly.

    Not one of the six kernels: see :func:`fastrnn._blas.flush_denormals`.
    """
    cdef unsigned int was = fastrnn_get_ftz()
    fastrnn_set_ftz(bits)
    return was


# ------------------------------------------------------ thread hand-over

cdef extern from *:
    """
    #if (defined(__unix__) || defined(__APPLE__)) && (defined(__GNUC__) || defined(__clang__))
    #include <time.h>
    #include <sched.h>
    #define FASTRNN_CAN_SPIN 1
    #if defined(__x86_64__) || defined(__i386__)
    #define FASTRNN_PAUSE() __builtin_ia32_pause()
    #elif defined(__aarch64__)
    #define FASTRNN_PAUSE() __asm__ __volatile__("yield")
    #else
    #define FASTRNN_PAUSE() ((void)0)
    #endif
    /* Wait until *p == value, at most `seconds`, by polling (a pause between
       reads, a sched_yield every 64 of them so that a thread waiting for this
       core gets it); 1 if the value was seen. Called without the GIL. */
    static int fastrnn_spin_until(const int* p, int value, double seconds) {
        struct timespec t0, t;
        double waited;
        int i;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (;;) {
            for (i = 0; i < 64; i++) {
                if (__atomic_load_n(p, __ATOMIC_ACQUIRE) == value) return 1;
                FASTRNN_PAUSE();
            }
            clock_gettime(CLOCK_MONOTONIC, &t);
            waited = (double)(t.tv_sec - t0.tv_sec) + 1e-9 * (double)(t.tv_nsec - t0.tv_nsec);
            if (!(waited < seconds)) return 0;  /* NaN too */
            sched_yield();
        }
    }
    static void fastrnn_store(int* p, int value) { __atomic_store_n(p, value, __ATOMIC_RELEASE); }
    static int fastrnn_load(const int* p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    #else
    #define FASTRNN_CAN_SPIN 0
    static int fastrnn_spin_until(const int* p, int value, double seconds) {
        (void)p; (void)value; (void)seconds; return 0;
    }
    static void fastrnn_store(int* p, int value) { *(volatile int*)p = value; }
    static int fastrnn_load(const int* p) { return *(const volatile int*)p; }
    #endif
    """
    int fastrnn_spin_until(const int* p, int value, double seconds) nogil
    void fastrnn_store(int* p, int value) nogil
    int fastrnn_load(const int* p) nogil
    const int FASTRNN_CAN_SPIN


#: Whether :meth:`SpinFlags.wait` polls on this platform (POSIX, built with
#: gcc or clang); elsewhere it returns False at once and the caller blocks.
CAN_SPIN = bool(FASTRNN_CAN_SPIN)


cdef class SpinFlags:
    """``n`` integer flags, zero at first, through which threads hand work
    over (see :class:`fastrnn._config.SlicePool`): set and read with the GIL,
    waited for by polling without it, which sees a change within a
    microsecond where waking a blocked thread takes 50-100 us on a virtual
    machine whose idle cores halt.

    Not one of the six kernels. Each flag has a 64-byte cache line of its
    own. The memory is never freed: a daemon thread may still poll it while
    the interpreter shuts down.
    """

    cdef int* p
    cdef readonly Py_ssize_t n

    def __cinit__(self, Py_ssize_t n):
        cdef char* base
        if n < 1:
            raise ValueError(f"SpinFlags needs at least one flag, got {n}")
        base = <char*>calloc(n * 16 + 16, sizeof(int))  # 16 ints: 64 bytes
        if base == NULL:
            raise MemoryError("cannot allocate the flags")
        self.p = <int*>(base + (64 - <size_t>base % 64) % 64)  # at a line's start
        self.n = n

    cdef int* _at(self, Py_ssize_t i) except NULL:
        if not 0 <= i < self.n:
            raise IndexError(f"flag {i} out of range (0..{self.n - 1})")
        return self.p + 16 * i

    def get(self, Py_ssize_t i):
        """The value of flag ``i``."""
        return fastrnn_load(self._at(i))

    def set(self, Py_ssize_t i, int value):
        """Set flag ``i`` to ``value``."""
        fastrnn_store(self._at(i), value)

    def wait(self, Py_ssize_t i, int value, double seconds):
        """Poll flag ``i``, without the GIL, until it equals ``value`` (True)
        or ``seconds`` have passed (False; at once where :data:`CAN_SPIN` is
        false)."""
        cdef const int* p = self._at(i)
        cdef int seen
        with nogil:
            seen = fastrnn_spin_until(p, value, seconds)
        return bool(seen)


# ---------------------------------------------------- rows on a helper thread

cdef extern from *:
    """
    /* A kernel's rows on two threads: the calling one and one helper thread of
       this module's own, which never takes the GIL. A batch's samples are
       independent, so each thread walks every step over its own rows, and
       they meet only at the end of the call.

       The batch slices of fastrnn.nn run whole layers on Python threads;
       those hand the GIL back and forth around every NumPy call and kernel,
       and on a virtual machine whose idle cores halt each hand-over to a
       blocked thread takes 50-100 us. The helper runs without the
       interpreter and, while some thread has the split on (a layer call is
       under way), polls for rows; otherwise it blocks. A caller that finds
       its rows not yet taken when it is done with its own part (the helper
       still waking) takes them back and runs them itself. */
    #if FASTRNN_CAN_SPIN && !defined(_WIN32)
    #include <pthread.h>
    #include <signal.h>
    #define FASTRNN_HAS_HELPER 1
    typedef void (*fastrnn_rows_fn)(void* args, Py_ssize_t b0, Py_ssize_t b1);
    static pthread_mutex_t fastrnn_helper_lock = PTHREAD_MUTEX_INITIALIZER;
    static pthread_cond_t fastrnn_helper_cond = PTHREAD_COND_INITIALIZER;
    static int fastrnn_helper_state;     /* 0 not started, 1 running, -1 failed */
    static int fastrnn_helper_users;     /* threads with the split on */
    static int fastrnn_helper_busy;      /* a caller holds the helper */
    /* The rows posted last: 4 * their number, + 1 once the helper took them,
       + 2 once the caller took them back. */
    static int fastrnn_helper_job;
    static int fastrnn_helper_done;      /* the job word of the rows the helper ran last */
    static int fastrnn_helper_sleeping;
    static fastrnn_rows_fn fastrnn_helper_fn;
    static void* fastrnn_helper_args;
    static Py_ssize_t fastrnn_helper_b0, fastrnn_helper_b1;
    static unsigned int fastrnn_helper_ftz;
    static int fastrnn_helper_caller_cpu = -1;  /* where the last caller ran */
    /* After the last user turned the split off, the helper polls this long
       (a training step's forward and backward are two layer calls). */
    #define FASTRNN_HELPER_LINGER 5e-4
    static double fastrnn_now(void) {
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
    }
    #if defined(__linux__)
    /* Off the CPU of the thread that posts the rows. A thread that polls
       beside a busy one on a single CPU is not moved by the scheduler while
       both stay cache-hot: the two would then share that CPU, the other one
       idle (seen as every other run of a layer gaining nothing). So the
       helper, when it finds itself there, moves: allowed everywhere but
       there, then everywhere again (it stays where it went). */
    static cpu_set_t fastrnn_helper_allowed;
    static int fastrnn_helper_has_allowed;
    static void fastrnn_helper_avoid_caller(void) {
        cpu_set_t elsewhere;
        int cpu = __atomic_load_n(&fastrnn_helper_caller_cpu, __ATOMIC_RELAXED);
        if (!fastrnn_helper_has_allowed || cpu < 0 || cpu >= CPU_SETSIZE
                || sched_getcpu() != cpu)
            return;
        elsewhere = fastrnn_helper_allowed;
        CPU_CLR(cpu, &elsewhere);
        if (CPU_COUNT(&elsewhere) == 0) return;
        if (sched_setaffinity(0, sizeof(elsewhere), &elsewhere) == 0)
            sched_setaffinity(0, sizeof(fastrnn_helper_allowed), &fastrnn_helper_allowed);
    }
    static void fastrnn_helper_note_caller(void) {
        __atomic_store_n(&fastrnn_helper_caller_cpu, sched_getcpu(), __ATOMIC_RELAXED);
    }
    #else
    static void fastrnn_helper_avoid_caller(void) { }
    static void fastrnn_helper_note_caller(void) { }
    #endif
    static void* fastrnn_helper_main(void* unused) {
        int seen = 0, job, i;
        double idle_since = fastrnn_now();
        (void)unused;
        #if defined(__linux__)
        fastrnn_helper_has_allowed = sched_getaffinity(
            0, sizeof(fastrnn_helper_allowed), &fastrnn_helper_allowed) == 0;
        #endif
        for (;;) {
            job = __atomic_load_n(&fastrnn_helper_job, __ATOMIC_ACQUIRE);
            if (job != seen) {
                seen = job;
                if ((job & 3) == 0 && __atomic_compare_exchange_n(
                        &fastrnn_helper_job, &job, job | 1, 0,
                        __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
                    fastrnn_set_ftz(fastrnn_helper_ftz);  /* as the caller's thread */
                    fastrnn_helper_fn(fastrnn_helper_args, fastrnn_helper_b0,
                                      fastrnn_helper_b1);
                    __atomic_store_n(&fastrnn_helper_done, seen, __ATOMIC_RELEASE);
                    seen |= 1;
                }
                idle_since = fastrnn_now();
                continue;
            }
            for (i = 0; i < 64 && __atomic_load_n(&fastrnn_helper_job, __ATOMIC_ACQUIRE)
                 == seen; i++)
                FASTRNN_PAUSE();
            if (i < 64) continue;
            if (__atomic_load_n(&fastrnn_helper_users, __ATOMIC_ACQUIRE) > 0) {
                idle_since = fastrnn_now();
                fastrnn_helper_avoid_caller();
            } else if (fastrnn_now() - idle_since > FASTRNN_HELPER_LINGER) {
                pthread_mutex_lock(&fastrnn_helper_lock);
                while (__atomic_load_n(&fastrnn_helper_job, __ATOMIC_ACQUIRE) == seen
                       && __atomic_load_n(&fastrnn_helper_users, __ATOMIC_ACQUIRE) == 0) {
                    fastrnn_helper_sleeping = 1;
                    pthread_cond_wait(&fastrnn_helper_cond, &fastrnn_helper_lock);
                }
                fastrnn_helper_sleeping = 0;
                pthread_mutex_unlock(&fastrnn_helper_lock);
                idle_since = fastrnn_now();
                continue;
            }
            sched_yield();  /* a thread waiting for this core gets it */
        }
        return NULL;
    }
    static void fastrnn_helper_wake(void) {
        pthread_mutex_lock(&fastrnn_helper_lock);
        if (fastrnn_helper_sleeping) pthread_cond_signal(&fastrnn_helper_cond);
        pthread_mutex_unlock(&fastrnn_helper_lock);
    }
    /* A forked child has no helper thread: it starts its own when asked. */
    static void fastrnn_helper_after_fork(void) {
        pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
        pthread_cond_t c = PTHREAD_COND_INITIALIZER;
        fastrnn_helper_lock = m;
        fastrnn_helper_cond = c;
        fastrnn_helper_state = fastrnn_helper_busy = fastrnn_helper_sleeping = 0;
        fastrnn_helper_job = fastrnn_helper_done = 0;
    }
    /* Start the helper thread unless there is one; 1 if it runs. */
    static int fastrnn_helper_launch(void) {
        static int registered = 0;
        pthread_t tid;
        pthread_attr_t attr;
        sigset_t all, old;
        int ok;
        if (fastrnn_helper_state != 0) return fastrnn_helper_state == 1;
        if (!registered) {
            if (pthread_atfork(NULL, NULL, fastrnn_helper_after_fork) != 0) {
                fastrnn_helper_state = -1;
                return 0;
            }
            registered = 1;
        }
        sigfillset(&all);  /* signals stay with the interpreter's threads */
        pthread_sigmask(SIG_BLOCK, &all, &old);
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        ok = pthread_create(&tid, &attr, fastrnn_helper_main, NULL) == 0;
        pthread_attr_destroy(&attr);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        fastrnn_helper_state = ok ? 1 : -1;
        return ok;
    }
    /* One more (on) or one fewer (off) thread with the split on. */
    static void fastrnn_helper_use(int on) {
        fastrnn_helper_note_caller();
        if (on) {
            if (__atomic_fetch_add(&fastrnn_helper_users, 1, __ATOMIC_ACQ_REL) == 0)
                fastrnn_helper_wake();
        } else {
            __atomic_fetch_sub(&fastrnn_helper_users, 1, __ATOMIC_ACQ_REL);
        }
    }
    /* Hand rows [b0, b1) of `fn` to the helper: their job word (> 0), or 0
       where the helper is not running or another caller holds it. */
    static int fastrnn_helper_post(fastrnn_rows_fn fn, void* args,
                                   Py_ssize_t b0, Py_ssize_t b1) {
        int free_ = 0, job;
        if (__atomic_load_n(&fastrnn_helper_state, __ATOMIC_ACQUIRE) != 1) return 0;
        if (!__atomic_compare_exchange_n(&fastrnn_helper_busy, &free_, 1, 0,
                                         __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) return 0;
        fastrnn_helper_fn = fn;
        fastrnn_helper_args = args;
        fastrnn_helper_b0 = b0;
        fastrnn_helper_b1 = b1;
        fastrnn_helper_ftz = fastrnn_get_ftz();
        fastrnn_helper_note_caller();
        job = ((__atomic_load_n(&fastrnn_helper_job, __ATOMIC_RELAXED) >> 2) % 0x1FFFFFFE + 1) << 2;
        __atomic_store_n(&fastrnn_helper_job, job, __ATOMIC_RELEASE);
        if (__atomic_load_n(&fastrnn_helper_sleeping, __ATOMIC_ACQUIRE))
            fastrnn_helper_wake();
        return job;
    }
    /* The rows of `job` done, by the helper or (not taken yet) by the caller
       now; frees the helper. */
    static void fastrnn_helper_join(int job) {
        int i = 0, untaken = job;
        if (__atomic_compare_exchange_n(&fastrnn_helper_job, &untaken, job | 2, 0,
                                        __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
            fastrnn_helper_fn(fastrnn_helper_args, fastrnn_helper_b0, fastrnn_helper_b1);
        } else {
            while (__atomic_load_n(&fastrnn_helper_done, __ATOMIC_ACQUIRE) != job) {
                FASTRNN_PAUSE();
                if (++i % 64 == 0) sched_yield();
            }
        }
        __atomic_store_n(&fastrnn_helper_busy, 0, __ATOMIC_RELEASE);
    }
    #else
    #define FASTRNN_HAS_HELPER 0
    typedef void (*fastrnn_rows_fn)(void* args, Py_ssize_t b0, Py_ssize_t b1);
    static int fastrnn_helper_launch(void) { return 0; }
    static int fastrnn_helper_post(fastrnn_rows_fn fn, void* args, Py_ssize_t b0,
                                   Py_ssize_t b1) {
        (void)fn; (void)args; (void)b0; (void)b1; return 0;
    }
    static void fastrnn_helper_join(int job) { (void)job; }
    static void fastrnn_helper_use(int on) { (void)on; }
    #endif
    /* Whether this thread's kernel calls may hand rows to the helper (see
       set_row_split): per thread, so that the batch slices' threads never do. */
    static __thread int fastrnn_row_split = 0;
    static int fastrnn_get_row_split(void) { return fastrnn_row_split; }
    static void fastrnn_set_row_split(int on) { fastrnn_row_split = on; }
    """
    ctypedef void (*fastrnn_rows_fn)(void* args, Py_ssize_t b0, Py_ssize_t b1) noexcept nogil
    int fastrnn_helper_launch() nogil
    int fastrnn_helper_post(fastrnn_rows_fn fn, void* args, Py_ssize_t b0,
                            Py_ssize_t b1) nogil
    void fastrnn_helper_join(int job) nogil
    void fastrnn_helper_use(int on) nogil
    int fastrnn_get_row_split() nogil
    void fastrnn_set_row_split(int on) nogil
    const int FASTRNN_HAS_HELPER


#: Whether this build can run a kernel's rows on a helper thread (POSIX).
HAS_ROW_SPLIT = bool(FASTRNN_HAS_HELPER)


def set_row_split(bint on):
    """Let (or stop) the calling thread's float32 kernel calls run part of
    their batch's rows on this module's helper thread; returns the previous
    setting. Per thread, off at first. Not one of the six kernels: the layers
    turn it on around a call that they do not split over their own threads
    (see :func:`fastrnn.nn._map_parts`). Starts the helper on first use."""
    cdef bint was = fastrnn_get_row_split()
    if on and not fastrnn_helper_launch():
        on = False
    if on != was:
        fastrnn_helper_use(on)
        fastrnn_set_row_split(on)
    return was


# A kernel call hands rows to the helper only with at least this many rows
# on each side...
cdef Py_ssize_t _split_min_rows = 8
# ...and this many multiply-adds of step products over the whole call.
cdef Py_ssize_t _split_min_macs = 1 << 20


def row_split_min_rows():
    """The fewest samples a kernel call splits (two sides of ``_split_min_rows``)."""
    return 2 * _split_min_rows


def _set_split_bounds(Py_ssize_t min_rows, Py_ssize_t min_macs):
    """Set the two bounds above (for the tests, which split small calls);
    returns the previous ones."""
    global _split_min_rows, _split_min_macs
    was = (_split_min_rows, _split_min_macs)
    _split_min_rows, _split_min_macs = max(min_rows, 1), max(min_macs, 0)
    return was


cdef Py_ssize_t _split_at(const int64_t* lengths, Py_ssize_t B, Py_ssize_t T,
                          Py_ssize_t macs_per_row_step) noexcept nogil:
    """Where a float32 kernel call over ``B`` samples of (sorted) ``lengths``
    splits its rows between this thread and the helper (rows before it stay
    here), or 0 for no split: about half the samples' steps on each side."""
    cdef Py_ssize_t b, total = 0, acc = 0
    if not fastrnn_get_row_split() or B < 2 * _split_min_rows:
        return 0
    for b in range(B):
        total += lengths[b]
    if total * macs_per_row_step < _split_min_macs:
        return 0
    b = 0
    while 2 * acc < total:
        acc += lengths[b]
        b += 1
    if b < _split_min_rows:
        b = _split_min_rows
    if B - b < _split_min_rows:
        b = B - _split_min_rows
    return b


cdef void _run_rows(fastrnn_rows_fn fn, void* args, Py_ssize_t B,
                    Py_ssize_t split) noexcept nogil:
    """``fn(args, 0, B)``, with rows ``split:`` on the helper thread when
    ``split`` > 0 and the helper is free."""
    cdef int seq = fastrnn_helper_post(fn, args, split, B) if split > 0 else 0
    if seq == 0:
        fn(args, 0, B)
        return
    fn(args, 0, split)
    fastrnn_helper_join(seq)


# ------------------------------------------------- reused array memory

cdef extern from *:
    """
    #include <stdlib.h>
    #include <string.h>
    #include <stdint.h>
    #include "pythread.h"
    #if defined(__linux__)
    #include <sys/mman.h>
    #endif

    /* A NumPy data allocator that keeps freed large blocks for the next
       allocation of (about) the same size: a fresh large block comes from
       mmap, and its first touch costs a page fault per 4 KiB page, several
       milliseconds per training step. Every block carries a header with its
       size; blocks of FASTRNN_REUSE_MIN bytes or more go back to a small
       first-in, first-out cache of at most fastrnn_limit bytes instead of
       free(), for a later malloc or calloc of at most 5/4 their size (see
       fastrnn/_memory.py for the measurements behind the bounds). The
       kernels' own work buffers (fastrnn_work_alloc) come from the same
       cache. A block starts on a 64-byte line (the packed panels need it),
       and its header holds its size and the pointer malloc returned.
       The cache never holds more than the most bytes of blocks (of
       FASTRNN_REUSE_MIN or more) handed out at once since the last
       set_limit(0): a training step keeps what its next step takes, and calls
       of ever new shapes (a service) keep no more than their largest needed.
       tracemalloc: NumPy tracks and untracks array data around every call of
       a handler, so arrays from here stay visible, and kept blocks do not. */
    #define FASTRNN_HDR 64
    /* 128 KiB: with 256, S4's (50, 32, 32) float32 arrays (200 KB) came from
       glibc's heap, whose top it trimmed and grew back every step (1.7 brk
       calls a step), each trim a TLB shoot-down to the kernels' helper
       thread on the other core: S4 LSTM 0.60 ms against 0.48-0.51, GRU 0.57
       against 0.44-0.46; 64 KiB gained no more. */
    #define FASTRNN_REUSE_MIN ((size_t)1 << 17)
    #define FASTRNN_SLOTS 128
    /* NumPy's own allocator advises huge pages from this size on */
    #define FASTRNN_HUGEPAGE_MIN ((size_t)1 << 22)

    typedef struct { void* base; size_t size; } fastrnn_block;

    static void* fastrnn_new_block(size_t size, int zero) {
        /* a fresh block of `size` bytes after the header, or NULL */
        void* raw;
        char* base;
        if (size > (size_t)-1 - FASTRNN_HDR - 63) return NULL;
        raw = zero ? calloc(size + FASTRNN_HDR + 63, 1) : malloc(size + FASTRNN_HDR + 63);
        if (raw == NULL) return NULL;
        base = (char*)(((uintptr_t)raw + 63) & ~(uintptr_t)63);
        ((size_t*)base)[0] = size;
        ((void**)base)[1] = raw;
        return base;
    }

    static void fastrnn_free_block(void* base) {
        if (base != NULL) free(((void**)base)[1]);
    }
    static fastrnn_block fastrnn_cache[FASTRNN_SLOTS];
    static int fastrnn_n = 0;
    static size_t fastrnn_bytes = 0;
    static size_t fastrnn_limit = 0;
    static size_t fastrnn_in_use = 0;  /* bytes of blocks >= MIN handed out now */
    static size_t fastrnn_peak = 0;    /* the most in use at once */
    static PyThread_type_lock fastrnn_lock = NULL;

    static void* fastrnn_remove(int k) {  /* entry k out of the cache, under the lock */
        void* base = fastrnn_cache[k].base;
        fastrnn_bytes -= fastrnn_cache[k].size;
        fastrnn_n--;
        memmove(fastrnn_cache + k, fastrnn_cache + k + 1,
                (size_t)(fastrnn_n - k) * sizeof(fastrnn_block));
        return base;
    }

    static void* fastrnn_take(size_t size) {  /* a cached block, or NULL */
        void* base = NULL;
        int k, best = -1;
        if (fastrnn_lock == NULL) return NULL;
        PyThread_acquire_lock(fastrnn_lock, WAIT_LOCK);
        /* the smallest that fits, <= 5/4, and of those the last freed (the
           entries go oldest first): a call's arrays then come back in the
           blocks its last call used, still in the caches. Taking the oldest
           instead, S7 steps after S6's (whose 2 layers x 2 directions left
           several blocks of each of S7's sizes) cycled through them all and
           took 9.0-9.4 ms against 7.0-7.2 (7.2 again once the kept blocks
           were dropped). */
        for (k = 0; k < fastrnn_n; k++) {
            size_t s = fastrnn_cache[k].size;
            if (s >= size && s - size <= size / 4
                    && (best < 0 || s <= fastrnn_cache[best].size)) best = k;
        }
        if (best >= 0) {
            base = fastrnn_remove(best);
            fastrnn_in_use += *(size_t*)base;
            if (fastrnn_in_use > fastrnn_peak) fastrnn_peak = fastrnn_in_use;
        }
        PyThread_release_lock(fastrnn_lock);
        return base;
    }

    static void fastrnn_count_fresh(size_t size) {  /* a new block handed out */
        if (size < FASTRNN_REUSE_MIN || fastrnn_lock == NULL) return;
        PyThread_acquire_lock(fastrnn_lock, WAIT_LOCK);
        fastrnn_in_use += size;
        if (fastrnn_in_use > fastrnn_peak) fastrnn_peak = fastrnn_in_use;
        PyThread_release_lock(fastrnn_lock);
    }

    static void fastrnn_release(void* base) {
        size_t size = *(size_t*)base;
        void* evicted[FASTRNN_SLOTS];
        int n_evicted = 0, k;
        if (size >= FASTRNN_REUSE_MIN && fastrnn_lock != NULL) {
            size_t bound;
            PyThread_acquire_lock(fastrnn_lock, WAIT_LOCK);
            /* (a block handed out before a fork by a thread the child lacks
               stays counted: an over-estimate, never an underflow) */
            fastrnn_in_use -= size < fastrnn_in_use ? size : fastrnn_in_use;
            bound = fastrnn_limit < fastrnn_peak ? fastrnn_limit : fastrnn_peak;
            if (size > bound) {  /* read under the lock: set_limit may race */
                PyThread_release_lock(fastrnn_lock);
                fastrnn_free_block(base);
                return;
            }
            /* make room: the oldest blocks (entry 0) go first */
            while (fastrnn_n > 0 && (fastrnn_n == FASTRNN_SLOTS
                                     || fastrnn_bytes + size > bound))
                evicted[n_evicted++] = fastrnn_remove(0);
            fastrnn_cache[fastrnn_n].base = base;
            fastrnn_cache[fastrnn_n].size = size;
            fastrnn_n++;
            fastrnn_bytes += size;
            base = NULL;
            PyThread_release_lock(fastrnn_lock);
        }
        for (k = 0; k < n_evicted; k++) fastrnn_free_block(evicted[k]);
        fastrnn_free_block(base);
    }

    /* Whether fresh blocks of 4 MiB or more ask for transparent huge pages, as
       NumPy's own allocator does (numpy's _get_madvise_hugepage()), so that
       big arrays from here are not slower to use than NumPy's. */
    static int fastrnn_hugepages = 0;

    static void fastrnn_advise(void* base, size_t size) {
    #if defined(__linux__) && defined(MADV_HUGEPAGE)
        if (fastrnn_hugepages && size >= FASTRNN_HUGEPAGE_MIN) {
            uintptr_t start = ((uintptr_t)base + 4095u) & ~(uintptr_t)4095u;
            uintptr_t end = ((uintptr_t)base + size) & ~(uintptr_t)4095u;
            if (end > start) madvise((void*)start, end - start, MADV_HUGEPAGE);
        }
    #else
        (void)base; (void)size;
    #endif
    }

    static void* fastrnn_malloc(void* ctx, size_t size) {
        void* base = NULL;
        (void)ctx;
        if (size > (size_t)-1 - FASTRNN_HDR) return NULL;
        if (size >= FASTRNN_REUSE_MIN) base = fastrnn_take(size);
        if (base == NULL) {
            base = fastrnn_new_block(size, 0);
            if (base == NULL) return NULL;
            fastrnn_advise(base, size + FASTRNN_HDR);
            fastrnn_count_fresh(size);
        }
        return (char*)base + FASTRNN_HDR;
    }

    static void* fastrnn_calloc(void* ctx, size_t n, size_t elsize) {
        /* A kept block, cleared: fresh zero pages cost a fault each on first
           touch, and a virtual machine's faults are slow (a zero-filled
           3.3 MB product output, 800 faults: 20 ms against 0.2 ms to clear). */
        size_t size;
        void* base = NULL;
        (void)ctx;
        if (elsize != 0 && n > ((size_t)-1 - FASTRNN_HDR) / elsize) return NULL;
        size = n * elsize;
        if (size >= FASTRNN_REUSE_MIN) base = fastrnn_take(size);
        if (base != NULL) {
            memset((char*)base + FASTRNN_HDR, 0, size);
            return (char*)base + FASTRNN_HDR;
        }
        base = fastrnn_new_block(size, 1);
        if (base == NULL) return NULL;
        fastrnn_advise(base, size + FASTRNN_HDR);
        fastrnn_count_fresh(size);
        return (char*)base + FASTRNN_HDR;
    }

    static void fastrnn_free(void* ctx, void* ptr, size_t size) {
        (void)ctx; (void)size;  /* the header's size, not NumPy's, decides */
        if (ptr != NULL) fastrnn_release((char*)ptr - FASTRNN_HDR);
    }

    static void* fastrnn_realloc(void* ctx, void* ptr, size_t new_size) {
        void* p;
        size_t old;
        if (ptr == NULL) return fastrnn_malloc(ctx, new_size);
        old = *(size_t*)((char*)ptr - FASTRNN_HDR);
        p = fastrnn_malloc(ctx, new_size);
        if (p == NULL) return NULL;  /* ptr stays valid, as realloc's contract says */
        memcpy(p, ptr, old < new_size ? old : new_size);
        fastrnn_free(ctx, ptr, old);
        return p;
    }

    static PyDataMem_Handler fastrnn_handler = {
        "fastrnn_reuse", 1,
        {NULL, fastrnn_malloc, fastrnn_calloc, fastrnn_realloc, fastrnn_free}
    };

    static int fastrnn_reuse_init(void) {
        if (fastrnn_lock == NULL) fastrnn_lock = PyThread_allocate_lock();
        return fastrnn_lock != NULL ? 0 : -1;
    }

    static void fastrnn_reuse_after_fork(void) {
        /* In the child, which has a new lock. If the parent's was held at the
           fork, a thread the child lacks was halfway through an update (the
           kernels take work buffers without the GIL, so any moment): the
           cache may list a block twice or half a removal, so it forgets its
           blocks (leaked in the child, never handed out twice). Else the
           cache is whole and the byte count is recounted. */
        int k;
        int whole = fastrnn_lock == NULL || PyThread_acquire_lock(fastrnn_lock, NOWAIT_LOCK);
        fastrnn_lock = PyThread_allocate_lock();
        if (!whole) {
            fastrnn_n = 0;
            fastrnn_in_use = fastrnn_peak = 0;
        }
        fastrnn_bytes = 0;
        for (k = 0; k < fastrnn_n; k++) fastrnn_bytes += fastrnn_cache[k].size;
    }

    static void fastrnn_hold_lock(int on) {  /* tests: a fork while it is held */
        if (fastrnn_lock == NULL) return;
        if (on) PyThread_acquire_lock(fastrnn_lock, WAIT_LOCK);
        else PyThread_release_lock(fastrnn_lock);
    }

    static size_t fastrnn_set_limit(size_t limit) {
        /* drop what no longer fits (all of it for 0, which also starts the
           count of the most in use at once anew); returns the bytes kept */
        void* evicted[FASTRNN_SLOTS];
        int n_evicted = 0, k;
        size_t kept;
        if (fastrnn_lock == NULL) return 0;
        PyThread_acquire_lock(fastrnn_lock, WAIT_LOCK);
        fastrnn_limit = limit;
        if (limit == 0) fastrnn_peak = fastrnn_in_use;
        while (fastrnn_n > 0 && fastrnn_bytes > limit)
            evicted[n_evicted++] = fastrnn_remove(0);
        kept = fastrnn_bytes;
        PyThread_release_lock(fastrnn_lock);
        for (k = 0; k < n_evicted; k++) fastrnn_free_block(evicted[k]);
        return kept;
    }

    /* The kernels' work buffers: 64-byte aligned, from the kept blocks when
       one fits (fresh memory faults, as NumPy's arrays did), back to them on
       fastrnn_work_free (NULL is a no-op). */
    static void* fastrnn_work_alloc(size_t size) { return fastrnn_malloc(NULL, size); }
    static void fastrnn_work_free(void* p) { fastrnn_free(NULL, p, 0); }

    static size_t fastrnn_cached_bytes(void) { return fastrnn_bytes; }
    static size_t fastrnn_bytes_in_use(void) { return fastrnn_in_use; }
    static size_t fastrnn_peak_in_use(void) { return fastrnn_peak; }
    static void fastrnn_set_hugepages(int on) { fastrnn_hugepages = on; }
    """
    ctypedef struct PyDataMem_Handler:
        pass
    PyDataMem_Handler fastrnn_handler
    int fastrnn_reuse_init() except -1
    void fastrnn_reuse_after_fork()
    void fastrnn_hold_lock(int on)
    size_t fastrnn_set_limit(size_t limit)
    size_t fastrnn_cached_bytes()
    size_t fastrnn_bytes_in_use()
    size_t fastrnn_peak_in_use()
    void fastrnn_set_hugepages(int on)
    void* fastrnn_work_alloc(size_t size) nogil
    void fastrnn_work_free(void* p) nogil
    size_t FASTRNN_REUSE_MIN


from cpython.pycapsule cimport PyCapsule_New

cdef extern from "numpy/arrayobject.h":
    object PyDataMem_SetHandler(object handler)

fastrnn_reuse_init()

#: The reusing allocator, as the capsule NumPy takes (see :func:`set_array_allocator`).
REUSE_HANDLER = PyCapsule_New(&fastrnn_handler, "mem_handler", NULL)

#: Freed blocks of at least this many bytes are kept for reuse.
REUSE_MIN_BYTES = FASTRNN_REUSE_MIN


def set_array_allocator(handler):
    """Make NumPy allocate array data in the current context (thread) through
    ``handler`` (``REUSE_HANDLER``, or a capsule this returned) and return the
    previous one, so that it can be restored.

    Not one of the six kernels: see :func:`fastrnn._memory.reuse_array_memory`.
    """
    return PyDataMem_SetHandler(handler)


def set_reuse_hugepages(bint on):
    """Whether fresh blocks of 4 MiB or more ask the kernel for transparent
    huge pages (``madvise``; Linux only), as NumPy's allocator does when its
    ``_get_madvise_hugepage()`` is true."""
    fastrnn_set_hugepages(on)


def set_reuse_limit(size_t limit):
    """Keep at most ``limit`` bytes of freed blocks (0: keep none, free all
    kept now); returns the bytes kept."""
    return fastrnn_set_limit(limit)


def reused_bytes():
    """Bytes of freed blocks kept for reuse now."""
    return fastrnn_cached_bytes()


def blocks_in_use():
    """``(now, most)``: bytes of blocks of at least :data:`REUSE_MIN_BYTES`
    handed out by the reusing allocator and not freed yet, now and at most at
    once since the kept blocks were last all dropped; the cache keeps no more
    than ``most``."""
    return fastrnn_bytes_in_use(), fastrnn_peak_in_use()


def _reuse_after_fork():
    fastrnn_reuse_after_fork()


def _hold_reuse_lock(bint on):
    """Take (``on``) or give back the allocator's lock, for a test of a fork
    that happens while another thread holds it."""
    fastrnn_hold_lock(on)


# --------------------------------------------------------------- tanh loops

# NumPy's 1-d inner-loop signature, declared callable without the GIL
ctypedef void (*_loop_fn)(char**, const cnp.npy_intp*, const cnp.npy_intp*,
                          void*) noexcept nogil


cdef void _libm_tanh_f(char** args, const cnp.npy_intp* dims,
                       const cnp.npy_intp* steps, void* data) noexcept nogil:
    cdef cnp.npy_intp k
    for k in range(dims[0]):
        (<float*>(args[1] + k * steps[1]))[0] = tanhf(
            (<float*>(args[0] + k * steps[0]))[0])


cdef void _libm_tanh_d(char** args, const cnp.npy_intp* dims,
                       const cnp.npy_intp* steps, void* data) noexcept nogil:
    cdef cnp.npy_intp k
    for k in range(dims[0]):
        (<double*>(args[1] + k * steps[1]))[0] = tanh(
            (<double*>(args[0] + k * steps[0]))[0])


cdef _loop_fn _tanh_loop_f = _libm_tanh_f
cdef _loop_fn _tanh_loop_d = _libm_tanh_d
cdef void* _tanh_data_f = NULL
cdef void* _tanh_data_d = NULL


cdef inline void _vtanh(const floating* x, floating* y,
                        Py_ssize_t n) noexcept nogil:
    """``y[:n] = tanh(x[:n])`` (``y`` may be ``x``) with the selected loop."""
    cdef char* args[2]
    cdef cnp.npy_intp dim = n
    cdef cnp.npy_intp steps[2]
    if n <= 0:
        return
    args[0] = <char*>x
    args[1] = <char*>y
    steps[0] = sizeof(floating)
    steps[1] = sizeof(floating)
    if floating is float:
        _tanh_loop_f(args, &dim, steps, _tanh_data_f)
    else:
        _tanh_loop_d(args, &dim, steps, _tanh_data_d)


def _probe_values(dtype):
    """Inputs on which the NumPy loop must reproduce ``np.tanh`` exactly."""
    rng = np.random.default_rng(0)
    special = [0.0, -0.0, 1e-30, -1e-30, 1e-8, 0.5, -0.5, 9.0, -9.0, 20.0, -20.0,
               1e5, -1e5, np.inf, -np.inf, np.nan]
    return np.concatenate([rng.normal(0.0, 3.0, 1021), special]).astype(dtype)


cdef str _select_numpy_tanh():
    """Point the tanh loops at NumPy's own; return a description of the choice."""
    global _tanh_loop_f, _tanh_loop_d, _tanh_data_f, _tanh_data_d
    cdef cnp.ufunc uf = np.tanh
    cdef int k, typenum
    cdef _loop_fn loops[2]
    cdef void* data[2]
    cdef cnp.ndarray x, y
    for slot, (typenum, dtype) in enumerate(
            [(cnp.NPY_FLOAT, np.float32), (cnp.NPY_DOUBLE, np.float64)]):
        # the first matching entry is the one np.tanh resolves to
        for k in range(uf.ntypes):
            if (uf.nin == 1 and uf.nout == 1 and uf.types[2 * k] == typenum
                    and uf.types[2 * k + 1] == typenum):
                break
        else:
            return f"libm (np.tanh has no {np.dtype(dtype).name} loop)"
        if uf.functions[k] == NULL:
            return "libm (np.tanh loop is NULL)"
        loops[slot] = <_loop_fn><void*>uf.functions[k]
        data[slot] = uf.data[k]
    # self-check: the loops must reproduce np.tanh bit for bit
    _tanh_loop_f, _tanh_loop_d = loops[0], loops[1]
    _tanh_data_f, _tanh_data_d = data[0], data[1]
    for dtype in (np.float32, np.float64):
        x = _probe_values(dtype)
        y = np.empty_like(x)
        if dtype == np.float32:
            _vtanh(<float*>cnp.PyArray_DATA(x), <float*>cnp.PyArray_DATA(y), x.shape[0])
        else:
            _vtanh(<double*>cnp.PyArray_DATA(x), <double*>cnp.PyArray_DATA(y),
                   x.shape[0])
        if y.tobytes() != np.tanh(x).tobytes():
            _tanh_loop_f, _tanh_loop_d = _libm_tanh_f, _libm_tanh_d
            _tanh_data_f = _tanh_data_d = NULL
            return "libm (NumPy's tanh loop did not reproduce np.tanh)"
    return "numpy"


#: Which ``tanh`` the kernels use: ``'numpy'`` (NumPy's SIMD inner loop, the
#: reference's own function) or ``'libm (reason)'`` for the scalar fallback.
TANH_SOURCE = _select_numpy_tanh()


# ------------------------------------------------------------------ helpers


cdef inline Py_ssize_t _n_active(const int64_t* lengths, Py_ssize_t B,
                                 Py_ssize_t t) noexcept nogil:
    """Number of samples active at step ``t``: ``lengths`` is non-increasing, so
    they are the prefix ``b < #{lengths > t}`` (binary search)."""
    cdef Py_ssize_t lo = 0, hi = B, mid
    while lo < hi:
        mid = (lo + hi) // 2
        if lengths[mid] > t:
            lo = mid + 1
        else:
            hi = mid
    return lo


cdef inline bint _first_step(const int64_t* lengths, Py_ssize_t b, Py_ssize_t t,
                             bint reverse) noexcept nogil:
    """Whether step ``t`` is sample ``b``'s first (its state before is the initial one)."""
    return t == lengths[b] - 1 if reverse else t == 0


cdef inline int _ld(Py_ssize_t n) noexcept nogil:
    """Leading dimension for BLAS: at least 1, even for an empty matrix."""
    return <int>n if n > 1 else 1


cdef void _gemm_rm(bint trans_a, bint trans_b, Py_ssize_t m, Py_ssize_t n,
                   Py_ssize_t k, const floating* a, Py_ssize_t lda,
                   const floating* b, Py_ssize_t ldb, floating beta,
                   floating* c, Py_ssize_t ldc) noexcept nogil:
    """Row-major ``c (m, n) = op(a) @ op(b) + beta * c``; ``op`` transposes when
    asked and ``lda``, ``ldb``, ``ldc`` are the row lengths in memory.

    Column-major BLAS sees every row-major matrix as its transpose, so it
    computes ``c.T (n, m) = op(b).T @ op(a).T``: the stored ``b`` is already
    ``b.T`` to it, hence ``'N'`` for an untransposed ``b`` (likewise ``a``)."""
    cdef int m_ = <int>m, n_ = <int>n, k_ = <int>k
    cdef int lda_ = _ld(lda), ldb_ = _ld(ldb), ldc_ = _ld(ldc)
    cdef floating alpha = 1
    cdef char *ta = b"T" if trans_a else b"N"
    cdef char *tb = b"T" if trans_b else b"N"
    if floating is float:
        sgemm(tb, ta, &n_, &m_, &k_, &alpha, <float*>b, &ldb_, <float*>a, &lda_,
              &beta, c, &ldc_)
    else:
        dgemm(tb, ta, &n_, &m_, &k_, &alpha, <double*>b, &ldb_, <double*>a, &lda_,
              &beta, c, &ldc_)


cdef void _matmul_nt(floating* c, const floating* a, const floating* w,
                     Py_ssize_t n, Py_ssize_t m, Py_ssize_t k,
                     floating beta) noexcept nogil:
    """``c (n, m) = a (n, k) @ w.T + beta * c`` with ``w`` (m, k), all C-contiguous;
    GEMV when ``n == 1`` (column-major: ``c = w.T.T @ a``, hence ``'T'``)."""
    cdef int m_ = <int>m, k_ = <int>k
    cdef int ldk = _ld(k), one = 1
    cdef floating alpha = 1
    cdef char *tr = b"T"
    if n == 1:
        if floating is float:
            sgemv(tr, &k_, &m_, &alpha, <float*>w, &ldk, <float*>a, &one,
                  &beta, c, &one)
        else:
            dgemv(tr, &k_, &m_, &alpha, <double*>w, &ldk, <double*>a, &one,
                  &beta, c, &one)
    else:
        _gemm_rm(False, True, n, m, k, a, k, w, k, beta, c, m)


cdef void _matmul_nn(floating* c, const floating* a, const floating* w,
                     Py_ssize_t n, Py_ssize_t m, Py_ssize_t k,
                     floating beta) noexcept nogil:
    """``c (n, m) = a (n, k) @ w + beta * c`` with ``w`` (k, m), all C-contiguous;
    GEMV when ``n == 1`` (column-major: ``c = w.T @ a``, hence ``'N'``)."""
    cdef int m_ = <int>m, k_ = <int>k
    cdef int ldm = _ld(m), one = 1
    cdef floating alpha = 1
    cdef char *nt = b"N"
    if n == 1:
        if floating is float:
            sgemv(nt, &m_, &k_, &alpha, <float*>w, &ldm, <float*>a, &one,
                  &beta, c, &one)
        else:
            dgemv(nt, &m_, &k_, &alpha, <double*>w, &ldm, <double*>a, &one,
                  &beta, c, &one)
    else:
        _gemm_rm(False, False, n, m, k, a, k, w, m, beta, c, m)


# ------------------------------------------ step products on packed panels

cdef extern from *:
    """
    /* The recurrent product of one step, h (m, k) @ B (k, n), with B the
       step's weights packed once per kernel call into panels of 32 columns:
       panel j holds columns 32j..32j+31 as k rows of 32 floats (zero-padded
       past n), so a step reads each weight once, in order, and BLAS's repacking
       of the weights at every call (~20% of an LSTM training step at B=32,
       H=128) is gone. float32 on AVX-512 only; the kernels fall back to BLAS
       elsewhere (FASTRNN_HAS_PANELS, fastrnn_panels_cpu()).

       A block of up to 8 rows by one panel keeps its 16 sums in registers
       over the whole k loop (in chunks of FASTRNN_KC, whose panel slice stays
       in L1): two loads and eight broadcasts per 16 fused multiply-adds; k
       is at least 1. One row alone (a GEMV) reads the panel with 8
       independent sums instead, to run at L2 speed, so a sample alone can
       differ in the last bits from the same sample in a batch (as BLAS's
       GEMV and GEMM do). */
    #include <stddef.h>
    #include <stdlib.h>
    /* An operand (k, w1 + w2) of the packed tn product, read in place: its
       row p is row q = idx[p] (q = p when idx is NULL) of `a` (w1 columns,
       rows w1 apart), followed, when w2 > 0, by the state h_{t-1} of that
       row's step t = q / nb and sample b = q % nb: out's row q - nb
       (forward) or q + nb (reverse), but h0's row b at the sample's first
       step (t = 0, or in reverse t = lengths[b] - 1); in reverse, a padding
       row of the last step takes out's own row q (zero past a sample's end,
       as its gate gradients are). */
    typedef struct {
        const int64_t* idx;
        const float* a;
        ptrdiff_t w1;
        const float* out;
        const float* h0;
        ptrdiff_t w2;
        const int64_t* lengths;
        ptrdiff_t nb;
        ptrdiff_t T;
        int reverse;
    } fastrnn_rows;

    /* floats of the panels of a (k, n) operand */
    static size_t fastrnn_panels_size(ptrdiff_t k, ptrdiff_t n) {
        return (size_t)((n + 31) / 32) * 32 * (size_t)k;
    }
    /* gcc 6 or clang 6 and later, for the AVX-512 target attribute and intrinsics
       (clang also says __GNUC__ 4) */
    #if defined(__x86_64__) && !defined(_WIN32) \
        && ((defined(__clang__) && __clang_major__ >= 6) \
            || (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 6))
    #define FASTRNN_HAS_PANELS 1
    #include <immintrin.h>
    #define FASTRNN_KC 256
    #define FASTRNN_MC 32
    #define FASTRNN_AVX512 __attribute__((target("avx512f,fma")))

    static int fastrnn_panels_cpu(void) {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
    }

    /* masks of the valid lanes of a panel's two halves, w columns left */
    FASTRNN_AVX512 static inline void fastrnn_panel_masks(ptrdiff_t w, __mmask16* m0,
                                                    __mmask16* m1) {
        *m0 = w >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << w) - 1u);
        *m1 = w >= 32 ? (__mmask16)0xFFFF
              : (w <= 16 ? (__mmask16)0 : (__mmask16)((1u << (w - 16)) - 1u));
    }

    /* float32 tanh of 16 lanes: the odd rational function of degree 13/6 of
       the Numba backend (fastrnn/_kernels/numba_kernels.py, _tanh_rational;
       error below 4e-7), on the input clamped to +-7.90531110763549805 and
       exactly +-1 from there on, so that a saturated gate's derivative is
       exactly 0; NaN stays NaN (max and min return their second operand when
       one is NaN). */
    FASTRNN_AVX512 __attribute__((always_inline)) static inline __m512
    fastrnn_tanh_ps(__m512 x) {
        const __m512 lim = _mm512_set1_ps(7.90531110763549805f);
        const __m512 nlim = _mm512_set1_ps(-7.90531110763549805f);
        x = _mm512_min_ps(lim, _mm512_max_ps(nlim, x));
        __m512 x2 = _mm512_mul_ps(x, x);
        __m512 p = _mm512_set1_ps(-2.76076847742355e-16f);
        p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(2.00018790482477e-13f));
        p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(-8.60467152213735e-11f));
        p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(5.12229709037114e-08f));
        p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(1.48572235717979e-05f));
        p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(6.37261928875436e-04f));
        p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(4.89352455891786e-03f));
        __m512 q = _mm512_set1_ps(1.19825839466702e-06f);
        q = _mm512_fmadd_ps(q, x2, _mm512_set1_ps(1.18534705686654e-04f));
        q = _mm512_fmadd_ps(q, x2, _mm512_set1_ps(2.26843463243900e-03f));
        q = _mm512_fmadd_ps(q, x2, _mm512_set1_ps(4.89352518554385e-03f));
        /* x p / q through 1/q: rcp14's estimate and one Newton step (error
           about 2^-28; a division of 16 lanes blocks its port for ~10 cycles) */
        __m512 inv = _mm512_rcp14_ps(q);
        inv = _mm512_mul_ps(inv, _mm512_fnmadd_ps(q, inv, _mm512_set1_ps(2.0f)));
        __m512 r = _mm512_mul_ps(_mm512_mul_ps(x, p), inv);
        r = _mm512_mask_mov_ps(r, _mm512_cmp_ps_mask(x, lim, _CMP_GE_OQ),
                               _mm512_set1_ps(1.0f));
        return _mm512_mask_mov_ps(r, _mm512_cmp_ps_mask(x, nlim, _CMP_LE_OQ),
                                  _mm512_set1_ps(-1.0f));
    }

    /* a panel row's end: v, plus c (acc), plus add, times scale (each when
       given), then, with amul and aadd, tanh(v) * amul + aadd (a sigmoid
       where they are 1/2 and the scale 1/2 too), stored in the row's valid
       lanes */
    FASTRNN_AVX512 __attribute__((always_inline)) static inline void
    fastrnn_panel_store_act(__m512 v0, __m512 v1, float* c, int acc, const float* add,
                            const float* scale, const float* amul, const float* aadd,
                            __mmask16 m0, __mmask16 m1) {
        if (acc) {
            v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, c));
            v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, c + 16));
        }
        if (add) {
            v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, add));
            v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, add + 16));
        }
        if (scale) {
            v0 = _mm512_mul_ps(v0, _mm512_maskz_loadu_ps(m0, scale));
            v1 = _mm512_mul_ps(v1, _mm512_maskz_loadu_ps(m1, scale + 16));
        }
        if (amul) {
            v0 = _mm512_fmadd_ps(fastrnn_tanh_ps(v0), _mm512_maskz_loadu_ps(m0, amul),
                                 _mm512_maskz_loadu_ps(m0, aadd));
            v1 = _mm512_fmadd_ps(fastrnn_tanh_ps(v1), _mm512_maskz_loadu_ps(m1, amul + 16),
                                 _mm512_maskz_loadu_ps(m1, aadd + 16));
        }
        _mm512_mask_storeu_ps(c, m0, v0);
        _mm512_mask_storeu_ps(c + 16, m1, v1);
    }

    /* fastrnn_panel_store_act without the activation */
    FASTRNN_AVX512 __attribute__((always_inline)) static inline void
    fastrnn_panel_store(__m512 v0, __m512 v1, float* c, int acc, const float* add,
                        const float* scale, __mmask16 m0, __mmask16 m1) {
        fastrnn_panel_store_act(v0, v1, c, acc, add, scale, NULL, NULL, m0, m1);
    }

    /* The register block of the panel and tn products: for r < mr <= 8,
       s0[r], s1[r] += the sums over p < k of x[r * xr + p * xp] times the 32
       floats at y + p * ldy: all 32 when y is padded (packed panels, read
       whole: masked loads made the S2-sized LSTM forward 10-15% slower),
       else the lanes of masks m0, m1 (zero elsewhere). Per p: two loads of y
       and mr broadcasts of x per 2 * mr fused multiply-adds. Inlined with mr
       and padded constants, so the sums stay in registers. */
    FASTRNN_AVX512 __attribute__((always_inline)) static inline void
    fastrnn_block_acc(const int mr, ptrdiff_t k, const float* x, ptrdiff_t xr,
                      ptrdiff_t xp, const float* y, ptrdiff_t ldy, const int padded,
                      __mmask16 m0, __mmask16 m1, __m512* s0, __m512* s1) {
        for (ptrdiff_t p = 0; p < k; p++) {
            __m512 y0 = padded ? _mm512_loadu_ps(y + p * ldy)
                               : _mm512_maskz_loadu_ps(m0, y + p * ldy);
            __m512 y1 = padded ? _mm512_loadu_ps(y + p * ldy + 16)
                               : _mm512_maskz_loadu_ps(m1, y + p * ldy + 16);
            for (int r = 0; r < mr; r++) {
                __m512 v = _mm512_set1_ps(x[r * xr + p * xp]);
                s0[r] = _mm512_fmadd_ps(v, y0, s0[r]);
                s1[r] = _mm512_fmadd_ps(v, y1, s1[r]);
            }
        }
    }

    /* fastrnn_block_acc from sums of zero */
    FASTRNN_AVX512 __attribute__((always_inline)) static inline void
    fastrnn_block_sums(const int mr, ptrdiff_t k, const float* x, ptrdiff_t xr,
                       ptrdiff_t xp, const float* y, ptrdiff_t ldy, const int padded,
                       __mmask16 m0, __mmask16 m1, __m512* s0, __m512* s1) {
        for (int r = 0; r < mr; r++) {
            s0[r] = _mm512_setzero_ps();
            s1[r] = _mm512_setzero_ps();
        }
        fastrnn_block_acc(mr, k, x, xr, xp, y, ldy, padded, m0, m1, s0, s1);
    }

    /* F(mr, args...) with mr = min(rows, 8) (rows >= 1) a constant, so that
       F's register block is compiled for each */
    #define FASTRNN_BY_ROWS(rows, F, ...) do {                              \
            switch ((rows) < 8 ? (rows) : 8) {                              \
            case 8: F(8, __VA_ARGS__); break;                               \
            case 7: F(7, __VA_ARGS__); break;                               \
            case 6: F(6, __VA_ARGS__); break;                               \
            case 5: F(5, __VA_ARGS__); break;                               \
            case 4: F(4, __VA_ARGS__); break;                               \
            case 3: F(3, __VA_ARGS__); break;                               \
            case 2: F(2, __VA_ARGS__); break;                               \
            default: F(1, __VA_ARGS__); break;                              \
            }                                                               \
        } while (0)

    /* c (mr, 32) (+)= [a1 | a2] (mr, k1 + k2) @ [bp1; bp2] (k1 + k2, 32), mr <= 8,
       then add, scale and the activation (see fastrnn_panel_store_act) */
    FASTRNN_AVX512 __attribute__((always_inline)) static inline void
    fastrnn_panel_block(const int mr, ptrdiff_t k1, const float* a1, ptrdiff_t lda1,
                  const float* bp1, ptrdiff_t k2, const float* a2, ptrdiff_t lda2,
                  const float* bp2, float* c, ptrdiff_t ldc, __mmask16 m0,
                  __mmask16 m1, int acc, const float* add, ptrdiff_t ldadd,
                  const float* scale, const float* amul, const float* aadd) {
        __m512 s0[8], s1[8];
        fastrnn_block_sums(mr, k1, a1, lda1, 1, bp1, 32, 1, m0, m1, s0, s1);
        fastrnn_block_acc(mr, k2, a2, lda2, 1, bp2, 32, 1, m0, m1, s0, s1);
        for (int i = 0; i < mr; i++)
            fastrnn_panel_store_act(s0[i], s1[i], c + i * ldc, acc,
                                    add ? add + i * ldadd : NULL, scale, amul, aadd,
                                    m0, m1);
    }

    /* one row: c (n) (+)= a (k) @ bp, then add, scale and the activation act
       (see fastrnn_sgemm_panels) */
    FASTRNN_AVX512 static void fastrnn_panel_row(ptrdiff_t n, ptrdiff_t k, const float* a,
                                                 const float* bp, float* c, int acc,
                                                 const float* add, const float* scale,
                                                 const float* act) {
        for (ptrdiff_t j0 = 0; j0 < n; j0 += 32) {
            __mmask16 m0, m1;
            fastrnn_panel_masks(n - j0, &m0, &m1);
            const float* pb = bp + j0 * k;
            __m512 s[8];
            for (int q = 0; q < 8; q++) s[q] = _mm512_setzero_ps();
            ptrdiff_t p = 0;
            for (; p + 4 <= k; p += 4) {
                for (int u = 0; u < 4; u++) {
                    __m512 x = _mm512_set1_ps(a[p + u]);
                    s[2 * u] = _mm512_fmadd_ps(x, _mm512_loadu_ps(pb + (p + u) * 32),
                                               s[2 * u]);
                    s[2 * u + 1] = _mm512_fmadd_ps(
                        x, _mm512_loadu_ps(pb + (p + u) * 32 + 16), s[2 * u + 1]);
                }
            }
            for (; p < k; p++) {
                __m512 x = _mm512_set1_ps(a[p]);
                s[0] = _mm512_fmadd_ps(x, _mm512_loadu_ps(pb + p * 32), s[0]);
                s[1] = _mm512_fmadd_ps(x, _mm512_loadu_ps(pb + p * 32 + 16), s[1]);
            }
            __m512 v0 = _mm512_add_ps(_mm512_add_ps(s[0], s[2]), _mm512_add_ps(s[4], s[6]));
            __m512 v1 = _mm512_add_ps(_mm512_add_ps(s[1], s[3]), _mm512_add_ps(s[5], s[7]));
            fastrnn_panel_store_act(v0, v1, c + j0, acc, add ? add + j0 : NULL,
                                    scale ? scale + j0 : NULL, act ? act + j0 : NULL,
                                    act ? act + n + j0 : NULL, m0, m1);
        }
    }

    /* c (m, n) = (A (m, k) @ B [+ c when acc] [+ add (m, n)]) [* scale (n)],
       A's first k1 columns in a (rows lda apart), the others in a2 (rows
       lda2 apart: a layer's [h | x_t] read where they lie, not copied into
       one row), the brackets where given (add rows ldadd apart), then, when act (2n)
       is given, tanh(c) * act[:n] + act[n:]; bp from fastrnn_pack_panels. The
       additions come in that order after the sum over k, so the result
       equals the product stored, then added to. The activation in the
       product's last pass over its block, in registers, spares a pass of
       tanh over the gates in memory. */
    FASTRNN_AVX512 static void fastrnn_sgemm_panels2(
            ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float* a, ptrdiff_t lda,
            ptrdiff_t k1, const float* a2, ptrdiff_t lda2,
            const float* bp, float* c, ptrdiff_t ldc, int acc, const float* add,
            ptrdiff_t ldadd, const float* scale, const float* act) {
        if (m == 1 && k1 >= k) {
            fastrnn_panel_row(n, k, a, bp, c, acc, add, scale, act);
            return;
        }
        for (ptrdiff_t p0 = 0; p0 < k; p0 += FASTRNN_KC) {
            ptrdiff_t kc = k - p0 < FASTRNN_KC ? k - p0 : FASTRNN_KC;
            int ac = acc || p0 > 0;
            int last = p0 + kc >= k;  /* add and scale at the end of the sum only */
            for (ptrdiff_t i0 = 0; i0 < m; i0 += FASTRNN_MC) {
                ptrdiff_t i1 = m - i0 < FASTRNN_MC ? m : i0 + FASTRNN_MC;
                for (ptrdiff_t j0 = 0; j0 < n; j0 += 32) {
                    __mmask16 m0, m1;
                    fastrnn_panel_masks(n - j0, &m0, &m1);
                    const float* pb = bp + j0 * k + p0 * 32;
                    /* the chunk's columns of a, then of a2 (either may be none) */
                    ptrdiff_t e1 = p0 + kc < k1 ? p0 + kc : k1;
                    ptrdiff_t k1c = e1 > p0 ? e1 - p0 : 0;
                    ptrdiff_t s2 = p0 > k1 ? p0 : k1;
                    ptrdiff_t k2c = p0 + kc > s2 ? p0 + kc - s2 : 0;
                    for (ptrdiff_t i = i0; i < i1; i += 8) {
                        const float* ai = a + i * lda + p0;
                        const float* a2i = k2c ? a2 + i * lda2 + (s2 - k1) : NULL;
                        float* ci = c + i * ldc + j0;
                        const float* ad = last && add ? add + i * ldadd + j0 : NULL;
                        const float* sc = last && scale ? scale + j0 : NULL;
                        const float* am = last && act ? act + j0 : NULL;
                        const float* aa = last && act ? act + n + j0 : NULL;
                        FASTRNN_BY_ROWS(i1 - i, fastrnn_panel_block, k1c, ai, lda, pb,
                                        k2c, a2i, lda2, bp + j0 * k + s2 * 32, ci,
                                        ldc, m0, m1, ac, ad, ldadd, sc, am, aa);
                    }
                }
            }
        }
    }
    /* c (mr, up to 32 columns) (+)= x.T @ y over k rows, x (k, mr) and y
       (k, up to 32) read in place, rows ldx and ldy apart; or, tr, its
       transpose into c's columns r (c[j * ldc + r]) */
    FASTRNN_AVX512 __attribute__((always_inline)) static inline void
    fastrnn_tn_block(const int mr, ptrdiff_t k, const float* x, ptrdiff_t ldx,
                     const float* y, ptrdiff_t ldy, float* c, ptrdiff_t ldc,
                     __mmask16 m0, __mmask16 m1, int acc, int tr, int padded) {
        __m512 s0[8], s1[8];
        fastrnn_block_sums(mr, k, x, 1, ldx, y, ldy, padded, m0, m1, s0, s1);
        if (!tr) {
            for (int r = 0; r < mr; r++)
                fastrnn_panel_store(s0[r], s1[r], c + r * ldc, acc, NULL, NULL, m0, m1);
            return;
        }
        /* 32-bit offsets: ldc < 32 on this path (see fastrnn_sgemm_tn) */
        const __m512i rows = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32((int)ldc));
        float* c1 = c + 16 * ldc;
        for (int r = 0; r < mr; r++) {
            if (acc) {
                s0[r] = _mm512_add_ps(s0[r], _mm512_mask_i32gather_ps(
                    _mm512_setzero_ps(), m0, rows, c + r, 4));
                s1[r] = _mm512_add_ps(s1[r], _mm512_mask_i32gather_ps(
                    _mm512_setzero_ps(), m1, rows, c1 + r, 4));
            }
            _mm512_mask_i32scatter_ps(c + r, m0, rows, s0[r], 4);
            _mm512_mask_i32scatter_ps(c1 + r, m1, rows, s1[r], 4);
        }
    }

    /* c (m, n) = a.T @ b (+ c when acc), a (k, m) and b (k, n) row-major with
       rows lda and ldb apart: the layers' weight gradients, sums over many
       rows (k) of small products, which BLAS runs at 40-90 GFLOP/s (S4: m =
       32 to 128, n = 8 or 32, k = 1568). Blocks of 8 columns of one operand
       by 32 of the other, the vectors along b's columns, or along a's when
       n < 32 and m > n (c then stored transposed), over chunks of
       FASTRNN_TN_KC rows, whose slices stay in L2 while every block runs
       over them. The sum over k runs in order within a chunk, the chunks
       added in order. */
    #define FASTRNN_TN_KC 256
    FASTRNN_AVX512 static void fastrnn_sgemm_tn(
            ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float* a, ptrdiff_t lda,
            const float* b, ptrdiff_t ldb, float* c, ptrdiff_t ldc, int acc) {
        int tr = n < 32 && m > n;
        /* x: the broadcast operand (its mx columns in blocks of 8), y: the
           loaded one (ny columns in blocks of 32) */
        const float* x = tr ? b : a;
        const float* y = tr ? a : b;
        ptrdiff_t ldx = tr ? ldb : lda, ldy = tr ? lda : ldb;
        ptrdiff_t mx = tr ? n : m, ny = tr ? m : n;
        for (ptrdiff_t p0 = 0; p0 < k; p0 += FASTRNN_TN_KC) {
            ptrdiff_t kc = k - p0 < FASTRNN_TN_KC ? k - p0 : FASTRNN_TN_KC;
            int ac = acc || p0 > 0;
            for (ptrdiff_t i = 0; i < mx; i += 8) {
                for (ptrdiff_t j0 = 0; j0 < ny; j0 += 32) {
                    __mmask16 m0, m1;
                    fastrnn_panel_masks(ny - j0, &m0, &m1);
                    const float* xi = x + p0 * ldx + i;
                    const float* yj = y + p0 * ldy + j0;
                    float* ci = tr ? c + j0 * ldc + i : c + i * ldc + j0;
                    FASTRNN_BY_ROWS(mx - i, fastrnn_tn_block, kc, xi, ldx, yj, ldy, ci, ldc,
                                    m0, m1, ac, tr, 0);
                }
            }
        }
    }

    /* row p of s: in place, or assembled in tmp (w1 + w2 floats) */
    static inline const float* fastrnn_row(const fastrnn_rows* s, ptrdiff_t p, float* tmp) {
        ptrdiff_t q = s->idx ? (ptrdiff_t)s->idx[p] : p;
        const float* h = NULL;
        if (s->w2 > 0) {
            ptrdiff_t t = q / s->nb, b = q % s->nb;
            if (!s->reverse)
                h = t == 0 ? s->h0 + b * s->w2 : s->out + (q - s->nb) * s->w2;
            else if (t == s->lengths[b] - 1)
                h = s->h0 + b * s->w2;
            else
                h = s->out + (t + 1 < s->T ? q + s->nb : q) * s->w2;
        }
        if (s->w1 == 0)
            return h;
        if (h == NULL)
            return s->a + q * s->w1;
        memcpy(tmp, s->a + q * s->w1, (size_t)s->w1 * sizeof(float));
        memcpy(tmp + s->w1, h, (size_t)s->w2 * sizeof(float));
        return tmp;
    }

    /* one row's w floats into blocks of `width` (8 or 32) columns, block i
       at dst + i * kc, its rows `width` apart, this row p of them; zeros past
       w: the 16 floats v of the row's columns i .. i + 15. */
    FASTRNN_AVX512 __attribute__((always_inline)) static inline void
    fastrnn_pack_group(__m512 v, ptrdiff_t i, ptrdiff_t w, const int width,
                       ptrdiff_t kc, ptrdiff_t p, float* dst) {
        if (width == 32) {
            _mm512_storeu_ps(dst + (i / 32) * 32 * kc + p * 32 + i % 32, v);
        } else {
            _mm256_storeu_ps(dst + i * kc + p * 8, _mm512_castps512_ps256(v));
            if (w - i > 8)
                _mm256_storeu_ps(dst + (i + 8) * kc + p * 8, _mm256_castpd_ps(
                    _mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
        }
    }

    /* rows p0 .. p0 + kc - 1 of s (w columns) into blocks of `width` (8 or
       32) columns, block i at dst + i * kc, its rows `width` apart, zeros
       past w; and, when sums (w) is given, their sum added to it. Four rows
       at a time (assembled, where they are, in tmp's four rows of w): the
       additions to sums then do not wait on each other row by row (with
       them, a row at a time made the whole product 1.2-1.35 times slower),
       and the product without sums took 0.85-1.0 of the time too. */
    FASTRNN_AVX512 static void fastrnn_pack_rows(const fastrnn_rows* s, ptrdiff_t p0,
                                                 ptrdiff_t kc, const int width,
                                                 float* dst, float* tmp, float* sums) {
        ptrdiff_t w = s->w1 + s->w2;
        int empty_half = width == 32 && (w % 32 != 0) && (w % 32) <= 16;
        for (ptrdiff_t p = 0; p < kc; p += 4) {
            int nr = kc - p < 4 ? (int)(kc - p) : 4;
            const float* r[4];
            for (int u = 0; u < nr; u++)
                r[u] = fastrnn_row(s, p0 + p + u, tmp + u * w);
            for (ptrdiff_t i = 0; i < w; i += 16) {
                __mmask16 mk = w - i >= 16 ? (__mmask16)0xFFFF
                               : (__mmask16)((1u << (w - i)) - 1u);
                __m512 sum = _mm512_setzero_ps();
                for (int u = 0; u < nr; u++) {
                    __m512 v = _mm512_maskz_loadu_ps(mk, r[u] + i);
                    fastrnn_pack_group(v, i, w, width, kc, p + u, dst);
                    sum = _mm512_add_ps(sum, v);
                }
                if (sums)
                    _mm512_mask_storeu_ps(sums + i, mk, _mm512_add_ps(
                        sum, _mm512_maskz_loadu_ps(mk, sums + i)));
            }
            if (empty_half)
                for (int u = 0; u < nr; u++)
                    _mm512_storeu_ps(dst + (w / 32) * 32 * kc + (p + u) * 32 + 16,
                                     _mm512_setzero_ps());
        }
    }

    /* c (m, n) = A.T @ B (+ c when acc) over k rows, A (k, m) and B (k, n)
       given by sa and sb (m and n their widths); sums (m), when given, gets
       A's column sums (added up four rows at a time, see fastrnn_pack_rows). The
       register blocks of fastrnn_sgemm_tn, for large products (an S3 LSTM
       slice's weight gradients are (3200, 512).T @ (3200, 160)): each chunk
       of FASTRNN_TNP_KC rows of both operands is first copied into blocks of
       8 columns of x and panels of 32 of y (x and y as in fastrnn_sgemm_tn),
       so that a block's sums read both in order (in place, a block of x is
       32 bytes of each of its rows, a whole row of a apart), then every
       block runs over the chunk, one panel of y staying in L1 while the
       blocks of x go past it. The sums as fastrnn_sgemm_tn's, in chunks of
       192 rows (S3 and S6 steps took 0.94-1.01 of their time with chunks of
       256). Returns 0 (nothing done) when the work memory cannot be had. */
    #define FASTRNN_TNP_KC 192
    FASTRNN_AVX512 static int fastrnn_tn_rows(ptrdiff_t k, const fastrnn_rows* sa,
                                              const fastrnn_rows* sb, float* c,
                                              ptrdiff_t ldc, int acc, float* sums) {
        ptrdiff_t m = sa->w1 + sa->w2, n = sb->w1 + sb->w2;
        int tr = n < 32 && m > n;
        const fastrnn_rows* sx = tr ? sb : sa;
        const fastrnn_rows* sy = tr ? sa : sb;
        ptrdiff_t mx = tr ? n : m, ny = tr ? m : n;
        ptrdiff_t kc0 = k < FASTRNN_TNP_KC ? k : FASTRNN_TNP_KC;
        ptrdiff_t mx8 = (mx + 7) / 8 * 8, ny32 = (ny + 31) / 32 * 32;
        float* px = (float*)fastrnn_work_alloc((size_t)(kc0 * mx8) * sizeof(float));
        float* py = (float*)fastrnn_work_alloc((size_t)(kc0 * ny32) * sizeof(float));
        /* four rows of either operand (see fastrnn_pack_rows) */
        float* tmp = (float*)fastrnn_work_alloc((size_t)(4 * (mx + ny)) * sizeof(float));
        if (px == NULL || py == NULL || tmp == NULL) {
            fastrnn_work_free(px);
            fastrnn_work_free(py);
            fastrnn_work_free(tmp);
            return 0;
        }
        if (sums)
            memset(sums, 0, (size_t)m * sizeof(float));
        for (ptrdiff_t p0 = 0; p0 < k; p0 += FASTRNN_TNP_KC) {
            ptrdiff_t kc = k - p0 < FASTRNN_TNP_KC ? k - p0 : FASTRNN_TNP_KC;
            int ac = acc || p0 > 0;
            fastrnn_pack_rows(sx, p0, kc, 8, px, tmp, tr ? NULL : sums);
            fastrnn_pack_rows(sy, p0, kc, 32, py, tmp, tr ? sums : NULL);
            for (ptrdiff_t j0 = 0; j0 < ny; j0 += 32) {
                __mmask16 m0, m1;
                fastrnn_panel_masks(ny - j0, &m0, &m1);
                for (ptrdiff_t i = 0; i < mx; i += 8) {
                    float* ci = tr ? c + j0 * ldc + i : c + i * ldc + j0;
                    FASTRNN_BY_ROWS(mx - i, fastrnn_tn_block, kc, px + i * kc, 8,
                                    py + j0 * kc, 32, ci, ldc, m0, m1, ac, tr, 1);
                }
            }
        }
        fastrnn_work_free(px);
        fastrnn_work_free(py);
        fastrnn_work_free(tmp);
        return 1;
    }

    FASTRNN_AVX512 static void fastrnn_pack_avx512(const float* w, ptrdiff_t k,
                                                   ptrdiff_t n, int transposed,
                                                   float* bp) {
        const __m512i rows = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32((int)k));
        for (ptrdiff_t j0 = 0; j0 < n; j0 += 32) {
            __mmask16 m0, m1;
            fastrnn_panel_masks(n - j0, &m0, &m1);
            float* dst = bp + j0 * k;
            for (ptrdiff_t p = 0; p < k; p++) {
                __m512 v0, v1;
                if (transposed) {  /* w[j0 + j, p] is at src[j * k] */
                    const float* src = w + j0 * k + p;
                    v0 = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m0, rows, src, 4);
                    v1 = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m1, rows,
                                                  src + 16 * k, 4);
                } else {
                    v0 = _mm512_maskz_loadu_ps(m0, w + p * n + j0);
                    v1 = _mm512_maskz_loadu_ps(m1, w + p * n + j0 + 16);
                }
                _mm512_store_ps(dst + p * 32, v0);
                _mm512_store_ps(dst + p * 32 + 16, v1);
            }
        }
    }

    /* 64-byte aligned panels of B (k, n): B = w.T for w (n, k) when
       transposed, else B = w (k, n); both C-contiguous. NULL if out of memory
       (or, transposed, k too large for the gather's 32-bit offsets): the
       kernels then keep BLAS. fastrnn_work_free() releases them.
       A transposed panel row gathers one column of 32 rows of w (the plain
       scalar loop took 44 us for 512 x 128, 16% of an S1 LSTM call). */
    static float* fastrnn_pack_panels(const float* w, ptrdiff_t k, ptrdiff_t n,
                                      int transposed) {
        void* mem = NULL;
        size_t size = fastrnn_panels_size(k, n) * sizeof(float);
        if (transposed && k > 0x7FFFFFF) return NULL;
        mem = fastrnn_work_alloc(size > 0 ? size : 64);
        if (mem == NULL) return NULL;
        fastrnn_pack_avx512(w, k, n, transposed, (float*)mem);
        return (float*)mem;
    }
    #else
    #define FASTRNN_HAS_PANELS 0
    static int fastrnn_panels_cpu(void) { return 0; }
    static void fastrnn_sgemm_panels2(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k,
                                      const float* a, ptrdiff_t lda, ptrdiff_t k1,
                                      const float* a2, ptrdiff_t lda2, const float* bp,
                                      float* c, ptrdiff_t ldc, int acc, const float* add,
                                      ptrdiff_t ldadd, const float* scale,
                                      const float* act) { abort(); }
    static float* fastrnn_pack_panels(const float* w, ptrdiff_t k, ptrdiff_t n,
                                      int transposed) { abort(); }
    static void fastrnn_sgemm_tn(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float* a,
                                 ptrdiff_t lda, const float* b, ptrdiff_t ldb,
                                 float* c, ptrdiff_t ldc, int acc) { abort(); }
    static int fastrnn_tn_rows(ptrdiff_t k, const fastrnn_rows* sa, const fastrnn_rows* sb,
                               float* c, ptrdiff_t ldc, int acc, float* sums) { abort(); }
    #endif

    /* fastrnn_sgemm_panels2 with all of A's columns in a */
    static void fastrnn_sgemm_panels(
            ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float* a, ptrdiff_t lda,
            const float* bp, float* c, ptrdiff_t ldc, int acc, const float* add,
            ptrdiff_t ldadd, const float* scale, const float* act) {
        fastrnn_sgemm_panels2(m, n, k, a, lda, k, NULL, 0, bp, c, ldc, acc, add, ldadd,
                              scale, act);
    }

    /* fastrnn_sgemm_tn's product on fastrnn_tn_rows, a (k, m) and b (k, n)
       C-contiguous */
    static int fastrnn_sgemm_tn_packed(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k,
                                       const float* a, const float* b, float* c,
                                       int acc) {
        fastrnn_rows sa = {NULL, a, m, NULL, NULL, 0, NULL, 1, 1, 0};
        fastrnn_rows sb = {NULL, b, n, NULL, NULL, 0, NULL, 1, 1, 0};
        return fastrnn_tn_rows(k, &sa, &sb, c, n, acc, NULL);
    }


    """
    const int FASTRNN_HAS_PANELS
    int fastrnn_panels_cpu() nogil
    void fastrnn_sgemm_panels(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const float* a,
                              Py_ssize_t lda, const float* bp, float* c, Py_ssize_t ldc,
                              int acc, const float* add, Py_ssize_t ldadd,
                              const float* scale, const float* act) nogil
    void fastrnn_sgemm_panels2(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const float* a,
                               Py_ssize_t lda, Py_ssize_t k1, const float* a2,
                               Py_ssize_t lda2, const float* bp, float* c, Py_ssize_t ldc,
                               int acc, const float* add, Py_ssize_t ldadd,
                               const float* scale, const float* act) nogil
    float* fastrnn_pack_panels(const float* w, Py_ssize_t k, Py_ssize_t n,
                               int transposed) nogil
    void fastrnn_sgemm_tn(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const float* a,
                          Py_ssize_t lda, const float* b, Py_ssize_t ldb, float* c,
                          Py_ssize_t ldc, int acc) nogil
    int fastrnn_sgemm_tn_packed(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const float* a,
                                const float* b, float* c, int acc) nogil
    ctypedef struct fastrnn_rows:
        const int64_t* idx
        const float* a
        Py_ssize_t w1
        const float* out
        const float* h0
        Py_ssize_t w2
        const int64_t* lengths
        Py_ssize_t nb
        Py_ssize_t T
        int reverse
    int fastrnn_tn_rows(Py_ssize_t k, const fastrnn_rows* sa, const fastrnn_rows* sb,
                        float* c, Py_ssize_t ldc, int acc, float* sums) nogil


#: Whether this build and CPU can run the step products on packed panels
#: (float32, x86-64 with AVX-512, gcc or clang).
PANELS_AVAILABLE = bool(FASTRNN_HAS_PANELS and fastrnn_panels_cpu())
# on where available, unless the environment says FASTRNN_PANELS=0
cdef bint _panels_on = PANELS_AVAILABLE and os.environ.get("FASTRNN_PANELS", "1").strip() != "0"


def set_panel_products(bint on):
    """Run float32 step products on packed panels (when :data:`PANELS_AVAILABLE`),
    and :func:`gemm`'s small weight-gradient products on its AVX-512 kernel,
    or both through BLAS; returns the previous setting. For tests and
    measurements: the kernels read it once per call. ``FASTRNN_PANELS=0`` in
    the environment turns them off from the start."""
    global _panels_on
    cdef bint was = _panels_on
    _panels_on = on and PANELS_AVAILABLE
    return was


def panel_products():
    """Whether the float32 step products run on packed panels now (and
    :func:`gemm`'s small weight-gradient products on its own kernel)."""
    return bool(_panels_on)


def panel_matmul(const float[:, ::1] a, const float[:, ::1] w, bint transposed,
                 float[:, ::1] out=None, const float[:, ::1] add=None,
                 const float[::1] scale=None, const float[:, ::1] act=None,
                 const float[:, ::1] a2=None):
    """``a @ w.T`` (``transposed``) or ``a @ w`` through the panel product, for
    tests: one packing, one product, added to ``out`` when given (else into a
    new array), then plus ``add`` (same shape as the result) and times
    ``scale`` (one entry per column) when given, then, with ``act`` (2, n),
    ``tanh(.) * act[0] + act[1]`` by the product's own float32 tanh. With
    ``a2`` (m, k2), the left operand is ``[a | a2]``, read from both arrays
    (as the forwards read ``[h | x_t]``). Needs :data:`PANELS_AVAILABLE`."""
    if not PANELS_AVAILABLE:
        raise RuntimeError("panel products need float32 AVX-512 and gcc or clang")
    cdef Py_ssize_t m = a.shape[0], k1 = a.shape[1]
    cdef Py_ssize_t k = k1 + (a2.shape[1] if a2 is not None else 0)
    cdef Py_ssize_t n = w.shape[0] if transposed else w.shape[1]
    if a2 is not None and (a2.shape[0] != m or a2.shape[1] == 0 or k1 == 0):
        raise ValueError(f"panel_matmul: a2 ({a2.shape[0]}, {a2.shape[1]}) beside a "
                         f"({m}, {k1})")
    if (w.shape[1] if transposed else w.shape[0]) != k or m == 0 or k == 0 or n == 0:
        raise ValueError(f"panel_matmul: shapes ({m}, {k}) and "
                         f"({w.shape[0]}, {w.shape[1]}), transposed={transposed}")
    cdef bint acc = out is not None
    if acc:
        _expect("out", out.shape, 2, m, n)
    else:
        out = np.empty((m, n), np.float32)
    if add is not None:
        _expect("add", add.shape, 2, m, n)
    if scale is not None:
        _expect("scale", scale.shape, 1, n)
    if act is not None:
        _expect("act", act.shape, 2, 2, n)
    cdef const float* act_p = &act[0, 0] if act is not None else NULL
    cdef const float* add_p = &add[0, 0] if add is not None else NULL
    cdef const float* scale_p = &scale[0] if scale is not None else NULL
    cdef float* bp = fastrnn_pack_panels(&w[0, 0], k, n, transposed)
    if bp == NULL:
        raise MemoryError("cannot allocate the packed weights")
    with nogil:
        fastrnn_sgemm_panels2(m, n, k, &a[0, 0], k1, k1, &a2[0, 0] if a2 is not None else NULL,
                              a2.shape[1] if a2 is not None else 0, bp, &out[0, 0], n, acc,
                              add_p, n, scale_p, act_p)
    _release(bp)
    return np.asarray(out)


cdef enum:
    # Step products ``h (nb, R) @ W_hh.T`` go through a transposed copy of
    # ``W_hh`` (see _step_product) below this many multiply-adds...
    _TRANSPOSED_GEMM_BELOW = 1 << 20
    # ...or, for one sample (a GEMV), below this many weights...
    _TRANSPOSED_GEMV_BELOW = 1 << 16
    # ...in calls of at least this many steps, which pay for the copy (or
    # the panels).
    _PREPARED_MIN_STEPS = 8
    # A single row's product runs on the panels up to this many weights
    # (1 MiB of float32; see _on_panels).
    _PANEL_GEMV_MAX_WEIGHTS = 1 << 18
    # The forwards fuse the input projection into their steps for batches of
    # at least this many samples (see _forward_input).
    _FUSED_MIN_ROWS = 2
    # gemm's products a.T @ b (the weight gradients) of float32 run on
    # fastrnn_sgemm_tn (when the panels are on) up to this many multiply-adds,
    _TN_MAX_MACS = 1 << 23
    # or, with BLAS held on one thread, up to this many outputs (m * n) of
    # rows of up to _TN_ONE_THREAD_MAX_M (the gradients' side, a.T's rows)
    _TN_ONE_THREAD_MAX_OUT = 1 << 14
    _TN_ONE_THREAD_MAX_M = 256


cdef inline bint _use_transposed(Py_ssize_t nb, Py_ssize_t G, Py_ssize_t R) noexcept nogil:
    if nb == 1:
        return G * R < _TRANSPOSED_GEMV_BELOW
    return nb * G * R < _TRANSPOSED_GEMM_BELOW


cdef floating* _transposed_weights(const floating* w, Py_ssize_t G, Py_ssize_t R,
                                   const int64_t* lengths, Py_ssize_t B) except? NULL:
    """A row-major copy of ``w.T`` (``w`` is (G, R)) when some step over ``B``
    samples of (sorted) ``lengths`` will use it, with ``nb_min`` (the samples
    active at the longest one's last step, at least 1) to ``B`` samples; else
    NULL.

    Whether a step uses the copy depends on its number of samples and on the
    call's length, so in float32 a sequence run in several calls (eval mode's
    blocks of steps) can differ from one call over it in the last bit of some
    values; the same call always gives the same result."""
    cdef Py_ssize_t i0, j0, i, j, i1, j1
    cdef Py_ssize_t nb_min = _n_active(lengths, B, lengths[0] - 1)
    if not (_use_transposed(nb_min, G, R)
            or (nb_min == 1 and B > 1 and _use_transposed(2, G, R))):
        return NULL
    cdef floating* wt = <floating*>_alloc(G * R, sizeof(floating))
    with nogil:
        # in 16 x 16 tiles: both sides stay in L1, and a tile's 16 rows, 2^k
        # bytes apart for the usual sizes, do not all land in one cache set
        for i0 in range(0, G, 16):
            i1 = min(i0 + 16, G)
            for j0 in range(0, R, 16):
                j1 = min(j0 + 16, R)
                for j in range(j0, j1):
                    for i in range(i0, i1):
                        wt[j * G + i] = w[i * R + j]
    return wt


cdef struct _StepWeights:
    # what a kernel call prepares once from W_hh for its step products:
    void* data    # NULL (BLAS on W_hh itself), or
    bint panels   # float32 panels (fastrnn_pack_panels) if set, else W_hh.T row-major.
                  # A fused forward's panels hold [W_hh | W_ih].T instead (see
                  # _StepInput): only _input_step may use those.


cdef inline bint _on_panels(Py_ssize_t nb, Py_ssize_t G, Py_ssize_t R) noexcept nogil:
    """Whether a step's product over ``nb`` rows and the (G, R) weights runs on
    the prepared panels: always for several rows; for one (a GEMV, which reads
    every weight once) only while the weights fit a core's L2 cache. Beyond
    that BLAS is as fast on one thread, and on two it splits the weights over
    both cores' caches (B=1, 4 MiB of weights: 40 us a step on two threads
    against 143-149 us on one, BLAS or panels alike)."""
    return nb > 1 or G * R <= _PANEL_GEMV_MAX_WEIGHTS


cdef bint _panel_weights(_StepWeights* sw, const floating* w, Py_ssize_t G,
                         Py_ssize_t R, Py_ssize_t B, bint transposed) noexcept:
    """Pack ``w`` (G, R) into ``sw`` as panels of ``w.T`` (``transposed``, for
    the forward) or of ``w`` when the panels are on, the dtype float32 and some
    step over up to ``B`` rows would use them; whether it did (a failed packing
    leaves BLAS, as without panels)."""
    if floating is float:
        if _panels_on and _on_panels(B, G, R):
            if transposed:
                sw.data = fastrnn_pack_panels(w, R, G, 1)
            else:
                sw.data = fastrnn_pack_panels(w, G, R, 0)
            sw.panels = sw.data != NULL
            return sw.panels
    return False


cdef int _forward_weights(_StepWeights* sw, const floating* w, Py_ssize_t G,
                          Py_ssize_t R, const int64_t* lengths, Py_ssize_t B,
                          Py_ssize_t T) except -1:
    """Prepare ``w`` (G, R) for the forward's products ``h @ w.T`` of a call of
    ``T`` steps: panels of ``w.T`` (float32, when on), else maybe a transposed
    copy (:func:`_transposed_weights`). ``_release(sw.data)`` releases it. As with
    the copy, the choice depends on the call's length, so in float32 a
    sequence run in blocks of steps can differ in the last bit from one call
    over it."""
    sw.data = NULL
    sw.panels = False
    if T < _PREPARED_MIN_STEPS:
        return 0
    if not _panel_weights(sw, w, G, R, B, True):
        sw.data = _transposed_weights(w, G, R, lengths, B)
    return 0


cdef int _backward_weights(_StepWeights* sw, const floating* w, Py_ssize_t G,
                           Py_ssize_t R, Py_ssize_t B, Py_ssize_t T) except -1:
    """Prepare ``w`` (G, R) for the backward's products ``dg @ w`` of a call of
    ``T`` steps over ``B`` samples: panels of ``w`` (float32, when on), else
    nothing."""
    sw.data = NULL
    sw.panels = False
    if T >= _PREPARED_MIN_STEPS:
        _panel_weights(sw, w, G, R, B, False)
    return 0


cdef inline bint _step_product(floating* c, const floating* h, const floating* w,
                               const _StepWeights* sw, Py_ssize_t nb, Py_ssize_t G,
                               Py_ssize_t R, const floating* add,
                               const floating* scale, bint acc=False,
                               const floating* act=NULL) noexcept nogil:
    """``c (nb, G) = h (nb, R) @ w.T``, the recurrent product of one step; on the
    panels, and then also ``(c + add) * scale`` (``add`` (nb, G), ``scale`` (G,),
    either NULL) and, with ``act`` (2G), ``tanh(c) * act[:G] + act[G:]``,
    returning True; else False, and the caller adds, scales and activates.

    On panels when prepared so; else through the transposed copy when given
    and the product is small. Measured inside the forward kernels (T = 100,
    float32, SciPy's OpenBLAS 0.3.30 on AVX-512, the copy included): the 'N'
    form took 0.23 to 0.85 of the time for B in 4..64 and H in 32..128 below
    2^20 multiply-adds per step, and no less above; a GEMV gained below 2^16
    weights (0.7 to 0.9) and lost from there (LSTM H=128: 1.06, RNN H=256:
    1.16). The backward's ``dg @ w`` through BLAS is fastest as it is."""
    if nb == 0:
        return True
    if floating is float:
        if sw.panels and _on_panels(nb, G, R):
            fastrnn_sgemm_panels(nb, G, R, h, R, <const float*>sw.data, c, G, acc,
                                 add, G, scale, act)
            return True
    cdef floating beta = 1 if acc else 0
    if sw.data != NULL and not sw.panels and _use_transposed(nb, G, R):
        _matmul_nn(c, h, <const floating*>sw.data, nb, G, R, beta)
    else:
        _matmul_nt(c, h, w, nb, G, R, beta)
    return False


cdef inline void _back_product(floating* c, const floating* dg, const floating* w,
                               const _StepWeights* sw, Py_ssize_t nb, Py_ssize_t R,
                               Py_ssize_t G, bint accumulate) noexcept nogil:
    """``c (nb, R) = dg (nb, G) @ w`` (``w`` is (G, R)), plus ``c`` when
    ``accumulate``: the backward's product of one step, on panels when prepared."""
    cdef floating beta = 1 if accumulate else 0
    if nb == 0:
        return
    if floating is float:
        if sw.panels and _on_panels(nb, G, R):
            fastrnn_sgemm_panels(nb, R, G, dg, G, <const float*>sw.data, c, R, accumulate,
                                 NULL, 0, NULL, NULL)
            return
    _matmul_nn(c, dg, w, nb, R, G, beta)


cdef struct _StepInput:
    # A forward call's input terms ``x_t @ W_ih.T + bias``, set up once by
    # _forward_input, in one of two ways.
    # Unfused: every step's terms, from one GEMM over all steps.
    void* gx            # (T, B, G), the caller's array; NULL when fused
    # Fused (float32 panels): each step multiplies the rows [h_{t-1} | x_t],
    # read where they lie, by the panels of [W_hh | W_ih].T (the
    # _StepWeights' data), for the first ``fused`` gate columns; the GRU's n
    # columns, past ``fused``, have a panel set for W_hh's rows and one for
    # W_ih's.
    Py_ssize_t fused    # 0 when unfused
    void* h_panels      # NULL unless fused < G
    void* x_panels
    const void* x       # (T, B, D), each step's rows contiguous, xts items apart
    const void* bias    # (G,)
    Py_ssize_t D
    Py_ssize_t xts


cdef inline bint _fuses(Py_ssize_t fused, Py_ssize_t T, Py_ssize_t B) noexcept nogil:
    """Whether a float32 forward call of ``T`` steps over ``B`` samples fuses
    its input projection into its steps (see _forward_input): ``fused`` > 0
    columns asked for, the panels on, at least _PREPARED_MIN_STEPS steps and
    _FUSED_MIN_ROWS samples."""
    return (fused > 0 and _panels_on and T >= _PREPARED_MIN_STEPS
            and B >= _FUSED_MIN_ROWS)


cdef object _forward_input(_StepInput* si, _StepWeights* sw, const floating* x,
                           Py_ssize_t xts, const floating* w_ih, const floating* bias,
                           const floating* w_hh, Py_ssize_t T, Py_ssize_t B,
                           Py_ssize_t D, Py_ssize_t G, Py_ssize_t R,
                           const int64_t* lengths, floating* dest,
                           Py_ssize_t fused):
    """Prepare a forward call's step products: the recurrent weights in ``sw``
    and the input terms in ``si``. ``_free_input`` releases both, except the
    array returned, which the caller keeps for the call (None when there is
    none).

    Fused (float32 and :func:`_fuses`): each step multiplies the rows
    ``[h_{t-1} | x_t]`` by the first ``fused`` columns of ``[W_hh | W_ih].T``
    in one product, whose epilogue adds the bias; the other columns (the
    GRU's n, whose two terms stay apart) get one panel set for ``h`` and one
    for ``x``. The (T, B, G) terms are then never written nor read back. One
    S2 slice (LSTM, B=128, T=100, D=32, H=128, one thread): 0.73 of the time
    of the GEMM over all steps followed by the kernel (the product grows from
    K=128 to 160; the GEMM wrote 26 MB that the steps read back); 0.88 at
    B=32; at B=1 not faster (LSTM 0.97, RNN 1.12), hence the batch minimum.
    Otherwise one GEMM over all steps writes them into ``dest`` (T, B, G),
    the caller's ``out`` or ``gates``; or, when ``dest`` is NULL, into a new
    NumPy array, returned, so that the layers' memory reuse
    (:mod:`fastrnn._memory`) serves it as it served the layers' own. Out of
    memory for the packed weights, it raises MemoryError."""
    cdef Py_ssize_t K = R + D, i, r0, r1, n = T * B
    cdef floating* w_cat
    cdef cnp.ndarray terms = None
    si.gx = si.h_panels = si.x_panels = NULL
    si.fused = 0
    si.x = x
    si.xts = xts
    si.bias = bias
    si.D = D
    sw.data = NULL
    sw.panels = False
    if floating is float:
        if _fuses(fused, T, B):
            w_cat = <floating*>_alloc(fused * K, sizeof(floating))
            with nogil:
                for i in range(fused):
                    _copy(w_cat + i * K, w_hh + i * R, R)
                    _copy(w_cat + i * K + R, w_ih + i * D, D)
                sw.data = fastrnn_pack_panels(w_cat, K, fused, 1)
                if fused < G:
                    si.h_panels = fastrnn_pack_panels(w_hh + fused * R, R, G - fused, 1)
                    si.x_panels = fastrnn_pack_panels(w_ih + fused * D, D, G - fused, 1)
            _release(w_cat)
            if sw.data == NULL or (fused < G and (si.h_panels == NULL
                                                  or si.x_panels == NULL)):
                raise MemoryError("cannot allocate the packed weights")
            sw.panels = True
            si.fused = fused
            return None
    if dest == NULL:
        terms = np.empty((T, B, G), np.float32 if floating is float else np.float64)
        dest = <floating*>cnp.PyArray_DATA(terms)
    _forward_weights(sw, w_hh, G, R, lengths, B, T)
    si.gx = dest
    with nogil:
        for i in range(n):
            _copy(dest + i * G, bias, G)
        if xts == B * D:
            # in row blocks that BLAS's 32-bit sizes can hold
            for r0 in range(0, n, 1 << 30):
                r1 = min(n, r0 + (1 << 30))
                _gemm_rm(False, True, r1 - r0, G, D, x + r0 * D, D, w_ih, D, 1,
                         dest + r0 * G, G)
        else:  # x's steps lie apart: one product per step
            for i in range(T):
                _gemm_rm(False, True, B, G, D, x + i * xts, D, w_ih, D, 1,
                         dest + i * B * G, G)
    return terms


cdef void _free_input(_StepInput* si, _StepWeights* sw) noexcept:
    _release(sw.data)
    _release(si.h_panels)
    _release(si.x_panels)
    sw.data = si.h_panels = si.x_panels = si.gx = NULL
    sw.panels = False


cdef inline bint _input_step(floating* c, const floating* h, const floating* w,
                             const _StepWeights* sw, const _StepInput* si,
                             Py_ssize_t t, Py_ssize_t B, Py_ssize_t nb, Py_ssize_t G,
                             Py_ssize_t R, const floating* scale,
                             const floating* act=NULL, Py_ssize_t b0=0) noexcept nogil:
    """``c (nb, G) = (h (nb, R) @ w.T + x_t @ W_ih.T + bias) * scale``: the
    pre-activations of step ``t``'s active rows, times ``scale`` (G,) when
    given. ``c`` may be the step's rows of ``si.gx`` itself (then replaced).
    Fused, only the first ``si.fused`` columns (the GRU's r and z: see
    gru_forward for its n). Returns True where the product on the panels
    also applied the activation ``act`` (2G, see :func:`_step_product`;
    float32 only), or there are no active rows; False where the caller is to
    activate them. ``c`` and ``h`` are the rows from ``b0`` on of the ``B``
    samples, whose input terms start at row ``b0`` too."""
    cdef Py_ssize_t b, k, K = R + si.D
    cdef const floating* gt
    cdef const floating* add
    cdef floating v
    cdef bint in_place
    if nb == 0:
        return True
    if floating is float:
        if si.fused > 0:
            # [h | x_t] read where they lie: the step's x rows are contiguous
            fastrnn_sgemm_panels2(nb, si.fused, K, h, R, R,
                                  <const float*>si.x + t * si.xts + b0 * si.D, si.D,
                                  <const float*>sw.data, c, G, 0,
                                  <const float*>si.bias, 0, scale, <const float*>act)
            return act != NULL
    gt = <const floating*>si.gx + (t * B + b0) * G
    in_place = gt == c
    add = gt
    if in_place:
        add = NULL
    if _step_product(c, h, w, sw, nb, G, R, add, scale, in_place, act):
        return act != NULL
    for b in range(nb):
        for k in range(G):
            v = c[b * G + k] if in_place else gt[b * G + k] + c[b * G + k]
            c[b * G + k] = v * scale[k] if scale != NULL else v
    return False


cdef enum:
    _TN_BLAS = 0
    _TN_IN_PLACE = 1
    _TN_PACKED = 2


cdef inline int _tn_path(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                         bint one_thread) noexcept nogil:
    """Where a float32 weight-gradient product ``a.T @ b`` (m, n) over k rows
    runs (see :func:`gemm`): the in-place tn kernel, the packed one, or BLAS."""
    if not _panels_on:
        return _TN_BLAS
    if m * n * k <= _TN_MAX_MACS or (one_thread and m * n <= _TN_ONE_THREAD_MAX_OUT
                                     and m <= _TN_ONE_THREAD_MAX_M):
        return _TN_IN_PLACE
    return _TN_PACKED if one_thread else _TN_BLAS


def gemm(const floating[:, ::1] a, const floating[:, ::1] b, floating[:, ::1] c,
         bint trans_a=False, bint trans_b=False, double beta=0.0,
         bint one_thread=False):
    """``c = op(a) @ op(b) + beta * c`` in place, through the kernels' BLAS or,
    for small weight-gradient products, a kernel of this extension.

    Not one of the six kernels: the layers' big products over all time steps
    (see :mod:`fastrnn._blas` for why they come here). ``op`` transposes when
    ``trans_a`` / ``trans_b`` is true; all three arrays are C-contiguous and of
    one dtype. Runs without the GIL.

    The weight gradients' form ``a.T @ b`` in float32, beta 0 or 1, runs on
    ``fastrnn_sgemm_tn`` when the panels are on (:func:`set_panel_products`)
    and the product has at most 2^23 multiply-adds, or at most 2^14 outputs
    (m * n) and m <= 256 when ``one_thread`` says BLAS is held on one thread
    (the caller's knowledge: it only chooses the code, never BLAS's threads).
    Everything else goes to BLAS. Medians of the product alone, its operands
    in cache, the kernel against BLAS on one thread and on two:

    - (1568, 32).T @ (1568, 32): 22 us against 45-51 and 73-78;
    - (1568, 128).T @ (1568, 8): 26 against 80-89 and 51-59;
    - (1568, 128).T @ (1568, 32): 90 against 149-171 and 90-114;
    - (5000, 256).T @ (5000, 64): 1.37 ms against 1.77 and 1.09-1.12;
    - (3200, 512).T @ (3200, 32): 1.05 ms against 1.39-1.46 and 0.79.

    Inside a training step the last one lost all the same (its ``a``, the
    gate gradients, arrives from memory, and the kernel reads it a block of
    columns at a time): S3 LSTM 1.01-1.03 of the time with it, a fit of an
    LSTM(128) on 32 features 1.02-1.15; hence the bound on m. The fit of an
    LSTM(64) on 8 features, with products like the fourth, took 0.90-0.95.
    Larger products stay with BLAS on two threads. On one (``one_thread``),
    they run on ``fastrnn_sgemm_tn_packed``, which first copies each chunk
    of rows of both operands into blocks that its sums then read in order
    (BLAS again if its work memory cannot be had). Alone, against BLAS on
    one thread (medians):

    - (3200, 512).T @ (3200, 160), an S3 LSTM slice's: 2.9-3.1 ms against 3.4-3.5;
    - (3200, 384).T @ (3200, 128), its GRU's ``W_hh``: 1.85-1.9 against 2.1-2.2;
    - (3200, 128).T @ (3200, 160), its RNN's: 0.72-0.85 against 0.96-1.07;
    - (12800, 2048).T @ (12800, 640), an S5 LSTM slice's: 213 against 210.

    In alternating processes against the tree before it: S3 LSTM 0.92-0.94
    of the time, S3 GRU 0.94-0.97, S6 0.90-0.96, S7 LSTM 0.95-0.99, S7 GRU
    0.93-0.95, S5 RNN 0.90-0.91, S5 LSTM 0.93-0.99, S5 GRU 0.97-1.01; the
    RNN's S3 and S7 steps 1.00-1.02. The layers now call the same kernel
    through :func:`weight_product`, which reads the operands in place.
    """
    cdef Py_ssize_t m = a.shape[1] if trans_a else a.shape[0]
    cdef Py_ssize_t k = a.shape[0] if trans_a else a.shape[1]
    cdef Py_ssize_t n = b.shape[0] if trans_b else b.shape[1]
    cdef Py_ssize_t kb = b.shape[1] if trans_b else b.shape[0]
    if kb != k or c.shape[0] != m or c.shape[1] != n:
        raise ValueError(
            f"gemm: op(a) is ({m}, {k}), op(b) is ({kb}, {n}) and c is "
            f"({c.shape[0]}, {c.shape[1]}); expected op(b) ({k}, {n}) and c ({m}, {n})")
    if max(m, n, k) >= 2 ** 31:
        raise OverflowError(f"gemm: dimension beyond BLAS's 32-bit range: {(m, n, k)}")
    if m == 0 or n == 0 or k == 0:
        raise ValueError(f"gemm: empty product of shape ({m}, {n}) over {k} terms")
    cdef floating beta_ = <floating>beta
    cdef int done, path
    if floating is float:
        path = _tn_path(m, n, k, one_thread) if (trans_a and not trans_b
                                                 and (beta == 0 or beta == 1)) else _TN_BLAS
        if path == _TN_IN_PLACE:
            with nogil:
                fastrnn_sgemm_tn(m, n, k, &a[0, 0], m, &b[0, 0], n, &c[0, 0], n,
                                 beta == 1)
            return
        if path == _TN_PACKED:
            with nogil:
                done = fastrnn_sgemm_tn_packed(m, n, k, &a[0, 0], &b[0, 0], &c[0, 0],
                                               beta == 1)
            if done:
                return
    with nogil:
        _gemm_rm(trans_a, trans_b, m, n, k, &a[0, 0], a.shape[1], &b[0, 0],
                 b.shape[1], beta_, &c[0, 0], n)


cdef struct _WeightArgs:
    # weight_product's two parts (see _weight_rows): the rows of the samples
    # before the split and of those after, each into its own product and sums
    Py_ssize_t k[2]
    fastrnn_rows sa[2]
    fastrnn_rows sb[2]
    float* c[2]
    float* sums[2]
    Py_ssize_t ldc
    int done[2]


cdef void _weight_rows(void* args, Py_ssize_t p0, Py_ssize_t p1) noexcept nogil:
    """weight_product's parts ``p0:p1`` (of 2; see _run_rows)."""
    cdef _WeightArgs* a = <_WeightArgs*>args
    cdef Py_ssize_t p
    for p in range(p0, p1):
        a.done[p] = fastrnn_tn_rows(a.k[p], &a.sa[p], &a.sb[p], a.c[p], a.ldc, 0,
                                    a.sums[p])


def weight_product(const float[:, ::1] dg, const int64_t[::1] rows,
                   const float[:, ::1] x, const float[:, ::1] out,
                   const float[:, ::1] h0, const int64_t[::1] lengths, bint reverse,
                   bint bias, bint one_thread):
    """One direction's weight gradients with their operands read in place:
    ``(dg[rows].T @ [x[rows] | h_prev[rows]], dg[rows].sum(axis=0))``, the
    sums (the bias gradient) None unless ``bias``; float32.

    ``dg`` (T * B, M) holds the gate gradients of every step's rows (step t,
    sample b at row t * B + b), ``rows`` the rows to sum over (None: all).
    ``x`` (T * B, D) is the layer's input, ``out`` (T * B, R) its output, each
    None to leave it out of the product; ``h_prev`` is ``out`` one step back
    (forward) or ahead (``reverse``), and ``h0`` (B, R) at each sample's
    first step (in reverse, its ``lengths[b] - 1``); ``out`` is zero past a
    sample's end. ``lengths`` (B,) may be given without ``out``, and is then
    only read for the split below. This is what the layers otherwise build
    with copies (the rows of ``[x | h_prev]``, the valid rows) before calling
    :func:`gemm` and :func:`column_sums`.

    Runs on the packed tn kernel (``fastrnn_tn_rows``), without the GIL. With
    the row split on (:func:`set_row_split`), the samples' rows are summed in
    two parts, split as the kernels split them, each part on the thread whose
    kernels wrote those rows (the helper's part on the helper), and the two
    added up. Returns None, having done nothing, where :func:`gemm` would run
    this product another way (BLAS or the in-place tn kernel: see there;
    ``one_thread`` as there) and the rows are not split, or the work memory
    cannot be had.
    """
    cdef Py_ssize_t N = dg.shape[0], M = dg.shape[1], i, r, t, b, n1, n2
    cdef Py_ssize_t w1 = x.shape[1] if x is not None else 0
    cdef Py_ssize_t w2 = out.shape[1] if out is not None else 0
    cdef Py_ssize_t K = rows.shape[0] if rows is not None else N
    cdef Py_ssize_t B = 0, T = 0, split = 0
    cdef fastrnn_rows sa, sb
    cdef _WeightArgs wa
    cdef int done
    if M == 0 or K == 0 or w1 + w2 == 0:
        return None
    if x is not None and x.shape[0] != N:
        raise ValueError(f"weight_product: x has {x.shape[0]} rows, dg {N}")
    if out is not None and (h0 is None or lengths is None):
        raise ValueError("weight_product: out needs h0 and lengths")
    if lengths is not None and lengths.shape[0] > 0 and N % lengths.shape[0] == 0:
        B = lengths.shape[0]
        T = N // B
    if out is not None:
        if B == 0 or out.shape[0] != N or h0.shape[0] != B or h0.shape[1] != w2:
            raise ValueError(f"weight_product: out ({out.shape[0]}, {w2}), h0 "
                             f"({h0.shape[0]}, {h0.shape[1]}) and {lengths.shape[0]} "
                             f"lengths do not fit dg's {N} rows")
    if B > 0:
        for i in range(B):
            if not 1 <= lengths[i] <= T:
                if out is None:  # only read for the split: none then
                    B = 0
                    break
                raise ValueError(f"weight_product: length {lengths[i]} outside [1, {T}]")
    if B > 0 and _panels_on:
        split = _split_at(&lengths[0], B, T, M * (w1 + w2))
    if split == 0 and _tn_path(M, w1 + w2, K, one_thread) != _TN_PACKED:
        return None
    if rows is not None:
        for i in range(K):
            if not 0 <= rows[i] < N:
                raise IndexError(f"weight_product: row {rows[i]} outside [0, {N})")
    cdef cnp.ndarray c = np.empty((M, w1 + w2), np.float32)
    cdef cnp.ndarray sums = np.empty(M, np.float32) if bias else None
    sa.idx = sb.idx = &rows[0] if rows is not None else NULL
    sa.a = &dg[0, 0]
    sa.w1 = M
    sa.out = sa.h0 = NULL
    sa.w2 = 0
    sa.lengths = NULL
    sa.nb = sa.T = 1
    sa.reverse = sb.reverse = reverse
    # (a zero-width x or out is as good as None, and has no [0, 0])
    sb.a = &x[0, 0] if w1 > 0 else NULL
    sb.w1 = w1
    sb.out = &out[0, 0] if w2 > 0 else NULL
    sb.h0 = &h0[0, 0] if w2 > 0 else NULL
    sb.w2 = w2
    sb.lengths = &lengths[0] if out is not None else NULL
    sb.nb = B if out is not None else 1
    sb.T = T if out is not None else 1
    cdef float* c_p = <float*>cnp.PyArray_DATA(c)
    cdef float* sums_p = <float*>cnp.PyArray_DATA(sums) if bias else NULL
    if split == 0:
        with nogil:
            done = fastrnn_tn_rows(K, &sa, &sb, c_p, w1 + w2, 0, sums_p)
        return (c, sums) if done else None
    # the rows of the samples before the split, and of those after, in order
    cdef cnp.ndarray idx = np.empty(K, np.int64)
    cdef int64_t* idx_p = <int64_t*>cnp.PyArray_DATA(idx)
    cdef cnp.ndarray c2 = np.empty((M, w1 + w2), np.float32)
    cdef cnp.ndarray sums2 = np.empty(M, np.float32) if bias else None
    n1 = 0
    n2 = K
    for i in range(K):
        r = rows[i] if rows is not None else i
        if r % B < split:
            idx_p[n1] = r
            n1 += 1
    for i in range(K - 1, -1, -1):
        r = rows[i] if rows is not None else i
        if r % B >= split:
            n2 -= 1
            idx_p[n2] = r
    wa.k[0], wa.k[1] = n1, K - n1
    wa.sa[0] = wa.sa[1] = sa
    wa.sb[0] = wa.sb[1] = sb
    wa.sa[0].idx = wa.sb[0].idx = idx_p
    wa.sa[1].idx = wa.sb[1].idx = idx_p + n1
    wa.c[0], wa.c[1] = c_p, <float*>cnp.PyArray_DATA(c2)
    wa.sums[0] = sums_p
    wa.sums[1] = <float*>cnp.PyArray_DATA(sums2) if bias else NULL
    wa.ldc = w1 + w2
    wa.done[0] = wa.done[1] = 0
    with nogil:
        _run_rows(_weight_rows, &wa, 2, 1)
    if not (wa.done[0] and wa.done[1]):
        return None
    c += c2
    if bias:
        sums += sums2
    return c, sums


cdef struct _InputGradArgs:
    # input_gradient's rows (see _input_grad_rows)
    const float* dg        # (T, B, G)
    const float* panels    # W_ih's panels (G, D)
    float* dx              # (T, B, D)
    Py_ssize_t T, B, G, D
    bint accumulate


cdef void _input_grad_rows(void* args, Py_ssize_t b0, Py_ssize_t b1) noexcept nogil:
    """input_gradient's samples ``b0:b1``: every step's rows of them."""
    cdef _InputGradArgs* a = <_InputGradArgs*>args
    cdef Py_ssize_t t
    if b1 <= b0:
        return
    for t in range(a.T):
        fastrnn_sgemm_panels(b1 - b0, a.D, a.G, a.dg + (t * a.B + b0) * a.G, a.G,
                             a.panels, a.dx + (t * a.B + b0) * a.D, a.D, a.accumulate,
                             NULL, 0, NULL, NULL)


def input_gradient(const float[:, :, ::1] dg, const float[:, ::1] w_ih,
                   const int64_t[::1] lengths, float[:, :, ::1] dx, bint accumulate):
    """``dx (T, B, D) (+)= dg (T, B, G) @ w_ih (G, D)``, the gradient w.r.t. a
    layer's input, with the row split on (:func:`set_row_split`): each
    sample's rows on the thread whose kernels wrote its ``dg`` (split as they
    split the (sorted) ``lengths``), on the panels. Returns whether it did;
    False, having done nothing, where the split is off, the panels are, or
    the call too small to split: then BLAS's product over all rows serves
    (:func:`gemm`), which with BLAS on two threads would leave its threads
    polling beside the helper for the next kernel call."""
    cdef Py_ssize_t T = dg.shape[0], B = dg.shape[1], G = dg.shape[2], D = w_ih.shape[1]
    _expect("w_ih", w_ih.shape, 2, G, D)
    _expect("dx", dx.shape, 3, T, B, D)
    _check_lengths(lengths, B, T)
    if T == 0 or B == 0 or G == 0 or D == 0 or not _panels_on:
        return False
    cdef Py_ssize_t split = _split_at(&lengths[0], B, T, G * D)
    if split == 0:
        return False
    cdef _InputGradArgs a
    a.panels = fastrnn_pack_panels(&w_ih[0, 0], G, D, 0)
    if a.panels == NULL:
        return False
    a.dg, a.dx, a.T, a.B, a.G, a.D, a.accumulate = &dg[0, 0, 0], &dx[0, 0, 0], T, B, G, D, accumulate
    with nogil:
        _run_rows(_input_grad_rows, &a, B, split)
        _release(<void*>a.panels)
    return True


def column_sums(const floating[:, ::1] a, floating[::1] out):
    """``out = a.sum(axis=0)`` through the kernels' BLAS (a product with a
    vector of ones), without the GIL.

    Not one of the six kernels: the layers' bias gradients, the sums of the
    gate gradients over all steps and samples. NumPy's reduction along the
    first axis ran at a quarter of the memory's speed here: 40 us for
    1600 x 128 float32, against 11 us for the product (a plain loop adding row
    after row, vectorised by gcc, took 22 us).
    """
    cdef Py_ssize_t n = a.shape[0], m = a.shape[1], i
    if out.shape[0] != m:
        raise ValueError(f"column_sums: out has {out.shape[0]} entries, a has {m} columns")
    if max(n, m) >= 2 ** 31:
        raise OverflowError(f"column_sums: dimension beyond BLAS's 32-bit range: {(n, m)}")
    if m == 0:
        return
    if n == 0:
        out[:] = 0
        return
    cdef floating* ones = <floating*>_alloc(n, sizeof(floating))
    cdef int m_ = <int>m, n_ = <int>n, one = 1
    cdef floating alpha = 1, beta = 0
    cdef char* nt = b"N"
    with nogil:
        for i in range(n):
            ones[i] = 1
        # column-major, a is the (m, n) matrix a.T: out = a.T @ ones
        if floating is float:
            sgemv(nt, &m_, &n_, &alpha, <float*>&a[0, 0], &m_, ones, &one, &beta,
                  &out[0], &one)
        else:
            dgemv(nt, &m_, &n_, &alpha, <double*>&a[0, 0], &m_, ones, &one, &beta,
                  &out[0], &one)
    _release(ones)


cdef int _copy_rows(str name, const floating[:, :, :] src, const int64_t[::1] index,
                    floating[:, :, :] dst, bint scatter) except -1:
    """``dst[t, i] = src[t, index[i]]`` (a gather) or, with ``scatter``,
    ``dst[t, index[i]] = src[t, i]``, for every ``t`` and ``i``, without the
    GIL. Both last axes must be contiguous (any other strides); every index is
    checked against the indexed side's rows before anything is copied."""
    cdef Py_ssize_t T = src.shape[0], n = index.shape[0], w = src.shape[2], t, i, bad = -1
    cdef Py_ssize_t rows = dst.shape[1] if scatter else src.shape[1]
    cdef Py_ssize_t listed = src.shape[1] if scatter else dst.shape[1]
    cdef size_t size = <size_t>w * sizeof(floating)
    if dst.shape[0] != T or dst.shape[2] != w or listed != n:
        raise ValueError(
            f"{name}: src is ({T}, {src.shape[1]}, {w}) and out ({dst.shape[0]}, "
            f"{dst.shape[1]}, {dst.shape[2]}); expected the same steps and width, "
            f"and {n} rows (one per index) in {'src' if scatter else 'out'}")
    if w > 1 and (src.strides[2] != sizeof(floating) or dst.strides[2] != sizeof(floating)):
        raise ValueError(f"{name}: the last axes must be contiguous")
    with nogil:
        for i in range(n):
            if index[i] < 0 or index[i] >= rows:
                bad = i
                break
        if bad < 0 and w > 0:
            if scatter:
                for t in range(T):
                    for i in range(n):
                        memcpy(&dst[t, index[i], 0], &src[t, i, 0], size)
            else:
                for t in range(T):
                    for i in range(n):
                        memcpy(&dst[t, i, 0], &src[t, index[i], 0], size)
    if bad >= 0:
        raise IndexError(f"{name}: index[{bad}] = {index[bad]} is out of range for "
                         f"{rows} rows")
    return 0


def take_rows(const floating[:, :, :] a, const int64_t[::1] index,
              floating[:, :, ::1] out):
    """``out[t, i] = a[t, index[i]]`` for every ``t`` and ``i``, without the GIL.

    Not one of the six kernels: the layers sort a ragged batch by length and
    gather the valid steps of one with it (:func:`fastrnn._blas.take_rows`).
    NumPy's indexing holds the GIL, so the batch slices' threads took turns at
    it. ``a``'s last axis must be contiguous (any other strides); every index
    is checked before anything is copied.
    """
    cdef floating[:, :, :] dst = out  # as the helper takes it
    _copy_rows("take_rows", a, index, dst, False)


def put_rows(const floating[:, :, ::1] src, const int64_t[::1] index,
             floating[:, :, :] out):
    """``out[t, index[i]] = src[t, i]`` for every ``t`` and ``i``, without the GIL:
    the inverse of :func:`take_rows`.

    Not one of the six kernels: a ragged batch split over threads gives each
    thread every n-th sample in order of length, and each thread places its
    results among the whole batch's with it. ``out``'s last axis must be
    contiguous (any other strides); every index is checked before anything is
    copied.
    """
    cdef const floating[:, :, :] rows = src  # as the helper takes it
    _copy_rows("put_rows", rows, index, out, True)


cdef inline void _zero(floating* p, Py_ssize_t n) noexcept nogil:
    if n > 0:
        memset(p, 0, <size_t>n * sizeof(floating))


cdef inline void _copy(floating* dst, const floating* src, Py_ssize_t n) noexcept nogil:
    if n > 0:
        memcpy(dst, src, <size_t>n * sizeof(floating))


cdef void* _alloc(Py_ssize_t n, size_t itemsize) except NULL:
    """A work buffer of ``n`` items (at least one byte), 64-byte aligned, from
    the kept array memory when a block fits; MemoryError on failure.
    :func:`_release` gives it back."""
    cdef void* p = fastrnn_work_alloc(<size_t>(n if n > 0 else 1) * itemsize)
    if p == NULL:
        raise MemoryError(f"cannot allocate a work buffer of {n} items")
    return p


cdef inline void _release(void* p) noexcept nogil:
    """Give back a buffer of :func:`_alloc` or ``fastrnn_pack_panels`` (NULL: nothing)."""
    fastrnn_work_free(p)


cdef int _expect(str name, Py_ssize_t* shape, int ndim,
                 Py_ssize_t e0, Py_ssize_t e1=-1, Py_ssize_t e2=-1) except -1:
    """Raise ValueError unless ``shape[:ndim] == (e0, e1, e2)[:ndim]``."""
    cdef Py_ssize_t e[3]
    cdef int d
    e[0] = e0
    e[1] = e1
    e[2] = e2
    for d in range(ndim):
        if shape[d] != e[d]:
            raise ValueError(
                f"{name}: expected shape {tuple([e[k] for k in range(ndim)])}, "
                f"got {tuple([shape[k] for k in range(ndim)])}")
    return 0


cdef Py_ssize_t _step_stride(str name, Py_ssize_t* shape, Py_ssize_t* strides,
                             Py_ssize_t item) except -1:
    """The layout a forward takes for ``x`` and ``out`` (T, B, W): each step's
    rows one C-contiguous (B, W) block, the steps any distance apart that keeps
    them from overlapping (a batch slice of a larger array). Returns that
    distance in items."""
    cdef Py_ssize_t T = shape[0], B = shape[1], W = shape[2]
    if ((W > 1 and strides[2] != item) or (B > 1 and strides[1] != W * item)
            or (T > 1 and (strides[0] < B * W * item or strides[0] % item))):
        raise ValueError(
            f"{name}: each step's ({B}, {W}) rows must be one C-contiguous block, and "
            f"the steps apart; got strides {tuple([strides[k] for k in range(3)])}")
    return strides[0] // item if T > 1 else B * W


cdef Py_ssize_t _out_step_stride(floating[:, :, :] out, Py_ssize_t T, Py_ssize_t B,
                                 Py_ssize_t R) except -1:
    """A forward's ``out``: (T, B, R) in the layout of :func:`_step_stride`;
    returns the distance of its steps in items."""
    _expect("out", out.shape, 3, T, B, R)
    return _step_stride("out", out.shape, out.strides, sizeof(floating))


cdef bint _has_out_grad(Py_ssize_t* shape, Py_ssize_t T, Py_ssize_t B,
                        Py_ssize_t R) except -1:
    """Whether a backward's ``dout`` (its shape) holds an output gradient, which
    must then be (T, B, R); shape (0, 0, 0) is none."""
    if shape[0] == 0 and shape[1] == 0 and shape[2] == 0:
        return False
    _expect("dout", shape, 3, T, B, R)
    return True


cdef floating* _zeros(floating* like, Py_ssize_t n) except NULL:
    """``n`` zeros of the type of ``like`` (which may be NULL), for
    :func:`_release`: the rows a backward reads in place of an output gradient
    it was not given."""
    cdef floating* p = <floating*>_alloc(n, sizeof(floating))
    _zero(p, n)
    return p


cdef int _check_lengths(const int64_t[::1] lengths, Py_ssize_t B,
                        Py_ssize_t T) except -1:
    """``lengths`` must have ``B`` entries in [1, T], sorted non-increasing."""
    cdef Py_ssize_t b
    if lengths.shape[0] != B:
        raise ValueError(f"lengths: expected {B} entries, got {lengths.shape[0]}")
    for b in range(B):
        if lengths[b] < 1 or lengths[b] > T or (b > 0 and lengths[b] > lengths[b - 1]):
            raise ValueError(
                f"lengths must be sorted non-increasing with every entry in "
                f"[1, {T}]; got lengths[{b}] = {lengths[b]}"
                + (f" after {lengths[b - 1]}" if b > 0 else ""))
    return 0


cdef Py_ssize_t _check_input(const floating[:, :, :] x, const floating[:, ::1] w_ih,
                             const floating[::1] bias, Py_ssize_t G) except -1:
    """A forward's input side: ``x`` (T, B, D) with D >= 1, each step's rows
    one C-contiguous block (the steps may lie further apart), ``w_ih``
    (G, D), ``bias`` (G,). Returns the distance of x's steps in items."""
    cdef Py_ssize_t D = x.shape[2]
    if D < 1:
        raise ValueError("x: expected at least one feature per step, got shape "
                         f"{tuple([x.shape[k] for k in range(3)])}")
    cdef Py_ssize_t xts = _step_stride("x", x.shape, x.strides, sizeof(floating))
    _expect("w_ih", w_ih.shape, 2, G, D)
    _expect("bias", bias.shape, 1, G)
    return xts


# --------------------------------------------------------------------- RNN


cdef struct _RnnArgs:
    # what rnn_forward's and rnn_backward's rows need (see _run_rows); float
    # or double pointers as the call's dtype
    const void* w          # W_hh (H, H)
    const int64_t* lengths
    void* h                # forward: h (B, H); backward: dh
    void* out              # (T, B, H), steps ts apart; the backward reads it
    void* buf              # forward: (B, H) work rows
    const void* dout       # backward: (T, B, H), or zeros (B, H) read at every step
    void* dgx              # backward: (T, B, H)
    Py_ssize_t T, B, H, ts # ts: the forward's out's step stride; the backward's dout's
    bint reverse, relu, direct
    const _StepWeights* sw
    const _StepInput* si


cdef void _rnn_forward_rows(floating* kind, const _RnnArgs* a, Py_ssize_t b0,
                            Py_ssize_t b1) noexcept nogil:
    """rnn_forward's steps over the rows ``b0:b1`` (``kind`` only picks the dtype)."""
    cdef Py_ssize_t T = a.T, B = a.B, H = a.H, ts = a.ts, n = b1 - b0
    cdef const floating* w_p = <const floating*>a.w
    cdef const int64_t* len_p = a.lengths + b0
    cdef floating* h_p = <floating*>a.h + b0 * H
    cdef floating* out_p = <floating*>a.out + b0 * H
    cdef floating* buf = <floating*>a.buf + b0 * H
    cdef bint direct = a.direct, relu = a.relu
    cdef Py_ssize_t s, t, k, nb, nb_last = 0
    cdef floating v, zero = 0
    cdef floating* outt
    cdef const floating* hs = h_p  # the rows h_{t-1}: h, or (direct) the last step's out
    for s in range(T):
        t = T - 1 - s if a.reverse else s
        nb = _n_active(len_p, n, t)
        outt = out_p + t * ts
        if direct and s > 0 and nb < nb_last:
            _copy(h_p + nb * H, hs + nb * H, (nb_last - nb) * H)
        # (the product's own tanh, as the LSTM's, took 1.04 of the time
        # at S2: NumPy's loop is the faster tanh, and here nothing else
        # is saved)
        _input_step(buf, hs, w_p, a.sw, a.si, t, B, nb, H, H, NULL, NULL, b0)
        if relu:
            for k in range(nb * H):
                v = buf[k]
                # np.maximum(v, 0): keeps a NaN, like the reference
                (outt if direct else h_p)[k] = zero if v < zero else v
        else:
            _vtanh(buf, outt if direct else h_p, nb * H)
        if direct:
            hs = outt
            nb_last = nb
        else:
            _copy(outt, h_p, nb * H)
        _zero(outt + nb * H, (n - nb) * H)
    if direct:
        _copy(h_p, hs, nb_last * H)


cdef void _rnn_forward_rows_f(void* a, Py_ssize_t b0, Py_ssize_t b1) noexcept nogil:
    _rnn_forward_rows(<float*>NULL, <const _RnnArgs*>a, b0, b1)


def rnn_forward(const floating[:, :, :] x, const floating[:, ::1] w_ih,
                const floating[::1] bias, const floating[:, ::1] w_hh,
                const int64_t[::1] lengths, bint reverse, bint relu,
                floating[:, ::1] h, floating[:, :, :] out):
    """Vanilla RNN forward ``h_t = act(x_t @ W_ih.T + bias + h_{t-1} @ W_hh.T)``;
    fills ``out``, ``h``."""
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], D = x.shape[2], H = h.shape[1]
    cdef Py_ssize_t xts = _check_input(x, w_ih, bias, H)
    _expect("w_hh", w_hh.shape, 2, H, H)
    _expect("h", h.shape, 2, B, H)
    cdef Py_ssize_t ts = _out_step_stride(out, T, B, H)
    _check_lengths(lengths, B, T)
    if T == 0 or B == 0:
        return
    cdef floating* out_p = &out[0, 0, 0]
    cdef floating* buf = NULL
    cdef object terms             # unfused, with out's steps apart: the input terms
    cdef _RnnArgs a
    cdef _StepWeights sw
    cdef _StepInput si
    cdef Py_ssize_t split = 0
    sw.data = si.gx = si.h_panels = si.x_panels = NULL
    try:
        buf = <floating*>_alloc(B * H, sizeof(floating))
        # unfused, a contiguous out holds the input terms until each step
        # replaces its own
        terms = _forward_input(&si, &sw, &x[0, 0, 0], xts, &w_ih[0, 0], &bias[0],
                               &w_hh[0, 0], T, B, D, H, H, &lengths[0],
                               out_p if ts == B * H else NULL, H)
        a.w, a.lengths, a.h, a.out, a.buf = &w_hh[0, 0], &lengths[0], &h[0, 0], out_p, buf
        a.T, a.B, a.H, a.ts, a.reverse, a.relu = T, B, H, ts, reverse, relu
        a.sw, a.si = &sw, &si
        # Fused and forward, each step's output is the next step's state, read
        # where it lies: h is written only for the samples as they end (a
        # sample that ended at the last step takes that step's output), and
        # the copy of every step's state into out is gone (alternating
        # processes: S2 RNN 0.92-1.02 of the time over eight rounds, S3
        # 0.98-1.00, S7 0.96-1.00). Unfused, out may hold the input terms; in
        # reverse, the samples that start late take h0 beside the others'
        # outputs.
        a.direct = si.fused > 0 and not reverse
        with nogil:
            if floating is float:
                if sw.panels:
                    split = _split_at(&lengths[0], B, T, (H + D) * H)
                _run_rows(_rnn_forward_rows_f, &a, B, split)
            else:
                _rnn_forward_rows(<floating*>NULL, &a, 0, B)
    finally:
        _release(buf)
        _free_input(&si, &sw)


cdef void _rnn_backward_rows(floating* kind, const _RnnArgs* a, Py_ssize_t b0,
                             Py_ssize_t b1) noexcept nogil:
    """rnn_backward's steps over the rows ``b0:b1``."""
    cdef Py_ssize_t T = a.T, B = a.B, H = a.H, n = b1 - b0
    cdef const floating* w_p = <const floating*>a.w
    cdef const int64_t* len_p = a.lengths + b0
    cdef floating* dh_p = <floating*>a.h + b0 * H
    cdef const floating* out_p = <const floating*>a.out + b0 * H
    cdef const floating* dout_p = <const floating*>a.dout
    cdef floating* dgx_p = <floating*>a.dgx + b0 * H
    cdef Py_ssize_t s, t, k, nb
    cdef const floating* yt
    cdef const floating* got
    cdef floating* dat
    cdef floating m, zero = 0, one = 1
    for s in range(T):
        # the reverse of the forward walk
        t = s if a.reverse else T - 1 - s
        nb = _n_active(len_p, n, t)
        yt = out_p + t * B * H
        got = dout_p + t * a.ts + b0 * H
        dat = dgx_p + t * B * H
        if a.relu:
            for k in range(nb * H):
                # g * (out > 0); the mask first, or gcc sees control flow
                m = <floating>(yt[k] > zero)
                dat[k] = (got[k] + dh_p[k]) * m
        else:
            for k in range(nb * H):
                dat[k] = (got[k] + dh_p[k]) * (one - yt[k] * yt[k])
        _zero(dat + nb * H, (n - nb) * H)
        if nb > 0:
            # dh[:nb] = da @ W_hh (dh[:nb] was consumed above)
            _back_product(dh_p, dat, w_p, a.sw, nb, H, H, False)


cdef void _rnn_backward_rows_f(void* a, Py_ssize_t b0, Py_ssize_t b1) noexcept nogil:
    _rnn_backward_rows(<float*>NULL, <const _RnnArgs*>a, b0, b1)


def rnn_backward(const floating[:, ::1] w_hh, const int64_t[::1] lengths,
                 bint reverse, bint relu, const floating[:, :, ::1] out,
                 const floating[:, :, ::1] dout, floating[:, ::1] dh,
                 floating[:, :, ::1] dgx):
    """Vanilla RNN backward through time; fills ``dgx`` and turns ``dh`` into d h0."""
    cdef Py_ssize_t T = out.shape[0], B = out.shape[1], H = out.shape[2]
    _expect("w_hh", w_hh.shape, 2, H, H)
    _expect("dh", dh.shape, 2, B, H)
    _expect("dgx", dgx.shape, 3, T, B, H)
    cdef bint has_dout = _has_out_grad(dout.shape, T, B, H)
    _check_lengths(lengths, B, T)
    if T == 0 or B == 0:
        return
    cdef _RnnArgs a
    cdef _StepWeights sw
    cdef Py_ssize_t split = 0
    cdef floating* no_dout = NULL  # zeros read as dout when there is none
    sw.data = NULL
    try:
        if not has_dout:
            no_dout = _zeros(&dh[0, 0], B * H)
        _backward_weights(&sw, &w_hh[0, 0], H, H, B, T)
        a.w, a.lengths, a.h = &w_hh[0, 0], &lengths[0], &dh[0, 0]
        a.out = <void*>&out[0, 0, 0]  # read only
        a.dout = <const floating*>no_dout if no_dout != NULL else &dout[0, 0, 0]
        a.ts = 0 if no_dout != NULL else B * H
        a.dgx = &dgx[0, 0, 0]
        a.T, a.B, a.H, a.reverse, a.relu, a.sw = T, B, H, reverse, relu, &sw
        with nogil:
            if floating is float:
                if sw.panels:
                    split = _split_at(&lengths[0], B, T, H * H)
                _run_rows(_rnn_backward_rows_f, &a, B, split)
            else:
                _rnn_backward_rows(<floating*>NULL, &a, 0, B)
    finally:
        _release(sw.data)
        _release(no_dout)



# -------------------------------------------------------------------- LSTM


cdef struct _LstmArgs:
    # what lstm_forward's and lstm_backward's rows need (see _run_rows); float
    # or double pointers as the call's dtype
    const void* w          # W_hh (G, R)
    const void* w_hr       # W_hr (R, H), or NULL
    const void* peep       # (3, H), or NULL
    const int64_t* lengths
    void* h                # forward: h (B, R); backward: dh
    void* c                # forward: c (B, H); backward: dc
    void* out              # (T, B, R), the forward's steps ts apart
    void* gates            # (T, B, G); NULL in eval
    void* cs               # (T, B, H); NULL in eval
    void* hc               # (T, B, H); NULL without projection or in eval
    void* buf              # forward in eval: (B, G) work rows
    void* tcb              # (B, H) work rows: tanh(c_t)
    void* hcell            # (B, H) work rows: h_cell (forward with projection,
                           # backward: its gradient)
    const void* scale      # forward: (G,)
    const void* act        # forward: (2G,) or NULL
    const void* c0         # backward: (B, H)
    const void* dout       # backward: (T, B, R), or zeros (B, R) read at every step
    void* dgx              # backward: (T, B, G)
    void* dhr              # backward: (T, B, R), or NULL without projection
    double* dpacc          # backward: (3, H) peephole gradient sums, or NULL
    Py_ssize_t T, B, H, R, ts  # ts: out's step stride (forward), dout's (backward)
    bint reverse
    const _StepWeights* sw
    const _StepInput* si


cdef void _lstm_forward_rows(floating* kind, const _LstmArgs* a, Py_ssize_t b0,
                             Py_ssize_t b1) noexcept nogil:
    """lstm_forward's steps over the rows ``b0:b1``."""
    cdef Py_ssize_t T = a.T, B = a.B, H = a.H, R = a.R, G = 4 * H, n = b1 - b0
    cdef bint has_proj = a.w_hr != NULL, has_peep = a.peep != NULL
    cdef bint training = a.gates != NULL
    cdef const floating* w_p = <const floating*>a.w
    cdef const floating* wr_p = <const floating*>a.w_hr
    cdef const floating* p0 = <const floating*>a.peep
    cdef const floating* p1 = p0 + H if has_peep else NULL
    cdef const floating* p2 = p0 + 2 * H if has_peep else NULL
    cdef const int64_t* len_p = a.lengths + b0
    cdef floating* h_p = <floating*>a.h + b0 * R
    cdef floating* c_p = <floating*>a.c + b0 * H
    cdef floating* out_p = <floating*>a.out + b0 * R
    cdef floating* gates_p = <floating*>a.gates + b0 * G if training else NULL
    cdef floating* cs_p = <floating*>a.cs + b0 * H if training else NULL
    cdef floating* hc_p = <floating*>a.hc + b0 * H if training and has_proj else NULL
    cdef floating* buf = <floating*>a.buf + b0 * G if not training else NULL
    cdef floating* tcb = <floating*>a.tcb + b0 * H
    cdef floating* hcell = <floating*>a.hcell + b0 * H if has_proj else NULL
    cdef const floating* scale = <const floating*>a.scale
    cdef const floating* act = <const floating*>a.act
    cdef Py_ssize_t s, t, b, j, nb
    cdef floating* ar
    cdef floating* cr
    cdef floating* hr
    cdef floating* tr
    cdef floating* outt
    cdef floating i, f, o, cp, zero = 0, half = 0.5
    # per active row: the pre-activations, their tanh, and finally the gates
    # (i, f, g, o), worked out in place; in training in gates[t] itself
    cdef floating* gb
    cdef bint activated
    for s in range(T):
        t = T - 1 - s if a.reverse else s
        nb = _n_active(len_p, n, t)
        outt = out_p + t * a.ts
        # the step's gates are worked out in place: in the training
        # cache itself when there is one
        gb = gates_p + t * B * G if training else buf
        activated = False
        if has_peep:
            _input_step(gb, h_p, w_p, a.sw, a.si, t, B, nb, G, R, NULL, NULL, b0)
        else:
            # tanh arguments of all active rows (a/2 for the sigmoid
            # gates i, f, o; a for g), then, unless the product applied
            # the activations, one tanh call over them all: the rows of
            # gb are one contiguous block
            activated = _input_step(gb, h_p, w_p, a.sw, a.si, t, B, nb, G, R,
                                    scale, act, b0)
            if not activated:
                _vtanh(gb, gb, nb * G)
        for b in range(nb):
            ar = gb + b * G
            cr = c_p + b * H
            if has_peep:
                for j in range(H):
                    cp = cr[j]
                    ar[j] = half * (ar[j] + p0[j] * cp)
                    ar[H + j] = half * (ar[H + j] + p1[j] * cp)
                # o sees c_t: its argument is finished below
                _vtanh(ar, ar, 3 * H)
            # i, f and the new cell state
            for j in range(H):
                if activated:
                    i = ar[j]
                    f = ar[H + j]
                else:
                    i = half * ar[j] + half
                    f = half * ar[H + j] + half
                    ar[j] = i
                    ar[H + j] = f
                cr[j] = f * cr[j] + i * ar[2 * H + j]
            if has_peep:
                for j in range(H):
                    ar[3 * H + j] = half * (ar[3 * H + j] + p2[j] * cr[j])
                _vtanh(ar + 3 * H, ar + 3 * H, H)
        # tanh(c_t) of all active rows: c's rows are contiguous too
        _vtanh(c_p, tcb, nb * H)
        for b in range(nb):
            # o and the cell output
            ar = gb + b * G
            tr = tcb + b * H
            hr = hcell + b * H if has_proj else h_p + b * H
            for j in range(H):
                if activated:
                    o = ar[3 * H + j]
                else:
                    o = half * ar[3 * H + j] + half
                    ar[3 * H + j] = o
                hr[j] = o * tr[j]
        if has_proj:
            if nb > 0:
                # out[t, :nb] = h_cell @ W_hr.T, then the running state
                _matmul_nt(outt, hcell, wr_p, nb, R, H, zero)
                _copy(h_p, outt, nb * R)
            if training:
                _copy(hc_p + t * B * H, hcell, nb * H)
                _zero(hc_p + t * B * H + nb * H, (n - nb) * H)
        else:
            _copy(outt, h_p, nb * R)
        _zero(outt + nb * R, (n - nb) * R)
        if training:
            _zero(gates_p + t * B * G + nb * G, (n - nb) * G)
            _copy(cs_p + t * B * H, c_p, nb * H)
            _zero(cs_p + t * B * H + nb * H, (n - nb) * H)


cdef void _lstm_forward_rows_f(void* a, Py_ssize_t b0, Py_ssize_t b1) noexcept nogil:
    _lstm_forward_rows(<float*>NULL, <const _LstmArgs*>a, b0, b1)


def lstm_forward(const floating[:, :, :] x, const floating[:, ::1] w_ih,
                 const floating[::1] bias, const floating[:, ::1] w_hh,
                 const floating[:, ::1] w_hr, const floating[:, ::1] peep,
                 const int64_t[::1] lengths, bint reverse, bint training,
                 floating[:, ::1] h, floating[:, ::1] c, floating[:, :, :] out,
                 floating[:, :, ::1] gates, floating[:, :, ::1] cs,
                 floating[:, :, ::1] hc):
    """LSTM forward (optional peepholes and projection); fills ``out``, ``h``, ``c``
    and, when training, the caches ``gates``, ``cs`` and ``hc``."""
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], D = x.shape[2], H = c.shape[1]
    cdef Py_ssize_t G = 4 * H, R = h.shape[1]
    cdef bint has_proj = w_hr.shape[0] > 0
    cdef bint has_peep = peep.shape[0] > 0
    cdef Py_ssize_t xts = _check_input(x, w_ih, bias, G)
    _expect("c", c.shape, 2, B, H)
    _expect("w_hh", w_hh.shape, 2, G, R)
    if has_proj:
        _expect("w_hr", w_hr.shape, 2, R, H)
    else:
        _expect("h (no projection)", h.shape, 2, B, H)
    _expect("h", h.shape, 2, B, R)
    if has_peep:
        _expect("peep", peep.shape, 2, 3, H)
    cdef Py_ssize_t ts = _out_step_stride(out, T, B, R)
    if training:
        _expect("gates", gates.shape, 3, T, B, G)
        _expect("cs", cs.shape, 3, T, B, H)
        if has_proj:
            _expect("hc", hc.shape, 3, T, B, H)
    _check_lengths(lengths, B, T)
    if T == 0 or B == 0:
        return
    cdef Py_ssize_t k
    cdef floating zero = 0, one = 1, half = 0.5
    cdef floating* buf = NULL     # eval: the step's gates
    cdef floating* tcb = NULL     # tanh(c_t)
    cdef floating* hcell = NULL   # o * tanh(c_t) before the projection
    cdef floating* scale = NULL   # 1/2 for the sigmoid gates, 1 for g
    cdef floating* act = NULL     # the activation in the product: 1/2 and 1/2, or 1 and 0
    cdef object terms             # unfused, in eval: the input terms of all steps
    cdef _LstmArgs a
    cdef _StepWeights sw
    cdef _StepInput si
    cdef Py_ssize_t split = 0
    sw.data = si.gx = si.h_panels = si.x_panels = NULL
    try:
        if not training:
            buf = <floating*>_alloc(B * G, sizeof(floating))
        # unfused, the training cache holds the input terms until each step
        # replaces its own with its gates
        terms = _forward_input(&si, &sw, &x[0, 0, 0], xts, &w_ih[0, 0], &bias[0],
                               &w_hh[0, 0], T, B, D, G, R, &lengths[0],
                               &gates[0, 0, 0] if training else NULL, G)
        tcb = <floating*>_alloc(B * H, sizeof(floating))
        scale = <floating*>_alloc(G, sizeof(floating))
        for k in range(G):
            scale[k] = one if 2 * H <= k < 3 * H else half
        if floating is float and not has_peep:
            # on the panels the product applies the gates' activations itself,
            # sigmoid(a) = tanh(a / 2) / 2 + 1/2 and tanh(a) (see _step_product)
            act = <floating*>_alloc(2 * G, sizeof(floating))
            for k in range(G):
                act[k] = scale[k]
                act[G + k] = zero if 2 * H <= k < 3 * H else half
        if has_proj:
            hcell = <floating*>_alloc(B * H, sizeof(floating))
        a.w, a.lengths, a.h, a.c, a.out = &w_hh[0, 0], &lengths[0], &h[0, 0], &c[0, 0], &out[0, 0, 0]
        a.w_hr = &w_hr[0, 0] if has_proj else NULL
        a.peep = &peep[0, 0] if has_peep else NULL
        a.gates = &gates[0, 0, 0] if training else NULL
        a.cs = &cs[0, 0, 0] if training else NULL
        a.hc = &hc[0, 0, 0] if training and has_proj else NULL
        a.buf, a.tcb, a.hcell, a.scale, a.act = buf, tcb, hcell, scale, act
        a.T, a.B, a.H, a.R, a.ts, a.reverse, a.sw, a.si = T, B, H, R, ts, reverse, &sw, &si
        with nogil:
            if floating is float:
                # (the projection's products are BLAS calls: on one thread)
                if sw.panels and not has_proj:
                    split = _split_at(&lengths[0], B, T, (R + D) * G)
                _run_rows(_lstm_forward_rows_f, &a, B, split)
            else:
                _lstm_forward_rows(<floating*>NULL, &a, 0, B)
    finally:
        _release(buf)
        _release(tcb)
        _release(hcell)
        _release(scale)
        _release(act)
        _free_input(&si, &sw)


cdef void _lstm_backward_rows(floating* kind, const _LstmArgs* a, Py_ssize_t b0,
                              Py_ssize_t b1) noexcept nogil:
    """lstm_backward's steps over the rows ``b0:b1`` (the peephole sums are the
    whole batch's: with peepholes, one call over all rows)."""
    cdef Py_ssize_t T = a.T, B = a.B, H = a.H, R = a.R, G = 4 * H, n = b1 - b0
    cdef bint has_proj = a.w_hr != NULL, has_peep = a.peep != NULL
    cdef bint reverse = a.reverse
    cdef const floating* w_p = <const floating*>a.w
    cdef const floating* wr_p = <const floating*>a.w_hr
    cdef const floating* p0 = <const floating*>a.peep
    cdef const floating* p1 = p0 + H if has_peep else NULL
    cdef const floating* p2 = p0 + 2 * H if has_peep else NULL
    cdef const int64_t* len_p = a.lengths + b0
    cdef floating* dh_p = <floating*>a.h + b0 * R
    cdef floating* dc_p = <floating*>a.c + b0 * H
    cdef const floating* gates_p = <const floating*>a.gates + b0 * G
    cdef const floating* cs_p = <const floating*>a.cs + b0 * H
    cdef const floating* c0_p = <const floating*>a.c0 + b0 * H
    cdef const floating* dout_p = <const floating*>a.dout + b0 * R
    cdef floating* dgx_p = <floating*>a.dgx + b0 * G
    cdef floating* dhr_p = <floating*>a.dhr + b0 * R if has_proj else NULL
    cdef floating* ghbuf = <floating*>a.hcell + b0 * H  # gradient w.r.t. h_cell
    cdef floating* tcb = <floating*>a.tcb + b0 * H      # tanh(c_t)
    cdef double* dp0 = a.dpacc
    cdef double* dp1 = a.dpacc + H if has_peep else NULL
    cdef double* dp2 = a.dpacc + 2 * H if has_peep else NULL
    cdef Py_ssize_t s, t, b, j, k, nb
    cdef const floating* gtr
    cdef const floating* ctr
    cdef const floating* cpr
    cdef const floating* got
    cdef floating* ghr
    cdef floating* tr
    cdef floating* dcr
    cdef floating* dar
    cdef floating* dhrt
    cdef floating i, f, g, o, gh, tc, dao, gc, dai, daf, cp
    cdef floating zero = 0, one = 1
    for s in range(T):
        t = s if reverse else T - 1 - s
        nb = _n_active(len_p, n, t)
        got = dout_p + t * a.ts
        # g_h = dout[t] + dh (through W_hr when projected); the active
        # rows are one contiguous block
        if has_proj:
            dhrt = dhr_p + t * B * R
            for k in range(nb * R):
                dhrt[k] = got[k] + dh_p[k]
            _zero(dhrt + nb * R, (n - nb) * R)
            if nb > 0:
                _matmul_nn(ghbuf, dhrt, wr_p, nb, H, R, zero)
        else:
            for k in range(nb * H):
                ghbuf[k] = got[k] + dh_p[k]
        _vtanh(cs_p + t * B * H, tcb, nb * H)
        for b in range(nb):
            gtr = gates_p + (t * B + b) * G
            ctr = cs_p + (t * B + b) * H
            # c_{t-1}: c0 at the sample's first step, else the cache
            if _first_step(len_p, b, t, reverse):
                cpr = c0_p + b * H
            elif reverse:
                cpr = ctr + B * H
            else:
                cpr = ctr - B * H
            ghr = ghbuf + b * H
            tr = tcb + b * H
            dcr = dc_p + b * H
            dar = dgx_p + (t * B + b) * G
            if has_peep:
                for j in range(H):
                    i = gtr[j]
                    f = gtr[H + j]
                    g = gtr[2 * H + j]
                    o = gtr[3 * H + j]
                    gh = ghr[j]
                    tc = tr[j]
                    cp = cpr[j]
                    dao = gh * tc * o * (one - o)
                    gc = dcr[j] + gh * o * (one - tc * tc) + dao * p2[j]
                    dai = gc * g * i * (one - i)
                    daf = gc * cp * f * (one - f)
                    dar[j] = dai
                    dar[H + j] = daf
                    dar[2 * H + j] = gc * i * (one - g * g)
                    dar[3 * H + j] = dao
                    dcr[j] = gc * f + dai * p0[j] + daf * p1[j]
                    dp0[j] += dai * cp
                    dp1[j] += daf * cp
                    dp2[j] += dao * ctr[j]
            else:
                for j in range(H):
                    i = gtr[j]
                    f = gtr[H + j]
                    g = gtr[2 * H + j]
                    o = gtr[3 * H + j]
                    gh = ghr[j]
                    tc = tr[j]
                    dao = gh * tc * o * (one - o)
                    gc = dcr[j] + gh * o * (one - tc * tc)
                    dar[j] = gc * g * i * (one - i)
                    dar[H + j] = gc * cpr[j] * f * (one - f)
                    dar[2 * H + j] = gc * i * (one - g * g)
                    dar[3 * H + j] = dao
                    dcr[j] = gc * f
        _zero(dgx_p + t * B * G + nb * G, (n - nb) * G)
        if nb > 0:
            # dh[:nb] = da @ W_hh (dh[:nb] was consumed above)
            _back_product(dh_p, dgx_p + t * B * G, w_p, a.sw, nb, R, G, False)


cdef void _lstm_backward_rows_f(void* a, Py_ssize_t b0, Py_ssize_t b1) noexcept nogil:
    _lstm_backward_rows(<float*>NULL, <const _LstmArgs*>a, b0, b1)


def lstm_backward(const floating[:, ::1] w_hh, const floating[:, ::1] w_hr,
                  const floating[:, ::1] peep, const int64_t[::1] lengths,
                  bint reverse, const floating[:, ::1] c0,
                  const floating[:, :, ::1] out, const floating[:, :, ::1] gates,
                  const floating[:, :, ::1] cs, const floating[:, :, ::1] hc,
                  const floating[:, :, ::1] dout, floating[:, ::1] dh,
                  floating[:, ::1] dc, floating[:, :, ::1] dgx,
                  floating[:, ::1] dpeep, floating[:, :, ::1] dhr):
    """LSTM backward through time; fills ``dgx``, ``dpeep``, ``dhr`` and turns
    ``dh``, ``dc`` into the gradients w.r.t. the initial state."""
    cdef Py_ssize_t T = out.shape[0], B = out.shape[1], R = out.shape[2]
    cdef Py_ssize_t H = c0.shape[1], G = 4 * H
    cdef bint has_proj = w_hr.shape[0] > 0
    cdef bint has_peep = peep.shape[0] > 0
    _expect("c0", c0.shape, 2, B, H)
    _expect("w_hh", w_hh.shape, 2, G, R)
    if has_proj:
        _expect("w_hr", w_hr.shape, 2, R, H)
        _expect("dhr", dhr.shape, 3, T, B, R)
    else:
        _expect("out (no projection)", out.shape, 3, T, B, H)
    if has_peep:
        _expect("peep", peep.shape, 2, 3, H)
        _expect("dpeep", dpeep.shape, 2, 3, H)
    _expect("gates", gates.shape, 3, T, B, G)
    _expect("cs", cs.shape, 3, T, B, H)
    cdef bint has_dout = _has_out_grad(dout.shape, T, B, R)
    _expect("dh", dh.shape, 2, B, R)
    _expect("dc", dc.shape, 2, B, H)
    _expect("dgx", dgx.shape, 3, T, B, G)
    _check_lengths(lengths, B, T)
    if has_peep:
        dpeep[:, :] = 0
    if T == 0 or B == 0:
        return
    cdef Py_ssize_t j, k
    cdef floating* ghbuf = NULL   # gradient w.r.t. h_cell (before the projection)
    cdef floating* tcb = NULL     # tanh(c_t)
    cdef double* dpacc = NULL     # peephole gradient, accumulated in double
    cdef floating* no_dout = NULL  # zeros read as dout when there is none
    cdef _LstmArgs a
    cdef _StepWeights sw
    cdef Py_ssize_t split = 0
    sw.data = NULL
    try:
        if not has_dout:
            no_dout = _zeros(&dh[0, 0], B * R)
        _backward_weights(&sw, &w_hh[0, 0], G, R, B, T)
        ghbuf = <floating*>_alloc(B * H, sizeof(floating))
        tcb = <floating*>_alloc(B * H, sizeof(floating))
        if has_peep:
            dpacc = <double*>_alloc(3 * H, sizeof(double))
            memset(dpacc, 0, <size_t>(3 * H) * sizeof(double))
        a.w, a.lengths, a.h, a.c = &w_hh[0, 0], &lengths[0], &dh[0, 0], &dc[0, 0]
        a.w_hr = &w_hr[0, 0] if has_proj else NULL
        a.peep = &peep[0, 0] if has_peep else NULL
        a.gates, a.cs, a.c0 = <void*>&gates[0, 0, 0], <void*>&cs[0, 0, 0], &c0[0, 0]
        a.dout = <const floating*>no_dout if no_dout != NULL else &dout[0, 0, 0]
        a.ts = 0 if no_dout != NULL else B * R
        a.dgx = &dgx[0, 0, 0]
        a.dhr = &dhr[0, 0, 0] if has_proj else NULL
        a.hcell, a.tcb, a.dpacc = ghbuf, tcb, dpacc
        a.T, a.B, a.H, a.R, a.reverse, a.sw = T, B, H, R, reverse, &sw
        with nogil:
            if floating is float:
                # (one call with peepholes, whose sums are the whole batch's,
                # or a projection, whose products are BLAS calls)
                if sw.panels and not has_proj and not has_peep:
                    split = _split_at(&lengths[0], B, T, R * G)
                _run_rows(_lstm_backward_rows_f, &a, B, split)
            else:
                _lstm_backward_rows(<floating*>NULL, &a, 0, B)
        if has_peep:
            for k in range(3):
                for j in range(H):
                    dpeep[k, j] = <floating>dpacc[k * H + j]
    finally:
        _release(ghbuf)
        _release(tcb)
        _release(dpacc)
        _release(no_dout)
        _release(sw.data)


# --------------------------------------------------------------------- GRU


cdef struct _GruArgs:
    # what gru_forward's and gru_backward's rows need (see _run_rows); float
    # or double pointers as the call's dtype
    const void* w          # W_hh (G, H)
    const void* b_hn       # forward: (H,)
    const void* bias       # forward: (G,)
    const int64_t* lengths
    void* h                # forward: h (B, H); backward: dh
    void* out              # (T, B, H), the forward's steps ts apart
    void* gates            # (T, B, G); NULL in eval
    void* ghn              # (T, B, H); NULL in eval
    void* buf              # forward in eval: (B, G) work rows
    void* hnb              # forward: (B, H) work rows, W_hn h_{t-1} + b_hn
    void* nbuf             # forward: (B, H) work rows, the candidate n
    const void* scale      # forward: (2H,)
    const void* act        # forward: (4H,) or NULL
    const void* h0         # backward: (B, H)
    const void* dout       # backward: (T, B, H), or zeros (B, H) read at every step
    void* dgx              # backward: (T, B, G)
    void* dgh              # backward: (T, B, G)
    Py_ssize_t T, B, H, D, ts  # ts: out's step stride (forward), dout's (backward)
    bint reverse
    const _StepWeights* sw
    const _StepInput* si


cdef void _gru_forward_rows(floating* kind, const _GruArgs* a, Py_ssize_t b0,
                            Py_ssize_t b1) noexcept nogil:
    """gru_forward's steps over the rows ``b0:b1``."""
    cdef Py_ssize_t T = a.T, B = a.B, H = a.H, D = a.D, G = 3 * H, n = b1 - b0
    cdef bint training = a.gates != NULL
    cdef const _StepInput* si = a.si
    cdef bint fused = si.fused > 0
    cdef const floating* w_p = <const floating*>a.w
    cdef const floating* bn_p = <const floating*>a.b_hn
    cdef const floating* bias_p = <const floating*>a.bias
    cdef const int64_t* len_p = a.lengths + b0
    cdef floating* h_p = <floating*>a.h + b0 * H
    cdef floating* out_p = <floating*>a.out + b0 * H
    cdef floating* gates_p = <floating*>a.gates + b0 * G if training else NULL
    cdef floating* ghn_p = <floating*>a.ghn + b0 * H if training else NULL
    # per active row: W_hh h_{t-1}, turned in place into the gates (r, z, n);
    # in training gates[t] itself serves
    cdef floating* buf = <floating*>a.buf + b0 * G if not training else NULL
    cdef floating* hnb = <floating*>a.hnb + b0 * H    # W_hn h_{t-1} + b_hn
    cdef floating* nbuf = <floating*>a.nbuf + b0 * H  # the candidate n of the active rows
    # unfused: the input terms of all steps
    cdef const floating* gx_p = <const floating*>si.gx + b0 * G if not fused else NULL
    cdef const floating* scale = <const floating*>a.scale
    cdef const floating* act = <const floating*>a.act
    cdef Py_ssize_t s, t, b, j, k, nb
    cdef const floating* gr
    cdef floating* ar
    cdef floating* hr
    cdef floating* hnr
    cdef floating* outt
    cdef const floating* xn       # a row's input term of n
    cdef floating* gb             # this step's gates: buf, or gates[t] when training
    cdef floating r, z, one = 1, half = 0.5
    cdef bint activated
    for s in range(T):
        t = T - 1 - s if a.reverse else s
        nb = _n_active(len_p, n, t)
        # the step's gates are worked out in place: in the training
        # cache itself when there is one
        gb = gates_p + t * B * G if training else buf
        activated = False
        if fused:
            # r, z: their sigmoids, applied by the product (or their
            # tanh arguments, halved); n's terms W_hn h + b_hn into
            # gb's n part (as unfused, so that a tanh over the whole
            # block below reads finite numbers there), W_in x_t + b_in
            # into nbuf
            activated = _input_step(gb, h_p, w_p, a.sw, si, t, B, nb, G, H, scale,
                                    act, b0)
            if floating is float and nb > 0:
                fastrnn_sgemm_panels(nb, H, H, <const float*>h_p, H,
                                     <const float*>si.h_panels, gb + 2 * H, G,
                                     0, bn_p, 0, NULL, NULL)
                fastrnn_sgemm_panels(nb, H, D,
                                     <const float*>si.x + t * si.xts + b0 * D, D,
                                     <const float*>si.x_panels, nbuf, H, 0,
                                     bias_p + 2 * H, 0, NULL, NULL)
            for b in range(nb):
                ar = gb + b * G
                _copy(hnb + b * H, ar + 2 * H, H)
        else:
            _step_product(gb, h_p, w_p, a.sw, nb, G, H, NULL, NULL)
            for b in range(nb):
                gr = gx_p + (t * B + b) * G
                ar = gb + b * G
                hnr = hnb + b * H
                for k in range(2 * H):
                    ar[k] = half * (gr[k] + ar[k])
                for j in range(H):
                    hnr[j] = ar[2 * H + j] + bn_p[j]
        # One tanh call per phase over all active rows (the call, not
        # the arithmetic, dominates at small H): first r, z over the
        # whole block, the n part of which is junk, overwritten below
        # (unless the product applied their sigmoids); then n,
        # gathered in nbuf.
        if not activated:
            _vtanh(gb, gb, nb * G)
        for b in range(nb):
            if fused:
                xn = nbuf + b * H
            else:
                xn = gx_p + (t * B + b) * G + 2 * H
            ar = gb + b * G
            hnr = hnb + b * H
            for j in range(H):
                if activated:
                    r = ar[j]
                else:
                    r = half * ar[j] + half
                    ar[j] = r
                    ar[H + j] = half * ar[H + j] + half
                nbuf[b * H + j] = xn[j] + r * hnr[j]
        _vtanh(nbuf, nbuf, nb * H)
        for b in range(nb):
            ar = gb + b * G
            hr = h_p + b * H
            for j in range(H):
                z = ar[H + j]
                ar[2 * H + j] = nbuf[b * H + j]
                hr[j] = (one - z) * nbuf[b * H + j] + z * hr[j]
        outt = out_p + t * a.ts
        _copy(outt, h_p, nb * H)
        _zero(outt + nb * H, (n - nb) * H)
        if training:
            _zero(gb + nb * G, (n - nb) * G)
            _copy(ghn_p + t * B * H, hnb, nb * H)
            _zero(ghn_p + t * B * H + nb * H, (n - nb) * H)


cdef void _gru_forward_rows_f(void* a, Py_ssize_t b0, Py_ssize_t b1) noexcept nogil:
    _gru_forward_rows(<float*>NULL, <const _GruArgs*>a, b0, b1)


def gru_forward(const floating[:, :, :] x, const floating[:, ::1] w_ih,
                const floating[::1] bias, const floating[:, ::1] w_hh,
                const floating[::1] b_hn, const int64_t[::1] lengths, bint reverse,
                bint training, floating[:, ::1] h, floating[:, :, :] out,
                floating[:, :, ::1] gates, floating[:, :, ::1] ghn):
    """GRU forward, ``h_t = (1 - z) * n + z * h_{t-1}`` with
    ``n = tanh(gx_n + r * (W_hn h_{t-1} + b_hn))`` (``gx = x_t @ W_ih.T + bias``);
    fills ``out``, ``h`` and, when training, ``gates`` and ``ghn``."""
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], D = x.shape[2]
    cdef Py_ssize_t H = h.shape[1], G = 3 * H
    cdef Py_ssize_t xts = _check_input(x, w_ih, bias, G)
    _expect("w_hh", w_hh.shape, 2, G, H)
    _expect("b_hn", b_hn.shape, 1, H)
    _expect("h", h.shape, 2, B, H)
    cdef Py_ssize_t ts = _out_step_stride(out, T, B, H)
    if training:
        _expect("gates", gates.shape, 3, T, B, G)
        _expect("ghn", ghn.shape, 3, T, B, H)
    _check_lengths(lengths, B, T)
    if T == 0 or B == 0:
        return
    cdef Py_ssize_t k
    cdef floating half = 0.5
    cdef floating* buf = NULL     # eval: the step's gates
    cdef floating* hnb = NULL     # W_hn h_{t-1} + b_hn
    cdef floating* nbuf = NULL    # the candidate n of the active rows
    cdef floating* scale = NULL   # 1/2 for r and z (fused)
    cdef floating* act = NULL     # fused: r and z's sigmoids in the product (1/2, 1/2)
    cdef object terms             # unfused: the input terms of all steps
    cdef _GruArgs a
    cdef _StepWeights sw
    cdef _StepInput si
    cdef Py_ssize_t split = 0
    sw.data = si.gx = si.h_panels = si.x_panels = NULL
    try:
        if not training:
            buf = <floating*>_alloc(B * G, sizeof(floating))
        # fused, only r and z: n's input term stays apart from its recurrent one
        terms = _forward_input(&si, &sw, &x[0, 0, 0], xts, &w_ih[0, 0], &bias[0],
                               &w_hh[0, 0], T, B, D, G, H, &lengths[0], NULL, 2 * H)
        hnb = <floating*>_alloc(B * H, sizeof(floating))
        nbuf = <floating*>_alloc(B * H, sizeof(floating))
        scale = <floating*>_alloc(2 * H, sizeof(floating))
        for k in range(2 * H):
            scale[k] = half
        if si.fused > 0:  # (float32 only) the product's columns are r and z alone
            act = <floating*>_alloc(4 * H, sizeof(floating))
            for k in range(4 * H):
                act[k] = half
        a.w, a.b_hn, a.bias, a.lengths = &w_hh[0, 0], &b_hn[0], &bias[0], &lengths[0]
        a.h, a.out = &h[0, 0], &out[0, 0, 0]
        a.gates = &gates[0, 0, 0] if training else NULL
        a.ghn = &ghn[0, 0, 0] if training else NULL
        a.buf, a.hnb, a.nbuf, a.scale, a.act = buf, hnb, nbuf, scale, act
        a.T, a.B, a.H, a.D, a.ts, a.reverse, a.sw, a.si = T, B, H, D, ts, reverse, &sw, &si
        with nogil:
            if floating is float:
                if sw.panels:
                    split = _split_at(&lengths[0], B, T, (H + D) * G)
                _run_rows(_gru_forward_rows_f, &a, B, split)
            else:
                _gru_forward_rows(<floating*>NULL, &a, 0, B)
    finally:
        _release(buf)
        _release(hnb)
        _release(nbuf)
        _release(scale)
        _release(act)
        _free_input(&si, &sw)


cdef void _gru_backward_rows(floating* kind, const _GruArgs* a, Py_ssize_t b0,
                             Py_ssize_t b1) noexcept nogil:
    """gru_backward's steps over the rows ``b0:b1``."""
    cdef Py_ssize_t T = a.T, B = a.B, H = a.H, G = 3 * H, n = b1 - b0
    cdef bint reverse = a.reverse
    cdef const floating* w_p = <const floating*>a.w
    cdef const int64_t* len_p = a.lengths + b0
    cdef floating* dh_p = <floating*>a.h + b0 * H
    cdef const floating* out_p = <const floating*>a.out + b0 * H
    cdef const floating* gates_p = <const floating*>a.gates + b0 * G
    cdef const floating* ghn_p = <const floating*>a.ghn + b0 * H
    cdef const floating* h0_p = <const floating*>a.h0 + b0 * H
    cdef const floating* dout_p = <const floating*>a.dout + b0 * H
    cdef floating* dgx_p = <floating*>a.dgx + b0 * G
    cdef floating* dgh_p = <floating*>a.dgh + b0 * G
    cdef Py_ssize_t s, t, b, j, nb
    cdef const floating* gtr
    cdef const floating* hpr
    cdef const floating* ghr
    cdef const floating* gor
    cdef floating* dhb
    cdef floating* dxr
    cdef floating* drr
    cdef floating r, z, nn, g, dan, dar, one = 1
    for s in range(T):
        t = s if reverse else T - 1 - s
        nb = _n_active(len_p, n, t)
        for b in range(nb):
            gtr = gates_p + (t * B + b) * G
            # h_{t-1}: h0 at the sample's first step, else the previous output
            if _first_step(len_p, b, t, reverse):
                hpr = h0_p + b * H
            elif reverse:
                hpr = out_p + ((t + 1) * B + b) * H
            else:
                hpr = out_p + ((t - 1) * B + b) * H
            ghr = ghn_p + (t * B + b) * H
            gor = dout_p + t * a.ts + b * H
            dhb = dh_p + b * H
            dxr = dgx_p + (t * B + b) * G
            drr = dgh_p + (t * B + b) * G
            for j in range(H):
                r = gtr[j]
                z = gtr[H + j]
                nn = gtr[2 * H + j]
                g = gor[j] + dhb[j]
                dan = g * (one - z) * (one - nn * nn)
                dar = dan * ghr[j] * r * (one - r)
                dxr[j] = dar
                dxr[H + j] = g * (hpr[j] - nn) * z * (one - z)
                dxr[2 * H + j] = dan
                drr[j] = dar
                drr[H + j] = dxr[H + j]
                drr[2 * H + j] = dan * r
                # the direct path; the recurrent one is added below
                dhb[j] = g * z
        _zero(dgx_p + t * B * G + nb * G, (n - nb) * G)
        _zero(dgh_p + t * B * G + nb * G, (n - nb) * G)
        if nb > 0:
            # dh[:nb] = g * z + dgh[t, :nb] @ W_hh
            _back_product(dh_p, dgh_p + t * B * G, w_p, a.sw, nb, H, G, True)


cdef void _gru_backward_rows_f(void* a, Py_ssize_t b0, Py_ssize_t b1) noexcept nogil:
    _gru_backward_rows(<float*>NULL, <const _GruArgs*>a, b0, b1)


def gru_backward(const floating[:, ::1] w_hh, const int64_t[::1] lengths,
                 bint reverse, const floating[:, ::1] h0,
                 const floating[:, :, ::1] out, const floating[:, :, ::1] gates,
                 const floating[:, :, ::1] ghn, const floating[:, :, ::1] dout,
                 floating[:, ::1] dh, floating[:, :, ::1] dgx,
                 floating[:, :, ::1] dgh):
    """GRU backward through time; fills ``dgx`` and ``dgh`` and turns ``dh`` into
    the gradient w.r.t. the initial state."""
    cdef Py_ssize_t T = out.shape[0], B = out.shape[1], H = out.shape[2], G = 3 * H
    _expect("w_hh", w_hh.shape, 2, G, H)
    _expect("h0", h0.shape, 2, B, H)
    _expect("gates", gates.shape, 3, T, B, G)
    _expect("ghn", ghn.shape, 3, T, B, H)
    cdef bint has_dout = _has_out_grad(dout.shape, T, B, H)
    _expect("dh", dh.shape, 2, B, H)
    _expect("dgx", dgx.shape, 3, T, B, G)
    _expect("dgh", dgh.shape, 3, T, B, G)
    _check_lengths(lengths, B, T)
    if T == 0 or B == 0:
        return
    cdef floating* no_dout = NULL  # zeros read as dout when there is none
    cdef _GruArgs a
    cdef _StepWeights sw
    cdef Py_ssize_t split = 0
    sw.data = NULL
    try:
        if not has_dout:
            no_dout = _zeros(&dh[0, 0], B * H)
        _backward_weights(&sw, &w_hh[0, 0], G, H, B, T)
        a.w, a.lengths, a.h, a.h0 = &w_hh[0, 0], &lengths[0], &dh[0, 0], &h0[0, 0]
        a.out, a.gates, a.ghn = <void*>&out[0, 0, 0], <void*>&gates[0, 0, 0], <void*>&ghn[0, 0, 0]
        a.dout = <const floating*>no_dout if no_dout != NULL else &dout[0, 0, 0]
        a.ts = 0 if no_dout != NULL else B * H
        a.dgx, a.dgh = &dgx[0, 0, 0], &dgh[0, 0, 0]
        a.T, a.B, a.H, a.reverse, a.sw = T, B, H, reverse, &sw
        with nogil:
            if floating is float:
                if sw.panels:
                    split = _split_at(&lengths[0], B, T, G * H)
                _run_rows(_gru_backward_rows_f, &a, B, split)
            else:
                _gru_backward_rows(<floating*>NULL, &a, 0, B)
    finally:
        _release(sw.data)
        _release(no_dout)

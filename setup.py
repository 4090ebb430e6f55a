"""Build script: the package metadata is in pyproject.toml; this file only
declares the compiled (Cython) kernel extensions."""

import glob
import os
import tempfile

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.command.sdist import sdist

PYX_SOURCES = sorted(glob.glob(os.path.join("fastrnn", "_kernels", "*.pyx")))

# Added to every extension when the compiler accepts them (gcc, clang).
UNIX_FLAGS = ["-O3"]
# Tried one by one, kept if the compiler accepts them. gcc vectorises a loop
# whose pointers might alias only behind run-time overlap checks and gives up
# beyond 10 of them; the fused element-wise gate loops need up to ~70. No
# effect on the results (no -ffast-math: exactness matters).
OPTIONAL_FLAGS = ["--param=vect-max-version-for-alias-checks=100"]

# FASTRNN_CYTHON_BOUNDSCHECK=1: a checked build for CI (.ci/check_cython_bounds.sh).
# Every memoryview index is checked (boundscheck, initializedcheck), so an
# out-of-range one raises IndexError instead of touching memory. wraparound stays
# off as in the normal build: with it on, a negative index would silently wrap
# to the end of the axis instead of raising. Slower: build it in a throwaway
# copy of the tree, never in place here, as a later normal build reuses the
# generated C and the extension as long as the .pyx is unchanged.
BOUNDSCHECK = os.environ.get("FASTRNN_CYTHON_BOUNDSCHECK", "") == "1"


class BuildExt(build_ext):
    """``build_ext`` adding the optimisation flags the compiler accepts."""

    def build_extensions(self):
        if self.compiler.compiler_type == "unix":
            flags = UNIX_FLAGS + [f for f in OPTIONAL_FLAGS if self._accepts(f)]
            for ext in self.extensions:
                ext.extra_compile_args = list(ext.extra_compile_args or []) + flags
        super().build_extensions()

    def _accepts(self, flag):
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "flag_probe.c")
            with open(src, "w") as f:
                f.write("int main(void) { return 0; }\n")
            try:
                self.compiler.compile([src], output_dir=tmp,
                                      extra_postargs=["-Werror", flag])
            except Exception:  # CompileError, or anything the probe trips on
                return False
        return True


class SDist(sdist):
    """``sdist`` that ships the ``.pyx`` sources (the extensions list only the
    generated C), so that a wheel built from the sdist has its extension."""

    def make_release_tree(self, base_dir, files):
        extra = PYX_SOURCES + sorted(glob.glob(os.path.join("fastrnn", "_kernels", "*.pxd")))
        super().make_release_tree(base_dir, list(files) + [f for f in extra if f not in files])


def extensions():
    if not PYX_SOURCES:
        return []
    import numpy
    from Cython.Build import cythonize
    from setuptools import Extension

    exts = [
        Extension(
            "fastrnn._kernels." + os.path.splitext(os.path.basename(src))[0],
            [src],
            include_dirs=[numpy.get_include()],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        )
        for src in PYX_SOURCES
    ]
    # The only place the directives are set (the .pyx header keeps just
    # language_level and cdivision, which fix the source's semantics): a
    # directive in the file's header would override these, and then the
    # checked build below would silently be an unchecked one.
    exts = cythonize(exts, language_level=3, compiler_directives={
        "boundscheck": BOUNDSCHECK, "wraparound": False, "cdivision": True,
        "initializedcheck": BOUNDSCHECK,
    }, force=BOUNDSCHECK)
    for ext in exts:
        # cythonize lists the NumPy headers (absolute paths) as dependencies;
        # setuptools then warns that it cannot put them in the sdist manifest
        ext.depends = [d for d in ext.depends if not os.path.isabs(d)]
    return exts


setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExt, "sdist": SDist},
    # the generated C and the Cython sources stay out of the wheel
    exclude_package_data={"fastrnn._kernels": ["*.c", "*.pyx"]},
)

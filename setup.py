"""Build script: the package metadata is in pyproject.toml; this file only
declares the compiled (Cython) kernel extensions."""

import glob
import os

from setuptools import setup


def extensions():
    sources = sorted(glob.glob(os.path.join("fastrnn", "_kernels", "*.pyx")))
    if not sources:
        return []
    import numpy
    from Cython.Build import cythonize
    from setuptools import Extension

    exts = [
        Extension(
            "fastrnn._kernels." + os.path.splitext(os.path.basename(src))[0],
            [src],
            include_dirs=[numpy.get_include()],
            extra_compile_args=["-O3"],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        )
        for src in sources
    ]
    return cythonize(exts, language_level=3, compiler_directives={
        "boundscheck": False, "wraparound": False, "cdivision": True,
        "initializedcheck": False,
    })


setup(ext_modules=extensions())

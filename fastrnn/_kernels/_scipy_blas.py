"""Import ``scipy.linalg.cython_blas`` without the rest of ``scipy.linalg``.

The Cython kernels take their BLAS from ``scipy.linalg.cython_blas``. Importing
a submodule runs its package's ``__init__`` first, and ``scipy.linalg``'s
imports SciPy's whole array-API layer, NumPy's f2py among it: 150 ms of a
service's 0.35 s cold start here, for nothing the kernels use. The extension
module itself needs only the ``scipy`` package.

:func:`preload` loads it under its own name before the kernels are imported,
so their ``cimport`` finds it in ``sys.modules``. Everything else sees what it
would have seen: the module is the one and only ``scipy.linalg.cython_blas``,
and when anything imports ``scipy.linalg`` later, a watcher on the import
system gives the package its ``cython_blas`` attribute, as an ordinary import of
the submodule would have. Where ``scipy.linalg`` is imported already, or
anything here fails, the ordinary import runs instead (only slower).
"""

import importlib.machinery
import importlib.util
import os
import sys

_NAME = "scipy.linalg.cython_blas"


class _AttachToPackage:
    """Import-system watcher: ``scipy.linalg``'s ``__init__`` imports its own
    submodules, so the first lookup of one means the package module exists. It
    then gets the attribute and the watcher removes itself. It finds nothing."""

    def find_spec(self, name, path=None, target=None):
        if name.startswith("scipy.linalg."):
            package = sys.modules.get("scipy.linalg")
            if package is not None:
                package.cython_blas = sys.modules[_NAME]
                try:
                    sys.meta_path.remove(self)
                except ValueError:  # another thread did
                    pass
        return None


def preload():
    """Load ``scipy.linalg.cython_blas`` without ``scipy.linalg``'s ``__init__``,
    if neither is imported yet; return whether it did.

    The loading follows the import system's own protocol (its private
    ``_ModuleLockManager`` and ``_load_unlocked``, as ``importlib`` loads any
    module): under the module's lock, marked as initialising, so that another
    thread importing it meanwhile waits for the finished module rather than
    taking a half-made one.
    """
    if "scipy.linalg" in sys.modules or _NAME in sys.modules:
        return False
    try:
        from importlib import _bootstrap

        import scipy  # the package only: light

        directory = os.path.join(os.path.dirname(scipy.__file__), "linalg")
        spec = importlib.machinery.PathFinder.find_spec("cython_blas", [directory])
        if spec is None or not isinstance(spec.loader,
                                          importlib.machinery.ExtensionFileLoader):
            return False
        spec = importlib.util.spec_from_file_location(_NAME, spec.origin)
        with _bootstrap._ModuleLockManager(_NAME):
            if "scipy.linalg" in sys.modules or _NAME in sys.modules:
                return False  # another thread was first
            _bootstrap._load_unlocked(spec)  # in sys.modules only once complete
    except Exception:  # noqa: BLE001 (the ordinary import runs, and says what is wrong)
        return False
    sys.meta_path.insert(0, _AttachToPackage())
    return True

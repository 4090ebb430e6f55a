"""The examples in the docstrings run and print what they say they print."""

import doctest
import importlib
import pkgutil
import warnings

import pytest

import fastrnn


def _modules_with_examples():
    names = ["fastrnn"] + [m.name for m in pkgutil.walk_packages(fastrnn.__path__,
                                                                 "fastrnn.")
                           if m.name != "fastrnn.__main__"]
    finder = doctest.DocTestFinder()
    found = []
    for name in names:
        try:
            module = importlib.import_module(name)
        except ImportError:  # a backend not built here; its tests say so
            continue
        if any(t.examples for t in finder.find(module)):
            found.append(name)
    return found


MODULES = _modules_with_examples()


def test_the_public_modules_have_examples():
    for name in ("fastrnn", "fastrnn.serving", "fastrnn.nn", "fastrnn.estimators"):
        assert name in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the examples' short fits do not converge
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False,
                                 report=True)
    assert result.attempted > 0
    assert result.failed == 0, f"{result.failed} example(s) of {name} failed (see above)"

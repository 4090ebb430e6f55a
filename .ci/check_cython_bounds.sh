#!/usr/bin/env bash
# Run the Cython kernel and layer tests once against a bounds-checked build of
# the extension (FASTRNN_CYTHON_BOUNDSCHECK=1, see setup.py), so that an
# out-of-range memoryview index raises IndexError instead of touching memory.
# The checked build lives in a temporary copy of the working tree: the in-place
# build and the installed package are left alone.
#
# Run from the repository root:  .ci/check_cython_bounds.sh
# Environment: PYTHON (default python) builds and runs the tests; KEEP_TMP=1
# keeps the temporary directory for inspection.
set -euo pipefail

PYTHON=${PYTHON:-python}

source "$(dirname "$0")/common.sh"
require_repo_root check_cython_bounds.sh
make_tmp cybounds

# 1. The build requirements (pip install -e builds in an isolated environment,
#    so Cython need not be here): pyproject.toml's [build-system] requires.
if ! "$PYTHON" -c "import Cython" >/dev/null 2>&1; then
    echo "--- installing the build requirements of pyproject.toml"
    mapfile -t reqs < <("$PYTHON" - <<'EOF'
try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    from pip._vendor import tomli as tomllib
with open("pyproject.toml", "rb") as f:
    print("\n".join(tomllib.load(f)["build-system"]["requires"]))
EOF
    )
    if [[ ${#reqs[@]} -eq 0 ]]; then
        echo "check_cython_bounds.sh: no [build-system] requires in pyproject.toml" >&2
        exit 1
    fi
    "$PYTHON" -m pip install --quiet --disable-pip-version-check "${reqs[@]}"
fi

# 2. A clean copy: tracked and untracked-but-not-ignored files only (no in-place
#    .so or generated .c), then the checked extension built in place there.
echo "--- building the bounds-checked extension in $tmp/src"
copy_clean_tree "$tmp/src"
cd "$tmp/src"
FASTRNN_CYTHON_BOUNDSCHECK=1 "$PYTHON" setup.py -q build_ext --inplace >build.log 2>&1 \
    || { cat build.log >&2; exit 1; }
# the directives took effect (a header directive in the .pyx would override them)
if ! grep -q "__Pyx_RaiseBufferIndexError" fastrnn/_kernels/_cython_kernels.c; then
    echo "check_cython_bounds.sh: the generated C has no bounds checks" >&2
    exit 1
fi

# 3. The tests, importing the checked extension from the copy.
export PYTHONPATH="$tmp/src${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" - "$tmp/src" <<'EOF'
import os
import sys

from fastrnn import _kernels

root = os.path.realpath(sys.argv[1]) + os.sep
assert "cython" in _kernels.available_backends(), _kernels.unavailable_backends()
path = os.path.realpath(_kernels.get_kernels("cython").__file__)
assert path.startswith(root), f"imported {path}, not the checked build under {root}"
print("checked extension:", path)
EOF
echo "--- running the Cython kernel and layer tests"
"$PYTHON" -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_layers.py -k cython
echo "--- check_cython_bounds.sh: OK"

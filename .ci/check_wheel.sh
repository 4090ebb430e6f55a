#!/usr/bin/env bash
# Build a wheel from a clean copy of the working tree, install it into a fresh
# virtual environment and check that the compiled (Cython) kernels load and
# agree with the NumPy reference on one LSTM forward + backward.
#
# Run from the repository root:  .ci/check_wheel.sh
# Environment: PYTHON (default python3) builds the wheel and the venv;
# KEEP_TMP=1 keeps the temporary directory for inspection.
set -euo pipefail

PYTHON=${PYTHON:-python3}

source "$(dirname "$0")/common.sh"
require_repo_root check_wheel.sh
make_tmp wheel

# 1. A clean copy of the source tree.
echo "--- copying the source tree"
copy_clean_tree "$tmp/src"

# 2. The wheel, with build isolation (the build requirements of pyproject.toml).
echo "--- building the wheel"
"$PYTHON" -m build --wheel --outdir "$tmp/dist" "$tmp/src"
wheels=("$tmp"/dist/fastrnn-*.whl)
if [[ ${#wheels[@]} -ne 1 || ! -f "${wheels[0]}" ]]; then
    echo "check_wheel.sh: expected exactly one wheel in $tmp/dist" >&2
    exit 1
fi

# 3. A fresh environment with the wheel and its runtime dependencies.
echo "--- installing ${wheels[0]##*/} into a fresh venv"
"$PYTHON" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install --quiet --disable-pip-version-check "${wheels[0]}"

# 4. Smoke test, run outside the source tree so the installed package is used.
echo "--- checking the installed package"
cd "$tmp"
env -u PYTHONPATH -u FASTRNN_BACKEND PYTHONNOUSERSITE=1 "$tmp/venv/bin/python" - <<'EOF'
import numpy as np

import fastrnn
from fastrnn import _kernels

assert "site-packages" in fastrnn.__file__, fastrnn.__file__
backends = _kernels.available_backends()
print("fastrnn", fastrnn.__version__, "backends:", backends)
assert "cython" in backends, (backends, _kernels.unavailable_backends())
cy, ref = _kernels.get_kernels("cython"), _kernels.get_kernels("reference")

rng = np.random.default_rng(0)
T, B, H, P = 6, 4, 5, 3
lengths = np.array([6, 5, 5, 2], dtype=np.int64)


def a(*shape):
    return rng.uniform(-0.5, 0.5, shape)


D = 3
args = dict(x=a(T, B, D), w_ih=a(4 * H, D), bias=a(4 * H), w_hh=a(4 * H, P),
            w_hr=a(P, H), peep=a(3, H), h0=a(B, P), c0=a(B, H), dout=a(T, B, P),
            dhn=a(B, P), dcn=a(B, H))


def run(k):
    z = np.zeros
    h, c = args["h0"].copy(), args["c0"].copy()
    out, gates, cs, hc = z((T, B, P)), z((T, B, 4 * H)), z((T, B, H)), z((T, B, H))
    k.lstm_forward(args["x"], args["w_ih"], args["bias"], args["w_hh"], args["w_hr"],
                   args["peep"], lengths, False, True, h, c, out, gates, cs, hc)
    dh, dc = args["dhn"].copy(), args["dcn"].copy()
    dgx, dpeep, dhr = z((T, B, 4 * H)), z((3, H)), z((T, B, P))
    k.lstm_backward(args["w_hh"], args["w_hr"], args["peep"], lengths, False,
                    args["c0"], out, gates, cs, hc, args["dout"], dh, dc, dgx,
                    dpeep, dhr)
    return dict(h=h, c=c, out=out, gates=gates, cs=cs, hc=hc, dh=dh, dc=dc,
                dgx=dgx, dpeep=dpeep, dhr=dhr)


want, got = run(ref), run(cy)
for name in want:
    np.testing.assert_allclose(got[name], want[name], rtol=1e-10, atol=1e-12,
                               err_msg=name)
print("cython lstm_forward + lstm_backward match the reference")
EOF
echo "--- check_wheel.sh: OK"

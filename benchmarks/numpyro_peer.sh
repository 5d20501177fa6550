#!/usr/bin/env bash
# The peer of benchmarks/bench_numpyro.py: NumPyro on JAX's CPU build in a virtual environment
# of its own (neither is a dependency of the zoo). CPU only: `jax[cpu]` brings jaxlib and no CUDA
# plugin; nothing here installs torch (the script checks). Pinned to what installs on Python
# 3.11 (2026-12-03): numpyro 0.22.0 and jax/jaxlib 0.10.2 (jax 0.11 and later need Python
# >= 3.12), scikit-learn 1.9.1 for the bundled diabetes and digits data
# (benchmarks/numpyro_side.py loads them when run on its own). About 25 s and 0.7 GB.
#
#   bash benchmarks/numpyro_peer.sh          # venv at $NUMPYRO_VENV, default /tmp/elbo-zoo-numpyro-venv
#   OMP_NUM_THREADS=1 python benchmarks/bench_numpyro.py   # then the benchmark finds it there
set -euo pipefail
VENV="${NUMPYRO_VENV:-/tmp/elbo-zoo-numpyro-venv}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/pip" install -q "numpyro==0.22.0" "jax[cpu]==0.10.2" "jaxlib==0.10.2" "scikit-learn==1.9.1"
if "$VENV/bin/python" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is None)"; then
    echo "torch is installed in $VENV: the NumPyro peer must not have it" >&2
    exit 1
fi
JAX_PLATFORMS=cpu "$VENV/bin/python" -c "import jax, numpyro, sklearn; print('numpyro', numpyro.__version__, 'jax', jax.__version__, 'scikit-learn', sklearn.__version__, jax.devices())"
echo "peer venv ready: $VENV"

#!/usr/bin/env bash
# The peer of benchmarks/bench_scvi.py: scvi-tools in a virtual environment of its own (it is
# not a dependency of the zoo). torch is pinned first to the zoo's version (2.13.0, the CPU
# wheel on the project's machines), so that scvi-tools does not pull a CUDA build; on Python
# 3.11 pip then resolves scvi-tools 1.4.x. About 90 s and 1.5 GB.
#
#   bash benchmarks/scvi_peer.sh            # venv at $SCVI_VENV, default /tmp/elbo-zoo-scvi-venv
#   python benchmarks/bench_scvi.py         # then the benchmark finds it there
set -euo pipefail
VENV="${SCVI_VENV:-/tmp/elbo-zoo-scvi-venv}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/pip" install -q "torch==2.13.0"
"$VENV/bin/pip" install -q "torch==2.13.0" "scvi-tools>=1.4,<1.5"
"$VENV/bin/python" -c "import scvi, torch; print('scvi-tools', scvi.__version__, 'torch', torch.__version__)"
echo "peer venv ready: $VENV"

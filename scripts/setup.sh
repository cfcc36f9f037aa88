#!/usr/bin/env bash
# Install steer-ui into the current Python environment at the locked versions. --dev adds the test tools.
#   requirements.lock / requirements-dev.lock: every package, exact versions, hashes (scripts/lock.sh);
#   torch: the version requirements.txt pins, in the build pip finds (already installed, a CPU build on
#   disk, or PyPI's), so a GPU machine keeps the CUDA build it has;
#   steer-ui itself, editable: `import steer_ui` and the `steer-ui` command work from any directory.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "setup: steer-ui needs Python 3.11 or newer; $PY is $("$PY" -V 2>&1)" >&2
  exit 1
fi
pip_install() { "$PY" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "$@"; }
lock=requirements.lock
[ "${1:-}" = "--dev" ] && lock=requirements-dev.lock
pip_install "$(grep -E '^torch==' requirements.txt)"
# The lock is complete, so nothing is resolved: --no-deps, every file checked against its hash, and
# torch's own dependencies moved to their locked versions.
pip_install --no-deps --require-hashes -r "$lock"
pip_install --no-deps --no-build-isolation --editable .
if [ "${1:-}" = "--dev" ]; then
  # The browser tests drive Debian's chromium (Playwright's own browser download needs a CDN).
  if [ ! -x "${STEER_UI_CHROMIUM:-/usr/bin/chromium}" ]; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
      (apt-get install -y -q chromium || (apt-get update -q && apt-get install -y -q chromium)) >/dev/null
    else
      echo "setup: install chromium (apt-get install chromium) for the browser tests" >&2
    fi
  fi
fi

#!/usr/bin/env bash
# Refresh the locks from the declared ranges (requirements.txt, requirements-dev.txt, requirements-ray.txt,
# requirements-setup.txt):
#   bash scripts/lock.sh             add what changed in the declarations, keep every other pin
#   bash scripts/lock.sh --upgrade   move every pin to the newest release the ranges allow
# Writes requirements-dev.lock (runtime + test tools + the ray extra) and requirements.lock (runtime, the same versions),
# universal (every Python >= 3.11 and platform: markers pick per environment) with hashes. torch is
# left out of both: setup installs the build for the machine first (see scripts/lock/excludes.txt).
# Needs uv (in requirements-dev.txt). Then run the suite and scripts/check_newest.sh before committing.
set -euo pipefail
cd "$(dirname "$0")/.."
compile() {
  "${PYTHON:-python3}" -m uv pip compile --quiet --universal --python-version 3.11 --generate-hashes \
    --config-file scripts/lock/uv.toml --excludes scripts/lock/excludes.txt --no-emit-package torch \
    --custom-compile-command "bash scripts/lock.sh" "$@"
}
compile requirements.txt requirements-dev.txt requirements-ray.txt requirements-setup.txt -o requirements-dev.lock "${@}"
# The runtime lock takes the dev lock's versions as constraints: the two never disagree.
compile requirements.txt requirements-setup.txt --constraints requirements-dev.lock -o requirements.lock

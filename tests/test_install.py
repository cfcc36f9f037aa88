"""The install: the locks agree with the declared ranges and are what this environment runs, and the
package works from any directory (the README's Python quickstart as a script, the ``steer-ui`` command)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
RUNTIME = ("requirements.txt", "requirements-setup.txt")
DEV = (*RUNTIME, "requirements-dev.txt", "requirements-ray.txt")  # the ray extra is locked for its tests


def declared(*files: str) -> list[Requirement]:
    out = []
    for name in files:
        for line in (ROOT / name).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                out.append(Requirement(line))
    return out


def locked(name: str) -> dict[str, list[tuple[str, Marker | None, int]]]:
    """{package: [(version, marker, hashes)]} of a uv lock (a universal lock may pin one per marker)."""
    pins: dict[str, list] = {}
    text = (ROOT / name).read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if not line or line[0] in " #":
            continue
        spec, *hashes = line.split("--hash=")
        req = Requirement(spec.strip())
        (version,) = [s.version for s in req.specifier if s.operator == "=="]
        pins.setdefault(canonicalize_name(req.name), []).append((version, req.marker, len(hashes)))
    return pins


@pytest.mark.parametrize(("lock", "files"), [("requirements.lock", RUNTIME), ("requirements-dev.lock", DEV)])
def test_the_lock_pins_every_declared_package_within_its_range(lock, files):
    pins = locked(lock)
    for req in declared(*files):
        name = canonicalize_name(req.name)
        if name == "torch":  # installed by setup before the lock, in the machine's build
            assert name not in pins and [s.operator for s in req.specifier] == ["=="], "torch: one exact pin"
            continue
        assert name in pins, f"{req} is declared but not in {lock}: run bash scripts/lock.sh"
        for version, _, _ in pins[name]:
            assert req.specifier.contains(version, prereleases=True), f"{lock} pins {name}=={version}; declared {req}"
    for name, versions in pins.items():
        assert all(hashes for _, _, hashes in versions), f"{name} has no hash in {lock}"
    excluded = {canonicalize_name(line) for line in (ROOT / "scripts/lock/excludes.txt").read_text().splitlines()
                if line and not line.startswith("#")}
    assert not excluded & pins.keys()


def test_the_two_locks_agree_and_the_runtime_one_has_no_test_tools():
    runtime, dev = locked("requirements.lock"), locked("requirements-dev.lock")
    for name, versions in runtime.items():
        assert {v for v, _, _ in versions} == {v for v, _, _ in dev[name]}, name
    assert "pytest" not in runtime and "playwright" not in runtime


def test_this_environment_runs_the_locked_versions():
    """What the suite tests is what setup installs: every pin whose marker holds here is installed at
    its version (setup.sh installs the dev lock; a package moved by hand shows up here)."""
    wrong = []
    for name, versions in locked("requirements-dev.lock").items():
        for version, marker, _ in versions:
            if marker is None or marker.evaluate():
                try:
                    installed = metadata.version(name)
                except metadata.PackageNotFoundError:
                    installed = None
                if installed != version:
                    wrong.append(f"{name} {installed} (locked {version})")
    assert not wrong, "not the lock's versions: " + ", ".join(wrong) + "; run bash scripts/setup.sh --dev"


def test_the_package_declares_requirements_txt():
    """``pip install steer-ui`` (or of a clone) gets requirements.txt's ranges: the one declaration."""
    requires = {canonicalize_name(Requirement(r).name): str(Requirement(r).specifier)
                for r in metadata.requires("steer-ui") or []}
    for req in declared("requirements.txt"):
        assert requires.get(canonicalize_name(req.name)) == str(req.specifier), req
    # pip install "steer-ui[ray]": requirements-ray.txt's ranges, under the extra.
    extra = {canonicalize_name(r.name): str(r.specifier) for r in map(Requirement, metadata.requires("steer-ui") or [])
             if r.marker is not None and r.marker.evaluate({"extra": "ray"})}
    assert extra == {canonicalize_name(r.name): str(r.specifier) for r in declared("requirements-ray.txt")}


def readme_python_quickstart() -> tuple[str, str]:
    section = (ROOT / "README.md").read_text().split("## From Python and notebooks", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    shown = re.search(r"```text\n(.*?)```", section, re.S).group(1)
    return code, shown


def test_the_readme_python_quickstart_runs_as_a_script_from_anywhere(tmp_path):
    code, shown = readme_python_quickstart()
    (tmp_path / "quickstart.py").write_text(code)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "quickstart.py"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    printed = [line.split() for line in out.stdout.strip().splitlines()]
    expected = [line.split() for line in shown.strip().splitlines()]
    assert printed[0] == expected[0]  # the columns
    for got, want in zip(printed[1:], expected[1:], strict=True):
        # Tokens exactly; readings to the README's rounding (CPU kernels may differ in the last bit).
        assert got[:-3] == want[:-3] and got[-1] == want[-1]
        assert float(got[-3]) == pytest.approx(float(want[-3]), abs=0.002)
        assert float(got[-2]) == pytest.approx(float(want[-2]), abs=0.002)


def test_the_steer_ui_command_works_from_anywhere(tmp_path):
    command = Path(sys.executable).parent / "steer-ui"
    out = subprocess.run([str(command), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("usage: steer-ui ")
    assert "``" not in out.stdout  # plain text, not the module docstring's markup
    out = subprocess.run([str(command), "runs", "--db", str(tmp_path / "none.sqlite")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr

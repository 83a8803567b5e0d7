"""What the cluster installs (emr_resources/bootstrap.sh + requirements.txt) against what the code
needs: every third-party module `fruits_assets` imports is installed there, the pins agree with
pyproject.toml, and the set resolves, as wheels, for Python 3.11 on aarch64 manylinux (the
Graviton nodes run Amazon Linux 2023: glibc 2.34).

The resolution test asks PyPI (pip's resolver, `--dry-run`, the target platform's tags), so it
needs the network; it skips where PyPI cannot be reached, and CI (`.ci/run`, which installs from
PyPI anyway) sets FRUITS_REQUIRE_NETWORK_TESTS=1 so that it cannot skip there. The emulated
cluster of `test_emr_emulation.py` installs the same file for this machine's platform.
"""

import ast
import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

PROJECT = Path(__file__).resolve().parents[1]
RESOURCES = PROJECT / "emr_resources"
PACKAGE = PROJECT / "fruits_assets"
# What EMR's own Spark gives every PySpark process (not pip-installed on the nodes).
PROVIDED_BY_EMR = {"pyspark", "py4j"}
AARCH64 = {"platform_machine": "aarch64", "python_version": "3.11", "sys_platform": "linux", "platform_system": "Linux"}
# Amazon Linux 2023 has glibc 2.34: it installs manylinux wheels up to manylinux_2_34 (PEP 600).
AARCH64_TAGS = ["manylinux2014_aarch64", *[f"manylinux_2_{minor}_aarch64" for minor in range(17, 35)]]


def cluster_requirements(environment: dict | None = None) -> list[Requirement]:
    """requirements.txt's lines whose marker applies to `environment` (default: this machine)."""
    found = []
    for line in (RESOURCES / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate(environment):
                found.append(requirement)
    return found


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def third_party_imports() -> set[str]:
    """Top-level modules imported anywhere in the package (function-level imports included)."""
    modules = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return {m for m in modules if m not in sys.stdlib_module_names and m != "fruits_assets" and m != "__future__"}


def closure(names: set[str]) -> set[str]:
    """The distributions `names` pull in (their requirements, as installed here), recursively."""
    seen, todo = set(), [canonical(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for text in requires:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(canonical(requirement.name))
    return seen


def test_every_module_the_code_imports_is_installed_on_the_cluster():
    installed = closure({r.name for r in cluster_requirements()})
    by_module = importlib.metadata.packages_distributions()
    missing = {}
    for module in sorted(third_party_imports()):
        distributions = {canonical(d) for d in by_module.get(module, [module])}
        if not distributions & (installed | PROVIDED_BY_EMR):
            missing[module] = sorted(distributions)
    assert not missing, f"imported by fruits_assets, not installed by the EMR bootstrap: {missing}"


def test_cluster_pins_agree_with_pyproject():
    import tomllib

    pyproject = tomllib.loads((PROJECT / "pyproject.toml").read_text())
    declared = {}
    for text in pyproject["project"]["dependencies"]:
        requirement = Requirement(text)
        if requirement.marker is None or requirement.marker.evaluate():
            declared[canonical(requirement.name)] = requirement.specifier
    for environment in (None, AARCH64):
        for requirement in cluster_requirements(environment):
            name = canonical(requirement.name)
            [pin] = [s.version for s in requirement.specifier if s.operator == "=="]
            if name in declared:
                assert declared[name].contains(pin), (name, pin, str(declared[name]))
            assert name not in PROVIDED_BY_EMR, f"{name}: EMR's Spark provides it (and PyPI has no wheel)"
    assert {"dagster", "dagster-aws", "pandas"} <= {canonical(r.name) for r in cluster_requirements(AARCH64)}


def test_bootstrap_installs_the_requirements_as_wheels():
    script = (RESOURCES / "bootstrap.sh").read_text()
    assert re.search(r'pip install "\$\{PIP_ARGS\[@\]\}" --only-binary=:all: -r "\$\{REQUIREMENTS\}"', script)
    assert "python3.11" in script and "/opt/fruits-venv" in script
    cluster = (RESOURCES / "cluster.yaml").read_text()
    assert "requirements: requirements.txt" in cluster and "PYSPARK_PYTHON: /opt/fruits-venv/bin/python" in cluster


# What Amazon Linux 2023 (EMR 7's nodes) provides: glibc 2.34, GCC 11's libstdc++ (AL2023 User
# Guide: "Core toolchain packages glibc, gcc, binutils"; GCC 11 stops at GLIBCXX_3.4.29).
AL2023_GLIBC, AL2023_GLIBCXX = (2, 34), (3, 4, 29)
WHEELS = PROJECT / ".cache" / "aarch64-wheels"


def symbol_versions(wheel: Path) -> dict:
    """The newest GLIBC_ and GLIBCXX_ symbol versions the wheel's shared libraries ask for."""
    import zipfile

    newest = {"GLIBC": (), "GLIBCXX": ()}
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if ".so" in Path(name).name:
                for kind, version in re.findall(rb"\b(GLIBCXX|GLIBC)_(\d+(?:\.\d+)+)\b", archive.read(name)):
                    parsed = tuple(int(v) for v in version.decode().split("."))
                    newest[kind.decode()] = max(newest[kind.decode()], parsed)
    return newest


@pytest.mark.slow
def test_cluster_wheels_resolve_and_run_on_amazon_linux_2023_aarch64(tmp_path):
    """pip resolves the cluster's requirements for CPython 3.11 on aarch64 manylinux (the
    Graviton nodes), as wheels, and none of those wheels needs a newer glibc or libstdc++ than
    Amazon Linux 2023 has (ai-edge-litert 2.x, for one, would: GLIBCXX_3.4.30)."""
    requirements = tmp_path / "requirements-aarch64.txt"
    requirements.write_text("\n".join(str(r).split(";")[0] for r in cluster_requirements(AARCH64)) + "\n")
    platforms = [arg for tag in AARCH64_TAGS for arg in ("--platform", tag)]
    WHEELS.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--only-binary=:all:",
            "--python-version",
            "3.11",
            "--implementation",
            "cp",
            *platforms,
            "--dest",
            str(WHEELS),
            "-r",
            str(requirements),
        ],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    unreachable = re.search(
        r"Failed to establish|Network is unreachable|Temporary failure in name resolution|timed out", result.stderr
    )
    if result.returncode != 0 and unreachable and os.environ.get("FRUITS_REQUIRE_NETWORK_TESTS") != "1":
        pytest.skip(f"PyPI is not reachable from here: {unreachable.group(0)}")
    assert result.returncode == 0, result.stderr[-3000:]
    wanted = {canonical(r.name): r for r in cluster_requirements(AARCH64)}
    wheels = {}
    for wheel in WHEELS.glob("*.whl"):
        name, version = wheel.name.split("-")[:2]
        if canonical(name) in wanted and not wanted[canonical(name)].specifier.contains(version):
            continue  # another version, from an earlier download
        wheels[wheel.name] = symbol_versions(wheel)
    assert {"tensorflow", "ai-edge-litert", "dagster", "pandas", "pyarrow"} <= {
        canonical(w.split("-")[0]) for w in wheels
    }
    too_new = {
        name: {k: ".".join(map(str, v)) for k, v in needs.items()}
        for name, needs in wheels.items()
        if needs["GLIBC"] > AL2023_GLIBC or needs["GLIBCXX"] > AL2023_GLIBCXX
    }
    assert not too_new, f"wheels that Amazon Linux 2023 cannot load: {too_new}"

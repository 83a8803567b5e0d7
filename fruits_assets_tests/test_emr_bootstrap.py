"""What the cluster installs (emr_resources/bootstrap.sh + requirements.lock, made from
requirements.txt by `fruits-emr lock`) against what the code needs: every third-party module
`fruits_assets` imports is installed there, the pins agree with pyproject.toml, the lock pins every
package with hashes and covers every pin of requirements.txt, and the lock's aarch64 part
downloads, hash-checked, as wheels for Python 3.11 on aarch64 manylinux (the Graviton nodes run
Amazon Linux 2023: glibc 2.34).

The download test asks PyPI (pip, the target platform's tags), so it needs the network; it skips
where PyPI cannot be reached, and CI (`.ci/run`, which installs from PyPI anyway) sets
FRUITS_REQUIRE_NETWORK_TESTS=1 so that it cannot skip there. The emulated cluster of
`test_emr_emulation.py` installs the same lock, with the same pip command, for this machine.
"""

import ast
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from emr_resources import cli as emr_cli
from emr_resources.lock import LOCK_NAME, PIP_INSTALL_FLAGS, read_lock, uv_compile_args

PROJECT = Path(__file__).resolve().parents[1]
RESOURCES = PROJECT / "emr_resources"
PACKAGE = PROJECT / "fruits_assets"
# What EMR's own Spark gives every PySpark process (not pip-installed on the nodes).
PROVIDED_BY_EMR = {"pyspark", "py4j"}
AARCH64 = {
    "platform_machine": "aarch64",
    "python_version": "3.11",
    "python_full_version": "3.11.11",
    "sys_platform": "linux",
    "platform_system": "Linux",
}
# The emulated cluster's platform (this machine's kind): the same lock must serve it.
X86_64 = {**AARCH64, "platform_machine": "x86_64"}
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


# Imported only where the Dagster host runs the code, never on a node: {module: {file: functions}}.
# The host converts the Keras model to LiteRT before the image_features step (emr_launcher), and
# pca_quality (scikit-learn) has no step launcher: it runs on the host.
HOST_ONLY = {
    "tensorflow": {"featurize.py": {"to_litert", "_convert"}},
    "keras": {"featurize.py": {"build_model", "random_model", "imagenet_model"}},
    "sklearn": {"quality.py": {"evaluate"}},
    "threadpoolctl": {"quality.py": {"evaluate"}},
}


def imports_by_place() -> list[tuple[str, str, str | None]]:
    """(module, file, enclosing top-level function or None) of every import in the package."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for top in tree.body:
            function = top.name if isinstance(top, ast.FunctionDef | ast.ClassDef) else None
            for node in ast.walk(top):
                if isinstance(node, ast.Import):
                    found += [(alias.name.split(".")[0], path.name, function) for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found.append((node.module.split(".")[0], path.name, function))
    return found


def third_party_imports() -> set[str]:
    """Top-level modules imported anywhere in the package (function-level imports included),
    but the host-only ones."""
    modules = {module for module, _, _ in imports_by_place()} - set(HOST_ONLY)
    return {m for m in modules if m not in sys.stdlib_module_names and m != "fruits_assets" and m != "__future__"}


def test_host_only_modules_are_imported_only_in_host_only_functions():
    """TensorFlow and scikit-learn are not on the nodes: they are imported nowhere but in the
    functions that run on the host (conversion, evaluation), never when a module is imported."""
    for module, file, function in imports_by_place():
        if module in HOST_ONLY:
            assert function in HOST_ONLY[module].get(file, set()), (module, file, function)


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
    host_only = {"tensorflow", "tensorflow-cpu", "keras", "scikit-learn", "threadpoolctl"}
    assert not host_only & {canonical(r.name) for r in cluster_requirements()}, "a host-only package on the nodes"


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


def lock() -> list:
    return read_lock((RESOURCES / LOCK_NAME).read_text())


def test_bootstrap_installs_the_lock_hash_checked_as_wheels_and_so_does_the_emulation():
    """Every node installs the lock with --require-hashes --only-binary=:all: --no-deps (nothing
    resolved or compiled on a node), and the tests' emulated cluster runs the same pip command."""
    script = (RESOURCES / "bootstrap.sh").read_text()
    [flags] = re.findall(r'pip install "\$\{PIP_ARGS\[@\]\}" (.*) -r "\$\{LOCK\}"', script)
    assert tuple(flags.split()) == PIP_INSTALL_FLAGS == ("--require-hashes", "--only-binary=:all:", "--no-deps")
    assert "python3.11" in script and "/opt/fruits-venv" in script
    cluster = (RESOURCES / "cluster.yaml").read_text()
    assert f"requirements: {LOCK_NAME}" in cluster and "PYSPARK_PYTHON: /opt/fruits-venv/bin/python" in cluster
    assert [p.name for p in emr_cli.load_resources(RESOURCES).bootstrap_files()] == ["bootstrap.sh", LOCK_NAME]

    from fruits_assets_tests.emr_emulation import cluster_install_command

    command = cluster_install_command(Path("/venv/bin/python"), RESOURCES / LOCK_NAME)
    assert command[:4] == ["/venv/bin/python", "-m", "pip", "install"]
    assert command[-2:] == ["-r", str(RESOURCES / LOCK_NAME)] and tuple(command[-5:-2]) == PIP_INSTALL_FLAGS


def test_the_lock_pins_every_package_with_hashes():
    """Each entry of the lock is one exact version with at least one sha256 (pip's
    --require-hashes refuses anything else), and every package appears once per platform."""
    entries = lock()
    assert len(entries) > 50, "the lock holds the transitive packages too"
    for entry in entries:
        assert [spec.operator for spec in entry.requirement.specifier] == ["=="], str(entry.requirement)
        assert entry.hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in entry.hashes), entry.name
    for environment in (AARCH64, X86_64):
        names = [entry.name for entry in entries if entry.applies(environment)]
        assert len(names) == len(set(names)), sorted({n for n in names if names.count(n) > 1})


def test_the_lock_covers_every_pin_of_requirements_txt():
    """The lock is requirements.txt resolved: each pinned requirement is in it, at that version,
    for both platforms (rerun `fruits-emr lock` after changing requirements.txt)."""
    for environment in (AARCH64, X86_64):
        locked = {entry.name: entry.version for entry in lock() if entry.applies(environment)}
        for requirement in cluster_requirements(environment):
            [pin] = [spec.version for spec in requirement.specifier if spec.operator == "=="]
            assert locked.get(canonical(requirement.name)) == pin, (
                f"{requirement} is not in {LOCK_NAME} for {environment['platform_machine']}: run `fruits-emr lock`"
            )
    header = (RESOURCES / LOCK_NAME).read_text().splitlines()[:2]
    assert header[1].strip("# ") == "fruits-emr lock", header


def test_the_lock_is_made_by_one_command(tmp_path, monkeypatch, capsys):
    """`fruits-emr lock` runs uv's universal, hashed resolution of requirements.txt for CPython
    3.11 in the resources folder (a stand-in uv here: the real one needs PyPI)."""
    resources = tmp_path / "emr_resources"
    shutil.copytree(RESOURCES, resources)
    ran = {}

    def fake_uv(command, cwd, **kwargs):
        ran.update(command=command, cwd=cwd)
        (Path(cwd) / LOCK_NAME).write_text("a==1 \\\n    --hash=sha256:" + "0" * 64 + "\n")
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(emr_cli, "uv_executable", lambda: ["uv"])
    monkeypatch.setattr(emr_cli.subprocess, "run", fake_uv)
    assert emr_cli.main(["lock", "--resources-dir", str(resources)]) == 0
    assert ran["cwd"] == resources
    assert ran["command"] == ["uv", *uv_compile_args()]
    assert ran["command"][1:] == [
        "pip",
        "compile",
        "--universal",
        "--python-version",
        "3.11",
        "--generate-hashes",
        "--custom-compile-command",
        "fruits-emr lock",
        "--constraint",
        "lock-constraints.txt",
        "requirements.txt",
        "--output-file",
        LOCK_NAME,
    ]
    assert "1 pinned packages, 1 hashes" in capsys.readouterr().out


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
    """The lock's aarch64 entries download for CPython 3.11 on aarch64 manylinux (the Graviton
    nodes) as bootstrap.sh installs them - wheels only, each checked against the lock's hashes,
    nothing resolved beyond the lock (--no-deps) - and none of those wheels needs a newer glibc
    or libstdc++ than Amazon Linux 2023 has (ai-edge-litert 2.x, for one, would: GLIBCXX_3.4.30).

    The entries are chosen here by their markers for aarch64: `pip download --platform` keeps
    evaluating markers for the machine it runs on (x86_64 here)."""
    requirements = tmp_path / "requirements-aarch64.lock"
    chosen = [entry for entry in lock() if entry.applies(AARCH64)]
    requirements.write_text(
        "".join(f"{entry.name}=={entry.version} {' '.join(f'--hash={h}' for h in entry.hashes)}\n" for entry in chosen)
    )
    platforms = [arg for tag in AARCH64_TAGS for arg in ("--platform", tag)]
    WHEELS.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            *PIP_INSTALL_FLAGS,
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
    wanted = {entry.name: entry.version for entry in chosen}
    wheels = {}
    for wheel in WHEELS.glob("*.whl"):
        name, version = wheel.name.split("-")[:2]
        if wanted.get(canonical(name)) != version:
            continue  # not in the lock, or another version, from an earlier download
        wheels[wheel.name] = symbol_versions(wheel)
    assert {canonical(w.split("-")[0]) for w in wheels} == set(wanted), "a locked package has no aarch64 wheel"
    shipped = {canonical(w.split("-")[0]) for w in wheels}
    assert {"ai-edge-litert", "dagster", "pandas", "pyarrow"} <= shipped
    assert not {"tensorflow", "keras", "scikit-learn"} & shipped, "the host converts the model: no TensorFlow on nodes"
    too_new = {
        name: {k: ".".join(map(str, v)) for k, v in needs.items()}
        for name, needs in wheels.items()
        if needs["GLIBC"] > AL2023_GLIBC or needs["GLIBCXX"] > AL2023_GLIBCXX
    }
    assert not too_new, f"wheels that Amazon Linux 2023 cannot load: {too_new}"


# The parts of PySpark 3.5 that break under numpy 2.x (the lock's numpy): SparseVector.dot uses
# np.in1d (removed in numpy 2.4), ml.param's TypeConverters on numpy string scalars use
# np.unicode_/np.string_, pandas-on-Spark's type hints np.float_, and pyspark.mllib mirrors ml.
NUMPY_2_BREAKS_IN_PYSPARK_3_5 = re.compile(
    r"\bpyspark\.(pandas|mllib)\b|\bSparseVector\b|\bVectors\.sparse\b|\bTypeConverters\b"
)


def test_the_code_avoids_the_pyspark_parts_that_numpy_2_breaks():
    """PySpark 3.5 declares numpy<2 for its extras; the cluster runs numpy 2 (the lock), which is
    safe for the paths this project uses (test_pyspark_numpy.py runs them, Spark tier) as long as
    it keeps away from the parts that do break."""
    numpy_pin = {entry.name: entry.version for entry in lock() if entry.applies(AARCH64)}["numpy"]
    assert numpy_pin.split(".")[0] == "2", "numpy 1.x on the cluster: this test and test_pyspark_numpy.py are moot"
    found = {
        path.name: NUMPY_2_BREAKS_IN_PYSPARK_3_5.findall(path.read_text())
        for path in PACKAGE.rglob("*.py")
        if NUMPY_2_BREAKS_IN_PYSPARK_3_5.search(path.read_text())
    }
    assert not found, f"PySpark 3.5 code that fails under numpy 2 is used: {found}"

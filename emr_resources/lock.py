"""The cluster's full lock: every Python package the nodes install, pinned, with hashes.

`requirements.txt` pins only the packages the code asks for; `requirements.lock` pins all of them
(transitive ones included) for CPython 3.11, for every platform at once (a universal resolution,
with the hashes of every wheel of each pinned version), so that the Graviton nodes (aarch64) and
the emulated cluster of the tests (x86_64) install the same versions, and a bootstrap months
later (a Spot replacement, a new cluster) installs exactly what was tested:

    fruits-emr lock        # = uv pip compile --universal --python-version 3.11 --generate-hashes ...

bootstrap.sh installs it with PIP_INSTALL_FLAGS (hash-checked, wheels only, no resolution of its
own), and so does the emulated cluster's venv (fruits_assets_tests/emr_emulation.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from packaging.requirements import Requirement

REQUIREMENTS_NAME = "requirements.txt"
LOCK_NAME = "requirements.lock"
# Where uv would pick a version CPython 3.11 cannot install (that file says why).
CONSTRAINTS_NAME = "lock-constraints.txt"
PYTHON_VERSION = "3.11"  # the cluster's Python (bootstrap.sh: python3.11 from Amazon Linux 2023)
# Every package is in the lock, each with its hashes: pip checks each wheel against them, takes
# wheels only (nothing is compiled on a node) and resolves nothing itself (--no-deps).
PIP_INSTALL_FLAGS = ("--require-hashes", "--only-binary=:all:", "--no-deps")
# What the lock's header says to run again (uv writes it there).
LOCK_COMMAND = "fruits-emr lock"


def uv_compile_args() -> list[str]:
    """uv's arguments (after the `uv` executable), run in emr_resources/: requirements.txt -> lock."""
    return [
        "pip",
        "compile",
        "--universal",
        "--python-version",
        PYTHON_VERSION,
        "--generate-hashes",
        "--custom-compile-command",
        LOCK_COMMAND,
        "--constraint",
        CONSTRAINTS_NAME,
        REQUIREMENTS_NAME,
        "--output-file",
        LOCK_NAME,
    ]


@dataclass
class Locked:
    """One entry of the lock: `name==version ; marker` and its hashes."""

    requirement: Requirement
    hashes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return canonical(self.requirement.name)

    @property
    def version(self) -> str:
        [pin] = [spec.version for spec in self.requirement.specifier if spec.operator == "=="]
        return pin

    def applies(self, environment: dict | None = None) -> bool:
        """Whether pip installs this entry in `environment` (default: this machine)."""
        return self.requirement.marker is None or self.requirement.marker.evaluate(environment)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(text: str) -> list[Locked]:
    """The entries of a hashed requirements file (uv's or pip-tools' layout: `\\` continuations,
    one `--hash=sha256:...` per line, `#` comments)."""
    entries: list[Locked] = []
    logical = re.sub(r"\\\n", " ", text)
    for line in logical.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        hashes = re.findall(r"--hash=(\S+)", line)
        requirement = re.sub(r"\s*--hash=\S+", "", line).strip()
        entries.append(Locked(Requirement(requirement), hashes))
    return entries

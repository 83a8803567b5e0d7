#!/usr/bin/env bash
# EMR bootstrap action for Fruits! (runs as hadoop on every node, before applications start).
#
#   bootstrap.sh <s3:// URI of requirements.lock> [<pip index URL>]
#
# `fruits-emr create` uploads this script and requirements.lock (this folder's) beside each other
# and passes the lock's URI. The second argument, optional, is a PyPI mirror for clusters
# without internet access (e.g. an AWS CodeArtifact or a private proxy reachable from the subnet).
#
# EMR 7.x runs Amazon Linux 2023 with Python 3.9; dagster 1.13 needs Python >= 3.10. This installs
# Python 3.11 from the AL2023 repositories, makes the venv /opt/fruits-venv, and installs the
# lock: every package pinned, each wheel checked against its sha256 (--require-hashes), wheels only
# (the Graviton nodes take aarch64 wheels; nothing is compiled), and no resolution on the node
# (--no-deps: the lock is the whole set, resolved once by `fruits-emr lock`, so a Spot
# replacement months later installs what the first node did). pyspark is not installed: EMR's own Spark puts its pyspark on the path of
# every PySpark process. cluster.yaml points PYSPARK_PYTHON (driver and executors) at the venv.
#
# Idempotent: a marker names the sha256 of the lock it installed; re-running it with the same
# lock only re-checks the imports. Fails loudly: any failing command fails the
# bootstrap action, so the cluster fails to start (TERMINATED_WITH_ERRORS, the reason in the
# bootstrap log under the cluster's LogUri) instead of running steps on a broken Python.
set -euo pipefail

LOCK_URI="${1:?usage: bootstrap.sh s3://bucket/prefix/emr-bootstrap/requirements.lock [pip index URL]}"
PIP_INDEX="${2:-}"
VENV=/opt/fruits-venv
PYTHON_BIN=python3.11
LOCK=/tmp/fruits-requirements.lock

log() { echo "[fruits-bootstrap] $*" >&2; }
trap 'log "FAILED at line ${LINENO} (exit $?): the cluster will not start; see this log."' ERR

aws s3 cp --only-show-errors "${LOCK_URI}" "${LOCK}"
MARKER="${VENV}/.fruits-bootstrap-$(sha256sum "${LOCK}" | cut -c1-16)"

if [[ -f "${MARKER}" ]]; then
  log "already bootstrapped with this lock (${MARKER}); re-checking imports only"
else
  if ! command -v "${PYTHON_BIN}" >/dev/null 2>&1; then
    log "installing ${PYTHON_BIN} from the Amazon Linux 2023 repositories"
    sudo dnf install -y python3.11 python3.11-pip
  fi
  # Native LAPACK for Spark ML's PCA (netlib finds liblapack.so.3 through JNI): ~3x faster fits.
  # Optional: without it Spark uses its Java implementation, with the same results.
  sudo dnf install -y lapack blas || log "lapack not installed: PCA uses the Java fallback"

  if [[ ! -x "${VENV}/bin/python" ]]; then
    log "creating ${VENV}"
    sudo "${PYTHON_BIN}" -m venv "${VENV}"
    sudo chown -R "$(id -u):$(id -g)" "${VENV}"
  fi

  PIP_ARGS=(--no-cache-dir --disable-pip-version-check)
  if [[ -n "${PIP_INDEX}" ]]; then
    PIP_ARGS+=(--index-url "${PIP_INDEX}")
  fi
  "${VENV}/bin/python" -m pip install "${PIP_ARGS[@]}" --upgrade "pip>=24"
  # The lock, hash-checked, wheels only (never compile on a node: slow, and no compiler), no
  # resolution here. The same command builds the tests' emulated cluster (emr_emulation.py).
  "${VENV}/bin/python" -m pip install "${PIP_ARGS[@]}" --require-hashes --only-binary=:all: --no-deps -r "${LOCK}"
fi

# Fail here, not in the first step, if anything is missing or of the wrong architecture.
"${VENV}/bin/python" - <<'PY'
import platform
import sys

import boto3
import dagster
import dagster_aws
import matplotlib
import numpy
import pandas
import PIL
import pyarrow
from ai_edge_litert.interpreter import Interpreter

assert sys.version_info[:2] == (3, 11), sys.version
assert int(pandas.__version__.split(".")[0]) < 3, pandas.__version__
print(
    "fruits venv OK:", platform.machine(), sys.version.split()[0], "dagster", dagster.__version__,
    "pandas", pandas.__version__,
)
PY

touch "${MARKER}"
log "done"

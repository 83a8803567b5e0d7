#!/usr/bin/env bash
# EMR bootstrap action for Fruits! (runs as hadoop on every node, before applications start).
#
# EMR 7.x runs Amazon Linux 2023 with Python 3.9; dagster 1.13 needs Python >= 3.10. This installs
# Python 3.11 from the AL2023 repositories, makes the venv /opt/fruits-venv, and installs the
# project's pinned runtime dependencies (aarch64 wheels: the fleets are Graviton). cluster.yaml
# points PYSPARK_PYTHON (driver and executors) at /opt/fruits-venv/bin/python.
#
# Idempotent: re-running it on a node skips what is already in place and re-checks the imports.
# Fails loudly: any failing command fails the bootstrap action, so the cluster fails to start
# (TERMINATED_WITH_ERRORS, reason in the bootstrap log under the cluster's LogUri) instead of
# running steps on a broken Python.
#
# pyspark: EMR provides Spark itself (/usr/lib/spark, on PYTHONPATH of every PySpark process), but
# dagster-pyspark declares a dependency on pyspark; the same pinned version as EMR's Spark (3.5.5 on
# emr-7.9.0) is installed so pip's resolver is satisfied and the import matches the cluster's JVM.
set -euo pipefail

VENV=/opt/fruits-venv
PYTHON_BIN=python3.11
MARKER="${VENV}/.fruits-bootstrap-done-v1"

log() { echo "[fruits-bootstrap] $*" >&2; }
trap 'log "FAILED at line ${LINENO} (exit $?): the cluster will not start; see this log."' ERR

if [[ -f "${MARKER}" ]]; then
  log "already bootstrapped (${MARKER}); re-checking imports only"
else
  if ! command -v "${PYTHON_BIN}" >/dev/null 2>&1; then
    log "installing ${PYTHON_BIN} from the Amazon Linux 2023 repositories"
    sudo dnf install -y python3.11 python3.11-pip python3.11-devel
  fi
  # Native LAPACK for Spark ML's PCA (netlib finds liblapack.so.3 through JNI): ~3x faster fits.
  # Optional: without it Spark uses its Java implementation, with the same results.
  sudo dnf install -y lapack blas || log "lapack not installed: PCA uses the Java fallback"

  if [[ ! -x "${VENV}/bin/python" ]]; then
    log "creating ${VENV}"
    sudo "${PYTHON_BIN}" -m venv "${VENV}"
    sudo chown -R "$(id -u):$(id -g)" "${VENV}"
  fi

  "${VENV}/bin/python" -m pip install --no-cache-dir --upgrade "pip>=24" wheel
  # The pins of pyproject.toml (the dagster family moves together; pandas<3 for PySpark 3.5).
  # --only-binary: never compile on a bootstrap (slow, and a compiler may be missing).
  "${VENV}/bin/python" -m pip install --no-cache-dir --only-binary=:all: \
    "dagster==1.13.27" \
    "dagster-aws==0.29.27" \
    "dagster-pyspark==0.29.27" \
    "pyspark==3.5.5" \
    "tensorflow==2.21.0" \
    "pandas>=2.2,<3" \
    "pyarrow>=14" \
    "numpy>=1.26" \
    "pillow>=10" \
    "boto3>=1.34" \
    "scikit-learn>=1.4" \
    "pyyaml>=6"
fi

# Fail here, not in the first step, if anything is missing or the wrong architecture.
"${VENV}/bin/python" - <<'PY'
import platform
import sys

import dagster
import dagster_aws
import dagster_pyspark
import numpy
import pandas
import PIL
import pyarrow
import tensorflow as tf

assert sys.version_info[:2] == (3, 11), sys.version
assert int(pandas.__version__.split(".")[0]) < 3, pandas.__version__
print(
    "fruits venv OK:", platform.machine(), sys.version.split()[0], "dagster", dagster.__version__,
    "tensorflow", tf.__version__, "pandas", pandas.__version__,
)
PY

touch "${MARKER}"
log "done"

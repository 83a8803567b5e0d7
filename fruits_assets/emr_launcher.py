"""The EMR PySpark step launcher, wired in one place.

Step launchers are "superseded" (not deprecated) in Dagster 1.13 and still maintained; they fit this
project because they keep IO managers: each asset step is pickled, staged to S3 with this package
zipped, and run by `spark-submit` on the cluster, where the same S3 IO manager reads and writes.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from dagster_aws.emr import emr_pyspark_step_launcher

from fruits_assets.settings import env

PACKAGE_DIR = Path(__file__).resolve().parent


def package_staging_dir() -> str:
    """A folder holding only a copy of `fruits_assets/`, for the launcher to zip.

    The launcher zips a whole folder; pointing it at the project root would ship tests, data and
    outputs (or all of site-packages for a non-editable install).
    """
    staging = Path(tempfile.mkdtemp(prefix="fruits-emr-package-"))
    shutil.copytree(PACKAGE_DIR, staging / PACKAGE_DIR.name, ignore=shutil.ignore_patterns("__pycache__"))
    return str(staging)


def emr_step_launcher(region: str):
    return emr_pyspark_step_launcher.configured(
        {
            "cluster_id": {"env": "FRUITS_EMR_CLUSTER_ID"},
            "staging_bucket": {"env": "FRUITS_S3_BUCKET"},
            # Under FRUITS_S3_PREFIX by default: the cluster's instance profile may only touch it.
            "staging_prefix": env(
                "FRUITS_EMR_STAGING_PREFIX", f"{env('FRUITS_S3_PREFIX', 'fruits').strip('/')}/emr-staging"
            ),
            "region_name": region,
            "deploy_local_job_package": True,
            "local_job_package_path": package_staging_dir(),
            # The Spark driver's stdout/stderr in Dagster's logs, at a price: EMR copies logs to
            # S3 every 5 minutes, so each step waits ~5 more minutes. FRUITS_EMR_WAIT_FOR_LOGS=0
            # skips it (the logs stay readable under the cluster's LogUri).
            "wait_for_logs": env("FRUITS_EMR_WAIT_FOR_LOGS", "1").lower() in ("1", "true", "yes"),
            "action_on_failure": "CONTINUE",
        }
    )

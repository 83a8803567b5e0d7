"""The EMR PySpark step launcher, wired in one place.

Step launchers are "superseded" (not deprecated) in Dagster 1.13 and still maintained; they fit this
project because they keep IO managers: each asset step is pickled, staged to S3 with this package
zipped, and run by `spark-submit` on the cluster (dagster-aws's `emr_step_main`), where the same
IO manager reads and writes S3.

What this subclass of dagster-aws's launcher adds, and why:
- **The run's settings travel with the step.** On the cluster, `emr_step_main` re-imports this
  code location in a process that has none of the host's environment. The step's run config gets
  the host's resolved settings as the `settings` resource's config, so the step uses the host's
  deployment, bucket, region, image size... and never its own environment's. The host-only
  settings (`FruitsSettings.host_only_fields()`: the host's S3 endpoint, this launcher's polling,
  the local Spark master and folder) are left out: the step takes their defaults (AWS's endpoint).
- **Only this package is staged**, zipped from where it is installed when a step is launched
  (never at import: on the cluster the package itself lives inside the staged zip).
- The poll interval of a running step is a setting (FRUITS_EMR_POLL_SECONDS; dagster-aws: 15 s).
- **The step's logs are read in the run's region** (`FruitsEmrJobRunner`, FRUITS_EMR_WAIT_FOR_LOGS=1):
  dagster-aws's job runner makes that S3 client without a region.
"""

from __future__ import annotations

import gzip
import os
import pickle
import tempfile
import zipfile
from pathlib import Path

from dagster._core.execution.plan.external_step import (
    PICKLED_STEP_RUN_REF_FILE_NAME,
    step_context_to_step_run_ref,
)
from dagster_aws.emr.emr import EmrError, EmrJobRunner
from dagster_aws.emr.pyspark_step_launcher import CODE_ZIP_NAME, EmrPySparkStepLauncher

import fruits_assets
from fruits_assets.settings import FruitsSettings
from fruits_assets.spark import cluster_config

PACKAGE = "fruits_assets"


def package_zip(zip_path: str) -> list[str]:
    """Zip the installed `fruits_assets` package (sources and package data, no caches)."""
    package_dir = Path(fruits_assets.__file__).resolve().parent
    names = []
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(package_dir.rglob("*")):
            if path.is_dir() or "__pycache__" in path.parts or path.suffix == ".pyc":
                continue
            name = f"{PACKAGE}/{path.relative_to(package_dir).as_posix()}"
            archive.write(path, name)
            names.append(name)
    return names


def with_settings(step_run_ref, settings_config: dict):
    """The step's run config, with the host's resolved settings as the settings resource's."""
    run_config = dict(step_run_ref.run_config or {})
    resources = dict(run_config.get("resources") or {})
    resources["settings"] = settings_config
    run_config["resources"] = resources
    return step_run_ref._replace(run_config=run_config)


class FruitsEmrJobRunner(EmrJobRunner):
    """dagster-aws's EMR job runner, reading the step's logs through the run's S3 connection.

    dagster-aws 0.29.27's `wait_for_log` makes its S3 client with `boto3.client("s3")`: no region,
    so on a host that sets only FRUITS_AWS_REGION (README) it goes to S3's global endpoint
    (us-east-1), which reaches the eu-west-1 bucket only through a redirect, and not at all from a
    network that reaches only eu-west-1 (e.g. a private subnet with S3's VPC endpoint).
    """

    def __init__(self, region: str, storage):
        super().__init__(region=region)
        self.storage = storage

    def wait_for_log(self, log, log_bucket, log_key, waiter_delay=30, waiter_max_attempts=20):
        from botocore.exceptions import WaiterError

        log.info(f"Attempting to get log: s3://{log_bucket}/{log_key}")
        s3 = self.storage.client
        try:
            s3.get_waiter("object_exists").wait(
                Bucket=log_bucket,
                Key=log_key,
                WaiterConfig={"Delay": waiter_delay, "MaxAttempts": waiter_max_attempts},
            )
        except WaiterError as error:
            raise EmrError("EMR log file did not appear on S3 after waiting") from error
        return gzip.decompress(s3.get_object(Bucket=log_bucket, Key=log_key)["Body"].read()).decode("utf-8")


class FruitsEmrStepLauncher(EmrPySparkStepLauncher):
    """dagster-aws's EMR PySpark step launcher, configured from the run's settings."""

    def __init__(self, settings: FruitsSettings):
        resolved = settings.resolved()
        super().__init__(
            region_name=resolved.aws_region,
            staging_bucket=resolved.s3_bucket,
            staging_prefix=resolved.emr_staging_prefix,
            wait_for_logs=resolved.emr_wait_for_logs,
            # A failed step must not cancel the steps of other runs queued on the same cluster.
            action_on_failure="CONTINUE",
            cluster_id=resolved.emr_cluster_id,
            spark_config=cluster_config(resolved),
            # Only used to rewrite file code pointers; this package is zipped by `package_zip`.
            local_job_package_path=str(Path(fruits_assets.__file__).resolve().parents[1]),
            deploy_local_job_package=True,
        )
        self.settings_config = settings.as_run_config()
        self.storage = settings.storage()
        self.emr_job_runner = FruitsEmrJobRunner(region=self.region_name, storage=self.storage)
        self.poll_seconds = float(resolved.emr_poll_seconds)

    def launch_step(self, step_context):
        step_run_ref = with_settings(
            step_context_to_step_run_ref(step_context, self.local_job_package_path), self.settings_config
        )
        run_id = step_context.dagster_run.run_id
        self._post_artifacts(step_context.log, step_run_ref, run_id, step_run_ref.step_key)
        emr_step_def = self._get_emr_step_def(run_id, step_run_ref.step_key, step_context.op.name)
        [emr_step_id] = self.emr_job_runner.add_job_flow_steps(step_context.log, self.cluster_id, [emr_step_def])
        yield from self.wait_for_completion_and_log(run_id, step_run_ref.step_key, emr_step_id, step_context)

    def wait_for_completion(self, step_context, s3, run_id, step_key, emr_step_id, check_interval=None):
        yield from super().wait_for_completion(
            step_context, s3, run_id, step_key, emr_step_id, check_interval=self.poll_seconds
        )

    def _post_artifacts(self, log, step_run_ref, run_id, step_key):
        """Stage emr_step_main.py, this package's zip and the pickled step (dagster-aws's layout),
        server-side encrypted like every object this project writes."""
        with tempfile.TemporaryDirectory() as temp_dir:
            code_zip = os.path.join(temp_dir, CODE_ZIP_NAME)
            package_zip(code_zip)
            step_run_ref_path = os.path.join(temp_dir, PICKLED_STEP_RUN_REF_FILE_NAME)
            with open(step_run_ref_path, "wb") as handle:
                pickle.dump(step_run_ref, handle)
            for local_path in (self._main_file_local_path(), code_zip, step_run_ref_path):
                uri = self._artifact_s3_uri(run_id, step_key, local_path)
                log.debug(f"Uploading {local_path} to {uri}")
                self.storage.upload_file(local_path, uri)

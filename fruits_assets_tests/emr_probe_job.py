"""A one-asset job for the step launcher's tests: the real `FruitsEmrStepLauncher` (through the
code location's own `pyspark_step_launcher` and `settings` resources) and an asset without Spark,
so that a step runs on the test's "cluster" in seconds, as a plain Python process.

What the step does is decided where a cluster would decide it, in the step's environment (set by
the test playing the cluster, never by the host): `PROBE_FAILS_ON_START` makes a resource fail to
start with a FruitsConfigError (before the asset runs: the process exits non-zero, EMR says
FAILED), `PROBE_HANGS` keeps the asset running until the process is killed or cancelled. The
asset's config `outcome=config_error` raises a FruitsConfigError in the asset itself.
"""

import os
import time

import dagster as dg

from fruits_assets.errors import FruitsConfigError, config_errors_not_retried
from fruits_assets.resources import step_launcher
from fruits_assets.settings import FruitsSettings

JOB = "emr_probe_job"
FAILS_ON_START = "PROBE_FAILS_ON_START"
HANGS = "PROBE_HANGS"
STARTED = "probe started"  # the asset's first log line: the test's sign that the step runs
# The assets' policy (S3_RETRY) without its backoff: the tests wait for nothing.
PROBE_RETRY = dg.RetryPolicy(max_retries=2)


class ProbeConfig(dg.Config):
    outcome: str = "ok"


@dg.resource
def probe_resource(context):
    if os.environ.get(FAILS_ON_START):
        raise FruitsConfigError("FRUITS_PROBE is wrong: set it to something right.")
    return "probe"


@dg.asset(required_resource_keys={"settings", "pyspark_step_launcher", "probe"}, retry_policy=PROBE_RETRY)
@config_errors_not_retried
def emr_probe(context: dg.AssetExecutionContext, config: ProbeConfig) -> dg.MaterializeResult:
    """One probe step: succeeds, hangs or fails as its environment and config say."""
    context.log.info(f"{STARTED}: {config.outcome}")
    while os.environ.get(HANGS):
        time.sleep(0.5)
    if config.outcome == "config_error":
        raise FruitsConfigError("FRUITS_IMAGE_SIZE=95 is not supported: use 96, 128, 160, 192 or 224.")
    return dg.MaterializeResult(metadata={"outcome": config.outcome})


defs = dg.Definitions(
    assets=[emr_probe],
    resources={
        "settings": FruitsSettings.configure_at_launch(),
        "pyspark_step_launcher": step_launcher,
        "probe": probe_resource,
    },
    jobs=[dg.define_asset_job(JOB, selection=[emr_probe], executor_def=dg.in_process_executor)],
)


def emr_probe_job() -> dg.JobDefinition:
    return defs.resolve_job_def(JOB)

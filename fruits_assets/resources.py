"""Resources for each deployment: the one place that knows `local` from `emr`.

Both dicts have the same keys; assets never branch on the deployment. The EMR step launcher's
wiring lives in `emr_launcher.py`.
"""


import dagster as dg
from dagster_pyspark import PySparkResource

from fruits_assets.io_managers import LocalFruitsIOManager, S3FruitsIOManager
from fruits_assets.settings import (
    DEFAULT_REGION,
    allow_other_region,
    default_output_root,
    deployment_name,
    env,
    validate_region,
)
from fruits_assets.spark_jobs import cluster_spark_config, local_spark_config
from fruits_assets.storage import Storage


class StorageResource(dg.ConfigurableResource):
    """How boto3 reaches S3 for images and weights: region, optional endpoint, optional KMS key."""

    region_name: str = DEFAULT_REGION
    endpoint_url: str | None = None
    kms_key_id: str | None = None

    def get(self) -> Storage:
        return Storage(
            region_name=self.region_name,
            endpoint_url=self.endpoint_url or None,
            kms_key_id=self.kms_key_id or None,
        )


def local_resources(output_root: str | None = None, master: str = "local[*]") -> dict:
    pyspark = PySparkResource(spark_config=local_spark_config(master))
    return {
        "pyspark": pyspark,
        "pyspark_step_launcher": dg.ResourceDefinition.none_resource(),
        "io_manager": LocalFruitsIOManager(base_dir=output_root or default_output_root(), pyspark=pyspark),
        "storage": StorageResource(),
    }


def emr_resources() -> dict:
    """EMR: the step launcher runs each asset on the cluster; assets live on S3.

    Required settings are `EnvVar`s (resolved when a run starts, so the code location loads
    without them); optional ones are read here with their defaults.
    """
    from fruits_assets.emr_launcher import emr_step_launcher

    region = validate_region(env("FRUITS_AWS_REGION", DEFAULT_REGION), allow_other_region())
    endpoint_url = env("FRUITS_S3_ENDPOINT_URL", "") or None
    kms_key_id = env("FRUITS_KMS_KEY_ID", "") or None
    pyspark = PySparkResource(spark_config=cluster_spark_config())
    return {
        "pyspark": pyspark,
        "pyspark_step_launcher": emr_step_launcher(region),
        "io_manager": S3FruitsIOManager(
            bucket=dg.EnvVar("FRUITS_S3_BUCKET"),
            prefix=env("FRUITS_S3_PREFIX", "fruits"),
            region_name=region,
            endpoint_url=endpoint_url,
            kms_key_id=kms_key_id,
            pyspark=pyspark,
        ),
        "storage": StorageResource(region_name=region, endpoint_url=endpoint_url, kms_key_id=kms_key_id),
    }


def resources_by_deployment(name: str | None = None) -> dict:
    name = name or deployment_name()
    return {"local": local_resources, "emr": emr_resources}[name]()

"""The resources of the code location: one dict, the same in every deployment.

The deployment (`local` or `emr`) is a setting of the run (FRUITS_DEPLOYMENT, read when the run
starts), and the only things it changes are decided here and in `FruitsSettings.assets_uri()`:
- `pyspark_step_launcher`: none locally; on EMR, the step launcher (`emr_launcher.py`) that runs
  each asset step on the cluster;
- `pyspark`: a session on this machine, or the one spark-submit made on the cluster (`spark.py`);
- `io_manager`: assets under a local folder, or under s3://bucket/prefix.
Assets never branch on the deployment.
"""

import dagster as dg

from fruits_assets.errors import FruitsConfigError
from fruits_assets.io_managers import FruitsIOManager
from fruits_assets.settings import FruitsSettings
from fruits_assets.spark import SparkResource


@dg.resource(required_resource_keys={"settings"})
def step_launcher(context: dg.InitResourceContext):
    """`pyspark_step_launcher`: None in the local deployment, the EMR step launcher in `emr`."""
    settings: FruitsSettings = context.resources.settings
    try:
        deployment = settings.resolved().deployment
    except FruitsConfigError:
        # The step then runs here and fails at once with the settings' own clear message (every
        # asset reads its settings first), rather than as a resource-initialization error.
        return None
    if deployment == "local":
        return None
    from fruits_assets.emr_launcher import FruitsEmrStepLauncher

    return FruitsEmrStepLauncher(settings)


def fruits_resources(settings: FruitsSettings | None = None) -> dict:
    """The resources, all reading `settings` (by default: the run's, from its config and env)."""
    settings = settings if settings is not None else FruitsSettings.configure_at_launch()
    spark = SparkResource(settings=settings)
    return {
        "settings": settings,
        "pyspark": spark,
        "pyspark_step_launcher": step_launcher,
        "io_manager": FruitsIOManager(settings=settings, pyspark=spark),
    }


def load_asset_value(asset: str, settings: FruitsSettings | None = None):
    """The current (published) value of `asset`, as the next run would read it: a Spark
    DataFrame for the Parquet assets (a local Spark session is started on first use), a
    `PcaModel`, a pandas DataFrame for `pca_features_csv`, a dict for `pca_quality`.

    For notebooks and scripts; the settings default to the environment's (FRUITS_OUTPUT_ROOT, or
    FRUITS_DEPLOYMENT=emr with its bucket and prefix: the CSV and the PCA model load from S3
    through boto3, Parquet assets need Spark with an S3 connector, i.e. the cluster).
    (`Definitions.load_asset_value` cannot build the run-time `settings` resource outside a run.)
    """
    resources = fruits_resources(settings if settings is not None else FruitsSettings())
    manager: FruitsIOManager = resources["io_manager"]
    return manager.load_manifest(manager.current(dg.AssetKey(asset)))

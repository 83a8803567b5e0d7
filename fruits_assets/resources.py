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
from fruits_assets.io_managers import fruits_io_manager
from fruits_assets.settings import FruitsSettings
from fruits_assets.spark import spark_resource


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
    """The resources, all reading `settings` (by default every setting empty: each run takes its
    run config, else the environment when it starts). A plain resource, not one configured at
    launch, so that Dagster can build it outside a run too (`Definitions.load_asset_value`)."""
    return {
        "settings": settings if settings is not None else FruitsSettings(),
        "pyspark": spark_resource,
        "pyspark_step_launcher": step_launcher,
        "io_manager": fruits_io_manager,
    }

"""Every setting of a run, in one table, read when the run starts (never at import).

`FruitsSettings` is the `settings` resource. Each field is one setting: left empty (the default),
it takes its environment variable when the run starts, else its default; set in the run config
(`resources: settings: config:` in the launchpad), it wins for that run. `resolved()` is the run's
snapshot: every value explicit, parsed and validated, so a bad value fails the run at once with
one clear message.

On EMR the step launcher hands that snapshot to each step as the step's run config
(`emr_launcher.py`): a step on the cluster never reads the cluster's environment for a setting.
The host-only settings (`host_only=True` below: the host's S3 endpoint, the launcher's polling,
the local deployment's Spark master and folder) are left out of it; a step takes their defaults.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr

from fruits_assets.constants import EU_REGION, SAMPLE_IMAGES, SUPPORTED_IMAGE_SIZES
from fruits_assets.errors import FruitsConfigError

DEPLOYMENTS = ("local", "emr")


def setting(env: str, default: Any, help: str, host_only: bool = False):
    """A settings field: empty by default, so the run takes `env`, else `default`.

    `host_only`: meaningful on the Dagster host only (where it reaches S3, how its launcher polls,
    the local deployment's Spark and folder). The EMR steps' run config leaves these out, so a
    step takes their defaults: a host's endpoint or path could break a step on the cluster.
    """
    return Field(
        default=None,
        description=f"{help} Empty: ${env}, else {default!r}.",
        json_schema_extra={"env": env, "fallback": default, "host_only": host_only},
    )


class FruitsSettings(dg.ConfigurableResource):
    """The settings of a run (see the module docstring; README 'Configuration' lists them)."""

    # -- where it runs and stores ------------------------------------------------------------
    deployment: str | None = setting(
        "FRUITS_DEPLOYMENT", "local", "'local' (Spark on this machine) or 'emr' (AWS EMR)."
    )
    output_root: str | None = setting(
        "FRUITS_OUTPUT_ROOT",
        "",
        "local: folder (or s3:// URI) of the assets ('' = $DAGSTER_HOME/fruits_output, else ./fruits_output).",
        host_only=True,
    )
    spark_master: str | None = setting("FRUITS_SPARK_MASTER", "local[*]", "local: the Spark master.", host_only=True)
    s3_bucket: str | None = setting("FRUITS_S3_BUCKET", "", "emr: bucket of assets, staging and logs (required).")
    s3_prefix: str | None = setting("FRUITS_S3_PREFIX", "fruits", "emr: key prefix of everything Fruits! writes.")
    aws_region: str | None = setting(
        "FRUITS_AWS_REGION", EU_REGION, "emr: AWS region (GDPR: eu-west-1 only, unless allowed)."
    )
    allow_non_eu_region: bool | None = setting(
        "FRUITS_ALLOW_NON_EU_REGION",
        False,
        "Allow a region other than eu-west-1 (data-protection officer's agreement).",
    )
    s3_endpoint_url: str | None = setting(
        "FRUITS_S3_ENDPOINT_URL",
        "",
        "The host's S3 endpoint for boto3 ('' = AWS's; EMR steps use AWS's).",
        host_only=True,
    )
    kms_key_id: str | None = setting("FRUITS_KMS_KEY_ID", "", "KMS key for SSE-KMS of what boto3 writes ('' = SSE-S3).")
    emr_cluster_id: str | None = setting(
        "FRUITS_EMR_CLUSTER_ID", "", "emr: the cluster steps run on, j-... (required)."
    )
    emr_staging_prefix: str | None = setting(
        "FRUITS_EMR_STAGING_PREFIX", "", "emr: where steps are staged ('' = <s3_prefix>/emr-staging)."
    )
    emr_wait_for_logs: bool | None = setting(
        "FRUITS_EMR_WAIT_FOR_LOGS",
        False,
        "emr: after each step, wait for EMR's log upload (~5 min/step, billed) to show the Spark driver's logs.",
        host_only=True,
    )
    emr_poll_seconds: float | None = setting(
        "FRUITS_EMR_POLL_SECONDS", 15.0, "emr: seconds between two polls of a step.", host_only=True
    )
    lock_wait_seconds: float | None = setting(
        "FRUITS_LOCK_WAIT_SECONDS", 3600.0, "How long a run waits for another run writing the same assets to finish."
    )
    # -- what a run computes -------------------------------------------------------------------
    images_root: str | None = setting(
        "FRUITS_IMAGES_ROOT",
        SAMPLE_IMAGES,
        "Folder or s3:// URI laid out <split>/<Class Name>/<file>.jpg; 'sample' = synthetic.",
    )
    limit_per_class: int | None = setting(
        "FRUITS_LIMIT_PER_CLASS", 0, "At most this many images per split and class (0 = all)."
    )
    image_size: int | None = setting("FRUITS_IMAGE_SIZE", 224, "Model input size: 96, 128, 160, 192 or 224.")
    model_weights: str | None = setting(
        "FRUITS_MODEL_WEIGHTS",
        "imagenet",
        "'imagenet', a path or s3:// URI of a weights file, or 'random' (smoke tests).",
    )
    model_cache: str | None = setting(
        "FRUITS_MODEL_CACHE",
        "",
        "Folder or s3:// URI where converted LiteRT models are kept by content ('' = <assets>/_models; EMR steps "
        "use <assets>/_models).",
        host_only=True,
    )
    predict_batch_size: int | None = setting("FRUITS_PREDICT_BATCH_SIZE", 4, "Images per MobileNetV2 (LiteRT) call.")
    model_threads: int | None = setting(
        "FRUITS_MODEL_THREADS", 0, "Model threads per Python worker (0 = spark.task.cpus)."
    )
    arrow_batch_rows: int | None = setting("FRUITS_ARROW_BATCH_ROWS", 256, "Rows per Arrow batch to a Python worker.")
    rows_per_partition: int | None = setting(
        "FRUITS_ROWS_PER_PARTITION",
        0,
        "Rows per Spark partition and stored file (about); 0 = by image size (`rows_per_partition_for`).",
    )
    pca_variance: float | None = setting("FRUITS_PCA_VARIANCE", 0.95, "PCA explained-variance target, in (0, 1].")
    pca_max_k: int | None = setting("FRUITS_PCA_MAX_K", 300, "Never more principal components than this.")
    min_accuracy: float | None = setting(
        "FRUITS_MIN_ACCURACY", 0.8, "accuracy_above_floor warns below this Test accuracy."
    )

    _resolved: FruitsSettings | None = PrivateAttr(default=None)
    _error: FruitsConfigError | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # The snapshot is taken now, when the run starts; a bad value is raised where it is
        # used (in an asset: one clear failure), not here (a resource error would hide it).
        try:
            self._resolved = self.resolve(os.environ)
        except FruitsConfigError as error:
            self._error = error

    def resolved(self) -> FruitsSettings:
        """This run's settings, every field explicit (the snapshot taken when the run started)."""
        if self._error is not None:
            raise self._error
        if self._resolved is None:  # outside a run (a notebook, a test): now
            self._resolved = self.resolve(os.environ)
        return self._resolved

    def resolve(self, environ: Mapping[str, str], check: bool = True) -> FruitsSettings:
        """Each empty field from `environ`, else its default; validated unless `check` is off
        (`fruits-emr` checks only what each of its commands needs)."""
        values = {}
        for name, field in type(self).model_fields.items():
            explicit = getattr(self, name)
            extra = field.json_schema_extra
            values[name] = explicit if explicit is not None else _from_env(environ, extra["env"], extra["fallback"])
        values["output_root"] = values["output_root"] or _default_output_root(environ)
        values["s3_prefix"] = str(values["s3_prefix"]).strip("/")
        values["emr_staging_prefix"] = (values["emr_staging_prefix"] or f"{values['s3_prefix']}/emr-staging").strip("/")
        if values["rows_per_partition"] == 0 and values["image_size"] in SUPPORTED_IMAGE_SIZES:
            values["rows_per_partition"] = rows_per_partition_for(values["image_size"])
        resolved = type(self)(**values)
        resolved._resolved = resolved
        if check:
            validate(resolved)
        return resolved

    @classmethod
    def host_only_fields(cls) -> set[str]:
        """The settings that stay on the Dagster host (`setting(..., host_only=True)`)."""
        return {name for name, field in cls.model_fields.items() if field.json_schema_extra["host_only"]}

    def as_run_config(self) -> dict:
        """The resolved values as this resource's run config, for the cluster's steps: every
        setting but the host-only ones, which a step then takes at their defaults."""
        resolved = self.resolved()
        shipped = [name for name in type(self).model_fields if name not in self.host_only_fields()]
        return {"config": {name: getattr(resolved, name) for name in shipped}}

    # -- derived values, one place each -------------------------------------------------------
    def storage(self):
        """How boto3 reaches S3 (images, weights, assets): the one place the S3 connection is made."""
        from fruits_assets.storage import Storage

        resolved = self.resolved()
        return Storage(
            region_name=resolved.aws_region,
            endpoint_url=resolved.s3_endpoint_url or None,
            kms_key_id=resolved.kms_key_id or None,
        )

    def model_cache_uri(self) -> str:
        """Where converted models are cached (by weights, size and conversion), shared by runs.
        On EMR always beside the assets, where the host converts them and the steps read them."""
        from fruits_assets.storage import join

        resolved = self.resolved()
        if resolved.deployment == "emr" or not resolved.model_cache:
            return join(self.assets_uri(), "_models")
        return resolved.model_cache

    def assets_uri(self) -> str:
        """Where assets live: a local folder, or s3://bucket/prefix on EMR."""
        resolved = self.resolved()
        if resolved.deployment == "emr":
            return f"s3://{resolved.s3_bucket}/{resolved.s3_prefix}"
        if resolved.output_root.startswith("s3://"):  # local Spark needs an S3 connector for it
            return resolved.output_root.rstrip("/")
        return str(Path(resolved.output_root).absolute())


def rows_per_partition_for(image_size: int) -> int:
    """The default rows per Spark partition: 250 at 224 px, more for smaller images, whose rows
    take less work (work per image grows with its pixels): 1,361 at 96 px.

    Each task also costs a fixed ~0.1 s in the JVM and the Python worker, whatever its rows.
    250 rows of 96 px are ~0.25 s of decoding, so at 250 rows 24,000 such images ran 97 tasks
    per stage; at 1,360 rows, 19 (with the same ~3,000-row files): a first run took 115.4 s
    instead of 123.5 s, one run each. At 224 px a task of 250 rows takes seconds, and the
    tasks stay small enough to balance the cores and to report progress often.
    """
    return max(250, round(250 * (224 / image_size) ** 2))


def _from_env(environ: Mapping[str, str], name: str, fallback: Any) -> Any:
    raw = environ.get(name, "").strip()
    if not raw:
        return fallback
    kind = type(fallback)
    try:
        if kind is bool:
            if raw.lower() not in ("1", "true", "yes", "0", "false", "no"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes")
        return kind(raw)
    except ValueError:
        raise FruitsConfigError(f"{name}={raw!r} is not a valid {kind.__name__}.") from None


def _default_output_root(environ: Mapping[str, str]) -> str:
    home = environ.get("DAGSTER_HOME", "").strip()
    return str(Path(home) / "fruits_output") if home else str(Path.cwd() / "fruits_output")


def validate(s: FruitsSettings) -> None:
    """Every rule on the settings; each error names the setting and how to fix it."""
    if s.deployment not in DEPLOYMENTS:
        raise FruitsConfigError(f"FRUITS_DEPLOYMENT={s.deployment!r} is unknown: use one of {', '.join(DEPLOYMENTS)}.")
    validate_image_size(s.image_size)
    validate_pca_settings(s.pca_variance, s.pca_max_k)
    for name in ("predict_batch_size", "arrow_batch_rows", "rows_per_partition"):
        if getattr(s, name) < 1:
            raise FruitsConfigError(f"{name} must be at least 1, not {getattr(s, name)}.")
    if s.deployment == "emr":
        validate_region(s.aws_region, s.allow_non_eu_region)
        missing = [
            env
            for env, value in (("FRUITS_S3_BUCKET", s.s3_bucket), ("FRUITS_EMR_CLUSTER_ID", s.emr_cluster_id))
            if not value
        ]
        if missing:
            raise FruitsConfigError(f"FRUITS_DEPLOYMENT=emr needs {' and '.join(missing)} (README: 'Run on AWS EMR').")
        if not s.s3_prefix:
            raise FruitsConfigError("FRUITS_S3_PREFIX must not be empty: the cluster may only touch that prefix.")
        if not s.emr_staging_prefix.startswith(s.s3_prefix + "/"):
            raise FruitsConfigError(
                f"FRUITS_EMR_STAGING_PREFIX={s.emr_staging_prefix!r} is outside FRUITS_S3_PREFIX={s.s3_prefix!r}: "
                "the cluster's instance profile may only read and write under the prefix."
            )


def validate_image_size(size: int) -> int:
    if size not in SUPPORTED_IMAGE_SIZES:
        raise FruitsConfigError(
            f"Image size {size} is not supported by MobileNetV2's pretrained weights: "
            f"use one of {SUPPORTED_IMAGE_SIZES} (FRUITS_IMAGE_SIZE or the settings' image_size)."
        )
    return size


def validate_pca_settings(variance_target: float, max_k: int) -> None:
    if not 0.0 < variance_target <= 1.0:
        raise FruitsConfigError(
            f"PCA variance target {variance_target} is outside (0, 1]: e.g. 0.95 keeps 95% of the "
            "variance (FRUITS_PCA_VARIANCE or the settings' pca_variance)."
        )
    if max_k < 1:
        raise FruitsConfigError(f"PCA max k {max_k} is below 1 (FRUITS_PCA_MAX_K or the settings' pca_max_k).")


def validate_region(region: str, allow_other_region: bool = False) -> str:
    """GDPR guard: refuse any region but eu-west-1 unless explicitly overridden."""
    if region != EU_REGION and not allow_other_region:
        raise FruitsConfigError(
            f"Region {region!r} refused: Fruits! keeps its data in {EU_REGION} (GDPR). "
            "Set FRUITS_ALLOW_NON_EU_REGION=1 only if the data-protection officer agreed."
        )
    return region

"""What one Fruits! run costs on EMR (`fruits-emr cost`), every figure with its source.

A run's billed time per instance, from the cluster's request to its termination (`fruits-emr run`
terminates the cluster as soon as the materialization ends, whatever its outcome):

    provisioning + bootstrap (dnf's Python 3.11, pip's install of requirements.lock)
    + EMR's applications + the run's own overhead on the host
    + steps x (step start-up [measured in the emulation] + YARN's containers + the launcher's poll)
    + images / (images per second per executor core [measured, at the input size]
                x Graviton factor x executor cores that run tasks)
    + termination

priced per instance as EC2 (on-demand or Spot, per fleet) + the EMR fee + EBS gp3, per second with
a one-minute minimum, plus the run's S3 requests. The idle timeout is added only on request: `run`
does not wait for it.

Executor cores are computed, not read: from cluster.yaml's spark-defaults and `executor_sizing`,
and each instance type's YARN memory (prices.json): `node_plans`. Every number comes from
cluster.yaml, prices.json or measurements.json (each entry with its source), or from an
`ASSUMPTIONS` entry below, which says why and where to check; `format_estimate` prints them all.
Pure functions, no AWS call.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fruits_assets.errors import FruitsConfigError

FULL_FRUITS_360 = 88_000  # images in a full Fruits-360 run (the default of `cost --images`)
DEFAULT_IMAGE_SIZE = 224
BUDGET_USD = 0.25  # issue 32: a full Fruits-360 run for at most this much
MEASUREMENTS_NAME = "measurements.json"
# Assets stored with one row per image, whose Parquet files the later steps read again.
PER_IMAGE_STORES = ("raw_images", "preprocessed_images", "image_features")


@dataclass(frozen=True)
class Assumption:
    value: float
    unit: str
    why: str


# Not measured here, not found in a stored source as a number: each says what it stands for and
# where the figure would come from. `measurements.json` replaces the ones it measures.
ASSUMPTIONS = {
    "provisioning_seconds": Assumption(
        300,
        "s",
        "EC2 instances running until EMR starts the bootstrap action (state STARTING: EMR provisions, "
        "starts and configures the instances, https://docs.aws.amazon.com/emr/latest/ManagementGuide/"
        "emr-overview.html#emr-overview-cluster-lifecycle). No AWS figure found; 5 min",
    ),
    "python_dnf_seconds": Assumption(
        30,
        "s",
        "bootstrap.sh's `dnf install python3.11 python3.11-pip` on Amazon Linux 2023 (two packages "
        "from the region's repository mirror); not measured",
    ),
    "pip_install_seconds": Assumption(
        120,
        "s",
        "pip's install of requirements.lock (72 pinned wheels, LiteRT, no TensorFlow) from PyPI into "
        "a fresh venv, plus bootstrap.sh's import check: used while measurements.json's bootstrap "
        "is not measured",
    ),
    "applications_seconds": Assumption(
        120,
        "s",
        "after the bootstrap, EMR installs and starts Hadoop and Spark (state BOOTSTRAPPING, then "
        "WAITING: https://docs.aws.amazon.com/emr/latest/ManagementGuide/emr-overview.html"
        "#emr-overview-cluster-lifecycle). No AWS figure found",
    ),
    "run_overhead_seconds": Assumption(
        60,
        "s",
        "the Dagster run on the host while the cluster waits: process start and planning, the "
        "host-only pca_quality and PCA target check, staging each step (a zip and a pickle to S3)",
    ),
    "yarn_containers_seconds": Assumption(
        10,
        "s",
        "per step: YARN allocates the application master and an executor container and starts their "
        "JVMs (spark.yarn.am.memory 512m, https://spark.apache.org/docs/latest/running-on-yarn.html); "
        "the emulation runs local Spark, without YARN",
    ),
    "termination_seconds": Assumption(
        60,
        "s",
        "from `terminate_job_flows` until the instances stop being billed (state TERMINATING); "
        "billing lasts 'until it is terminated' (https://aws.amazon.com/emr/pricing/)",
    ),
    "graviton_factor": Assumption(
        1.0,
        "x",
        "a Graviton (arm64) vCPU featurizes as fast as one x86 core of the measuring machine. AWS "
        "measured Spark (TPC-DS) 10% faster on Graviton2 than on x86 in EMR Serverless "
        "(https://aws.amazon.com/blogs/big-data/achieve-up-to-27-better-price-performance-for-spark-"
        "workloads-with-aws-graviton2-on-amazon-emr-serverless/); MobileNetV2 in LiteRT/XNNPACK on "
        "Graviton is not measured: 1.0, no gain claimed",
    ),
    "head_per_image": Assumption(
        1,
        "request",
        "a HEAD EMRFS may send when it opens each photo, before its GET; counted to stay on the safe side",
    ),
    "put_requests_per_parquet_file": Assumption(
        3,
        "requests",
        "EMRFS's S3-optimized committer writes each Parquet file as a multipart upload (create, one part, complete)",
    ),
    "get_requests_per_parquet_read": Assumption(
        3,
        "requests",
        "reading one Parquet file: a HEAD, the footer, the column chunks",
    ),
    "metadata_requests_per_step": Assumption(
        20,
        "requests",
        "per EMR step, PUT-class and GET-class each: versions, manifests and locks (small JSON objects), "
        "the committer's listings",
    ),
}
# Each EMR step's own objects: dagster-aws's step_run_ref pickle, the package zip and the run's
# settings, uploaded by the launcher (fruits_assets/emr_launcher.py).
STAGING_PUTS_PER_STEP = 3
# dagster-aws's emr_step_main writes all of a step's events to S3 at most once a second while new
# ones come (`event_writing_loop`): at most one PUT per second of a step.
EVENT_PUTS_PER_STEP_SECOND = 1.0
LIST_KEYS_PER_PAGE = 1000  # ListObjectsV2's page size
LOG_WAIT_SECONDS = 300.0  # FRUITS_EMR_WAIT_FOR_LOGS=1: EMR's 5-minute log upload, waited for after each step


# -- what the code location submits ------------------------------------------------------------
def emr_steps() -> dict[str, list[str]]:
    """The steps a whole-graph run submits to EMR (every asset and check that needs Spark), each
    with the assets it reads."""
    from fruits_assets.definitions import all_assets, all_checks

    steps = {}
    for definition in [*all_assets, *all_checks]:
        if "pyspark_step_launcher" in definition.required_resource_keys:
            inputs = sorted(key.to_user_string() for key in definition.keys_by_input_name.values())
            steps[definition.node_def.name] = inputs
    return dict(sorted(steps.items()))


def emr_steps_per_run() -> list[str]:
    """The names of the steps a whole-graph run submits to EMR."""
    return list(emr_steps())


# -- the files ---------------------------------------------------------------------------------
def load_measurements(path: Path | str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FruitsConfigError(
            f"No {path.name} at {path}: pass --measurements a copy of emr_resources/{MEASUREMENTS_NAME}."
        )
    return json.loads(path.read_text())


def instance_facts(prices: dict, instance_type: str) -> dict:
    try:
        return prices["instance_types"][instance_type]
    except KeyError:
        raise FruitsConfigError(
            f"prices.json has no entry for {instance_type}: add its prices and yarn_memory_mb (see its sources)."
        ) from None


def memory_mib(text: str) -> int:
    """A Spark memory string ('2g', '2432m', '512') in MiB."""
    match = re.fullmatch(r"(\d+)([kmgt]?)b?", str(text).strip().lower())
    if not match:
        raise FruitsConfigError(f"Not a Spark memory size: {text!r}")
    number, unit = int(match.group(1)), match.group(2) or "m"
    return int({"k": number / 1024, "m": number, "g": number * 1024, "t": number * 1024 * 1024}[unit])


def spark_defaults(cluster: dict) -> dict:
    for configuration in cluster.get("configurations", []):
        if configuration["Classification"] == "spark-defaults":
            return configuration["Properties"]
    return {}


# -- executor sizing ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ExecutorSize:
    cores: int
    heap_mib: int
    jvm_overhead_mib: int
    python_worker_mib: int
    application_master_mib: int

    @property
    def overhead_mib(self) -> int:
        """spark.executor.memoryOverhead: the JVM's off-heap memory and one Python worker per core
        (spark.task.cpus = 1, worker reuse): Python workers live outside the heap."""
        return self.jvm_overhead_mib + self.cores * self.python_worker_mib

    @property
    def container_mib(self) -> int:
        """What YARN reserves for one executor: spark.executor.memory + memoryOverhead."""
        return self.heap_mib + self.overhead_mib


def executor_size(cluster: dict) -> ExecutorSize:
    """cluster.yaml's `executor_sizing` figures, with spark-defaults' executor cores."""
    sizing = cluster["executor_sizing"]
    return ExecutorSize(
        cores=int(spark_defaults(cluster)["spark.executor.cores"]),
        heap_mib=int(sizing["heap_mib"]),
        jvm_overhead_mib=int(sizing["jvm_overhead_mib"]),
        python_worker_mib=int(sizing["python_worker_mib"]),
        application_master_mib=int(sizing["application_master_mib"]),
    )


def sizing_mismatches(cluster: dict) -> list[str]:
    """Where spark-defaults disagree with the executor sizing they should follow (empty: none)."""
    size, defaults = executor_size(cluster), spark_defaults(cluster)
    wanted = {
        "spark.executor.memory": size.heap_mib,
        "spark.executor.memoryOverhead": size.overhead_mib,
    }
    found = [
        f"{key} is {defaults.get(key)!r}, the sizing says {mib}m"
        for key, mib in wanted.items()
        if key not in defaults or memory_mib(defaults[key]) != mib
    ]
    if str(defaults.get("spark.task.cpus", "1")) != "1":
        found.append("spark.task.cpus must be 1: the sizing counts one Python worker per executor core")
    return found


@dataclass
class NodePlan:
    fleet: str
    fleet_type: str
    instance_type: str
    market: str
    count: int
    vcpus: int
    yarn_memory_mb: int
    runs_executors: bool
    by_memory: int = 0  # executors YARN's memory fits on one node
    by_cpu: int = 0  # executors whose cores fit the node's vCPUs
    executors: int = 0  # per node, before spark.dynamicAllocation.maxExecutors

    @property
    def executors_total(self) -> int:
        return self.executors * self.count


def runs_executors(cluster: dict, fleet: dict) -> bool:
    """Core and task nodes run YARN containers; the primary only in a single-node cluster ('With
    a single-node cluster, all components run on the primary node': EMR Management Guide,
    https://docs.aws.amazon.com/emr/latest/ManagementGuide/emr-plan-instances.html)."""
    if fleet["type"] != "MASTER":
        return True
    return all(other["type"] == "MASTER" for other in cluster["instance_fleets"])


def node_plans(cluster: dict, prices: dict, fleet_types: dict[str, str] | None = None) -> list[NodePlan]:
    """Executors per node of each fleet (its first instance type, or `fleet_types[name]`): as many
    as YARN's memory fits (less the application master's container on the first node that runs
    executors) and the node's vCPUs hold whole executors. The driver (client mode) runs on the
    primary, outside YARN."""
    size = executor_size(cluster)
    plans, am_placed = [], False
    for fleet in cluster["instance_fleets"]:
        instance_type = (fleet_types or {}).get(fleet["name"], fleet["instance_types"][0])
        facts = instance_facts(prices, instance_type)
        plan = NodePlan(
            fleet=fleet["name"],
            fleet_type=fleet["type"],
            instance_type=instance_type,
            market=fleet["market"],
            count=int(fleet["target_capacity"]),
            vcpus=int(facts["vcpu"]),
            yarn_memory_mb=int(facts["yarn_memory_mb"]),
            runs_executors=runs_executors(cluster, fleet),
        )
        if plan.runs_executors:
            memory = plan.yarn_memory_mb - (0 if am_placed else size.application_master_mib)
            am_placed = True
            plan.by_memory = max(memory, 0) // size.container_mib
            plan.by_cpu = plan.vcpus // size.cores
            plan.executors = min(plan.by_memory, plan.by_cpu)
        plans.append(plan)
    return plans


def max_executors(cluster: dict) -> int | None:
    value = spark_defaults(cluster).get("spark.dynamicAllocation.maxExecutors")
    return None if value is None else int(value)


def executor_cores(cluster: dict, prices: dict, fleet_types: dict[str, str] | None = None) -> int:
    """The executor cores that run tasks: executors on the nodes, capped by maxExecutors, times
    spark.executor.cores (one task per core: spark.task.cpus = 1)."""
    executors = sum(plan.executors_total for plan in node_plans(cluster, prices, fleet_types))
    cap = max_executors(cluster)
    if cap is not None:
        executors = min(executors, cap)
    return executors * executor_size(cluster).cores


def idle_timeout_for(longest_gap_seconds: float) -> int:
    """cluster.yaml's auto-termination: the longest gap between two steps of a run, doubled and at
    least five minutes more, rounded up to a minute; within the AutoTerminationPolicy's limits
    (60 s to 604,800 s: https://docs.aws.amazon.com/emr/latest/APIReference/API_AutoTerminationPolicy.html).
    A safety net only: `fruits-emr run` terminates the cluster itself."""
    seconds = max(2 * longest_gap_seconds, longest_gap_seconds + 300)
    return int(min(max(60 * math.ceil(seconds / 60), 60), 604_800))


# -- throughput --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Figure:
    """One number of the estimate and where it comes from."""

    name: str
    value: float
    unit: str
    kind: str  # measured | assumption | placeholder | config | derived | price
    source: str


def core_seconds_per_image(measurements: dict, image_size: int) -> tuple[float, list[Figure]]:
    """Executor-core seconds per image for the whole graph at `image_size`, from measurements.json,
    and the figures it rests on. A measurement of part of the graph gets the rest from the
    whole-graph measurement it names (`rest_of_graph_from`): PCA, the CSV and the checks work on
    1280-d features whatever the input size, so that whole run's per-image cost bounds them."""
    table = measurements.get("throughput", {})
    entry = table.get(str(image_size))
    if entry is None:
        raise FruitsConfigError(
            f"measurements.json has no throughput at {image_size} px (it has {', '.join(sorted(table, key=int))}): "
            "measure one or pass --image-size."
        )
    figures = [_throughput_figure(image_size, entry)]
    seconds = 1.0 / float(entry["img_per_core_second"])
    if not entry.get("whole_graph"):
        rest = table.get(str(entry.get("rest_of_graph_from")))
        if rest is None or not rest.get("whole_graph"):
            raise FruitsConfigError(
                f"measurements.json's {image_size} px throughput is not the whole graph and names no "
                "whole-graph measurement (rest_of_graph_from) for the rest."
            )
        seconds += 1.0 / float(rest["img_per_core_second"])
        figures.append(
            Figure(
                f"rest of the graph (PCA, CSV, checks): at most the whole graph at {entry['rest_of_graph_from']} px",
                float(rest["img_per_core_second"]),
                "img/s per core",
                "measured" if rest.get("measured") else "placeholder",
                f"{rest['source']}; an upper bound: it also counts that run's listing, decoding and featurization",
            )
        )
    return seconds, figures


def _throughput_figure(image_size: int, entry: dict) -> Figure:
    startup = (
        "start-up included (counted again per step below: conservative)"
        if entry.get("startup_included")
        else "start-up excluded"
    )
    return Figure(
        f"throughput at {image_size} px ({entry['scope']}; {startup})",
        float(entry["img_per_core_second"]),
        "img/s per core",
        "measured" if entry.get("measured") else "placeholder",
        f"{entry['source']} ({entry['images']} images, {entry['seconds']} s, {entry['cores']} {entry['architecture']} cores)",
    )


# -- the estimate ------------------------------------------------------------------------------
@dataclass
class TimeLine:
    name: str
    seconds: float
    figures: list[Figure] = field(default_factory=list)


@dataclass
class CostLine:
    name: str
    usd: float
    detail: str
    source: str


@dataclass
class Estimate:
    images: int
    image_size: int
    cluster_name: str
    region: str
    nodes: list[NodePlan]
    executor: ExecutorSize
    executor_cores: int
    max_executors: int | None
    steps: list[str]
    timeline: list[TimeLine]
    billed_seconds: float
    hours_given: float | None
    costs: list[CostLine]
    s3_requests: dict[str, dict]
    idle_timeout_seconds: int
    idle_included: bool
    idle_timeout_source: str
    notes: list[str]
    price_sources: dict[str, str]

    @property
    def total_usd(self) -> float:
        return sum(line.usd for line in self.costs)

    def as_dict(self) -> dict:
        data = asdict(self)
        data["total_usd"] = round(self.total_usd, 6)
        data["budget_usd"] = BUDGET_USD
        data["within_budget"] = self.total_usd <= BUDGET_USD
        return data


def step_timeline(steps: list[str], measurements: dict, poll_seconds: float, wait_for_logs: bool) -> TimeLine:
    startup = measurements["step_startup"]
    per_step = [
        Figure("step start-up", float(startup["seconds"]), "s", _kind(startup), startup["source"]),
        _assumed("yarn_containers_seconds", "YARN's containers"),
        Figure(
            "launcher poll",
            float(poll_seconds),
            "s",
            "config",
            "FRUITS_EMR_POLL_SECONDS: the launcher sees a step's end up to one interval late; counted whole",
        ),
    ]
    if wait_for_logs:
        per_step.append(
            Figure(
                "wait for EMR's logs",
                LOG_WAIT_SECONDS,
                "s",
                "config",
                "FRUITS_EMR_WAIT_FOR_LOGS=1: EMR uploads logs every 5 min",
            )
        )
    seconds = sum(f.value for f in per_step)
    return TimeLine(f"{len(steps)} EMR steps x {seconds:.0f} s", len(steps) * seconds, per_step)


def _kind(entry: dict) -> str:
    return "measured" if entry.get("measured") else "placeholder"


def _assumed(key: str, name: str) -> Figure:
    assumption = ASSUMPTIONS[key]
    return Figure(name, float(assumption.value), assumption.unit, "assumption", assumption.why)


def bootstrap_timeline(measurements: dict) -> TimeLine:
    entry = measurements.get("bootstrap", {})
    figures = [_assumed("python_dnf_seconds", "Python 3.11 (dnf)")]
    if entry.get("measured") and entry.get("install_seconds") is not None:
        size = f", venv {entry['venv_mb']} MB" if entry.get("venv_mb") is not None else ""
        figures.append(
            Figure(
                f"pip install of requirements.lock{size}",
                float(entry["install_seconds"]),
                "s",
                "measured",
                entry["source"],
            )
        )
    else:
        pip = _assumed("pip_install_seconds", "pip install of requirements.lock")
        figures.append(
            Figure(
                pip.name,
                pip.value,
                pip.unit,
                pip.kind,
                f"{pip.source}; measurements.json: {entry.get('source', 'absent')}",
            )
        )
    return TimeLine("bootstrap", sum(f.value for f in figures), figures)


def compute_timeline(images: int, image_size: int, measurements: dict, cores: int) -> TimeLine:
    if cores <= 0:
        raise FruitsConfigError("The cluster runs no executor core: check cluster.yaml's fleets and executor sizing.")
    per_image, figures = core_seconds_per_image(measurements, image_size)
    graviton = _assumed("graviton_factor", "Graviton factor")
    rate = graviton.value / per_image
    figures = [
        *figures,
        Figure(
            "whole graph",
            rate,
            "img/s per core",
            "derived",
            "1 / (the sum of the per-image core-seconds above) x the Graviton factor",
        ),
        graviton,
        Figure("executor cores that run tasks", cores, "cores", "derived", "executor sizing above"),
    ]
    return TimeLine(
        f"compute: {images:,} images / ({rate:.2f} img/s per core x {cores} cores)", images / (rate * cores), figures
    )


def s3_request_counts(
    images: int, image_size: int, steps: dict[str, list[str]], step_seconds: float, poll_seconds: float
) -> dict[str, dict]:
    """The run's S3 requests by what sends them, each {"class": GET|PUT, "count", "basis"}: PUT
    covers PUT/COPY/POST/LIST (one price), GET covers GET/SELECT/HEAD. From the image count, the
    code's access pattern and ASSUMPTIONS."""
    from fruits_assets.settings import rows_per_partition_for

    rows = rows_per_partition_for(image_size)
    files = math.ceil(images / rows)
    reads = sum(1 for inputs in steps.values() for name in inputs if name in PER_IMAGE_STORES)
    pages = math.ceil(images / LIST_KEYS_PER_PAGE)
    a = {key: ASSUMPTIONS[key].value for key in ASSUMPTIONS}
    counts = {
        "listing": (
            "PUT",
            2 * pages,
            f"the photos listed twice (the driver's listing, Spark's binaryFile), {LIST_KEYS_PER_PAGE:,} keys per page",
        ),
        "photos read": (
            "GET",
            images * (1 + a["head_per_image"]),
            f"raw_images reads each photo once (a GET), + {a['head_per_image']:.0f} HEAD each (assumption)",
        ),
        "Parquet written": (
            "PUT",
            len(PER_IMAGE_STORES) * files * a["put_requests_per_parquet_file"],
            f"{', '.join(PER_IMAGE_STORES)}: {files} files each ({rows} rows per file at {image_size} px) "
            f"x {a['put_requests_per_parquet_file']:.0f} requests (assumption)",
        ),
        "Parquet read": (
            "GET",
            reads * files * a["get_requests_per_parquet_read"],
            f"{reads} reads of a per-image store by the steps (from the code location) x {files} files "
            f"x {a['get_requests_per_parquet_read']:.0f} requests (assumption)",
        ),
        "staging": (
            "PUT",
            len(steps) * STAGING_PUTS_PER_STEP,
            f"{STAGING_PUTS_PER_STEP} objects per step (emr_launcher.py)",
        ),
        "step events written": (
            "PUT",
            math.ceil(step_seconds * EVENT_PUTS_PER_STEP_SECOND),
            "dagster-aws's emr_step_main writes a step's events at most once a second: one per second of the steps",
        ),
        "step events polled": (
            "GET",
            math.ceil(step_seconds / poll_seconds),
            "the launcher reads events.pkl once per poll",
        ),
        "metadata PUT": ("PUT", len(steps) * a["metadata_requests_per_step"], "per step (assumption)"),
        "metadata GET": ("GET", len(steps) * a["metadata_requests_per_step"], "per step (assumption)"),
    }
    return {name: {"class": kind, "count": int(count), "basis": basis} for name, (kind, count, basis) in counts.items()}


def estimate_run(
    cluster: dict,
    prices: dict,
    measurements: dict,
    *,
    images: int = FULL_FRUITS_360,
    image_size: int = DEFAULT_IMAGE_SIZE,
    steps: dict[str, list[str]] | None = None,
    poll_seconds: float = 15.0,
    wait_for_logs: bool = False,
    hours: float | None = None,
    include_idle_timeout: bool = False,
    fleet_types: dict[str, str] | None = None,
) -> Estimate:
    """The estimate of one run (or of `hours` billed hours, given): pure."""
    if images < 0:
        raise FruitsConfigError(f"images must be >= 0, not {images}.")
    if hours is not None and hours < 0:
        raise FruitsConfigError(f"hours must be >= 0, not {hours}.")
    steps = emr_steps() if steps is None else steps
    plans = node_plans(cluster, prices, fleet_types)
    cores = executor_cores(cluster, prices, fleet_types)
    step_line = step_timeline(list(steps), measurements, poll_seconds, wait_for_logs)
    compute = compute_timeline(images, image_size, measurements, cores)
    timeline = [
        TimeLine(
            "provisioning",
            ASSUMPTIONS["provisioning_seconds"].value,
            [_assumed("provisioning_seconds", "provisioning")],
        ),
        bootstrap_timeline(measurements),
        TimeLine(
            "EMR's applications",
            ASSUMPTIONS["applications_seconds"].value,
            [_assumed("applications_seconds", "applications")],
        ),
        TimeLine(
            "the run on the host",
            ASSUMPTIONS["run_overhead_seconds"].value,
            [_assumed("run_overhead_seconds", "run overhead")],
        ),
        step_line,
        compute,
        TimeLine(
            "termination", ASSUMPTIONS["termination_seconds"].value, [_assumed("termination_seconds", "termination")]
        ),
    ]
    minimum = float(prices["billing"]["minimum_seconds"])
    billed = hours * 3600.0 if hours is not None else sum(line.seconds for line in timeline)
    billed = max(billed, minimum)
    gap = measurements["longest_step_gap"]
    idle = int(cluster["idle_timeout_seconds"])
    idle_source = (
        f"cluster.yaml's idle_timeout_seconds = idle_timeout_for(longest gap {gap['seconds']} s, "
        f"{'measured' if gap.get('measured') else 'a PLACEHOLDER'}: {gap['source']})"
    )
    running = billed + (idle if include_idle_timeout else 0)
    costs = _instance_costs(plans, prices, cluster, running)
    requests = s3_request_counts(images, image_size, steps, step_line.seconds + compute.seconds, poll_seconds)
    costs += _s3_costs(requests, prices)
    notes = [
        f"billing: per second with a one-minute minimum ({prices['billing']['source']})",
        "not counted: data transfer (none between EC2 and S3 in one region), the EMR API calls, KMS requests, CloudWatch",
    ]
    if not include_idle_timeout:
        notes.append(
            f"not counted: the idle timeout ({idle} s: --include-idle-timeout adds it): `fruits-emr run` "
            "terminates the cluster as soon as the run ends"
        )
    return Estimate(
        images=images,
        image_size=image_size,
        cluster_name=cluster["name"],
        region=prices["region"],
        nodes=plans,
        executor=executor_size(cluster),
        executor_cores=cores,
        max_executors=max_executors(cluster),
        steps=list(steps),
        timeline=timeline,
        billed_seconds=running,
        hours_given=hours,
        costs=costs,
        s3_requests=requests,
        idle_timeout_seconds=idle,
        idle_included=include_idle_timeout,
        idle_timeout_source=idle_source,
        notes=notes,
        price_sources={
            "instances": prices["source"],
            "yarn_memory": prices["yarn_memory_source"],
            "billing": prices["billing"]["source"],
            "ebs": prices["ebs"]["source"],
            "s3": prices["s3"]["source"],
        },
    )


def _instance_costs(plans: list[NodePlan], prices: dict, cluster: dict, seconds: float) -> list[CostLine]:
    hours = seconds / 3600.0
    ebs = prices["ebs"]
    lines = []
    for plan in plans:
        facts = instance_facts(prices, plan.instance_type)
        spot = plan.market == "SPOT"
        ec2 = float(facts["spot" if spot else "on_demand"])
        where = f"{plan.count} x {plan.instance_type} ({plan.fleet})"
        lines.append(
            CostLine(
                f"EC2 {'Spot' if spot else 'on-demand'}",
                plan.count * ec2 * hours,
                f"{where} x {ec2:.4f} USD/h x {hours:.3f} h",
                "prices.json (ASSUMPTION: verify)",
            )
        )
        lines.append(
            CostLine(
                "EMR fee",
                plan.count * float(facts["emr"]) * hours,
                f"{where} x {facts['emr']:.4f} USD/h x {hours:.3f} h",
                "prices.json (ASSUMPTION: verify)",
            )
        )
        gb = int(cluster["ebs_root_volume_size_gb"]) + (
            int(cluster["ebs_gb_per_instance"]) if fleet_has_ebs(cluster, plan.fleet) else 0
        )
        per_hour = gb * float(ebs["gp3_usd_per_gb_month"]) / float(ebs["hours_per_month"])
        lines.append(
            CostLine(
                "EBS gp3",
                plan.count * per_hour * hours,
                f"{where} x {gb} GB x {ebs['gp3_usd_per_gb_month']} USD/GB-month / {ebs['hours_per_month']} h x {hours:.3f} h",
                "prices.json ebs (ASSUMPTION: verify)",
            )
        )
    return lines


def fleet_has_ebs(cluster: dict, fleet_name: str) -> bool:
    """Whether `fruits-emr create` gives the fleet's instances ebs_gb_per_instance of gp3 besides
    the root volume: every fleet that runs executors (YARN's local directories, Spark's shuffle)."""
    fleet = next(f for f in cluster["instance_fleets"] if f["name"] == fleet_name)
    return runs_executors(cluster, fleet)


def _s3_costs(requests: dict[str, dict], prices: dict) -> list[CostLine]:
    s3 = prices["s3"]
    lines = []
    for kind, price, label in (
        ("GET", s3["get_usd_per_1000"], "GET/HEAD"),
        ("PUT", s3["put_usd_per_1000"], "PUT/LIST"),
    ):
        count = sum(r["count"] for r in requests.values() if r["class"] == kind)
        lines.append(
            CostLine(
                f"S3 {label}",
                count * float(price) / 1000.0,
                f"{count:,} requests x {price} USD per 1,000",
                "prices.json s3 (ASSUMPTION: verify)",
            )
        )
    return lines


# -- printing ----------------------------------------------------------------------------------
def format_estimate(estimate: Estimate, prices: dict) -> str:
    e = estimate
    out = [
        f"fruits-emr cost: {e.images:,} images at {e.image_size} px on cluster {e.cluster_name!r}, {e.region}, prices as of {prices.get('as_of')}",
        "",
        "Executor sizing (cluster.yaml's executor_sizing and spark-defaults; YARN memory per instance type: prices.json):",
        f"  executor container = heap {e.executor.heap_mib} + JVM off-heap {e.executor.jvm_overhead_mib} + "
        f"{e.executor.cores} cores x {e.executor.python_worker_mib} MiB (one LiteRT Python worker per core) = "
        f"{e.executor.container_mib} MiB (spark.executor.memory {e.executor.heap_mib}m + memoryOverhead {e.executor.overhead_mib}m)",
    ]
    for plan in e.nodes:
        head = f"  {plan.fleet}: {plan.count} x {plan.instance_type} {plan.market}, {plan.vcpus} vCPUs, YARN {plan.yarn_memory_mb} MiB"
        if plan.runs_executors:
            out.append(
                f"{head}: {plan.by_memory} executor(s) by memory (application master {e.executor.application_master_mib} MiB "
                f"on the first), {plan.by_cpu} by vCPUs -> {plan.executors} per node"
            )
        else:
            out.append(f"{head}: no executors (the driver, YARN's ResourceManager, HDFS's NameNode)")
    executors = sum(p.executors_total for p in e.nodes)
    capped = f", spark.dynamicAllocation.maxExecutors {e.max_executors}" if e.max_executors is not None else ""
    vcpus = sum(p.vcpus * p.count for p in e.nodes if p.runs_executors)
    out.append(
        f"  => {executors} executor(s){capped}: {e.executor_cores} executor cores run tasks, of {vcpus} vCPUs on nodes that run executors"
    )
    out += ["", f"Billed time per instance, request to termination ({len(e.steps)} EMR steps: {', '.join(e.steps)}):"]
    for line in e.timeline:
        out.append(f"  {line.seconds:8.0f} s  {line.name}")
        for f in line.figures:
            out.append(f"  {'':10}    {f.value:>8g} {f.unit:<15} {f.name} [{f.kind}: {f.source}]")
    if e.hours_given is not None:
        out.append(f"  replaced by --hours {e.hours_given}: {e.hours_given * 3600:.0f} s")
    if e.idle_included:
        out.append(f"  {e.idle_timeout_seconds:8.0f} s  idle timeout before auto-termination (--include-idle-timeout)")
    out.append(
        f"  {e.billed_seconds:8.0f} s  billed = {e.billed_seconds / 60:.1f} min = {e.billed_seconds / 3600:.3f} h"
    )
    out += ["", "S3 requests:"]
    for name, request in e.s3_requests.items():
        out.append(f"  {request['count']:>9,} {request['class']:<4} {name}: {request['basis']}")
    out += ["", "Cost (USD):"]
    for line in e.costs:
        out.append(f"  {line.usd:9.4f}  {line.name:<15} {line.detail}  [{line.source}]")
    verdict = "within" if e.total_usd <= BUDGET_USD else "OVER"
    out.append(f"  {e.total_usd:9.4f}  TOTAL ({verdict} issue 32's budget of {BUDGET_USD:.2f} USD per run)")
    out += [
        "",
        "Sources of the prices:",
        f"  instances: {prices['source']}",
        f"  YARN memory: {prices['yarn_memory_source']}",
    ]
    out += [f"  EBS: {prices['ebs']['source']}", f"  S3: {prices['s3']['source']}"]
    out += ["", f"Auto-termination: {e.idle_timeout_source}", *e.notes]
    return "\n".join(out)

"""An emulated EMR cluster: what a real one does with the steps the Dagster host submits, done the
same way here, in other processes, with the cluster's environment only, on a real multi-process
Spark cluster.

What it does, as EMR would (see `EmulatedEmrCluster.run_step`):
- **The steps are the ones the host submitted.** The real dagster-aws launcher (in the host's
  `dagster asset materialize` process) stages each step to S3 and calls `add_job_flow_steps` on
  an EMR API (moto's server on loopback). A thread here watches that cluster's steps in moto's
  backend and runs them in order, one at a time (step concurrency 1, as cluster.yaml says), then
  marks each COMPLETED or FAILED there, which the launcher polls, as it would on AWS.
- **Each step runs its own command line** - the spark-submit arguments EMR received - as a new
  process on the "primary node" (client deploy mode: that process is the driver). Only
  `spark-submit`'s location and `--master yarn` are swapped: for this machine's pyspark
  distribution and the URL of a Spark standalone master.
- **A cluster of several processes** (`StandaloneSpark`): a standalone master and two workers,
  started once from pyspark's own `bin/spark-class` on loopback, each worker a "node" with its own
  working directory, local dirs and HOME. Each step's application gets an executor on each worker:
  executor JVMs other than the driver's, each with its own Python workers and its own working
  directory (the application's files are fetched there), as YARN's containers. The primary
  node's disk (the driver's working directory, temporary files and scratch space) is hidden from
  the workers (a mount namespace each, in which it is an empty folder). Whatever relies on the
  driver's local files, on module state set in the driver, or on one executor fails here as it
  would on EMR. The standalone scheduler stands in for YARN: cluster.yaml's executor sizing is
  YARN's (one 4-core executor on the one 4-vCPU node, `maxExecutors` 1), so `STANDALONE_DEFAULTS`
  overrides only what a 1-core worker needs (`spark.executor.cores` 1; `memoryOverhead` is not
  reserved by standalone, which has no container limit: the master grants each executor its heap
  only) and what dynamic allocation needs without YARN's external shuffle service (shuffle
  tracking), and keeps two executors per application (`minExecutors` = `maxExecutors` = 2: a
  cluster with task nodes has several; the default one-node cluster runs this code in one). One setting is this machine's, not EMR's: the
  JVMs compile with C1 only (`THIS_MACHINE_DEFAULTS`: three JVMs per step on two cores).
- **The cluster's environment only**: every process (driver, master, workers, executors, Python
  workers) starts from an empty environment plus what a node has (`node_environment`: PATH,
  JAVA_HOME, a HOME of its own, the instance profile's credentials standing in as variables, and
  the network, below). The driver also gets EMR's spark-env (cluster.yaml's `spark-env` exports,
  in a spark-env.sh that spark-submit sources, as on EMR) and spark-defaults (cluster.yaml's
  `spark-defaults`, in a spark-defaults.conf). The workers do not source that spark-env.sh, and so
  neither do their executors, as YARN containers do not: an executor knows the cluster's Python
  only from the driver (PYSPARK_PYTHON, which PySpark hands to the executors) and has no
  AWS_REGION. Nothing of the host's environment (FRUITS_*, DAGSTER_HOME...) or of the test's
  process reaches any of them. The step's working directory is a fresh folder.
- **The network of eu-west-1** (`aws_network/emulated_aws_network.py`, a botocore client plugin
  in every Python process here, the host's included): boto3 clients made for eu-west-1 reach the
  moto server through AWS's own regional endpoint URLs; a client made without the region fails as
  unreachable. No AWS_ENDPOINT_URL anywhere, which would make any client work whatever its region.
- **The cluster's Python**: a virtual environment built from emr_resources/requirements.lock, the
  lock the bootstrap installs (same pip command, same hashed pins of every package; x86_64 wheels
  here, aarch64 on the Graviton nodes), with /opt/fruits-venv of cluster.yaml mapped to it. `fruits_assets` is not
  installed in it: the step can only import the package from the staged code.zip (`--py-files`).
  pyspark comes, as on EMR, from the Spark distribution spark-submit belongs to.
- **s3:// through a real Hadoop S3 connector**: EMR's EMRFS is not available outside AWS; the
  hadoop-aws 3.3.1 S3A file system and its AWS SDK bundle (from the sagemaker-pyspark source
  archive on PyPI, see ../shared/DESIGN.md) serve `s3://` for Spark's Parquet reads and writes
  against moto, with SSE-S3 (AES256) on every object, as the security configuration asks EMRFS.
  As EMRFS's jars are on every EMR node's class path, the connector is on the driver's and the
  executors' (`extraClassPath`: the nodes here share this machine's disk, so the path is the
  same on each). S3A is pointed at the moto server (`fs.s3a.endpoint`): it stands in for EMRFS,
  which finds the region's endpoint itself.
- Each step's stdout and stderr go to the cluster's LogUri, gzipped, where EMR puts them; the
  master's, workers' and executors' logs and Spark's event logs stay in the test's folder.
- What each step's application ran where is recorded (`ran`): its application id, the driver's
  process id, each executor's worker, process id and task count (from the workers' working
  directories and Spark's event log).

What only a real cluster can show: YARN itself (containers, memory limits, node labels, the
external shuffle service, Spot reclaims), nodes that share no disk at all (the workers here see
this machine's disk but the primary node's folder: the S3 connector and the cluster's venv are at
the same place on each "node", as EMR's bootstrap makes them, and so is the Dagster host's disk),
EMRFS itself (its committer, its consistency), aarch64 binaries at run time (the resolution for
aarch64 is checked in test_emr_bootstrap.py), the bootstrap's dnf/pip run on Amazon Linux, IAM and
KMS enforcement (test_emr_iam.py checks the documents; moto records SSE-KMS but enforces no key
policy), the real S3 endpoint, network reach from a VPC, and real timings.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import yaml

from emr_resources.lock import LOCK_NAME, PIP_INSTALL_FLAGS
from fruits_assets_tests.aws_network import emulated_aws_network as aws_network

PROJECT = Path(__file__).resolve().parents[1]
RESOURCES = PROJECT / "emr_resources"
CACHE = PROJECT / ".cache"
MOTO_ACCOUNT = "123456789012"  # moto's default account
CLUSTER_VENV_ON_EMR = "/opt/fruits-venv"
# The Hadoop S3 connector this Spark (3.5, Hadoop 3.3 client) can use, shipped inside a PyPI package.
S3A_SOURCE = "sagemaker-pyspark==1.4.5"
S3A_JARS = ("hadoop-aws-3.3.1.jar", "aws-java-sdk-bundle-1.11.901.jar")


class EmulationUnavailable(RuntimeError):
    """Something the emulation needs cannot be had here (e.g. PyPI unreachable)."""


def _run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, **kwargs)


def cluster_install_command(python: Path, lock: Path) -> list[str]:
    """bootstrap.sh's install of the lock (PIP_INSTALL_FLAGS), for this machine's platform."""
    return [
        str(python),
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        *PIP_INSTALL_FLAGS,
        "-r",
        str(lock),
    ]


def cluster_python() -> Path:
    """The cluster's Python: a venv of emr_resources/requirements.lock, as the bootstrap makes it.

    Cached under .cache/ by the lock's content (and this Python's version, which the venv is made
    from): a new lock (`fruits-emr lock`) rebuilds it, so it never runs an older resolution.
    """
    lock = RESOURCES / LOCK_NAME
    key = hashlib.sha256(lock.read_bytes() + sys.version.encode()).hexdigest()[:12]
    venv = CACHE / f"emr-cluster-venv-{key}"
    python = venv / "bin" / "python"
    if (venv / ".complete").exists():
        return python
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    base = getattr(sys, "_base_executable", sys.executable)
    steps = [
        [base, "-m", "venv", str(venv)],
        # The bootstrap's own install command (bootstrap.sh), for this machine's platform.
        cluster_install_command(python, lock),
    ]
    for command in steps:
        result = _run(command, timeout=1800)
        if result.returncode != 0:
            raise EmulationUnavailable(f"{' '.join(command[:4])}...: {result.stderr[-2000:]}")
    (venv / ".complete").write_text(lock.read_text())
    return python


def tag_default_network_for_emr(region: str) -> None:
    """Tag the account's default VPC, its default subnets and any EMR security group there with
    for-use-with-amazon-emr-managed-policies=true, as an administrator does once (README, 'Run on
    AWS EMR', step 1) so that `fruits-emr create` without --subnet-id passes its network check."""
    import boto3

    ec2 = boto3.client("ec2", region_name=region)  # the moto server (AWS_ENDPOINT_URL, or eu_west_1_network)
    [vpc] = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
    in_vpc = [{"Name": "vpc-id", "Values": [vpc["VpcId"]]}]
    subnets = ec2.describe_subnets(Filters=[*in_vpc, {"Name": "default-for-az", "Values": ["true"]}])["Subnets"]
    groups = ec2.describe_security_groups(Filters=[*in_vpc, {"Name": "group-name", "Values": ["ElasticMapReduce-*"]}])
    resources = [vpc["VpcId"], *(s["SubnetId"] for s in subnets), *(g["GroupId"] for g in groups["SecurityGroups"])]
    ec2.create_tags(Resources=resources, Tags=[{"Key": "for-use-with-amazon-emr-managed-policies", "Value": "true"}])


def s3a_jars() -> list[Path]:
    """hadoop-aws + AWS SDK bundle jars, taken from the sagemaker-pyspark source archive."""
    folder = CACHE / "s3a-jars"
    jars = [folder / name for name in S3A_JARS]
    if all(j.exists() for j in jars):
        return jars
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        result = _run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                ":all:",
                S3A_SOURCE,
                "-d",
                tmp,
            ],
            timeout=1800,
        )
        if result.returncode != 0:
            raise EmulationUnavailable(f"pip download {S3A_SOURCE}: {result.stderr[-1000:]}")
        [archive] = Path(tmp).glob("*.tar.gz")
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                if Path(member.name).name in S3A_JARS:
                    member.name = Path(member.name).name
                    tar.extract(member, folder, filter="data")
    missing = [j.name for j in jars if not j.exists()]
    if missing:
        raise EmulationUnavailable(f"{S3A_SOURCE} has no {missing}")
    return jars


def spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent


def java_home() -> str:
    java = shutil.which("java")
    if not java:
        raise EmulationUnavailable("no java on this machine (Spark needs Java 17)")
    return str(Path(os.path.realpath(java)).parents[1])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def node_environment(home: Path, endpoint: str) -> dict[str, str]:
    """What any process on a node has: nothing from the host or the test process."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "JAVA_HOME": java_home(),
        "SPARK_HOME": str(spark_home()),
        "LANG": "C.UTF-8",
        # A node's own address (Spark would otherwise pick this machine's first interface).
        "SPARK_LOCAL_IP": "127.0.0.1",
        # The instance profile's credentials, standing in:
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        # The network of eu-west-1 (aws_network/emulated_aws_network.py): AWS's regional
        # endpoints reach the moto server; no AWS_ENDPOINT_URL.
        **aws_network.environment(endpoint),
    }


def _stop(process: subprocess.Popen, seconds: float = 20) -> None:
    """Stop a process this module started, and the processes it started (its own group)."""
    if process.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, seconds), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


# Runs a command in a mount namespace of its own in which the folder "$0" is an empty tmpfs
# (`unshare` and `sh` exec: the command keeps the process id).
HIDING = 'mount -t tmpfs -o size=1m,mode=0755 fruits-hidden "$0" && exec "$@"'
UNSHARE_COMMANDS = (
    ["unshare", "--mount", "--propagation", "private"],  # as root
    ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private"],  # without
)


def unshare_command() -> list[str] | None:
    """How this machine lets a process have a mount namespace of its own, if it does."""
    with tempfile.TemporaryDirectory() as folder:
        for command in UNSHARE_COMMANDS:
            if shutil.which(command[0]) and _run([*command, "sh", "-c", HIDING, folder, "true"]).returncode == 0:
                return command
    return None


class StandaloneSpark:
    """A Spark standalone master and `workers` workers on 127.0.0.1, started from pyspark's own
    `bin/spark-class` (pyspark from PyPI has no sbin/start-*.sh), each in a node's environment
    (`node_environment`) with its own working directory, local dirs and HOME under `folder`.

    The primary node's disk (`primary`: where the steps' drivers run, see EmulatedEmrCluster) is
    not the workers': each worker runs in a mount namespace of its own in which that folder is
    empty, so an executor cannot read a file the driver wrote there (`hides_primary`; without
    `unshare` here the workers see it, as the test then says).

    Their logs stay in `folder` (master.log, node-<n>/worker.log, and each executor's stdout and
    stderr in node-<n>/work/<application id>/<executor id>/). Always stopped by `stop` (the
    context manager's exit), even when starting failed.
    """

    def __init__(self, folder: Path, endpoint: str, workers: int = 2, cores: int = 1, memory: str = "2g"):
        self.folder = folder
        self.endpoint = endpoint
        self.workers, self.cores, self.memory = workers, cores, memory
        self.port, self.ui_port = free_port(), free_port()
        self.worker_ui_ports = [free_port() for _ in range(workers)]
        self.processes: list[subprocess.Popen] = []
        self.primary = folder / "primary"
        self.unshare = unshare_command()
        self.hides_primary = self.unshare is not None

    @property
    def url(self) -> str:
        return f"spark://127.0.0.1:{self.port}"

    def node(self, index: int) -> Path:
        return self.folder / f"node-{index}"

    def work_dir(self, index: int) -> Path:
        return self.node(index) / "work"

    def _environment(self, folder: Path) -> dict[str, str]:
        home, conf = folder / "home", folder / "conf"
        home.mkdir(parents=True, exist_ok=True)
        # A conf folder of its own, without EMR's spark-env.sh: YARN's executors never source it.
        conf.mkdir(exist_ok=True)
        return {**node_environment(home, self.endpoint), "SPARK_CONF_DIR": str(conf)}

    def _start(self, args: list[str], env: dict, log: Path) -> None:
        command = [str(spark_home() / "bin" / "spark-class"), *args]
        if self.unshare:
            command = [*self.unshare, "sh", "-c", HIDING, str(self.primary), *command]
        with log.open("w") as out:
            self.processes.append(
                subprocess.Popen(
                    command,
                    env=env,
                    cwd=log.parent,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own group: `stop` ends it and its executors
                )
            )

    def start(self, timeout: float = 120) -> StandaloneSpark:
        self.primary.mkdir(parents=True, exist_ok=True)
        master = self.folder / "master"
        master_args = ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1"]
        master_args += ["--port", str(self.port), "--webui-port", str(self.ui_port)]
        self._start(master_args, self._environment(master), self.folder / "master.log")
        for index, ui_port in enumerate(self.worker_ui_ports):
            node = self.node(index)
            env = self._environment(node)
            # The node's own disks: executors' working directories, and Spark's scratch space.
            env["SPARK_WORKER_DIR"] = str(self.work_dir(index))
            env["SPARK_LOCAL_DIRS"] = str(node / "local")
            worker_args = ["org.apache.spark.deploy.worker.Worker", self.url, "--host", "127.0.0.1"]
            worker_args += ["--cores", str(self.cores), "--memory", self.memory, "--webui-port", str(ui_port)]
            worker_args += ["--work-dir", env["SPARK_WORKER_DIR"]]
            self._start(worker_args, env, node / "worker.log")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self.processes):
                break
            try:
                alive = [w for w in self.master_state()["workers"] if w["state"] == "ALIVE"]
            except OSError:
                alive = []
            if len(alive) == self.workers:
                return self
            time.sleep(0.5)
        logs = "".join(p.read_text()[-2000:] for p in sorted(self.folder.rglob("*.log")))
        raise EmulationUnavailable(f"the standalone Spark cluster did not start: {logs}")

    def master_state(self) -> dict:
        """The master's JSON status (its web UI's /json/): workers, applications."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ui_port}/json/", timeout=5) as answer:
            return json.load(answer)

    def seen_by_workers(self, path: Path) -> list[list[str]]:
        """What each worker process sees in the folder `path` (through /proc/<pid>/root)."""
        return [sorted(os.listdir(f"/proc/{p.pid}/root{path}")) for p in self.processes[1:]]

    def executors(self, app_id: str) -> list[dict]:
        """The executors `app_id` ran, from the workers' working directories: worker, executor
        id, process id (the executor's own log: "Started daemon with process name: <pid>@...")."""
        found = []
        for index in range(self.workers):
            for folder in sorted((self.work_dir(index) / app_id).glob("*")):
                stderr = (folder / "stderr").read_text(errors="replace") if (folder / "stderr").exists() else ""
                pid = re.search(r"Started daemon with process name: (\d+)@", stderr)
                found.append({"worker": index, "executor": folder.name, "pid": int(pid.group(1)) if pid else None})
        return found

    def stop(self) -> None:
        for process in reversed(self.processes):  # workers (and their executors) first
            _stop(process)

    def __enter__(self) -> StandaloneSpark:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


# spark-defaults that the standalone scheduler needs instead of YARN's (module docstring).
STANDALONE_DEFAULTS = {
    # One core per worker here; cluster.yaml's 4 is YARN's sizing of the 4-vCPU node.
    "spark.executor.cores": "1",
    # EMR's YARN has the external shuffle service; two workers on one machine cannot each run one
    # (one port), so dynamic allocation tracks shuffle files in the executors instead.
    "spark.dynamicAllocation.shuffleTracking.enabled": "true",
    # An executor on each worker for every application, however few its tasks (cluster.yaml's
    # maxExecutors 1 is the one-node cluster's: one executor fills its node).
    "spark.dynamicAllocation.minExecutors": "2",
    "spark.dynamicAllocation.maxExecutors": "2",
}
# Not EMR's, this machine's: each step starts 3 JVMs (driver, 2 executors) on 2 cores, and a short
# Spark job spends much of its CPU in the C2 compiler. C1 only: a small job on this cluster took
# 25-28 CPU seconds instead of 45-55 (wall 38-42 s instead of 79-88 s; the same result).
THIS_MACHINE_DEFAULTS = {
    "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1",
    "spark.executor.extraJavaOptions": "-XX:TieredStopAtLevel=1",
}


def moto_emr_backends():
    """moto's server files an EMR cluster under the region of the endpoint it was reached at (its
    default region for a bare endpoint URL): every region's backend."""
    from moto.emr.models import emr_backends

    return list(emr_backends[MOTO_ACCOUNT].values())


class EmulatedEmrCluster:
    """Runs the steps that reach `cluster_id` on the moto server as EMR would (module docstring),
    on the standalone Spark cluster `spark`. With `cluster_id=None`, the cluster is the first one
    created after this object (what `fruits-emr run` creates for one run)."""

    def __init__(
        self, cluster_id: str | None, endpoint: str, spark: StandaloneSpark, name: str, region: str = "eu-west-1"
    ):
        self.cluster_id = cluster_id
        self._known = set() if cluster_id else {c for backend in moto_emr_backends() for c in list(backend.clusters)}
        self.endpoint = endpoint
        self.region = region
        self.spark = spark
        # The primary node's disk: its Spark configuration, event logs and the steps' folders.
        self.workdir = spark.primary / name
        self.tmp = self.workdir / "tmp"
        self.tmp.mkdir(parents=True)
        self.python = cluster_python()
        self.jars = s3a_jars()
        self.cluster = yaml.safe_load((RESOURCES / "cluster.yaml").read_text())
        self.events = self.workdir / "spark-events"
        self.events.mkdir(parents=True, exist_ok=True)
        self.conf_dir = self._write_spark_conf()
        self.ran: list[dict] = []  # one entry per step run: name, args, returncode, seconds, where
        self.error: BaseException | None = None  # what broke the emulation itself, if anything
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="emulated-emr", daemon=True)
        self._driver: subprocess.Popen | None = None  # the running step's spark-submit

    # -- the node's configuration, as EMR writes it from cluster.yaml's classifications --------
    def _classification(self, name: str) -> dict:
        from emr_resources.cli import fill_placeholders

        [found] = [c for c in self.cluster["configurations"] if c["Classification"] == name]
        values = {"REGION": self.region, "BUCKET": "", "PREFIX": ""}
        return fill_placeholders(found, values)

    def _on_this_machine(self, value: str) -> str:
        return value.replace(CLUSTER_VENV_ON_EMR, str(self.python.parents[1]))

    def spark_defaults(self) -> dict[str, str]:
        """cluster.yaml's spark-defaults, with what stands in for EMRFS and YARN here."""
        defaults = {
            k: self._on_this_machine(str(v)) for k, v in self._classification("spark-defaults")["Properties"].items()
        }
        classpath = ":".join(str(j) for j in self.jars)
        defaults.update(STANDALONE_DEFAULTS)
        defaults.update(THIS_MACHINE_DEFAULTS)
        # The driver's temporary files (spark-submit's copies of the remote --py-files) stay on
        # the primary node's disk.
        driver_java = f"{defaults['spark.driver.extraJavaOptions']} -Djava.io.tmpdir={self.tmp}"
        defaults["spark.driver.extraJavaOptions"] = driver_java
        defaults.update(
            {
                # EMRFS stands in: S3A serves s3:// (moto), encrypting as the security
                # configuration asks EMRFS to (SSE-S3). Its jars are on every node, as EMRFS's;
                # the driver's class path has them from the start (spark-submit fetches the
                # remote --py-files before --jars would be loaded).
                "spark.driver.extraClassPath": classpath,
                "spark.executor.extraClassPath": classpath,
                "spark.hadoop.fs.s3.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
                "spark.hadoop.fs.s3a.endpoint": self.endpoint,
                "spark.hadoop.fs.s3a.path.style.access": "true",
                "spark.hadoop.fs.s3a.connection.ssl.enabled": "false",
                "spark.hadoop.fs.s3a.aws.credentials.provider": "com.amazonaws.auth.EnvironmentVariableCredentialsProvider",
                "spark.hadoop.fs.s3a.server-side-encryption-algorithm": "AES256",
                "spark.ui.enabled": "false",
                # EMR keeps Spark's event logs (HDFS, then the history server): here they say
                # which executors each step's application had and where its tasks ran.
                "spark.eventLog.enabled": "true",
                "spark.eventLog.dir": self.events.as_uri(),
            }
        )
        return defaults

    def _write_spark_conf(self) -> Path:
        conf = self.workdir / "spark-conf"
        conf.mkdir(parents=True, exist_ok=True)
        exports = self._classification("spark-env")["Configurations"][0]["Properties"]
        (conf / "spark-env.sh").write_text(
            "".join(f"export {k}={self._on_this_machine(str(v))}\n" for k, v in exports.items())
        )
        (conf / "spark-defaults.conf").write_text("".join(f"{k} {v}\n" for k, v in self.spark_defaults().items()))
        return conf

    def environment(self, folder: Path) -> dict[str, str]:
        """The primary node's environment for a step run in `folder`, with EMR's Spark
        configuration; its files stay on the primary node's disk (temporary files, Spark's
        scratch space), which the workers do not see."""
        for name in ("home", "tmp", "local"):
            (folder / name).mkdir(exist_ok=True)
        return {
            **node_environment(folder / "home", self.endpoint),
            "SPARK_CONF_DIR": str(self.conf_dir),
            "TMPDIR": str(folder / "tmp"),
            "SPARK_LOCAL_DIRS": str(folder / "local"),
        }

    def command(self, args: list[str]) -> list[str]:
        """The step's spark-submit command line, with this machine's Spark and master."""
        command = list(args)
        assert command[0] == "/usr/lib/spark/bin/spark-submit", command[0]
        command[0] = str(spark_home() / "bin" / "spark-submit")
        master = command.index("--master")
        assert command[master + 1] == "yarn", command
        command[master + 1] = self.spark.url
        return command

    # -- the steps ------------------------------------------------------------------------------
    def _emr(self):
        if self.cluster_id is None:  # the cluster `fruits-emr run` creates, once it exists
            created = sorted(c for b in moto_emr_backends() for c in list(b.clusters) if c not in self._known)
            if not created:
                return None
            self.cluster_id = created[0]
        for backend in moto_emr_backends():
            if self.cluster_id in backend.clusters:
                return backend.clusters[self.cluster_id]
        raise KeyError(f"no cluster {self.cluster_id} on the moto server")

    def _next_step(self):
        cluster = self._emr()
        for step in cluster.steps if cluster is not None else ():
            if step.state in ("PENDING", "RUNNING"):
                return step
        return None

    def run_step(self, step) -> int:
        from moto.core.utils import utcnow

        step.state, step.start_date_time = "RUNNING", utcnow()
        folder = Path(tempfile.mkdtemp(prefix=f"{step.id}-", dir=self.workdir))
        logs_before = set(self.events.iterdir())
        started = time.monotonic()
        with (folder / "stdout").open("w") as stdout, (folder / "stderr").open("w") as stderr:
            driver = self._driver = subprocess.Popen(
                self.command(step.args),
                env=self.environment(folder),
                cwd=folder,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,  # its own group: `__exit__` can end it and its Python
            )
            try:
                returncode = driver.wait(timeout=900)
            except subprocess.TimeoutExpired:
                _stop(driver)
                returncode = -1
        seconds = round(time.monotonic() - started, 1)
        self._upload_logs(step.id, (folder / "stdout").read_text(), (folder / "stderr").read_text())
        self.ran.append(
            {
                "name": step.name,
                "args": step.args,
                "returncode": returncode,
                "seconds": seconds,
                "folder": str(folder),
                "driver_pid": driver.pid,  # spark-submit execs the driver's JVM
                **self._application(set(self.events.iterdir()) - logs_before),
            }
        )
        step.end_date_time = utcnow()
        step.state = "COMPLETED" if returncode == 0 else "FAILED"
        return returncode

    def _application(self, event_logs: set[Path]) -> dict:
        """Where the step's Spark application ran: its id, its executors (worker, process id)
        and how many tasks each ran (Spark's event log)."""
        if len(event_logs) != 1:
            return {"app_id": None, "executors": [], "event_logs": sorted(str(p) for p in event_logs)}
        [log] = event_logs
        app_id, tasks = None, {}
        for line in log.read_text().splitlines():
            event = json.loads(line)
            if event["Event"] == "SparkListenerApplicationStart":
                app_id = event["App ID"]
            elif event["Event"] == "SparkListenerTaskEnd":
                executor = event["Task Info"]["Executor ID"]
                tasks[executor] = tasks.get(executor, 0) + 1
        executors = self.spark.executors(app_id) if app_id else []
        for executor in executors:
            executor["tasks"] = tasks.get(executor["executor"], 0)
        return {"app_id": app_id, "executors": executors, "tasks": tasks}

    def _upload_logs(self, step_id: str, stdout: str, stderr: str) -> None:
        import boto3

        log_uri = self._emr().log_uri  # s3://bucket/prefix/emr-logs/
        bucket, _, prefix = log_uri.split("://", 1)[1].partition("/")
        s3 = boto3.client("s3", region_name=self.region, endpoint_url=self.endpoint)
        for name, text in (("stdout", stdout), ("stderr", stderr)):
            key = f"{prefix.rstrip('/')}/{self.cluster_id}/steps/{step_id}/{name}.gz"
            s3.put_object(Bucket=bucket, Key=key, Body=gzip.compress(text.encode()), ServerSideEncryption="AES256")

    def _serve(self) -> None:
        try:
            while not self._stop.is_set():
                step = self._next_step()
                if step is None:
                    time.sleep(0.2)
                    continue
                self.run_step(step)
        except BaseException as error:  # the caller sees it (`error`) and stops the host
            self.error = error

    def run_host(self, command: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
        """Run the host's command while the cluster serves its steps; stop it if the emulation
        itself breaks (the host would otherwise wait for its step forever)."""
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            process = subprocess.Popen(command, stdout=out, stderr=err, text=True, **kwargs)
            deadline = time.monotonic() + timeout
            while process.poll() is None:
                if self.error is not None or self._stop.is_set() or time.monotonic() > deadline:
                    process.kill()
                    process.wait()
                    raise RuntimeError(f"emulated cluster: {self.error!r}, stopped, or timeout") from self.error
                time.sleep(0.5)
            out.seek(0)
            err.seek(0)
            return subprocess.CompletedProcess(command, process.returncode, out.read(), err.read())

    def __enter__(self) -> EmulatedEmrCluster:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        """Stop serving steps; after a failure (`exc`), end the running step and the host now."""
        self._stop.set()
        if exc[0] is not None and self._driver is not None:
            _stop(self._driver)
        self._thread.join(timeout=900)

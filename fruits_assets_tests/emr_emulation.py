"""An emulated EMR cluster: what a real one does with the steps the Dagster host submits, done the
same way here, in other processes, with the cluster's environment only.

What it does, as EMR would (see `EmulatedEmrCluster.run_step`):
- **The steps are the ones the host submitted.** The real dagster-aws launcher (in the host's
  `dagster asset materialize` process) stages each step to S3 and calls `add_job_flow_steps` on
  an EMR API (moto's server on loopback). A thread here watches that cluster's steps in moto's
  backend and runs them in order, one at a time (step concurrency 1, as cluster.yaml says), then
  marks each COMPLETED or FAILED there, which the launcher polls, as it would on AWS.
- **Each step runs its own command line** - the spark-submit arguments EMR received - as a new
  process. Only `spark-submit`'s location and `--master yarn` are swapped (for this machine's
  pyspark distribution and `local[2]`).
- **The cluster's environment only**: the process starts from an empty environment plus what a
  node has (PATH, JAVA_HOME, a HOME of its own), EMR's spark-env (cluster.yaml's `spark-env`
  exports, written to a spark-env.sh as EMR does), spark-defaults (cluster.yaml's
  `spark-defaults`, written to a spark-defaults.conf), AWS credentials (standing in for the
  instance profile) and AWS_ENDPOINT_URL (standing in for AWS's S3 endpoint). Its working
  directory is a fresh folder. Nothing of the host's environment (FRUITS_*, DAGSTER_HOME...) or of
  the test's process reaches it.
- **The cluster's Python**: a virtual environment built from emr_resources/requirements.lock, the
  lock the bootstrap installs (same pip command, same hashed pins of every package; x86_64 wheels
  here, aarch64 on the Graviton nodes), with /opt/fruits-venv of cluster.yaml mapped to it. `fruits_assets` is not
  installed in it: the step can only import the package from the staged code.zip (`--py-files`).
  pyspark comes, as on EMR, from the Spark distribution spark-submit belongs to.
- **s3:// through a real Hadoop S3 connector**: EMR's EMRFS is not available outside AWS; the
  hadoop-aws 3.3.1 S3A file system and its AWS SDK bundle (from the sagemaker-pyspark source
  archive on PyPI, see ../shared/DESIGN.md) serve `s3://` for Spark's Parquet reads and writes
  against moto, with SSE-S3 (AES256) on every object, as the security configuration asks EMRFS.
- Each step's stdout and stderr go to the cluster's LogUri, gzipped, where EMR puts them.

What only a real cluster can show: YARN (containers, memory limits, executors on other nodes,
Spot reclaims), EMRFS itself (its committer, its consistency), aarch64 binaries at run time (the
resolution for aarch64 is checked in test_emr_bootstrap.py), the bootstrap's dnf/pip run on Amazon
Linux, IAM and KMS enforcement (test_emr_iam.py checks the documents), the real S3 endpoint,
network reach from a VPC, and real timings.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import yaml

from emr_resources.lock import LOCK_NAME, PIP_INSTALL_FLAGS

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

    ec2 = boto3.client("ec2", region_name=region)  # AWS_ENDPOINT_URL: the moto server
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


class EmulatedEmrCluster:
    """Runs the steps that reach `cluster_id` on the moto server as EMR would (module docstring)."""

    def __init__(self, cluster_id: str, endpoint: str, workdir: Path, region: str = "eu-west-1"):
        self.cluster_id = cluster_id
        self.endpoint = endpoint
        self.region = region
        self.workdir = workdir
        self.python = cluster_python()
        self.jars = s3a_jars()
        self.cluster = yaml.safe_load((RESOURCES / "cluster.yaml").read_text())
        self.conf_dir = self._write_spark_conf()
        self.ran: list[dict] = []  # one entry per step run: name, args, returncode, seconds
        self.error: BaseException | None = None  # what broke the emulation itself, if anything
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="emulated-emr", daemon=True)

    # -- the node's configuration, as EMR writes it from cluster.yaml's classifications --------
    def _classification(self, name: str) -> dict:
        from emr_resources.cli import fill_placeholders

        [found] = [c for c in self.cluster["configurations"] if c["Classification"] == name]
        values = {"REGION": self.region, "BUCKET": "", "PREFIX": ""}
        return fill_placeholders(found, values)

    def _on_this_machine(self, value: str) -> str:
        return value.replace(CLUSTER_VENV_ON_EMR, str(self.python.parents[1]))

    def _write_spark_conf(self) -> Path:
        conf = self.workdir / "spark-conf"
        conf.mkdir(parents=True, exist_ok=True)
        exports = self._classification("spark-env")["Configurations"][0]["Properties"]
        (conf / "spark-env.sh").write_text(
            "".join(f"export {k}={self._on_this_machine(str(v))}\n" for k, v in exports.items())
        )
        defaults = {
            k: self._on_this_machine(str(v)) for k, v in self._classification("spark-defaults")["Properties"].items()
        }
        classpath = ":".join(str(j) for j in self.jars)
        defaults.update(
            {
                # EMRFS stands in: S3A serves s3:// (moto), encrypting as the security
                # configuration asks EMRFS to (SSE-S3).
                "spark.jars": ",".join(str(j) for j in self.jars),
                # spark-submit fetches the remote --py-files before --jars are loaded.
                "spark.driver.extraClassPath": classpath,
                "spark.executor.extraClassPath": classpath,
                "spark.hadoop.fs.s3.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
                "spark.hadoop.fs.s3a.endpoint": self.endpoint,
                "spark.hadoop.fs.s3a.path.style.access": "true",
                "spark.hadoop.fs.s3a.connection.ssl.enabled": "false",
                "spark.hadoop.fs.s3a.aws.credentials.provider": "com.amazonaws.auth.EnvironmentVariableCredentialsProvider",
                "spark.hadoop.fs.s3a.server-side-encryption-algorithm": "AES256",
                "spark.ui.enabled": "false",
            }
        )
        (conf / "spark-defaults.conf").write_text("".join(f"{k} {v}\n" for k, v in defaults.items()))
        return conf

    def environment(self, home: Path) -> dict[str, str]:
        """A node's environment: nothing from the host or the test process."""
        return {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(home),
            "JAVA_HOME": java_home(),
            "SPARK_HOME": str(spark_home()),
            "SPARK_CONF_DIR": str(self.conf_dir),
            "LANG": "C.UTF-8",
            # The instance profile's credentials and AWS's S3 endpoint, standing in:
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "AWS_ENDPOINT_URL": self.endpoint,
        }

    def command(self, args: list[str]) -> list[str]:
        """The step's spark-submit command line, with this machine's Spark and master."""
        command = list(args)
        assert command[0] == "/usr/lib/spark/bin/spark-submit", command[0]
        command[0] = str(spark_home() / "bin" / "spark-submit")
        master = command.index("--master")
        assert command[master + 1] == "yarn", command
        command[master + 1] = "local[2]"
        return command

    # -- the steps ------------------------------------------------------------------------------
    def _emr(self):
        from moto.emr.models import emr_backends

        # moto's server files EMR clusters under a region of its own choosing: look in each.
        for backend in emr_backends[MOTO_ACCOUNT].values():
            if self.cluster_id in backend.clusters:
                return backend.clusters[self.cluster_id]
        raise KeyError(f"no cluster {self.cluster_id} on the moto server")

    def _next_step(self):
        for step in self._emr().steps:
            if step.state in ("PENDING", "RUNNING"):
                return step
        return None

    def run_step(self, step) -> int:
        from moto.core.utils import utcnow

        step.state, step.start_date_time = "RUNNING", utcnow()
        folder = Path(tempfile.mkdtemp(prefix=f"{step.id}-", dir=self.workdir))
        home = folder / "home"
        home.mkdir()
        started = time.monotonic()
        result = subprocess.run(
            self.command(step.args),
            env=self.environment(home),
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=900,
        )
        self._upload_logs(step.id, result.stdout, result.stderr)
        (folder / "stdout").write_text(result.stdout)
        (folder / "stderr").write_text(result.stderr)
        self.ran.append(
            {
                "name": step.name,
                "args": step.args,
                "returncode": result.returncode,
                "seconds": round(time.monotonic() - started, 1),
                "folder": str(folder),
            }
        )
        step.end_date_time = utcnow()
        step.state = "COMPLETED" if result.returncode == 0 else "FAILED"
        return result.returncode

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
                if self.error is not None or time.monotonic() > deadline:
                    process.kill()
                    process.wait()
                    raise RuntimeError(f"emulated cluster: {self.error!r}, or timeout") from self.error
                time.sleep(0.5)
            out.seek(0)
            err.seek(0)
            return subprocess.CompletedProcess(command, process.returncode, out.read(), err.read())

    def __enter__(self) -> EmulatedEmrCluster:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=900)

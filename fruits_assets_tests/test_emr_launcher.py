"""The EMR step launcher (fruits_assets/emr_launcher.py) when a step does not simply succeed: a
failed step says why, late logs never fail a finished step, an interrupted run cancels its step,
a step cancelled on EMR fails the run clearly, and transient failures are retried.

Real: the launcher in a real Dagster run (`emr_probe_job`: the code location's own launcher and
settings resources, one asset without Spark), boto3 against moto's EMR and S3 server on loopback,
the staging on S3, and each step run by dagster-aws's `emr_step_main` in a process of its own
(credentials and the endpoint only in its environment, and what the test sets there as the
cluster would), reading the staged step from S3 and writing its events back there, as on EMR.
The probe job itself is imported from this checkout (PYTHONPATH): it is not in the staged zip;
`test_emr_emulation.py` runs the real assets from the staged zip with spark-submit. One slow test
stops the real `dagster asset materialize` CLI the way a user or the UI does.

Emulated by `PlayedCluster`, because moto keeps a submitted step RUNNING forever:
- a step's state: set in moto's backend (the server runs in this process), as EMR would report it;
- its logs: the step process's stdout and stderr, gzipped to <LogUri>/<cluster>/steps/<step id>/
  as EMR's log pusher does (here at once; on EMR about 5 minutes later), or not at all;
- a step killed (an out-of-memory kill, say) or a lost node: the step process is killed
  (SIGKILL); for a lost node, YARN's lost-node lines end its stderr;
- CancelSteps: moto 5.2 answers HTTP 500 (NotImplementedError), so the test adds the action to
  moto's server for its duration: it records the request boto3 sent and, as AWS documents it,
  cancels a PENDING step at once and moves a RUNNING one to CANCEL_PENDING, sends its process
  SIGTERM (SEND_INTERRUPT, EMR 5.32+) and marks it CANCELLED once it exited.
Only AWS shows: describe_step's FailureDetails (moto has none; `step_verdict` is tested on that
text directly), the real texts of YARN and Spark, the log pusher's delay, and IAM.
"""

from __future__ import annotations

import gzip
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import dagster as dg
import pytest

from fruits_assets.emr_launcher import FruitsEmrStepLauncher, step_verdict
from fruits_assets_tests.emr_probe_job import FAILS_ON_START, HANGS, STARTED, emr_probe_job

PROJECT = Path(__file__).resolve().parents[1]
MOTO_ACCOUNT = "123456789012"  # moto's default account
# What YARN and Spark print when a node is lost (a Spot reclaim): exit status -100.
LOST_NODE_STDERR = (
    "26/12/04 16:43:51 WARN YarnSchedulerBackend$YarnSchedulerEndpoint: Requesting driver to remove "
    "executor 2 for reason Container marked as failed: container_1733330000000_0001_01_000003 on host: "
    "ip-10-0-1-23.eu-west-1.compute.internal. Exit status: -100. Diagnostics: Container released on a "
    "*lost* node.\n"
)


@dataclass
class PlayedCluster:
    """The EMR cluster `cluster_id` on moto's server, played by this test (module docstring):
    `play(cluster, step)` is called, in a thread of its own, for each step the launcher submits."""

    cluster_id: str
    endpoint: str
    workdir: Path
    play: Callable[[PlayedCluster, object], None] | None = None
    cancels: list[dict] = field(default_factory=list)  # the CancelSteps requests received
    error: BaseException | None = None
    _processes: dict = field(default_factory=dict)

    # -- what EMR knows ------------------------------------------------------------------------
    def _cluster(self):
        from moto.emr.models import emr_backends

        # moto's server files clusters under a region of its own choosing: look in each.
        for backend in emr_backends[MOTO_ACCOUNT].values():
            if self.cluster_id in backend.clusters:
                return backend.clusters[self.cluster_id]
        raise KeyError(self.cluster_id)

    @property
    def steps(self) -> list:
        return list(self._cluster().steps)

    def end(self, step, state: str, reason: str | None = None) -> None:
        from moto.core.utils import utcnow

        step.end_date_time = utcnow()
        if reason:
            step.last_state_change_reason = reason
        step.state = state

    # -- the step's process and its logs -------------------------------------------------------
    def run(self, step, env: dict | None = None, kill_when_started: bool = False, stderr_tail: str = "") -> int:
        """Run the step's own staged command (`emr_step_main <bucket> <step_run_ref key>`) as a
        process with the cluster's environment; its output becomes the step's logs on S3.
        `kill_when_started`: SIGKILL it once the asset has said it started (a lost node)."""
        bucket, key = step.args[-2], step.args[-1]
        folder = self.workdir / step.id
        folder.mkdir(parents=True)
        environment = {
            "PATH": os.environ["PATH"],
            "HOME": str(folder),
            "PYTHONPATH": str(PROJECT),  # the probe job (not in the staged zip)
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": "eu-west-1",
            "AWS_ENDPOINT_URL": self.endpoint,
            **(env or {}),
        }
        command = [sys.executable, "-m", "dagster_aws.emr.emr_step_main", bucket, key]
        with open(folder / "stdout", "w+") as out, open(folder / "stderr", "w+") as err:
            process = subprocess.Popen(command, env=environment, cwd=folder, stdout=out, stderr=err)
            self._processes[step.id] = process
            if kill_when_started:
                self.wait_until_started(step)
                process.kill()
            returncode = process.wait(timeout=120)
            out.seek(0)
            err.seek(0)
            self.write_logs(step, out.read(), err.read() + stderr_tail)
        return returncode

    def wait_until_started(self, step, timeout: float = 60) -> None:
        """Until the step's events on S3 (what the launcher reads) say the asset started."""
        from dagster._serdes import deserialize_value

        s3 = boto3.client("s3", region_name="eu-west-1", endpoint_url=self.endpoint)
        bucket, key = step.args[-2], os.path.dirname(step.args[-1]) + "/events.pkl"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                events = deserialize_value(pickle.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read()))
            except s3.exceptions.NoSuchKey:
                events = []
            if any(STARTED in (e.user_message or "") for e in events):
                return
            time.sleep(0.2)
        raise TimeoutError(f"step {step.id} never started")

    def write_logs(self, step, stdout: str, stderr: str) -> None:
        """As EMR's log pusher: <LogUri>/<cluster>/steps/<step id>/{stdout,stderr}.gz."""
        log_uri = self._cluster().log_uri
        bucket, _, prefix = log_uri.split("://", 1)[1].partition("/")
        s3 = boto3.client("s3", region_name="eu-west-1", endpoint_url=self.endpoint)
        for name, text in (("stdout", stdout), ("stderr", stderr)):
            key = f"{prefix.rstrip('/')}/{self.cluster_id}/steps/{step.id}/{name}.gz"
            s3.put_object(Bucket=bucket, Key=key, Body=gzip.compress(text.encode()))

    # -- CancelSteps, which moto does not implement --------------------------------------------
    def cancel_steps(self, request) -> dict:
        """The CancelSteps action as AWS documents it (module docstring), on moto's server."""
        params = {name: request._get_param(name) for name in ("ClusterId", "StepIds", "StepCancellationOption")}
        self.cancels.append({**params, "StepIds": list(params["StepIds"] or [])})
        infos = []
        for step in self.steps:
            if step.id not in params["StepIds"]:
                continue
            if step.state == "PENDING":
                self.end(step, "CANCELLED", "Cancelled by CancelSteps")
            elif step.state == "RUNNING":
                step.state = "CANCEL_PENDING"
                process = self._processes.get(step.id)
                if process is not None:
                    process.send_signal(signal.SIGTERM)
            infos.append({"StepId": step.id, "Status": "SUBMITTED", "Reason": ""})
        from moto.core.responses import ActionResult

        return ActionResult({"CancelStepsInfoList": infos})

    # -- serving ---------------------------------------------------------------------------------
    def _serve(self) -> None:
        seen: set[str] = set()
        try:
            while not self._stop.is_set():
                for step in self.steps:
                    if step.id not in seen:
                        seen.add(step.id)
                        self.play(self, step)
                time.sleep(0.05)
        except BaseException as error:  # the test sees it
            self.error = error

    def __enter__(self) -> PlayedCluster:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="played-emr", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for process in self._processes.values():  # a step the test left running
            if process.poll() is None:
                process.kill()
        self._thread.join(timeout=60)
        assert self.error is None, f"the played cluster broke: {self.error!r}"


def make_cluster(log_uri: str | None) -> str:
    emr = boto3.client("emr", region_name="eu-west-1")
    request = {
        "Name": "fruits-test",
        "ReleaseLabel": "emr-7.9.0",
        "Instances": {"MasterInstanceType": "m7g.xlarge", "InstanceCount": 1, "KeepJobFlowAliveWhenNoSteps": True},
        "JobFlowRole": "FruitsEmrInstanceProfile",
        "ServiceRole": "FruitsEmrServiceRole",
    }
    if log_uri:
        request["LogUri"] = log_uri
    return emr.run_job_flow(**request)["JobFlowId"]


@pytest.fixture
def played(moto_server, s3_bucket, tmp_path, monkeypatch) -> PlayedCluster:
    """A cluster with LogUri s3://<bucket>/fruits/emr-logs/ (as `fruits-emr create` makes it),
    played by the test, with CancelSteps added to moto's server."""
    from moto.emr.responses import ElasticMapReduceResponse

    cluster = PlayedCluster(make_cluster(f"s3://{s3_bucket}/fruits/emr-logs/"), moto_server, tmp_path / "cluster")

    def cancel_steps(request):  # moto dispatches to plain functions of the response class only
        return cluster.cancel_steps(request)

    monkeypatch.setattr(ElasticMapReduceResponse, "cancel_steps", cancel_steps, raising=False)
    return cluster


@dataclass
class Run:
    success: bool
    logs: list  # the run's event log (EventLogEntry)

    def messages(self, event_type: dg.DagsterEventType | None = None) -> list[str]:
        """The run log's messages (with their errors' text), of one type or all."""
        out = []
        for entry in self.logs:
            event = entry.dagster_event
            if event_type is not None and (event is None or event.event_type != event_type):
                continue
            error = getattr(event.event_specific_data, "error", None) if event else None
            failure = getattr(event.event_specific_data, "user_failure_data", None) if event else None
            out.append(
                "\n".join(
                    t for t in (entry.user_message, failure.description if failure else "", str(error or "")) if t
                )
            )
        return out

    def failure(self) -> str:
        [message] = self.messages(dg.DagsterEventType.STEP_FAILURE)
        return message


def run_probe(bucket: str, cluster_id: str, outcome: str = "ok", **settings) -> Run:
    """`emr_probe_job`, in this process, on the emr deployment of `cluster_id`."""
    config = {
        "deployment": "emr",
        "s3_bucket": bucket,
        "s3_prefix": "fruits",
        "emr_cluster_id": cluster_id,
        "emr_poll_seconds": 0.2,
        **settings,
    }
    run_config = {
        "resources": {"settings": {"config": config}},
        "ops": {"emr_probe": {"config": {"outcome": outcome}}},
    }
    with dg.instance_for_test() as instance:
        result = dg.execute_job(dg.reconstructable(emr_probe_job), instance=instance, run_config=run_config)
        return Run(result.success, list(instance.all_logs(result.run_id)))


# -- 4. a failed step says why -------------------------------------------------------------------
@pytest.mark.slow  # the steps run emr_step_main in processes of their own
def test_a_step_killed_on_the_cluster_says_what_it_did_and_where_its_logs_are(played, s3_bucket):
    """The step's process dies (an out-of-memory kill, say) after it started: the failure carries
    the last events it wrote, from S3 after EMR said FAILED (dagster-aws raised "EMR step ...
    failed" before reading them), and the tail of its stderr with the log's S3 path."""

    def play(cluster, step):
        step.state = "RUNNING"
        cluster.run(step, env={HANGS: "1"}, kill_when_started=True)
        cluster.end(step, "FAILED")

    played.play = play
    with played:
        run = run_probe(s3_bucket, played.cluster_id)
    [step] = played.steps
    assert not run.success
    failure = run.failure()
    assert f"EMR step {step.id} of emr_probe failed on cluster {played.cluster_id} (state FAILED)" in failure
    assert "Not retried: nothing in it says the failure is transient" in failure
    events_uri = f"s3://{s3_bucket}/fruits/emr-staging/"
    assert "Last events the step wrote (" + events_uri in failure and f"{STARTED}: ok" in failure
    stderr_uri = f"s3://{s3_bucket}/fruits/emr-logs/{played.cluster_id}/steps/{step.id}/stderr.gz"
    assert f"stderr of the step, last 80 lines ({stderr_uri})" in failure
    assert "STEP_START" in failure.split(stderr_uri)[1], "the process's own stderr"
    # The step's events reached the run's log too.
    assert any(f"{STARTED}: ok" in m for m in run.messages())


@pytest.mark.slow  # the steps run emr_step_main in processes of their own
def test_a_step_that_failed_before_its_logs_were_copied_says_where_they_will_be(played, s3_bucket):
    """A spark-submit error, say: no events, and no logs on S3 yet (EMR copies them every ~5
    minutes): the failure says so and names where they will appear."""

    def play(cluster, step):
        cluster.end(step, "FAILED")

    played.play = play
    with played:
        run = run_probe(s3_bucket, played.cluster_id)
    [step] = played.steps
    failure = run.failure()
    assert "The step wrote no events" in failure
    stderr_uri = f"s3://{s3_bucket}/fruits/emr-logs/{played.cluster_id}/steps/{step.id}/stderr.gz"
    assert f"not on S3 yet (EMR copies a step's logs to S3 about every 5 minutes); it will appear at {stderr_uri}" in (
        failure
    )


@pytest.mark.slow  # the steps run emr_step_main in processes of their own
@pytest.mark.parametrize("logs", ["copied", "late", "no_log_uri"])
def test_a_completed_step_never_fails_for_its_logs(played, s3_bucket, logs, monkeypatch):
    """FRUITS_EMR_WAIT_FOR_LOGS=1 and the step COMPLETED (its outputs are stored): its logs are
    shown once copied; logs not on S3 in time, or a cluster without LogUri, are a warning.
    dagster-aws raised (after 10 minutes, or at once without LogUri) and failed a step that had
    succeeded."""
    monkeypatch.setattr(FruitsEmrStepLauncher, "log_wait_seconds", 1.0)
    if logs == "no_log_uri":
        played.cluster_id = make_cluster(None)

    def play(cluster, step):
        assert cluster.run(step) == 0
        cluster.end(step, "COMPLETED")

    played.play = play
    if logs != "copied":
        played.write_logs = lambda step, stdout, stderr: None  # EMR has not copied them (yet)
    with played:
        run = run_probe(s3_bucket, played.cluster_id, emr_wait_for_logs=True)
    assert run.success, run.messages(dg.DagsterEventType.STEP_FAILURE)
    expected = {"copied": "Spark Driver stderr: ", "late": "not on S3 after 1 s", "no_log_uri": "has no LogUri"}
    assert any(expected[logs] in m for m in run.messages()), run.messages()


@pytest.mark.slow  # the steps run emr_step_main in processes of their own
def test_stopping_a_run_while_it_waits_for_logs_does_not_fail_the_completed_step(played, s3_bucket, monkeypatch):
    """The run is stopped while the launcher waits for a COMPLETED step's logs: the step stays a
    success (its outputs are stored), and Dagster takes the interrupt at its next checkpoint.
    Raising it there would fail a step after its success, which Dagster's executor rejects."""
    from dagster_shared.ipc import send_interrupt

    monkeypatch.setattr(FruitsEmrStepLauncher, "log_wait_seconds", 8.0)

    def play(cluster, step):
        assert cluster.run(step) == 0
        cluster.end(step, "COMPLETED")
        time.sleep(3)  # the launcher polls every 0.2 s: it is waiting for the logs by now
        send_interrupt()

    played.play = play
    played.write_logs = lambda step, stdout, stderr: None
    with played:
        run = run_probe(s3_bucket, played.cluster_id, emr_wait_for_logs=True)
    assert not run.messages(dg.DagsterEventType.STEP_FAILURE)
    assert len(run.messages(dg.DagsterEventType.STEP_SUCCESS)) == 1
    assert any("not on S3 after 8 s" in m for m in run.messages())


# -- 5. cancelling ---------------------------------------------------------------------------------
@pytest.mark.slow  # the steps run emr_step_main in processes of their own
@pytest.mark.parametrize("state", ["RUNNING", "PENDING"])
def test_an_interrupted_run_cancels_its_step(played, s3_bucket, state):
    """Terminating a run (UI) or Ctrl-C: Dagster's termination thread sends the step's process
    SIGINT (`dagster_shared.ipc.send_interrupt`, called here as it does), which the launcher's poll
    gets as DagsterExecutionInterruptedError. The launcher cancels the step on EMR
    (SEND_INTERRUPT) and says so; dagster-aws left it running, and billing."""
    from dagster_shared.ipc import send_interrupt

    def play(cluster, step):
        step.state = state
        if state == "RUNNING":
            threading.Thread(target=lambda: (cluster.wait_until_started(step), send_interrupt())).start()
            cluster.run(step, env={HANGS: "1"})  # until CancelSteps' SIGTERM ends it
            cluster.end(step, "CANCELLED", "Cancelled by CancelSteps")
        else:
            send_interrupt()

    played.play = play
    with played:
        run = run_probe(s3_bucket, played.cluster_id)
        deadline = time.monotonic() + 30
        while played.steps[0].state != "CANCELLED" and time.monotonic() < deadline:
            time.sleep(0.1)
    [step] = played.steps
    assert not run.success and step.state == "CANCELLED"
    assert played.cancels == [
        {"ClusterId": played.cluster_id, "StepIds": [step.id], "StepCancellationOption": "SEND_INTERRUPT"}
    ]
    assert any(
        f"cancelled EMR step {step.id} of emr_probe on cluster {played.cluster_id}" in m for m in run.messages()
    ), run.messages()
    assert any("DagsterExecutionInterruptedError" in m for m in run.messages(dg.DagsterEventType.STEP_FAILURE))


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["ctrl_c", "terminate"])
def test_stopping_dagster_asset_materialize_cancels_the_step(played, s3_bucket, moto_server, tmp_path, stop):
    """The real CLI, `dagster asset materialize` (multiprocess executor: the step runs in a child
    process). Ctrl-C signals the whole process group; terminating a run (the UI, through the code
    server) signals the run's process only, whose executor forwards it to the step's process
    (Dagster's termination event, then SIGINT there). Either way the step's process raises
    DagsterExecutionInterruptedError while the launcher polls, and the EMR step is cancelled."""

    def play(cluster, step):
        step.state = "RUNNING"
        cluster.run(step, env={HANGS: "1"})  # until CancelSteps' SIGTERM ends it
        cluster.end(step, "CANCELLED", "Cancelled by CancelSteps")

    (tmp_path / "home").mkdir()
    env = {
        "PATH": str(Path(sys.executable).parent),
        "PYTHONPATH": str(PROJECT),
        "HOME": str(tmp_path / "home"),
        "DAGSTER_HOME": str(tmp_path / "home"),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_ENDPOINT_URL": moto_server,
        "FRUITS_DEPLOYMENT": "emr",
        "FRUITS_S3_BUCKET": s3_bucket,
        "FRUITS_EMR_CLUSTER_ID": played.cluster_id,
        "FRUITS_EMR_POLL_SECONDS": "0.5",
    }
    command = ["dagster", "asset", "materialize", "-m", "fruits_assets_tests.emr_probe_job", "--select", "emr_probe"]
    played.play = play
    with played, open(tmp_path / "out", "w+") as out:
        host = subprocess.Popen(
            command, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.monotonic() + 120
            while not played.steps and time.monotonic() < deadline:
                time.sleep(0.2)
            played.wait_until_started(played.steps[0])
            if stop == "ctrl_c":
                os.killpg(host.pid, signal.SIGINT)
            else:
                host.send_signal(signal.SIGINT)
            host.wait(timeout=120)
        finally:
            if host.poll() is None:
                os.killpg(host.pid, signal.SIGKILL)
        out.seek(0)
        log = out.read()
    [step] = played.steps
    assert played.cancels == [
        {"ClusterId": played.cluster_id, "StepIds": [step.id], "StepCancellationOption": "SEND_INTERRUPT"}
    ], log[-3000:]
    assert f"cancelled EMR step {step.id} of emr_probe on cluster {played.cluster_id}" in log
    assert "DagsterExecutionInterruptedError" in log


@pytest.mark.slow  # the steps run emr_step_main in processes of their own
@pytest.mark.parametrize("state", ["CANCEL_PENDING", "CANCELLED", "INTERRUPTED"])
def test_a_step_cancelled_on_emr_fails_the_run_clearly(played, s3_bucket, state):
    """Someone cancels the step in the EMR console: the run fails with that, not with
    dagster-aws's ValueError on CANCEL_PENDING or "EMR step ... failed", and is not retried."""

    def play(cluster, step):
        cluster.end(step, state, "Cancelled by user")

    played.play = play
    with played:
        run = run_probe(s3_bucket, played.cluster_id)
    [step] = played.steps
    assert not run.success
    expected = f"EMR step {step.id} of emr_probe was cancelled on cluster {played.cluster_id} (state {state}): Cancelled by user"
    assert expected in run.failure()


# -- 6. retries ------------------------------------------------------------------------------------
@pytest.mark.slow  # the steps run emr_step_main in processes of their own
def test_a_lost_node_is_retried(played, s3_bucket):
    """The step's node is lost (a Spot reclaim) while it runs: a process-level failure, outside
    Dagster's RetryPolicy on the cluster; the launcher asks for a retry with the asset's policy and
    the step is submitted again. The second attempt relays only its own events."""

    def play(cluster, step):
        step.state = "RUNNING"
        if len(cluster.steps) == 1:
            cluster.run(step, env={HANGS: "1"}, kill_when_started=True, stderr_tail=LOST_NODE_STDERR)
            cluster.end(step, "FAILED")
        else:
            assert cluster.run(step) == 0
            cluster.end(step, "COMPLETED")

    played.play = play
    with played:
        run = run_probe(s3_bucket, played.cluster_id)
    assert run.success, run.messages(dg.DagsterEventType.STEP_FAILURE)
    assert [s.state for s in played.steps] == ["FAILED", "COMPLETED"], "submitted twice"
    [retry] = run.messages(dg.DagsterEventType.STEP_UP_FOR_RETRY)
    assert (
        "Transient (a node was lost ('Container released on a *lost* node')): retried under the asset's RetryPolicy"
        in retry
    )
    # Each attempt's own events, once: the second attempt's poll must not relay the first's
    # events.pkl again (same staging key) in place of its own.
    started = [len(run.messages(t)) for t in (dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_RESTARTED)]
    assert started == [1, 1] and sum(f"{STARTED}: ok" == m for m in run.messages()) == 2, started


@pytest.mark.slow  # the steps run emr_step_main in processes of their own
def test_a_configuration_error_on_the_cluster_is_not_retried(played, s3_bucket):
    """A resource fails to start on the cluster with a FruitsConfigError: the process exits
    non-zero (EMR: FAILED) and its events say why. Not retried, and the failure says what to fix."""

    def play(cluster, step):
        assert cluster.run(step, env={FAILS_ON_START: "1"}) != 0
        cluster.end(step, "FAILED")

    played.play = play
    with played:
        run = run_probe(s3_bucket, played.cluster_id)
    assert not run.success and len(played.steps) == 1
    failure = run.failure()
    assert "Not retried: a configuration error: fix what its message says" in failure
    assert "FRUITS_PROBE is wrong: set it to something right." in failure


@pytest.mark.slow  # the steps run emr_step_main in processes of their own
def test_a_configuration_error_in_the_asset_is_not_retried(played, s3_bucket):
    """A FruitsConfigError in the asset on the cluster: dg.Failure(allow_retries=False) there, the
    process ends normally (EMR: COMPLETED) and its STEP_FAILURE event fails the run, once."""

    def play(cluster, step):
        assert cluster.run(step) == 0
        cluster.end(step, "COMPLETED")

    played.play = play
    with played:
        run = run_probe(s3_bucket, played.cluster_id, outcome="config_error")
    assert not run.success and len(played.steps) == 1
    assert "FRUITS_IMAGE_SIZE=95 is not supported" in run.failure()


@pytest.mark.parametrize(
    ("text", "retry", "why"),
    [
        ("ExecutorLostFailure (executor 3 exited) Reason: Container released on a *lost* node", True, "node"),
        ("Reason: Container killed by YARN for exceeding memory limits. ExecutorLostFailure", False, "memory"),
        (
            "Caused by: com.amazonaws.services.s3.model.AmazonS3Exception: Slow Down (Service: S3; 503)",
            True,
            "throttled",
        ),
        ("Unknown Error /opt/fruits-venv/bin/python: No such file or directory", False, "nothing"),
        ("fruits_assets.errors.FruitsConfigError: ... ExecutorLostFailure", False, "configuration"),
    ],
)
def test_step_verdict_reads_emr_and_the_logs(text, retry, why):
    """The one decision, on texts as EMR's FailureDetails and the step's stderr carry them: what a
    retry cannot fix wins over what looks transient."""
    verdict = step_verdict("FAILED", [], text)
    assert verdict.retry is retry and why in verdict.why


def test_step_verdict_never_retries_a_cancelled_step():
    assert not step_verdict("CANCELLED", [], "Container released on a *lost* node").retry


def test_the_headline_carries_emrs_failure_details(monkeypatch):
    """describe_step's FailureDetails (AWS only: moto has none) lead the failure's message."""
    from fruits_assets.settings import FruitsSettings

    for name in ("FRUITS_S3_ENDPOINT_URL", "FRUITS_EMR_STAGING_PREFIX"):
        monkeypatch.delenv(name, raising=False)
    launcher = FruitsEmrStepLauncher(FruitsSettings(deployment="emr", s3_bucket="b", emr_cluster_id="j-X"))
    details = {"Reason": "Unknown Error", "Message": "Container killed", "LogFile": "s3://b/l/stderr.gz"}
    step = {"Id": "s-1", "Status": {"State": "FAILED", "FailureDetails": details}}
    assert launcher._headline("raw_images", step) == (
        "EMR step s-1 of raw_images failed on cluster j-X (state FAILED). EMR says: Reason: Unknown Error; "
        "Message: Container killed; LogFile: s3://b/l/stderr.gz"
    )

"""`fruits-emr run`: a cluster made for one run and terminated whatever happens, so no idle hour
is billed. The real CLI against moto's EMR and S3 (server mode, on loopback); the success path,
with the steps really run, is in test_emr_emulation.py.

What moto cannot show: a real cluster's provisioning and bootstrap time, and the seconds EMR bills
for a terminating cluster (README, "What a run costs").
"""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

from fruits_assets_tests.emr_emulation import tag_default_network_for_emr

pytestmark = pytest.mark.slow  # the CLI, in processes of its own

FRUITS_EMR = str(Path(sys.executable).parent / "fruits-emr")


@pytest.fixture
def run_env(moto_server, s3_bucket, tmp_path) -> dict:
    """What a user's shell has for `fruits-emr run`: credentials (moto's), the bucket, a KMS key."""
    tag_default_network_for_emr("eu-west-1")
    (tmp_path / "home").mkdir()
    return {
        **os.environ,
        "AWS_ENDPOINT_URL": moto_server,
        "DAGSTER_HOME": str(tmp_path / "home"),
        "FRUITS_S3_BUCKET": s3_bucket,
        "FRUITS_KMS_KEY_ID": "1234abcd-12ab-34cd-56ef-1234567890ab",
        "FRUITS_IMAGES_ROOT": f"s3://{s3_bucket}/fruits/images",
        "FRUITS_MODEL_WEIGHTS": "random",
        "FRUITS_EMR_POLL_SECONDS": "1",
    }


def cluster_state(moto_server: str, output: str) -> tuple[str, str]:
    cluster_id = re.search(r"cluster (j-\w+)", output).group(1)
    emr = boto3.client("emr", region_name="eu-west-1", endpoint_url=moto_server)
    return cluster_id, emr.describe_cluster(ClusterId=cluster_id)["Cluster"]["Status"]["State"]


def test_a_failed_run_terminates_its_cluster(run_env, moto_server):
    result = subprocess.run(
        [FRUITS_EMR, "run", "--select", "no_such_asset"], env=run_env, capture_output=True, text=True, timeout=300
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    cluster_id, state = cluster_state(moto_server, output)
    assert state in ("TERMINATING", "TERMINATED"), (state, output)
    assert f"cluster {cluster_id}: terminated" in output


def test_an_interrupted_run_cancels_its_step_and_terminates_its_cluster(run_env, moto_server, monkeypatch):
    """Ctrl-C while a step runs: the run's launcher cancels the step (CancelSteps, which moto's
    server does not implement: answered here as AWS documents it), then the cluster goes."""
    from moto.emr.responses import ElasticMapReduceResponse

    cancels = []

    def cancel_steps(self):
        cancels.append(self._get_param("StepIds"))
        return "<CancelStepsResponse><CancelStepsResult/></CancelStepsResponse>"

    monkeypatch.setattr(ElasticMapReduceResponse, "cancel_steps", cancel_steps, raising=False)
    emr = boto3.client("emr", region_name="eu-west-1", endpoint_url=moto_server)
    # The moto server is the session's: other tests' clusters (and their steps) may still be there.
    earlier = {c["Id"] for c in emr.list_clusters()["Clusters"]}
    process = subprocess.Popen(
        [FRUITS_EMR, "run"],
        env=run_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline, submitted = time.monotonic() + 240, []
    while not submitted and time.monotonic() < deadline and process.poll() is None:
        time.sleep(1)
        clusters = emr.list_clusters(ClusterStates=["WAITING", "RUNNING"])["Clusters"]
        submitted = [s for c in clusters if c["Id"] not in earlier for s in emr.list_steps(ClusterId=c["Id"])["Steps"]]
    assert submitted, "no step was submitted"
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C in the terminal: the whole process group
    output, _ = process.communicate(timeout=240)
    assert process.returncode == 130, output[-3000:]
    _, state = cluster_state(moto_server, output)
    assert state in ("TERMINATING", "TERMINATED"), (state, output[-3000:])
    assert cancels and submitted[0]["Id"] in cancels[0], (cancels, output[-3000:])


def test_an_interrupt_while_the_cluster_starts_terminates_it(run_env, moto_server, monkeypatch):
    """SIGTERM during the cluster's ~10 minutes of start-up (moto's cluster is kept STARTING
    here): the cluster is terminated, not left to its idle timeout."""
    from moto.emr.models import Cluster

    monkeypatch.setattr(Cluster, "run_bootstrap_actions", lambda self: None)  # stays STARTING
    emr = boto3.client("emr", region_name="eu-west-1", endpoint_url=moto_server)
    earlier = {c["Id"] for c in emr.list_clusters()["Clusters"]}
    process = subprocess.Popen(
        [FRUITS_EMR, "run", "--poll-seconds", "1"],
        env=run_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline, starting = time.monotonic() + 120, []
    while not starting and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.5)
        starting = [c for c in emr.list_clusters(ClusterStates=["STARTING"])["Clusters"] if c["Id"] not in earlier]
    assert starting, "no cluster was started"
    time.sleep(2)  # `run` waits for it
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output[-3000:]
    assert "interrupted; before the run started" in output, output[-3000:]
    _, state = cluster_state(moto_server, output)
    assert state in ("TERMINATING", "TERMINATED"), (state, output[-3000:])

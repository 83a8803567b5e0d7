"""The EMR PySpark step launcher, wired in one place.

Step launchers are "superseded" (not deprecated) in Dagster 1.13 and still maintained; they fit this
project because they keep IO managers: each asset step is pickled, staged to S3 with this package
zipped, and run by `spark-submit` on the cluster (dagster-aws's `emr_step_main`), where the same
IO manager reads and writes S3.

What this subclass of dagster-aws's launcher adds, and why:
- **The run's settings travel with the step.** On the cluster, `emr_step_main` re-imports this
  code location in a process that has none of the host's environment. The step's run config gets
  the host's resolved settings as the `settings` resource's config, so the step uses the host's
  deployment, bucket, region, image size... and never its own environment's. The host-only
  settings (`FruitsSettings.host_only_fields()`: the host's S3 endpoint, this launcher's polling,
  the local Spark master and folder) are left out: the step takes their defaults (AWS's endpoint).
- **Only this package is staged**, zipped from where it is installed when a step is launched
  (never at import: on the cluster the package itself lives inside the staged zip).
- The poll interval of a running step is a setting (FRUITS_EMR_POLL_SECONDS; dagster-aws: 15 s).
- **A failed step says why** (`wait_for_completion`, `step_failure_report`). dagster-aws raises
  "EMR step ... failed" before its last read of the step's events and, with log waiting off (the
  default), shows nothing else: a process-level failure (a venv missing on a replaced node, an
  out-of-memory kill, a spark-submit error) reached the run as that one line. Here the failure's
  message (and so the run's log) carries EMR's own diagnosis (describe_step's FailureDetails), the
  last events the step wrote (its events.pkl) and the tail of its stderr from the cluster's LogUri,
  with the S3 paths; logs EMR has not copied yet (it copies every ~5 minutes) are named with
  where they will appear. The step's own ending event (success, failure, retry) is held back
  until EMR says how the step ended, so a step is never reported twice.
- **Logs never fail a finished step** (`_show_driver_logs`). With FRUITS_EMR_WAIT_FOR_LOGS=1,
  dagster-aws waits 10 minutes for the logs after a COMPLETED step, then raises: a step whose
  outputs were already published failed for late logs (or at once, on a cluster without LogUri),
  and its failure after its own success broke the run ("Attempted to mark step ... as complete
  that was not known to be in flight"). Here late or missing logs are a warning.
- **An interrupted run cancels its EMR step** (`_cancel_step`). dagster-aws leaves the step
  running (and billing) when the run is terminated from the UI or with Ctrl-C, and the next run's
  steps wait behind it. Dagster raises DagsterExecutionInterruptedError in the step's process
  (its termination thread sends SIGINT, which `raise_execution_interrupts` turns into that error
  while the launcher polls); a KeyboardInterrupt or the step's generator being closed
  (GeneratorExit) count the same. The launcher then calls CancelSteps (SEND_INTERRUPT: SIGTERM to
  a running step, EMR 5.32+; a PENDING step is cancelled outright) and logs it.
- **EMR's own step states** (`STEP_WAITING`, `STEP_CANCELLED`): dagster-aws's EmrStepState has no
  CANCEL_PENDING (a ValueError) and reports a step cancelled from the console as "failed"; here it
  is "EMR step s-... of <step> was cancelled on cluster j-... (state ...)".
- **Transient process-level failures are retried** (`step_verdict`, one function with one table,
  `FAILURE_SIGNATURES`). An exception from `launch_step` is outside Dagster's RetryPolicy, so
  dagster-aws's EmrError was never retried. Errors inside the step's Python are retried by the
  policy on the cluster (its events carry the retry); a step that failed as a process (a lost
  node, a Spot reclaim, throttling) raises dg.RetryRequested with the step's own policy; a
  configuration error, a cancelled step or an unknown failure is not retried.
- **The host converts the model** (`_stage_converted_model`): the cluster installs LiteRT, not
  TensorFlow (~0.5 GB less per node and bootstrap); before launching `image_features`, the host
  converts the Keras model into the model cache on S3, where the step finds it.
- **A retry starts clean**: a retry is staged under the same keys, so the previous attempt's
  events are deleted first (dagster-aws would relay them again as the new attempt's).
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import pickle
import re
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from dagster._core.errors import DagsterExecutionInterruptedError, raise_execution_interrupts
from dagster._core.execution.plan.external_step import (
    PICKLED_EVENTS_FILE_NAME,
    PICKLED_STEP_RUN_REF_FILE_NAME,
    step_context_to_step_run_ref,
)
from dagster_aws.emr import EmrError
from dagster_aws.emr.pyspark_step_launcher import CODE_ZIP_NAME, EmrPySparkStepLauncher
from dagster_aws.utils.mrjob.log4j import parse_hadoop_log4j_records

import fruits_assets
from fruits_assets.settings import FruitsSettings
from fruits_assets.spark import cluster_config

PACKAGE = "fruits_assets"

# EMR's step states (DescribeStep, StepStatus.State: PENDING | CANCEL_PENDING | RUNNING |
# COMPLETED | CANCELLED | FAILED | INTERRUPTED). dagster-aws's EmrStepState lacks CANCEL_PENDING.
STEP_WAITING = frozenset({"PENDING", "RUNNING"})
STEP_CANCELLED = frozenset({"CANCEL_PENDING", "CANCELLED", "INTERRUPTED"})
# What the launcher treats as "this run no longer waits for its step" (module docstring).
INTERRUPTS = (DagsterExecutionInterruptedError, KeyboardInterrupt, GeneratorExit)
# The Dagster events that end a step; held back until EMR says how the step ended.
OUTCOME_EVENTS = frozenset(
    {dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.STEP_UP_FOR_RETRY}
)
LAST_EVENTS = 8  # events of a failed step shown in its failure
STDERR_TAIL_LINES = 80
LOG_COPY_NOTE = "EMR copies a step's logs to S3 about every 5 minutes"

# What the text of a failed step (EMR's FailureDetails, the errors in its events, its stderr)
# says about running it again. The first match wins, so what a retry cannot fix comes first.
# (pattern, transient, what it means)
FAILURE_SIGNATURES: tuple[tuple[str, bool, str], ...] = (
    (r"FruitsConfigError", False, "a configuration error: fix what its message says"),
    (
        r"exceeding memory limits|OutOfMemoryError|MemoryError|Cannot allocate memory",
        False,
        "out of memory: the same step runs out again (more memory, or smaller partitions)",
    ),
    (r"Container released on a \*lost\* node|[Nn]ode lost|lost node", True, "a node was lost"),
    (r"[Ss]pot (instance )?interruption|Spot instance|reclaimed", True, "a Spot instance was reclaimed"),
    (r"[Dd]ecommission", True, "a node was decommissioned"),
    (r"ExecutorLostFailure|Container killed", True, "YARN lost or killed a container with its node"),
    (
        r"Throttl|Rate exceeded|SlowDown|Slow Down|RequestLimitExceeded|TooManyRequests",
        True,
        "AWS throttled a request",
    ),
    (
        r"Connection reset|Read timed out|EndpointConnectionError|Could not connect to the endpoint"
        r"|StorageUnreachableError",
        True,
        "a dropped connection",
    ),
)


# Steps whose model the host converts before launching them (the cluster has no TensorFlow).
CONVERTS_ON_THE_HOST = {"image_features"}


def package_zip(zip_path: str) -> list[str]:
    """Zip the installed `fruits_assets` package (sources and package data, no caches)."""
    package_dir = Path(fruits_assets.__file__).resolve().parent
    names = []
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(package_dir.rglob("*")):
            if path.is_dir() or "__pycache__" in path.parts or path.suffix == ".pyc":
                continue
            name = f"{PACKAGE}/{path.relative_to(package_dir).as_posix()}"
            archive.write(path, name)
            names.append(name)
    return names


def with_settings(step_run_ref, settings_config: dict):
    """The step's run config, with the host's resolved settings as the settings resource's."""
    run_config = dict(step_run_ref.run_config or {})
    resources = dict(run_config.get("resources") or {})
    resources["settings"] = settings_config
    run_config["resources"] = resources
    return step_run_ref._replace(run_config=run_config)


# -- what a finished step tells (plain functions of what EMR and the step wrote) ---------------
@dataclass(frozen=True)
class Verdict:
    retry: bool
    why: str

    def sentence(self, policy: dg.RetryPolicy | None) -> str:
        """What the failure report says about it, given the asset's RetryPolicy."""
        if not self.retry:
            return f"Not retried: {self.why}."
        if policy is None:
            return f"Transient ({self.why}), but the asset has no RetryPolicy: not retried."
        return f"Transient ({self.why}): retried under the asset's RetryPolicy (max {policy.max_retries})."


def step_verdict(state: str, events: Sequence, failure_text: str) -> Verdict:
    """Whether running an unsuccessful EMR step again can help, and why: the one place this is
    decided. `events`: what the step wrote; `failure_text`: EMR's FailureDetails, the errors in
    those events and the tail of the step's stderr.

    In order: a step cancelled on EMR (someone meant it) is not retried; then the step's own
    ending event, if it wrote one (Dagster on the cluster already applied the asset's RetryPolicy:
    STEP_UP_FOR_RETRY asks for a retry, STEP_FAILURE was a Failure(allow_retries=False), no policy
    or retries spent); then `FAILURE_SIGNATURES` against the text; a failure nothing explains is
    not retried (it usually fails the same way again, on billed nodes).
    """
    if state in STEP_CANCELLED:
        return Verdict(False, f"the step was cancelled on EMR (state {state})")
    outcome = ending_event(events)
    if outcome is not None and outcome.dagster_event.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY:
        return Verdict(True, "the step's own retry policy asked for a retry (its STEP_UP_FOR_RETRY event)")
    if outcome is not None and outcome.dagster_event.event_type == dg.DagsterEventType.STEP_FAILURE:
        return Verdict(False, "the step's code failed, and Dagster on the cluster did not retry it")
    for pattern, transient, meaning in FAILURE_SIGNATURES:
        match = re.search(pattern, failure_text)
        if match:
            return Verdict(transient, f"{meaning} ({match.group(0)!r})")
    return Verdict(False, "nothing in it says the failure is transient")


def ending_event(events: Sequence):
    """The first event that ends the step (success, failure, retry), or None."""
    return next((e for e in events if e.is_dagster_event and e.dagster_event.event_type in OUTCOME_EVENTS), None)


def error_chain(error) -> str:
    """A SerializableErrorInfo and its causes, one line each ("Class: message")."""
    lines = []
    while error is not None:
        lines.append(error.message.strip())
        error = error.cause or error.context
    return " <- ".join(lines)


def describe_event(entry) -> str:
    """One line for one event the step wrote: its type (or level), message and error."""
    if not entry.is_dagster_event:
        return f"{logging.getLevelName(entry.level)}: {entry.user_message}"
    event = entry.dagster_event
    error = getattr(event.event_specific_data, "error", None)
    text = f"{event.event_type_value}: {event.message or ''}".strip()
    return f"{text} {error_chain(error)}" if error is not None else text


def events_errors(events: Sequence) -> str:
    """The errors the step's events carry (resource init, step failure...), as text."""
    errors = [getattr(e.dagster_event.event_specific_data, "error", None) for e in events if e.is_dagster_event]
    return "\n".join(error_chain(error) for error in errors if error is not None)


def tail(text: str, lines: int) -> str:
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


def indent(text: str) -> str:
    return "\n".join(f"  {line}" for line in text.splitlines()) or "  (none)"


class EventRelay:
    """The step's events (dagster-aws's events.pkl, all of them at each read) into this run, in
    order, each once; the event that ends the step, and what follows it, only on `release`."""

    def __init__(self, step_context):
        self.step_context = step_context
        self.events: list = []
        self.sent = 0

    def update(self, events: list) -> Iterator[dg.DagsterEvent]:
        self.events = events
        ending = ending_event(events)
        yield from self._send(events.index(ending) if ending is not None else len(events))

    def release(self, with_ending: bool) -> Iterator[dg.DagsterEvent]:
        """Everything not sent yet; the ending event only `with_ending` (it counts: on EMR's
        COMPLETED it is the step's outcome; on a failure the launcher raises its own)."""
        ending = ending_event(self.events)
        cut = len(self.events) if with_ending or ending is None else self.events.index(ending)
        yield from self._send(cut)

    def _send(self, end: int) -> Iterator[dg.DagsterEvent]:
        for event in self.events[self.sent : end]:
            # As dagster-aws does: stored in this run's event log, and the step's own events
            # yielded to this run's executor.
            self.step_context.instance.handle_new_event(event)
            if event.is_dagster_event:
                yield event.dagster_event
        self.sent = max(self.sent, end)


class EmrStepFailed(EmrError):
    """An EMR step ended without success; the message is the step's failure report."""


class FruitsEmrStepLauncher(EmrPySparkStepLauncher):
    """dagster-aws's EMR PySpark step launcher, configured from the run's settings."""

    # How long FRUITS_EMR_WAIT_FOR_LOGS=1 waits for a step's logs on S3 (dagster-aws: 20 x 30 s).
    log_wait_seconds = 600.0

    def __init__(self, settings: FruitsSettings):
        resolved = settings.resolved()
        super().__init__(
            region_name=resolved.aws_region,
            staging_bucket=resolved.s3_bucket,
            staging_prefix=resolved.emr_staging_prefix,
            wait_for_logs=resolved.emr_wait_for_logs,
            # A failed step must not cancel the steps of other runs queued on the same cluster.
            action_on_failure="CONTINUE",
            cluster_id=resolved.emr_cluster_id,
            spark_config=cluster_config(resolved),
            # Only used to rewrite file code pointers; this package is zipped by `package_zip`.
            local_job_package_path=str(Path(fruits_assets.__file__).resolve().parents[1]),
            deploy_local_job_package=True,
        )
        self.settings = settings
        self.settings_config = settings.as_run_config()
        self.storage = settings.storage()
        self.poll_seconds = float(resolved.emr_poll_seconds)
        self._cluster_log_uri: str | None = None

    def launch_step(self, step_context):
        step_run_ref = with_settings(
            step_context_to_step_run_ref(step_context, self.local_job_package_path), self.settings_config
        )
        run_id = step_context.dagster_run.run_id
        if step_context.op.name in CONVERTS_ON_THE_HOST:
            self._stage_converted_model(step_context.log, run_id)
        self._post_artifacts(step_context.log, step_run_ref, run_id, step_run_ref.step_key)
        emr_step_def = self._get_emr_step_def(run_id, step_run_ref.step_key, step_context.op.name)
        [emr_step_id] = self.emr_job_runner.add_job_flow_steps(step_context.log, self.cluster_id, [emr_step_def])
        yield from self.wait_for_completion_and_log(run_id, step_run_ref.step_key, emr_step_id, step_context)

    def wait_for_completion_and_log(self, run_id, step_key, emr_step_id, step_context):
        """dagster-aws's, but logs never fail a COMPLETED step (`_show_driver_logs`); a failed
        step's logs are part of its failure (`wait_for_completion`)."""
        import boto3

        s3 = boto3.resource("s3", region_name=self.region_name)
        yield from self.wait_for_completion(step_context, s3, run_id, step_key, emr_step_id)
        if self.wait_for_logs:
            self._show_driver_logs(step_context.log, emr_step_id)

    def wait_for_completion(self, step_context, s3, run_id, step_key, emr_step_id, check_interval=None):
        """Poll the step and relay its events until EMR says it ended; then its outcome.

        Unlike dagster-aws: knows all of EMR's step states; cancels the step if this run stops
        waiting (`INTERRUPTS`); reads the step's events after EMR says it ended, failed or not,
        and for a step that did not complete raises what `step_verdict` decides, with the
        step's report (`_step_failure`)."""
        relay = EventRelay(step_context)
        try:
            step = yield from self._poll(step_context, s3, run_id, step_key, emr_step_id, relay, check_interval)
        except INTERRUPTS:
            self._cancel_step(step_context.log, step_key, emr_step_id)
            raise
        state = step["Status"]["State"]
        ending = ending_event(relay.events)
        if state == "COMPLETED":
            yield from relay.release(with_ending=True)
            return
        if ending is not None and ending.dagster_event.event_type == dg.DagsterEventType.STEP_SUCCESS:
            # The step stored its outputs and said so; its process failed afterwards.
            step_context.log.warning(
                f"EMR step {emr_step_id} of {step_key} ended {state} after the step succeeded (its outputs "
                "are stored); its logs are under the cluster's LogUri."
            )
            yield from relay.release(with_ending=True)
            return
        yield from relay.release(with_ending=False)
        raise self._step_failure(step_context, step_key, step, relay.events, run_id)

    def _poll(self, step_context, s3, run_id, step_key, emr_step_id, relay, check_interval):
        """Until the step leaves PENDING/RUNNING: sleep, describe it, relay its new events
        (interruptible while it waits, as dagster-aws's loop). Returns describe_step's Step."""
        interval = self.poll_seconds if check_interval is None else check_interval
        while True:
            with raise_execution_interrupts():
                time.sleep(interval)  # AWS rate-limits DescribeStep
                step = self.emr_job_runner.describe_step(self.cluster_id, emr_step_id)["Step"]
                events = self.read_events(s3, run_id, step_key)
            self._log_progress(step_context.log, step)
            yield from relay.update(events)
            if step["Status"]["State"] not in STEP_WAITING:
                return step

    def _log_progress(self, log, step) -> None:
        status = step["Status"]
        started = status.get("Timeline", {}).get("StartDateTime")
        since = f" since {started:%H:%M:%S %Z}" if started and status["State"] == "RUNNING" else ""
        log.info(f"EMR step {step['Id']} {status['State']}{since}")

    # -- a step that did not complete -----------------------------------------------------------
    def _step_failure(self, step_context, step_key, step, events, run_id) -> BaseException:
        """The exception that ends this step: dg.RetryRequested (with the step's RetryPolicy) if
        `step_verdict` says a retry can help, else dg.Failure; either carries the report."""
        state = step["Status"]["State"]
        stderr_uri, stderr, stderr_section = self._stderr_tail(step["Id"])
        details = step["Status"].get("FailureDetails") or {}
        emr_says = " ".join(details.get(k) or "" for k in ("Reason", "Message")).strip()
        verdict = step_verdict(state, events, "\n".join([emr_says, events_errors(events), stderr]))
        policy = step_context.op_retry_policy
        retry = verdict.retry and policy is not None
        report = step_failure_report(
            headline=self._headline(step_key, step),
            verdict=verdict.sentence(policy),
            events=events,
            events_uri=self._artifact_s3_uri(run_id, step_key, PICKLED_EVENTS_FILE_NAME),
            stderr_section=stderr_section,
        )
        if retry:
            error = dg.RetryRequested(
                max_retries=policy.max_retries,
                seconds_to_wait=policy.calculate_delay(step_context.previous_attempt_count + 1),
            )
            error.__cause__ = EmrStepFailed(report)
            return error
        metadata = {"emr_step_id": step["Id"], "emr_cluster_id": self.cluster_id, "emr_state": state}
        if stderr_uri:
            metadata["stderr"] = dg.MetadataValue.path(stderr_uri)
        return dg.Failure(description=report, metadata=metadata, allow_retries=False)

    def _headline(self, step_key: str, step: Mapping) -> str:
        status = step["Status"]
        where = f"EMR step {step['Id']} of {step_key}"
        if status["State"] in STEP_CANCELLED:
            reason = (status.get("StateChangeReason") or {}).get("Message") or "no reason given"
            return f"{where} was cancelled on cluster {self.cluster_id} (state {status['State']}): {reason}"
        details = status.get("FailureDetails") or {}
        said = "; ".join(f"{k}: {details[k]}" for k in ("Reason", "Message", "LogFile") if details.get(k))
        return f"{where} failed on cluster {self.cluster_id} (state {status['State']})" + (
            f". EMR says: {said}" if said else ""
        )

    # -- the step's logs on S3 (the cluster's LogUri) -------------------------------------------
    def _log_uri(self) -> str:
        """The cluster's LogUri ('' if it keeps no logs on S3), asked once per launcher."""
        if self._cluster_log_uri is None:
            uri = self.emr_job_runner.describe_cluster(self.cluster_id)["Cluster"].get("LogUri") or ""
            # boto3 says "None" when there is none; EMR answers s3n:// for s3://.
            self._cluster_log_uri = "" if uri == "None" else re.sub(r"^s3n://", "s3://", uri)
        return self._cluster_log_uri

    def _step_log_uri(self, emr_step_id: str, name: str) -> str | None:
        """Where EMR puts a step's `name` (stdout, stderr): <LogUri>/<cluster>/steps/<step>/."""
        base = self._log_uri()
        return f"{base.rstrip('/')}/{self.cluster_id}/steps/{emr_step_id}/{name}.gz" if base else None

    def _read_log(self, uri: str) -> str | None:
        """A step log's text, or None while EMR has not copied it."""
        from botocore.exceptions import ClientError

        try:
            return gzip.decompress(self.storage.read_bytes(uri)).decode("utf-8", "replace")
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return None
            raise

    def _wait_for_log(self, uri: str, deadline: float, interruptible: bool) -> str | None:
        """`_read_log`, waiting until `deadline` (time.monotonic) for the log to appear.
        `interruptible`: a run stopped meanwhile raises here; else Dagster gets the interrupt at
        its next checkpoint (after a step that succeeded, raising here would fail it)."""
        while True:
            text = self._read_log(uri)
            if text is not None or time.monotonic() >= deadline:
                return text
            with raise_execution_interrupts() if interruptible else contextlib.nullcontext():
                time.sleep(min(max(self.poll_seconds, 0.1), max(deadline - time.monotonic(), 0.0)))

    def _stderr_tail(self, emr_step_id: str) -> tuple[str | None, str, str]:
        """(a failed step's stderr URI, its last lines, the report's section about it). Looks
        once, or waits as `_show_driver_logs` does with FRUITS_EMR_WAIT_FOR_LOGS=1. Never raises:
        the report must not hide the failure it reports."""
        uri = None
        try:
            uri = self._step_log_uri(emr_step_id, "stderr")
            if uri is None:
                return None, "", "stderr of the step: the cluster has no LogUri, so EMR keeps no step logs on S3."
            deadline = time.monotonic() + (self.log_wait_seconds if self.wait_for_logs else 0.0)
            text = self._wait_for_log(uri, deadline, interruptible=True)
        except Exception as error:
            return uri, "", f"stderr of the step: could not read it ({uri or 'LogUri unknown'}): {error}"
        if text is None:
            later = f"not on S3 yet ({LOG_COPY_NOTE}); it will appear at {uri} (stdout.gz beside it)."
            return uri, "", f"stderr of the step: {later}"
        last = tail(text, STDERR_TAIL_LINES)
        return uri, last, f"stderr of the step, last {STDERR_TAIL_LINES} lines ({uri}):\n{indent(last)}"

    def _show_driver_logs(self, log, emr_step_id: str) -> None:
        """FRUITS_EMR_WAIT_FOR_LOGS=1: the step's stderr (parsed as dagster-aws does) and stdout in
        this run's log once EMR has copied them. Late or missing logs are a warning, never a
        failure: the step has ended and its outputs are stored."""
        try:
            uris = {name: self._step_log_uri(emr_step_id, name) for name in ("stdout", "stderr")}
            if uris["stderr"] is None:
                log.warning(f"EMR step {emr_step_id}: the cluster has no LogUri, so there are no step logs to show.")
                return
            deadline = time.monotonic() + self.log_wait_seconds
            texts = {name: self._wait_for_log(uri, deadline, interruptible=False) for name, uri in uris.items()}
        except Exception as error:  # AccessDenied, a dropped connection...
            log.warning(f"EMR step {emr_step_id}: could not read its logs ({error}).")
            return
        if texts["stderr"] is None or texts["stdout"] is None:
            log.warning(
                f"EMR step {emr_step_id}: its logs were not on S3 after {self.log_wait_seconds:.0f} s "
                f"({LOG_COPY_NOTE}); they will appear at {uris['stderr']} and {uris['stdout']}."
            )
            return
        for record in parse_hadoop_log4j_records(texts["stderr"]):
            if record.level:
                log.log(level=record.level, msg=f"Spark Driver stderr: {record.logger}: {record.message}")
            else:
                log.debug(f"Spark Driver stderr: {record.message}")
        sys.stdout.write(
            f"---------- Spark Driver stdout: ----------\n{texts['stdout']}\n"
            "---------- End of Spark Driver stdout ----------\n"
        )

    # -- a run that stops waiting ---------------------------------------------------------------
    def _cancel_step(self, log, step_key: str, emr_step_id: str) -> None:
        """Ask EMR to cancel the step this run no longer waits for (CancelSteps is asynchronous
        and idempotent). SEND_INTERRUPT: a RUNNING step's process gets SIGTERM (EMR 5.32+) and
        can stop Spark cleanly; a PENDING step never starts. Never raises: the interrupt that
        brought the launcher here goes on."""
        import boto3

        by_hand = (
            f"aws emr cancel-steps --region {self.region_name} --cluster-id {self.cluster_id} --step-ids {emr_step_id}"
        )
        try:
            response = boto3.client("emr", region_name=self.region_name).cancel_steps(
                ClusterId=self.cluster_id, StepIds=[emr_step_id], StepCancellationOption="SEND_INTERRUPT"
            )
        except Exception as error:
            log.error(
                f"The run stopped waiting for EMR step {emr_step_id} of {step_key}, but cancelling it "
                f"failed ({error}): it may still be running, and billing. Cancel it with: {by_hand}"
            )
            return
        [info] = response.get("CancelStepsInfoList") or [{}]
        if info.get("Status") == "FAILED":
            log.error(
                f"EMR refused to cancel step {emr_step_id} of {step_key} on cluster {self.cluster_id}: "
                f"{info.get('Reason') or 'no reason given'}. If it still runs: {by_hand}"
            )
            return
        log.warning(
            f"The run was interrupted: cancelled EMR step {emr_step_id} of {step_key} on cluster "
            f"{self.cluster_id} (CancelSteps, SEND_INTERRUPT: {info.get('Status', 'SUBMITTED')}; a running "
            "step gets SIGTERM, a pending one never starts)."
        )

    # -- staging ----------------------------------------------------------------------------------
    def _stage_converted_model(self, log, run_id: str) -> None:
        """The cluster has no TensorFlow (emr_resources/requirements.txt): the host converts the
        Keras model to LiteRT, once per weights, input size and conversion, into the model cache
        the step reads (`<assets>/_models`); a model already there is neither converted nor
        uploaded again. The size is that of the arrays the step will featurize."""
        from fruits_assets.featurize import feature_model, resolve_weights
        from fruits_assets.versions import NotMaterializedError, VersionStore

        resolved = self.settings.resolved()
        try:
            stored = VersionStore(self.settings.assets_uri(), self.storage).for_run("preprocessed_images", run_id)
            size = stored.get("image_size") or resolved.image_size
        except NotMaterializedError:
            size = resolved.image_size
        weights = resolve_weights(resolved.model_weights, size, self.storage)
        model = feature_model(weights, size, self.storage, self.settings.model_cache_uri())
        state = "cached" if model.from_cache else f"converted here (LiteRT vs Keras: {model.max_abs_diff:.2g})"
        log.info(f"image_features: LiteRT model {model.key} for the cluster: {state}")

    def _post_artifacts(self, log, step_run_ref, run_id, step_key):
        """Stage emr_step_main.py, this package's zip and the pickled step (dagster-aws's layout),
        server-side encrypted like every object this project writes; first delete the events a
        previous attempt of this step wrote under the same key (a retry would relay them again)."""
        self.storage.delete(self._artifact_s3_uri(run_id, step_key, PICKLED_EVENTS_FILE_NAME))
        with tempfile.TemporaryDirectory() as temp_dir:
            code_zip = os.path.join(temp_dir, CODE_ZIP_NAME)
            package_zip(code_zip)
            step_run_ref_path = os.path.join(temp_dir, PICKLED_STEP_RUN_REF_FILE_NAME)
            with open(step_run_ref_path, "wb") as handle:
                pickle.dump(step_run_ref, handle)
            for local_path in (self._main_file_local_path(), code_zip, step_run_ref_path):
                uri = self._artifact_s3_uri(run_id, step_key, local_path)
                log.debug(f"Uploading {local_path} to {uri}")
                self.storage.upload_file(local_path, uri)


def step_failure_report(headline: str, verdict: str, events: Sequence, events_uri: str, stderr_section: str) -> str:
    """What a user reads first about a step that did not complete: what EMR says, whether it is
    retried and why, the last events the step wrote and the tail of its stderr, with S3 paths."""
    last = [describe_event(e) for e in events[-LAST_EVENTS:]]
    events_section = (
        f"Last events the step wrote ({events_uri}):\n{indent(chr(10).join(last))}"
        if last
        else f"The step wrote no events ({events_uri}): it stopped before Dagster started on the cluster."
    )
    return f"{headline}\n{verdict}\n{events_section}\n{stderr_section}"

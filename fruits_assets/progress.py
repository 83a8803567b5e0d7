"""Progress of a long Spark action, in the Dagster run log: rows done / total, rows/s, ETA.

Read from Spark's own status tracker (tasks completed of the jobs the action started, in its job
group), on the driver, wherever it runs: the local process, or an EMR step (whose log lines reach
the host with the step's events). A task is a partition of about `rows_per_partition` rows, so
rows done = total x completed tasks / tasks, to within a partition.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable


class SparkProgress:
    """A context manager around one Spark action: a line every `step` of the work (10%) or every
    `every` seconds (30 s), whichever comes first, and one when it ends."""

    def __init__(
        self,
        spark,
        log: Callable[[str], None],
        what: str,
        rows: int | None,
        every: float = 30.0,
        step: float = 0.1,
        poll: float = 0.5,
    ):
        self.spark, self.log, self.what, self.rows = spark, log, what, rows
        self.every, self.step, self.poll = every, step, poll
        self.group = f"fruits-{what}-{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"progress-{what}", daemon=True)
        self.lines: list[str] = []

    def __enter__(self) -> SparkProgress:
        self.started = time.monotonic()
        # Jobs started by this thread from now on are in this group (PySpark pins job groups to
        # the calling thread).
        self.spark.sparkContext.setJobGroup(self.group, f"fruits: {self.what}")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)
        if exc[0] is None:
            seconds = time.monotonic() - self.started
            rate = f", {self.rows / seconds:.1f}/s" if self.rows and seconds > 0 else ""
            self._say(f"{self.what}: done, {self.rows if self.rows is not None else '?'} rows in {seconds:.0f} s{rate}")

    def fraction(self) -> tuple[int, int]:
        """(completed tasks, tasks) of the group's jobs so far."""
        tracker = self.spark.sparkContext.statusTracker()
        done = total = 0
        for job_id in tracker.getJobIdsForGroup(self.group):
            job = tracker.getJobInfo(job_id)
            for stage_id in job.stageIds if job else []:
                stage = tracker.getStageInfo(stage_id)
                if stage is not None:
                    done, total = done + stage.numCompletedTasks, total + stage.numTasks
        return done, total

    def _watch(self) -> None:
        last_time, last_fraction = time.monotonic(), 0.0
        while not self._stop.wait(self.poll):
            done, total = self.fraction()
            if not total:
                continue
            fraction = done / total
            now = time.monotonic()
            if fraction >= last_fraction + self.step or (now - last_time >= self.every and done < total):
                last_time, last_fraction = now, fraction
                self._say(self.message(done, total, now - self.started))

    def message(self, done: int, total: int, seconds: float) -> str:
        fraction = done / total
        if self.rows is None:
            return f"{self.what}: {done}/{total} tasks ({fraction:.0%}) in {seconds:.0f} s"
        rows_done = round(self.rows * fraction)
        rate = rows_done / seconds if seconds > 0 else 0.0
        eta = f", ETA {(self.rows - rows_done) / rate:.0f} s" if rate > 0 and rows_done < self.rows else ""
        return (
            f"{self.what}: {rows_done}/{self.rows} rows ({fraction:.0%}, {done}/{total} tasks), {rate:.1f} rows/s{eta}"
        )

    def _say(self, line: str) -> None:
        self.lines.append(line)
        self.log(line)

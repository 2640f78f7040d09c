"""``oncolake stream``: the landing zone as Structured Streaming queries, exactly once.

Two queries, one per drop folder (``landing.images``, ``landing.reports``), each Spark's file source
(``binaryFile``, recursive, ``maxFilesPerTrigger``; only the ``path`` column is selected, so Spark never
reads the bytes: the batch functions open the files as the batch jobs do) with a checkpoint of its own
under ``landing.checkpoints``. Each micro-batch calls the batch jobs' own functions on exactly the files
it holds:

- images: :func:`pipelines.land.land_folder` (scan with the link check, decode, normalise, tile into
  ``landing_images`` / ``landing_tiles``, bad files to ``quarantine``), then
  :func:`model.scoring.score_landed`: every task's champion scores the landed images it has not scored;
- reports: :func:`pipelines.reports.ingest_reports` (parse, resolve, ``annotations`` / ``quarantine``).

**Exactly once.** ``foreachBatch`` is at-least-once: a batch whose writes committed but whose checkpoint
entry did not is replayed after a crash. Every write in a batch runs inside
:func:`pipelines.io.exactly_once` with ``txnVersion`` = the batch id and an app id made of the query's
id (kept in its checkpoint: a new checkpoint restarts batch ids at 0 under a new id), the table and the
write site, so a replayed write commits nothing; the writes are also keyed by content (image ids are
content hashes), so even a new checkpoint over the same files adds nothing.

**Stopping.** With ``once`` the queries use ``trigger(availableNow=True)`` and end when the folders are
drained (for cron and Airflow). Otherwise they run until :meth:`LandingStream.request_stop` (the job
calls it on SIGTERM or Ctrl-C): the batch in flight finishes and commits before the queries stop, and
a batch that would start after the request does nothing and is replayed by the next run.

``ONCOLAKE_STREAM_FAULT=<point>:<n>`` kills the process with SIGKILL at ``point`` of its ``n``-th batch
(``start``: nothing written; ``landed``: images and tiles committed, predictions not; ``scoring``: the
first champion's predictions committed, the next one's not; ``committed``: every write committed, the
checkpoint not told): the fault tests' injection points.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.streaming import StreamingQuery

from conf import Settings
from model.scoring import score_landed
from pipelines.io import exactly_once, local_path
from pipelines.land import land_folder
from pipelines.reports import ingest_reports

Echo = Callable[[str], None]

IMAGES, REPORTS = "landing_images", "landing_reports"
BINARY_FILE_SCHEMA = "path string, modificationTime timestamp, length long, content binary"
FAULT_ENV = "ONCOLAKE_STREAM_FAULT"


class StreamStopping(RuntimeError):
    """A batch began after a stop was requested: it writes nothing and is replayed by the next run."""


class StreamFailed(RuntimeError):
    """A query ended with an error (its batch is replayed by the next run on the same checkpoint)."""


@dataclass
class QueryTotals:
    """What one query did in this process."""

    batches: int = 0
    files: int = 0
    new: int = 0
    already_present: int = 0
    quarantined: int = 0
    scored: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        return (
            f"{self.batches} batches, {self.files} files: {self.new} new, {self.already_present} already "
            f"present, {self.quarantined} quarantined; {self.scored} predictions; "
            f"{self.seconds:.1f} s in batches"
        )


def relative_files(root: str, paths: Iterable[str]) -> list[str]:
    """The file source's paths (``file:/...`` URIs) as paths relative to ``root``, sorted.

    Raises:
        ValueError: for a path outside ``root`` (the file source lists only below it).
    """
    # The file source names files below the folder as it was given; the folder may itself be a link.
    bases = {os.path.abspath(root).rstrip("/") + "/", Path(root).resolve().as_posix().rstrip("/") + "/"}
    found = []
    for path in paths:
        local = path.removeprefix("file://").removeprefix("file:")
        base = next((b for b in bases if local.startswith(b)), None)
        if base is None:
            raise ValueError(f"the file source gave {path}, which is not below {root}")
        found.append(local[len(base) :])
    return sorted(found)


def _log_lines(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text().splitlines()[1:]  # the first line is the log's version ("v1")
    return [json.loads(line) for line in lines if line.strip()]


def source_log_files(checkpoint: str, batch_id: int) -> list[str]:
    """Every file the query's file source assigned to micro-batch ``batch_id``, from its checkpoint.

    The batch's DataFrame has no row for a 0-byte file (Spark plans no read of an empty file), yet the
    source records the file as consumed: without this list an empty file dropped by a device would be
    neither landed nor quarantined. The batch's offsets (``offsets/<id>``) give the range of the source
    log's entries (``sources/0/<n>``, or a ``<m>.compact`` file holding every entry up to ``m``).
    Returns ``[]`` for a checkpoint that is not on the local file system (object stores: empty files
    are then skipped by Spark, as documented in docs/landing.md).
    """
    local = local_path(checkpoint)
    if local is None:
        return []

    def log_offset(batch: int) -> int:
        path = local / "offsets" / str(batch)
        if batch < 0 or not path.exists():
            return -1
        return int(json.loads(path.read_text().splitlines()[-1])["logOffset"])

    end, start = log_offset(batch_id), log_offset(batch_id - 1)
    sources = local / "sources" / "0"
    found: list[str] = []
    for entry_batch in range(start + 1, end + 1):
        plain = sources / str(entry_batch)
        if plain.exists():
            entries = _log_lines(plain)
        else:
            numbered = ((p.name.split(".")[0], p) for p in sources.glob("*.compact"))
            compacts = sorted((int(n), p) for n, p in numbered if n.isdigit())
            holder = next((p for n, p in compacts if n >= entry_batch), None)
            entries = _log_lines(holder) if holder else []
        found.extend(e["path"] for e in entries if int(e.get("batchId", -1)) == entry_batch)
    return found


def checkpoint_root(settings: Settings) -> str:
    """Where the queries keep their checkpoints (``landing.checkpoints``, or ``<lakehouse>/_checkpoints``)."""
    return settings.landing.checkpoints or settings.lakehouse.table("_checkpoints")


def _fault(point: str, batch_number: int) -> None:
    wanted = os.environ.get(FAULT_ENV, "")
    if wanted == f"{point}:{batch_number}":
        print(f"stream: fault injected at {point} of batch {batch_number}: SIGKILL", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class LandingStream:
    """The landing zone's queries in one process: :meth:`run` starts them and returns when they end.

    Args:
        spark: the session (each query works on its own clone of it).
        settings: ``landing``, ``lakehouse``, ``privacy``, ``tiles``, ``normalise``.
        secret: the pseudonym key.
        tasks: the tasks whose champions score landed images.
    """

    spark: SparkSession
    settings: Settings
    secret: bytes
    tasks: Sequence[str]
    echo: Echo = print
    totals: dict[str, QueryTotals] = field(default_factory=dict)
    _stopping: threading.Event = field(default_factory=threading.Event)
    _batch_lock: threading.Lock = field(default_factory=threading.Lock)
    _app_ids: dict[str, str] = field(default_factory=dict)
    _started: threading.Event = field(default_factory=threading.Event)
    _udfs: dict[tuple[str, str], Callable] = field(default_factory=dict)
    _batches_here: int = 0

    def request_stop(self) -> None:
        """Stop after the batch in flight (safe from a signal handler: it only sets a flag)."""
        self._stopping.set()

    def folders(self) -> dict[str, str]:
        """Query name -> drop folder, for the folders configured."""
        landing = self.settings.landing
        named = {IMAGES: landing.images, REPORTS: landing.reports}
        return {name: folder for name, folder in named.items() if folder}

    def start(self, once: bool) -> list[StreamingQuery]:
        """Start one query per configured drop folder (creating missing local folders)."""
        landing = self.settings.landing
        queries = []
        for name, folder in self.folders().items():
            Path(folder).mkdir(parents=True, exist_ok=True)
            reader = (
                self.spark.readStream.format("binaryFile")
                .schema(BINARY_FILE_SCHEMA)
                .option("recursiveFileLookup", "true")
                .option("maxFilesPerTrigger", landing.max_files_per_trigger)
            )
            if landing.clean_source != "off":
                reader = reader.option("cleanSource", landing.clean_source)
                if landing.archive_dir:
                    reader = reader.option("sourceArchiveDir", landing.archive_dir)
            writer = (
                reader.load(folder)
                .select("path")
                .writeStream.queryName(name)
                .option("checkpointLocation", self._checkpoint(name))
                .foreachBatch(self._batch_function(name, folder))
            )
            if once:
                writer = writer.trigger(availableNow=True)
            else:
                writer = writer.trigger(processingTime=f"{landing.trigger_seconds} seconds")
            query = writer.start()
            self._app_ids[name] = str(query.id)  # the same id whenever this checkpoint restarts
            self.totals[name] = QueryTotals()
            queries.append(query)
            mode = "until drained" if once else "continuously"
            self.echo(f"stream: {name} watching {folder} {mode} (query {query.id})")
        self._started.set()
        return queries

    def run(self, once: bool = False) -> dict[str, QueryTotals]:
        """Start the queries and wait: until the folders are drained (``once``) or a stop is requested.

        Raises:
            StreamFailed: a query ended with an error (other than a requested stop).
        """
        queries = self.start(once)
        try:
            while active := [q for q in queries if q.isActive]:
                if self._stopping.is_set():
                    with self._batch_lock:  # the batch in flight finishes; later ones refuse to begin
                        pass
                    # ... and its trigger records it in the checkpoint, so the next run does not replay it.
                    deadline = time.monotonic() + 60
                    while time.monotonic() < deadline and any(
                        q.isActive and q.status["isTriggerActive"] for q in queries
                    ):
                        time.sleep(0.1)
                    for query in queries:
                        query.stop()
                    break
                active[0].awaitTermination(1)  # returns at once if it ended since the check
        except Exception as exc:
            if not self._stopping.is_set():
                raise StreamFailed(str(exc)) from exc
        finally:
            for query in queries:
                if query.isActive:
                    query.stop()
        for query in queries:
            error = query.exception()
            if error is not None and not self._stopping.is_set():
                raise StreamFailed(f"{query.name}: {error}")
        for name, totals in self.totals.items():
            self.echo(f"stream: {name}: {totals.line()}")
        return self.totals

    def _checkpoint(self, name: str) -> str:
        return f"{checkpoint_root(self.settings).rstrip('/')}/{name}"

    def _batch_function(self, name: str, folder: str) -> Callable[[DataFrame, int], None]:
        def run_batch(batch: DataFrame, batch_id: int) -> None:
            self._started.wait()
            with self._batch_lock:
                if self._stopping.is_set():
                    raise StreamStopping(f"{name} batch {batch_id}: stop requested before it began")
                started = time.monotonic()
                listed = {r["path"] for r in batch.select("path").collect()}
                # Spark plans no read of a 0-byte file, so it has no row; the source's log names it.
                listed |= set(source_log_files(self._checkpoint(name), batch_id))
                files = sorted(set(relative_files(folder, listed)))  # file:/x and file:///x alike
                if not files:
                    return
                self._batches_here += 1
                number = self._batches_here
                _fault("start", number)
                with exactly_once(self._app_ids[name], batch_id):
                    if name == IMAGES:
                        done = self._images(batch.sparkSession, folder, files, number)
                    else:
                        done = self._reports(batch.sparkSession, folder, files)
                _fault("committed", number)
                totals = self.totals[name]
                totals.batches += 1
                totals.files += len(files)
                totals.seconds += time.monotonic() - started
                for key, value in done.items():
                    setattr(totals, key, getattr(totals, key) + value)
                self.echo(
                    f"stream: {name} batch {batch_id}: {len(files)} files, "
                    + ", ".join(f"{value} {key.replace('_', ' ')}" for key, value in done.items())
                    + f" ({time.monotonic() - started:.1f} s)"
                )

        return run_batch

    def _images(self, spark: SparkSession, folder: str, files: list[str], number: int) -> dict[str, Any]:
        landing = self.settings.landing
        landed = land_folder(spark, self.settings, folder, landing.modality, self.secret, files)
        _fault("landed", number)
        scored = 0
        for index, task_name in enumerate(self.tasks):
            if index:
                _fault("scoring", number)  # one champion's predictions committed, the next's not
            scored += score_landed(spark, self.settings, [task_name], self._udfs, echo=lambda _: None).scored
        return {
            "new": landed.ingested,
            "already_present": landed.already_present,
            "quarantined": landed.quarantined,
            "scored": scored,
        }

    def _reports(self, spark: SparkSession, folder: str, files: list[str]) -> dict[str, Any]:
        summary = ingest_reports(spark, self.settings, folder, self.secret, files)
        return {
            "new": summary.ingested,
            "already_present": summary.already_present,
            "quarantined": summary.quarantined,
        }

"""What the benchmarks share: a tiles table built from a synthetic corpus, and peak-memory sampling.

Run as scripts (``python benchmarks/<name>.py``), the benchmarks import this module by its plain name.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import psutil

import synth
from jobs import ingest as ingest_job
from pipelines import tiles
from pipelines.io import merge_into, read_table
from pipelines.pseudonym import DEMO_SECRET


class PeakMemory:
    """Samples, every 0.5 s, the summed resident memory of this process's descendants whose command line
    ``match`` accepts (Horovod workers, Spark's Python workers, the JVM)."""

    def __init__(self, match: Callable[[str], bool]) -> None:
        self.peak = 0
        self._match = match
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for child in me.children(recursive=True):
                try:
                    if self._match(" ".join(child.cmdline())):
                        total += child.memory_info().rss
                except psutil.Error:
                    continue
            self.peak = max(self.peak, total)
            time.sleep(0.5)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def build_tiles(
    spark,
    settings,
    work: Path,
    images: int,
    downscale: float | None,
    seed: int,
    collections: Iterable[str],
    tile_files: int = 0,
) -> float:
    """Synthetic corpus -> ingest -> tiles table, for ``collections`` only. Returns seconds.

    The ingest job's logic (``jobs.ingest.run``) and the tile job's (``cut_tiles`` MERGEd into the tiles
    table); ``tile_files`` repartitions the tiles into that many files (0: as the tile job writes them).
    """
    started = time.perf_counter()
    corpus = work / "corpus"
    manifest = synth.generate(corpus, images=images, downscale=downscale, seed=seed)
    roots = {
        name: str(corpus / entry["root"])
        for name, entry in manifest.items()
        if isinstance(entry, dict) and name in set(collections)
    }
    ingest_job.run(spark, settings, roots, DEMO_SECRET)
    lake = settings.lakehouse
    images_table, annotations = (
        read_table(spark, lake.table("images")),
        read_table(spark, lake.table("annotations")),
    )
    cut = tiles.cut_tiles(
        tiles.with_findings(images_table, annotations), tiles.TileOptions.from_settings(settings.tiles)
    )
    merge_into(spark, cut.repartition(tile_files) if tile_files else cut, lake.table("tiles"), ["tile_id"])
    shutil.rmtree(corpus)
    return time.perf_counter() - started

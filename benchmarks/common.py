"""What the benchmarks share: a tiles table built from a synthetic corpus, and peak-memory sampling.

Run as scripts (``python benchmarks/<name>.py``), the benchmarks import this module by its plain name.
"""

from __future__ import annotations

import argparse
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import psutil

import synth
from pipelines.collections import ingest_collections
from pipelines.pseudonym import DEMO_SECRET
from pipelines.tiles import tile_images


class PeakMemory:
    """Samples, every ``every`` seconds, the summed resident memory of this process's descendants, per
    group: ``groups`` maps a name to a test on the command line (Horovod workers, Spark's Python workers,
    the JVM); ``peak[name]`` is the group's largest sum seen."""

    def __init__(self, groups: dict[str, Callable[[str], bool]], every: float = 0.5) -> None:
        self.peak = dict.fromkeys(groups, 0)
        self._groups, self._every = groups, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            totals = dict.fromkeys(self._groups, 0)
            for child in me.children(recursive=True):
                try:
                    cmdline, rss = " ".join(child.cmdline()), child.memory_info().rss
                except psutil.Error:
                    continue
                for name, match in self._groups.items():
                    if match(cmdline):
                        totals[name] += rss
            self.peak = {name: max(self.peak[name], totals[name]) for name in totals}
            time.sleep(self._every)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def is_jvm(cmdline: str) -> bool:
    """A Java process (Spark's driver JVM in local mode)."""
    return cmdline.split(" ", 1)[0].endswith("java")


def corpus_arguments(parser: argparse.ArgumentParser, images: int) -> None:
    """The options of the synthetic corpus a benchmark builds (:func:`build_tiles`) and its cores."""
    parser.add_argument("--images", type=int, default=images, help="synthetic corpus size (all collections)")
    parser.add_argument("--downscale", type=float, default=16, help="synthetic corpus downscale")
    parser.add_argument("--seed", type=int, default=0, help="synthetic corpus seed")
    parser.add_argument("--cores", type=int, default=2, help="local[cores] and torch threads")


def build_tiles(
    spark,
    settings,
    work: Path,
    images: int,
    downscale: float | None,
    seed: int,
    collections: Iterable[str],
    files_per_group: int = 1,
) -> float:
    """Synthetic corpus -> ingest -> tiles table, for ``collections`` only. Returns seconds.

    The ingest job's library function (:func:`pipelines.collections.ingest_collections`) and the tile
    job's (:func:`pipelines.tiles.tile_images`, in its layout: ``files_per_group`` files per split and
    modality).
    """
    started = time.perf_counter()
    corpus = work / "corpus"
    manifest = synth.generate(corpus, images=images, downscale=downscale, seed=seed)
    roots = {
        name: str(corpus / entry["root"])
        for name, entry in manifest.items()
        if isinstance(entry, dict) and name in set(collections)
    }
    ingest_collections(spark, settings, roots, DEMO_SECRET)
    tile_images(spark, settings, files_per_group=files_per_group)
    shutil.rmtree(corpus)
    return time.perf_counter() - started

"""What the benchmarks share: a tiles table built from a synthetic corpus, and memory and CPU sampling.

Run as scripts (``python benchmarks/<name>.py``), the benchmarks import this module by its plain name.
"""

from __future__ import annotations

import argparse
import itertools
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
    """Samples, every ``every`` seconds, the memory and CPU time of this process's descendants, per group.

    ``groups`` maps a name to a test on a process's command line (Horovod workers, Spark's Python workers,
    the JVM). With ``descendants`` a process also belongs to a group when one of its ancestors passes the
    test (a training process tree: ``torchrun`` and the processes it starts); without, only the processes
    that pass it themselves.

    ``peak[name]`` (also ``peak_rss[name]``) is the group's largest sum of resident memory (RSS) seen, in
    bytes; ``peak_pss[name]`` the largest sum of proportional set sizes (PSS: each shared page divided
    among the processes that map it, so pages that forked workers share are counted once, not once per
    process; without ``pss``, only RSS is read, which costs far less CPU on a large process, and
    ``peak_pss`` repeats it). ``cpu[name]`` is a timeline of ``(time.time(), CPU seconds)``: the user +
    system CPU time of every process of the group seen so far (one that has ended keeps its last
    sample), from which :meth:`cpu_between` reads the CPU the group spent between two instants.
    ``peak_process[name]`` is the largest RSS of any one process of the group (the largest executor JVM).
    """

    def __init__(
        self,
        groups: dict[str, Callable[[str], bool]],
        every: float = 0.5,
        descendants: bool = False,
        pss: bool = True,
    ) -> None:
        self.peak_rss = dict.fromkeys(groups, 0)
        self.peak_pss = dict.fromkeys(groups, 0)
        self.peak_process = dict.fromkeys(groups, 0)
        self.cpu: dict[str, list[tuple[float, float]]] = {name: [] for name in groups}
        self._groups, self._every, self._descendants, self._pss = groups, every, descendants, pss
        self._cpu_seen: dict[str, dict[tuple[int, float], float]] = {name: {} for name in groups}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def peak(self) -> dict[str, int]:
        """The peak RSS per group (what the other benchmarks read)."""
        return self.peak_rss

    def _members(self) -> dict[str, list[psutil.Process]]:
        """The processes of each group now."""
        processes = {p.pid: p for p in psutil.Process().children(recursive=True)}
        matched: dict[int, set[str]] = {}
        parents: dict[int, int] = {}
        for pid, process in processes.items():
            try:
                cmdline, parents[pid] = " ".join(process.cmdline()), process.ppid()
            except psutil.Error:
                continue
            matched[pid] = {name for name, match in self._groups.items() if match(cmdline)}
        members: dict[str, list[psutil.Process]] = {name: [] for name in self._groups}
        for pid in matched:
            names, ancestor = set(matched[pid]), parents.get(pid)
            while self._descendants and ancestor in matched:
                names |= matched[ancestor]
                ancestor = parents.get(ancestor)
            for name in names:
                members[name].append(processes[pid])
        return members

    def _sample(self) -> None:
        now = time.time()
        for name, processes in self._members().items():
            rss = pss = 0
            seen = self._cpu_seen[name]
            for process in processes:
                try:
                    with process.oneshot():
                        memory = process.memory_full_info() if self._pss else process.memory_info()
                        times = process.cpu_times()
                        key = (process.pid, process.create_time())
                except psutil.Error:
                    continue
                rss, pss = rss + memory.rss, pss + getattr(memory, "pss", memory.rss)
                self.peak_process[name] = max(self.peak_process[name], memory.rss)
                seen[key] = times.user + times.system
            self.peak_rss[name] = max(self.peak_rss[name], rss)
            self.peak_pss[name] = max(self.peak_pss[name], pss)
            self.cpu[name].append((now, sum(seen.values())))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(self._every)

    def cpu_between(self, name: str, start: float, end: float) -> float:
        """CPU seconds the group spent between two ``time.time()`` instants (linear between samples)."""
        return self._cpu_at(name, end) - self._cpu_at(name, start)

    def _cpu_at(self, name: str, when: float) -> float:
        timeline = self.cpu[name]
        if not timeline:
            return 0.0
        if when <= timeline[0][0]:
            return timeline[0][1]
        for (t0, c0), (t1, c1) in itertools.pairwise(timeline):
            if t0 <= when <= t1:
                return c0 + (c1 - c0) * (when - t0) / (t1 - t0 or 1.0)
        return timeline[-1][1]

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()  # the processes' last figures


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
    files_per_group: int | None = None,
) -> float:
    """Synthetic corpus -> ingest -> tiles table, for ``collections`` only. Returns seconds.

    The ingest job's library function (:func:`pipelines.collections.ingest_collections`) and the tile
    job's (:func:`pipelines.tiles.tile_images`, in its layout: ``files_per_group`` files per split and
    modality; ``None``: the job's own choice).
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

"""Ingest + normalise + tile through Spark, against the same work as a plain Python process pool.

    .venv/bin/python benchmarks/ingest.py [--sizes 250 500 1000 2000 4000] [--cores 2] [--downscale 16]
    .venv/bin/python benchmarks/ingest.py --executors 2 [--memory-mb 5120] [--sizes 1000 2000 4000]
    (either with --corpora DIR: generated corpora are kept there and reused by later runs)

For each corpus size it generates a synthetic corpus, then runs, in the same process and on the same
files: (a) the Spark path (the library functions of ``oncolake ingest`` then ``oncolake tile`` on
``local[cores]``, Delta MERGEs included) and (b) a baseline, the same scan + decode + normalise + tile
functions in a ``ProcessPoolExecutor`` of ``cores`` workers writing Parquet with pyarrow. It prints
images/s of both, their ratio (target >= 0.8), seconds per image per size (target: flat within 20%) and
the peak resident memory of the JVM and of the Python workers (target: bounded, independent of corpus
size). The last line is one JSON object with those figures. Machines are noisy: read the ratios, not the
absolute times.

On ``local[cores]`` the driver and the executor are one JVM. ``--executors N`` runs the Spark path on
``local-cluster[N,1,MB]`` instead, in the full demo's profile (N executor JVMs of one core with its 4 GB
heap, on workers of ``--memory-mb``, as on a real cluster), with a fresh session per size so that each
size's peaks are its own, and prints the driver JVM's and the largest executor JVM's peak apart (the
issue's memory target: both flat from 1,000 to 4,000 images; the driver never holds pixels).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from common import PeakMemory, is_jvm

from conf import load_settings
from jobs.session import build_spark
from pipelines import decode, ingest, tiles
from pipelines.collections import ingest_collections
from pipelines.io import read_table
from pipelines.pseudonym import DEMO_SECRET
from pipelines.sources import SOURCES
from synth.corpus import ensure_corpus

# The driver JVM is Spark's launcher (SparkSubmit), on local[N] the only JVM; executors are their own JVMs.
MEMORY_GROUPS = {
    "driver_jvm": lambda c: is_jvm(c) and "CoarseGrainedExecutorBackend" not in c,
    "executor_jvms": lambda c: is_jvm(c) and "CoarseGrainedExecutorBackend" in c,
    "python_workers": lambda c: not is_jvm(c),
}

Work = tuple[dict, dict[str, str], decode.NormaliseOptions, tiles.TileOptions]

_SPLITS: dict[str, str] = {}


def _know_splits(splits: dict[str, str]) -> None:
    _SPLITS.update(splits)


def _baseline_one(args: Work) -> list[dict]:
    row, roots, normalise_options, tile_options = args
    decoded = decode.decode_record(row, roots, normalise_options)
    if decoded["status"] != "ok":
        return []
    # The split the Spark path gave the image: the same strides and lesion patches, so the same tiles.
    image = {**decoded, "split": _SPLITS.get(decoded["image_id"], "train")}
    return tiles.cut_image(image, tile_options)


def baseline(roots: dict[str, str], out: Path, cores: int, settings, splits: dict[str, str]) -> float:
    """Scan, decode, normalise and tile with a process pool; write tiles as Parquet. Returns seconds.

    ``splits`` (image id -> split) come from the Spark path's images table, for free: the pool cuts the
    same tiles (scored images on their overlapping grid, lesion patches in train only) without drawing
    splits itself, which favours it.
    """
    started = time.perf_counter()
    scans = {name: SOURCES[name].scan(Path(root)) for name, root in roots.items()}
    rows = ingest.record_rows(scans, DEMO_SECRET, hash_paths=False)
    names = ingest.RECORD_SCHEMA.fieldNames()
    normalise_options = decode.NormaliseOptions.from_settings(settings.normalise)
    tile_options = tiles.TileOptions.from_settings(settings.tiles)
    work = [(dict(zip(names, row, strict=True)), roots, normalise_options, tile_options) for row in rows]
    out.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max_workers=cores, initializer=_know_splits, initargs=(splits,)) as pool:
        batch: list[dict] = []
        part = 0
        for result in pool.map(_baseline_one, work, chunksize=8):
            batch.extend(result)
            if len(batch) >= 512:
                pq.write_table(pa.Table.from_pylist(batch), out / f"part-{part:05d}.parquet")
                batch, part = [], part + 1
        if batch:
            pq.write_table(pa.Table.from_pylist(batch), out / f"part-{part:05d}.parquet")
    return time.perf_counter() - started


def spark_path(spark, settings, roots: dict[str, str]) -> float:
    """The ingest and tile jobs' library functions, Delta MERGEs included. Returns seconds."""
    started = time.perf_counter()
    ingest_collections(spark, settings, roots, DEMO_SECRET)
    tiles.tile_images(spark, settings)
    return time.perf_counter() - started


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[250, 500, 1000, 2000, 4000])
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--downscale", type=float, default=16)
    parser.add_argument(
        "--executors", type=int, default=0, help="local-cluster executor JVMs (0: local[cores], one JVM)"
    )
    parser.add_argument("--memory-mb", type=int, default=5120, help="memory of each executor JVM")
    parser.add_argument(
        "--corpora",
        type=Path,
        help="keep the generated corpora here and reuse them on later runs (default: generated and deleted)",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="oncolake-bench-"))
    cluster = args.executors > 0
    # local-cluster runs the full demo's profile (its executor heap and shuffle partitions).
    profile, master = (
        ("full", f"local-cluster[{args.executors},1,{args.memory_mb}]")
        if cluster
        else ("local", f"local[{args.cores}]")
    )
    # Read the configuration once: a long run must not pick up edits made to conf/ while it runs.
    base = load_settings(profile, [f"lakehouse.root={work / 'lake-0'}", f"spark.master={master}"])
    spark = None if cluster else build_spark(base, "bench-ingest")
    figures: dict[str, dict] = {}
    try:
        for size in args.sizes:
            if cluster:
                spark = build_spark(base, f"bench-ingest-{size}")
            corpus = (args.corpora or work) / f"corpus-{size}-downscale-{args.downscale:g}-seed-{size}"
            manifest = ensure_corpus(
                corpus,
                images=size,
                full=False,
                downscale=args.downscale,
                seed=size,
                landing=0,
                progress=print,
            )
            roots = {n: str(corpus / e["root"]) for n, e in manifest.items() if isinstance(e, dict)}
            lake = base.lakehouse.model_copy(update={"root": str(work / f"lake-{size}")})
            run_settings = base.model_copy(update={"lakehouse": lake})
            # One RSS sample a second (PSS would read every mapping of a multi-gigabyte JVM each time, and
            # that CPU would be taken from the run being measured).
            with PeakMemory(MEMORY_GROUPS, 1.0, pss=False) as memory:
                spark_s = spark_path(spark, run_settings, roots)
            images = read_table(spark, run_settings.lakehouse.table("images")).select("image_id", "split")
            splits = {r["image_id"]: r["split"] for r in images.collect()}
            if cluster:
                spark.stop()
                spark = None
            plain_s = baseline(roots, work / f"plain-{size}", args.cores, run_settings, splits)
            figures[str(size)] = {
                "spark_images_per_s": size / spark_s,
                "plain_images_per_s": size / plain_s,
                "ratio": plain_s / spark_s,
                "spark_s_per_image": spark_s / size,
                **{f"peak_{name}_mb": memory.peak[name] / 2**20 for name in MEMORY_GROUPS},
                "peak_largest_executor_jvm_mb": memory.peak_process["executor_jvms"] / 2**20,
            }
            f = figures[str(size)]
            jvms = (
                f"driver JVM {f['peak_driver_jvm_mb']:.0f} MB, largest executor JVM "
                f"{f['peak_largest_executor_jvm_mb']:.0f} MB"
                if cluster
                else f"JVM (driver = executor) {f['peak_driver_jvm_mb']:.0f} MB"
            )
            print(
                f"{size:6} images: spark {f['spark_images_per_s']:.2f} img/s, "
                f"plain {f['plain_images_per_s']:.2f} img/s, ratio {f['ratio']:.2f}, "
                f"{f['spark_s_per_image']:.3f} s/img, peak {jvms}, "
                f"Python workers {f['peak_python_workers_mb']:.0f} MB",
                flush=True,
            )
            if args.corpora is None:
                shutil.rmtree(corpus)
    finally:
        if spark is not None:
            spark.stop()
        shutil.rmtree(work, ignore_errors=True)
    per_image = [f["spark_s_per_image"] for f in figures.values()]
    result = {
        "benchmark": "ingest",
        "cores": args.cores,
        "master": master,
        "ratio_spark_vs_plain": min(f["ratio"] for f in figures.values()),
        "s_per_image_spread": max(per_image) / min(per_image) - 1,
        "sizes": figures,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

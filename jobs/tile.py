"""Cut the normalised images into labelled training tiles: the tiles Delta table.

    oncolake tile [--summary-json FILE] [--config NAME|FILE] [--set tiles.size=224 ...]
    spark-submit --py-files dist/oncolake-0.1.0.zip jobs/tile.py --config cluster

Reads the images and annotations tables, cuts every image not yet tiled on a ``tiles.size`` /
``tiles.stride`` grid in the executors, drops background tiles, labels the rest from the findings'
geometry, and MERGEs them by tile id (re-running adds nothing). Fails if any patient's tiles span two
splits.
"""

from __future__ import annotations

import json
from pathlib import Path

from pyspark.sql import functions as F

from jobs.options import job_parser, settings_from
from jobs.session import build_spark
from pipelines import tiles
from pipelines.io import merge_into, read_table, table_exists
from pipelines.split import SplitLeak


def main(argv: list[str] | None = None) -> int:
    parser = job_parser("oncolake tile", __doc__)
    parser.add_argument("--summary-json", type=Path, help="write tile counts per collection and label here")
    args = parser.parse_args(argv)
    settings = settings_from(args)
    lake = settings.lakehouse
    spark = build_spark(settings, "tile")
    if not table_exists(spark, lake.table("images")):
        parser.exit(2, "oncolake tile: no images table yet: run 'oncolake ingest' first\n")
    tiles_path = lake.table("tiles")
    existing = read_table(spark, tiles_path) if table_exists(spark, tiles_path) else None
    todo = tiles.images_to_tile(read_table(spark, lake.table("images")), existing)
    todo = tiles.with_findings(todo, read_table(spark, lake.table("annotations")))
    options = tiles.TileOptions.from_settings(settings.tiles)
    metadata = {"job": "tile", "config": settings.public_dict()}
    merge_into(spark, tiles.cut_tiles(todo, options), tiles_path, ["tile_id"], metadata)

    table = read_table(spark, tiles_path)
    leaks = table.groupBy("collection", "patient_key").agg(F.countDistinct("split").alias("n")).where("n > 1")
    if leaks.limit(1).count():
        raise SplitLeak(f"tiles of {leaks.count()} patients span two splits")
    counts = table.groupBy("collection", "split", F.coalesce("label", F.lit("(none)")).alias("label")).count()
    rows = sorted((r["collection"], r["split"], r["label"], r["count"]) for r in counts.collect())
    print(f"{'collection':12}{'split':>8}{'label':>12}{'tiles':>9}")
    for collection, split, label, count in rows:
        print(f"{collection:12}{split:>8}{label:>12}{count:>9}")
    if args.summary_json:
        summary: dict[str, dict] = {}
        for collection, split, label, count in rows:
            summary.setdefault(collection, {}).setdefault(split, {})[label] = count
        args.summary_json.write_text(json.dumps({"tiles": summary}, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

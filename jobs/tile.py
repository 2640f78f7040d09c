"""Cut the normalised images into labelled training tiles: the tiles Delta table.

    oncolake tile [--summary-json FILE] [--config NAME|FILE] [--set tiles.size=224 ...]
    spark-submit --py-files dist/oncolake-0.1.0.zip jobs/tile.py --config cluster

Reads the images and annotations tables, cuts every image not yet tiled on a grid of ``tiles.size``
tiles ``tiles.stride`` apart (``tiles.scored_stride`` per modality for the images that are scored: half a
tile for mammograms by default, so a lesion on one tile's edge is whole in a neighbour) in the executors,
drops background tiles, labels the rest from the geometry of the collections' own findings, and MERGEs
them by tile id (re-running adds nothing). Fails if any patient's tiles span two splits.
"""

from __future__ import annotations

from pathlib import Path

from jobs.options import job_parser, settings_from
from jobs.session import build_spark
from pipelines.summary import write_payload
from pipelines.tiles import NoImages, tile_images


def main(argv: list[str] | None = None) -> int:
    parser = job_parser("oncolake tile", __doc__)
    parser.add_argument("--summary-json", type=Path, help="write tile counts per collection and label here")
    args = parser.parse_args(argv)
    settings = settings_from(args)
    try:
        summary = tile_images(build_spark(settings, "tile"), settings)
    except NoImages as exc:
        parser.exit(2, f"oncolake tile: {exc}\n")
    print(summary.render())
    if args.summary_json:
        write_payload(args.summary_json, summary.as_dict())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

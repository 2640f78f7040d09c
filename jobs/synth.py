"""Write a synthetic corpus in the four collections' real download layouts.

    oncolake synth [--out DIR] [--images N | --full] [--downscale F] [--seed S] [--landing N]

No real dataset ships with oncolake; this writes BreaKHis, mini-MIAS, DDSM and CBIS-DDSM look-alikes
(with learnable lesions, real quirks and a few planted bad files) that the ingest readers treat exactly
like the real downloads. ``--full`` writes the paper's 12,000 images. An existing corpus in ``--out`` is
left as it is (re-running changes nothing); delete the folder to regenerate. ``DIR/landing`` gets
``--landing`` new unlabelled images (PNG, PGM, DICOM and a few bad files), as a device would drop them
for ``oncolake score --landing``. The work is :func:`synth.corpus.ensure_corpus`'s.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jobs.options import job_parser, settings_from
from synth.corpus import ensure_corpus, summary_lines


def build_parser() -> argparse.ArgumentParser:
    parser = job_parser("oncolake synth", __doc__)
    parser.add_argument("--out", type=Path, help="output folder (default: synth.out)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--images", type=int, help="good images in total (default: synth.images)")
    size.add_argument("--full", action="store_true", help="the full 12,000-image corpus")
    parser.add_argument(
        "--downscale", type=float, help="divide mammogram sizes by F (default: synth.downscale)"
    )
    parser.add_argument("--seed", type=int, help="random seed (default: synth.seed)")
    parser.add_argument("--landing", type=int, help="new unlabelled images (default: synth.landing_images)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = settings_from(args).synth
    out = args.out or Path(settings.out)
    manifest = ensure_corpus(
        out,
        images=args.images or settings.images,
        full=args.full,
        downscale=args.downscale or settings.downscale,
        seed=settings.seed if args.seed is None else args.seed,
        landing=settings.landing_images if args.landing is None else args.landing,
        progress=lambda line: print(f"synth: {line}", flush=True),
    )
    for line in summary_lines(out, manifest):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Write a synthetic corpus in the four collections' real download layouts.

    oncolake synth [--out DIR] [--images N | --full] [--downscale F] [--seed S] [--landing N]

No real dataset ships with oncolake; this writes BreaKHis, mini-MIAS, DDSM and CBIS-DDSM look-alikes
(with learnable lesions, real quirks and a few planted bad files) that the ingest readers treat exactly
like the real downloads. ``--full`` writes the paper's 12,000 images. An existing corpus in ``--out`` is
left as it is (re-running changes nothing); delete the folder to regenerate. ``DIR/landing`` gets
``--landing`` new unlabelled images (PNG, PGM, DICOM and a few bad files), as a device would drop them
for ``oncolake score --landing``.
"""

from __future__ import annotations

import json
from pathlib import Path

from jobs.options import job_parser, settings_from


def main(argv: list[str] | None = None) -> int:
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
    args = parser.parse_args(argv)
    settings = settings_from(args).synth
    out = args.out or Path(settings.out)
    seed = settings.seed if args.seed is None else args.seed
    manifest = out / "manifest.json"
    if manifest.exists():
        print(f"synth: {out} already holds a corpus (delete it to regenerate)")
    else:
        import synth

        synth.generate(
            out,
            images=args.images or settings.images,
            full=args.full,
            downscale=args.downscale or settings.downscale,
            seed=seed,
            progress=lambda line: print(f"synth: {line}", flush=True),
        )
    landing = settings.landing_images if args.landing is None else args.landing
    if landing:
        from synth import landing as landing_folder

        written = landing_folder.generate(out / "landing", landing, seed + 1)
        print(f"synth: {written['images']} new unlabelled images in {out / 'landing'}")
    summary = json.loads(manifest.read_text())
    for name, entry in summary.items():
        if isinstance(entry, dict) and "images" in entry:
            planted, root = len(entry["planted"]), out / entry["root"]
            print(f"  {name:10} {entry['images']:6} images {planted:3} planted bad files  {root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

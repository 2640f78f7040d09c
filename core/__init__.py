"""The small, dependency-free layer every other one shares (``jobs -> model -> pipelines -> core -> conf``).

Nothing here imports Spark, torch, MLflow, Petastorm or Horovod (numpy, pandas, Pillow and imagehash
only; an import-linter contract checks it), so the same code runs on the driver, inside Spark's Python
workers, inside training workers and inside a logged model:

- :mod:`core.codec` — the PNG codec of every pixel column;
- :mod:`core.phash` — the perceptual hash that links near-duplicate images;
- :mod:`core.ids` — every stable id (SHA-256 over joined fields), in a Python and a Spark SQL form;
- :mod:`core.aggregation` — the tile -> image -> patient rule shared by evaluation and bulk scoring;
- :mod:`core.tasks` — what each model predicts and which tile rows belong to it (one predicate, two forms);
- :mod:`core.quiet` — third-party warnings filtered at their source and MLflow's INFO lines off.
"""

"""The ``oncolake`` command: one subcommand per job, each also runnable with spark-submit.

``oncolake <job> ...`` is exactly ``spark-submit jobs/<job>.py ...`` on the embedded default: the job
module's ``main(argv)`` receives the same arguments either way.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Subcommand -> job module. Modules are imported only when their command runs, so --help stays fast.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("jobs.demo", "run the end-to-end demo on a synthetic corpus"),
    "synth": ("jobs.synth", "write a synthetic corpus in the four collections' real layouts"),
    "ingest": ("jobs.ingest", "read the collections into the images, annotations and quarantine tables"),
    "reports": (
        "jobs.reports",
        "read expert reports (JSON Lines, CSV, Label Studio) into the annotations table",
    ),
    "consensus": (
        "jobs.consensus",
        "aggregate the expert reports into consensus labels (Dawid-Skene, majority vote)",
    ),
    "tile": ("jobs.tile", "cut normalised images into labelled training tiles"),
    "train": ("jobs.train", "train one model per task with Horovod on the Spark executors"),
    "evaluate": ("jobs.evaluate", "score models on their test split, write reports, promote champions"),
    "land": ("jobs.land", "land new unlabelled images from a folder, normalised and tiled, ready to score"),
    "score": ("jobs.score", "score new images with the champion models into the predictions table"),
    "stream": (
        "jobs.stream",
        "land, score and read reports from drop folders as they arrive (Structured Streaming, exactly once)",
    ),
    "maintain": (
        "jobs.maintain",
        "compact the tables (keeping the tiles layout) and VACUUM what no registered model pins",
    ),
    "erase": (
        "jobs.erase",
        "erase patients (by pseudonym) from every table; record it and flag the models trained on them",
    ),
    "mlflow-server": ("jobs.mlflow_server", "serve runs and the registry behind a login (MLflow basic auth)"),
    "doctor": ("jobs.doctor", "check the installed stack (Java, Spark, Delta, Horovod, MLflow)"),
    "package": ("jobs.package", "build the code archive and packed environment for a cluster"),
}


CONFLICT_EXIT = 75
"""The exit status of a job that lost a commit race to another job (EX_TEMPFAIL: run it again)."""


DELTA_CONFLICTS = (
    "ConcurrentAppendException",
    "ConcurrentDeleteDeleteException",
    "ConcurrentDeleteReadException",
    "ConcurrentTransactionException",
    "ConcurrentWriteException",
    "DeltaConcurrentModificationException",
    "MetadataChangedException",
    "ProtocolChangedException",
)
"""Delta's optimistic-concurrency errors (``delta.exceptions``): another writer committed first."""


def concurrent_commit(exc: BaseException) -> str | None:
    """One line for Delta's conflicting-commit errors (another job committed to the same table first),
    instead of a Java stack trace; ``None`` for any other error."""
    import delta.exceptions

    kinds = tuple(getattr(delta.exceptions, name) for name in DELTA_CONFLICTS)
    if not isinstance(exc, kinds):
        return None
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return (
        f"another job committed to the same table at the same time ({type(exc).__name__}: {first[:200]}); "
        "nothing of this run's conflicting write was committed. Run it again: what is already in is "
        "skipped."
    )


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a job's ``main``; returns its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="oncolake",
        description="Breast-cancer imaging lakehouse: ingest, train, score.",
        epilog="Run 'oncolake <command> --help' for a command's options.",
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for name, (_, summary) in COMMANDS.items():
        sub.add_parser(name, help=summary, add_help=False)
    if not argv or argv[0] in {"-h", "--help"} or argv[0] not in COMMANDS:
        parser.parse_args(argv[:1] or ["--help"])
    module = importlib.import_module(COMMANDS[argv[0]][0])
    try:
        return int(module.main(argv[1:]) or 0)
    except Exception as exc:
        from pipelines.keycheck import SecretChanged

        if isinstance(exc, SecretChanged):
            print(f"oncolake {argv[0]}: refused: {exc}", file=sys.stderr)
            return 2
        conflict = concurrent_commit(exc)
        if conflict is None:
            raise
        print(f"oncolake {argv[0]}: {conflict}", file=sys.stderr)
        return CONFLICT_EXIT
    finally:
        if "pyspark" in sys.modules:  # a job that started Spark: stop it before exiting
            from jobs.session import stop_spark

            stop_spark()


if __name__ == "__main__":
    raise SystemExit(main())

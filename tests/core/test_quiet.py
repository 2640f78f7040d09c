"""Quiet output: third-party warnings are dropped where they are raised, ours still show."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator

import pytest

from core.quiet import QUIET_ENV, quiet


def _shown(module: str, category: type[Warning]) -> bool:
    """Whether a warning the warnings machinery attributes to ``module`` gets through the filters."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # what a filter does not drop is shown, every time
        quiet()
        warnings.warn_explicit("noise", category, f"{module.replace('.', '/')}.py", 1, module=module)
    return bool(caught)


@pytest.fixture()
def loggers() -> Iterator[None]:
    levels = {name: logging.getLogger(name).level for name in ("mlflow", "alembic")}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


@pytest.mark.parametrize("category", [FutureWarning, DeprecationWarning, UserWarning])
@pytest.mark.parametrize("module", ["petastorm.spark.spark_dataset_converter", "pyarrow", "mlflow.pyfunc"])
def test_third_party_warnings_are_dropped_at_their_source(module: str, category: type[Warning]) -> None:
    assert not _shown(module, category)


@pytest.mark.parametrize("module", ["pipelines.tiles", "model.training.worker", "pyarrowish", "__main__"])
def test_warnings_from_our_code_and_other_modules_still_show(module: str) -> None:
    assert _shown(module, UserWarning)


def test_other_categories_still_show() -> None:
    assert _shown("torch.nn", RuntimeWarning)


def test_quiet_is_idempotent() -> None:
    with warnings.catch_warnings():
        quiet()
        before = list(warnings.filters)
        quiet()
        assert warnings.filters == before


def test_mlflow_info_lines_are_off(monkeypatch: pytest.MonkeyPatch, loggers: None) -> None:
    monkeypatch.delenv("MLFLOW_LOGGING_LEVEL", raising=False)
    quiet()
    assert not logging.getLogger("mlflow.tracking.fluent").isEnabledFor(logging.INFO)
    assert logging.getLogger("mlflow").isEnabledFor(logging.WARNING)
    assert os.environ["MLFLOW_LOGGING_LEVEL"] == "WARNING"  # for an MLflow imported later, or a child


def test_the_switch_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(QUIET_ENV, "0")
    assert _shown("petastorm.reader", FutureWarning)


@pytest.mark.parametrize(("switch", "expected"), [("1", False), ("0", True)])
def test_a_real_import_warning_of_petastorm(switch: str, expected: bool) -> None:
    """petastorm's converter module imports pyarrow's deprecated LocalFileSystem: a FutureWarning."""
    code = "from core.quiet import quiet; quiet(); import petastorm.spark.spark_dataset_converter"
    env = {**os.environ, QUIET_ENV: switch}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert ("FutureWarning" in done.stderr) is expected, done.stderr


def test_mlflow_cloudpickle_caution_is_dropped_other_mlflow_warnings_show(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    from core.quiet import quiet

    quiet()
    quiet()  # idempotent: one filter, not two
    logger = logging.getLogger("mlflow.pyfunc")
    assert sum(type(f).__name__ == "_DropCaution" for f in logger.filters) == 1
    with caplog.at_level(logging.WARNING, logger="mlflow.pyfunc"):
        logger.warning("Passing a Python object as `python_model` causes it to be serialized")
        logger.warning("something else MLflow wants us to see")
    assert [r.getMessage() for r in caplog.records] == ["something else MLflow wants us to see"]

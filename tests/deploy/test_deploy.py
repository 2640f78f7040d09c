"""The shipped schedules (cron lines, Airflow DAGs) run ``oncolake score`` and ``oncolake stream --once``
with options the jobs accept."""

from __future__ import annotations

import ast
import shlex
from pathlib import Path

from jobs import score, stream

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _job_args(command: str, job: str) -> list[str]:
    """The arguments after ``oncolake <job>`` in a shell command, up to a redirection."""
    words = shlex.split(command)
    start = next(i for i, w in enumerate(words) if w.endswith("oncolake") and words[i + 1] == job) + 2
    end = next((i for i, w in enumerate(words) if i > start and w.startswith(">")), len(words))
    return words[start:end]


def _cron_command(name: str) -> tuple[str, str]:
    """The one cron line of ``deploy/cron/<name>``: its minute field and its command."""
    lines = [
        line
        for line in (DEPLOY / "cron" / name).read_text().splitlines()
        if line.strip() and not line.startswith("#") and "=" not in line.split()[0]
    ]
    assert len(lines) == 1
    minute, hour, day, month, weekday, user, command = lines[0].split(None, 6)
    assert {hour, day, month, weekday} == {"*"} and user
    assert "flock -n" in command  # overlapping runs are skipped, not stacked
    return minute, command


def test_cron_lines_are_well_formed_and_their_options_parse() -> None:
    minute, command = _cron_command("oncolake-score")
    assert minute.isdigit() and int(minute) < 60
    assert score.build_parser().parse_args(_job_args(command, "score")).summary_json is not None
    minute, command = _cron_command("oncolake-stream")
    assert minute.startswith("*/")
    args = stream.build_parser().parse_args(_job_args(command, "stream"))
    assert args.once and args.images is not None and args.reports is not None and args.summary_json


def _dag(name: str) -> tuple[dict[str, ast.expr], dict[str | None, ast.expr]]:
    """The module-level assignments of ``deploy/airflow/<name>.py`` and its ``DAG(...)`` keywords."""
    tree = ast.parse((DEPLOY / "airflow" / f"{name}.py").read_text())
    assigned = {
        target.id: node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "DAG"]
    keywords = {k.arg: k.value for k in calls[0].keywords}
    assert getattr(keywords["dag_id"], "value", None) == name
    assert getattr(keywords["max_active_runs"], "value", None) == 1
    return assigned, keywords


def _constants(node: ast.expr) -> list[str]:
    assert isinstance(node, ast.List)
    return [e.value if isinstance(e, ast.Constant) else "X" for e in node.elts]


def test_airflow_dag_commands_parse() -> None:
    assigned, _ = _dag("oncolake_score")
    parser = score.build_parser()
    assert parser.parse_args(_constants(assigned["SCORE_ARGS"])).summary_json is not None
    assert parser.parse_args(["--dry-run"]).dry_run
    assigned, _ = _dag("oncolake_stream")
    args = stream.build_parser().parse_args(_constants(assigned["STREAM_ARGS"]))
    assert args.once and args.images is not None and args.reports is not None

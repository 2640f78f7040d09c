"""The shipped schedules (cron line, Airflow DAG) run ``oncolake score`` with options the job accepts."""

from __future__ import annotations

import ast
import shlex
from pathlib import Path

from jobs.score import build_parser

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _score_args(command: str) -> list[str]:
    """The arguments after ``oncolake score`` in a shell command, up to a redirection."""
    words = shlex.split(command)
    start = next(i for i, w in enumerate(words) if w.endswith("oncolake") and words[i + 1] == "score") + 2
    end = next((i for i, w in enumerate(words) if i > start and w.startswith(">")), len(words))
    return words[start:end]


def test_cron_line_is_well_formed_and_its_options_parse() -> None:
    lines = [
        line
        for line in (DEPLOY / "cron" / "oncolake-score").read_text().splitlines()
        if line.strip() and not line.startswith("#") and "=" not in line.split()[0]
    ]
    assert len(lines) == 1
    fields = lines[0].split(None, 6)
    minute, hour, day, month, weekday, user, command = fields
    assert minute.isdigit() and int(minute) < 60 and {hour, day, month, weekday} == {"*"} and user
    assert "flock -n" in command  # overlapping runs are skipped, not stacked
    args = build_parser().parse_args(_score_args(command))
    assert args.landing is not None and args.summary_json is not None


def test_airflow_dag_commands_parse() -> None:
    tree = ast.parse((DEPLOY / "airflow" / "oncolake_score.py").read_text())
    assigned = {
        target.id: node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    score_args = [e.value if isinstance(e, ast.Constant) else "X" for e in assigned["SCORE_ARGS"].elts]
    parser = build_parser()
    assert parser.parse_args(score_args).landing is not None
    assert parser.parse_args(["--dry-run"]).dry_run
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "DAG"]
    keywords = {k.arg: k.value for k in calls[0].keywords}
    assert keywords["dag_id"].value == "oncolake_score" and keywords["max_active_runs"].value == 1

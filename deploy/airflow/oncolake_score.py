"""Airflow DAG ``oncolake_score``: score what is new in the lakehouse with the champion models, hourly.

Devices' drop folders are landed and scored by ``oncolake_stream.py`` (``oncolake stream --once``). Copy
this file into the DAGs folder. Set ``ONCOLAKE_HOME`` (the checkout, set up with ``make setup``) in the
workers' environment; ``ONCOLAKE_CONFIG`` picks the configuration (``cluster`` for spark-submit on a
cluster). ``count`` logs how many images would be scored (``--dry-run``), then ``score`` scores them.
Runs never overlap (``max_active_runs=1``) and every run is incremental, so a failed run is caught up by
the next one (no catch-up backfill).
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow import DAG

try:  # Airflow 3
    from airflow.providers.standard.operators.bash import BashOperator
except ImportError:  # Airflow 2
    from airflow.operators.bash import BashOperator

HOME = os.environ.get("ONCOLAKE_HOME", "/opt/oncolake")
SCORE_ARGS = ["--summary-json", "/var/log/oncolake/score-{{ ds_nodash }}.json"]
COMMAND = f"cd {HOME} && .venv/bin/oncolake score "

with DAG(
    dag_id="oncolake_score",
    schedule="15 * * * *",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": timedelta(minutes=10)},
    tags=["oncolake"],
) as dag:
    count = BashOperator(task_id="count", bash_command=COMMAND + "--dry-run")
    score = BashOperator(task_id="score", bash_command=COMMAND + " ".join(SCORE_ARGS))
    count >> score

"""Airflow DAG ``oncolake_stream``: drain the drop folders every 5 minutes (``oncolake stream --once``).

Copy this file into the DAGs folder. Set ``ONCOLAKE_HOME`` (the checkout, set up with ``make setup``),
``ONCOLAKE_LANDING_IMAGES`` and ``ONCOLAKE_LANDING_REPORTS`` (the drop folders; docs/landing.md is the
contract for the devices writing into them) in the workers' environment; ``ONCOLAKE_CONFIG`` picks the
configuration (``cluster`` for spark-submit on a cluster). Each run lands the new images and reports and
scores the new images with the champions, exactly once: the queries' checkpoints remember what was
read, so runs never overlap (``max_active_runs=1``) and a failed or killed run is caught up by the next
(no catch-up backfill). For latency in seconds, run ``oncolake stream`` without ``--once`` as a service.
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
IMAGES = os.environ.get("ONCOLAKE_LANDING_IMAGES", "/data/oncolake/landing/images")
REPORTS = os.environ.get("ONCOLAKE_LANDING_REPORTS", "/data/oncolake/landing/reports")
STREAM_ARGS = [
    "--once",
    "--images",
    IMAGES,
    "--reports",
    REPORTS,
    "--summary-json",
    "/var/log/oncolake/stream-{{ ts_nodash }}.json",
]
COMMAND = f"cd {HOME} && .venv/bin/oncolake stream "

with DAG(
    dag_id="oncolake_stream",
    schedule="*/5 * * * *",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": timedelta(minutes=5)},
    tags=["oncolake"],
) as dag:
    stream = BashOperator(task_id="stream", bash_command=COMMAND + " ".join(STREAM_ARGS))

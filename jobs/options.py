"""Command-line options every job shares: ``--config NAME|FILE`` and repeated ``--set key.path=value``.

``--conf`` is deliberately not used: spark-submit owns it, and a job launched through spark-submit must
not have its own options swallowed.
"""

from __future__ import annotations

import argparse
import sys

from conf import CONFIG_ENV, ConfigError, Settings, load_settings


def job_parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    """An argument parser with the options shared by every job."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config",
        metavar="NAME|FILE",
        help=f"configuration profile (local, cluster, tiny) or a YAML file; default ${CONFIG_ENV} or local",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY.PATH=VALUE",
        action="append",
        default=[],
        help="override one configuration value (repeatable), e.g. --set spark.shuffle_partitions=16",
    )
    return parser


def settings_from(args: argparse.Namespace, extra: list[str] | None = None) -> Settings:
    """Load the configuration named by the parsed options, or exit with status 2 and the reason."""
    try:
        return load_settings(args.config, [*args.overrides, *(extra or [])])
    except ConfigError as exc:
        print(f"oncolake: {exc}", file=sys.stderr)
        raise SystemExit(2) from None

"""The lakehouse remembers which secret made its pseudonyms, and refuses rows made with another.

Pseudonyms are HMACs of the original identifiers (:mod:`pipelines.pseudonym`): run with a different
secret, an ingest would give every patient and reader a new pseudonym, silently splitting them from their
earlier images, reports and splits (and breaking the patient-level split guarantee). So the first job
that writes pseudonyms records a *check value* of its secret in the one-row ``pseudonym_key`` table, and
every later writer (ingest, land, reports, and the stream through them) compares its own first:
:func:`verify_secret` raises :class:`SecretChanged` on a mismatch, before anything is read or written.

The check value is ``HMAC-SHA256(secret, "oncolake pseudonym key check v1")``, first 16 hex characters: it
identifies the secret without revealing it (recovering a secret from it is as hard as from any
pseudonym). Re-keying in place is not offered, on purpose: a pseudonym cannot be turned into the new
secret's pseudonym without the original identifiers, which the lakehouse never holds. To change the
secret, build a new lakehouse from the raw collections with the new one (docs/privacy.md).
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime

from pyspark.sql import SparkSession
from pyspark.sql import types as T

from conf import Settings
from pipelines.io import append_new, read_table, table_exists

TABLE = "pseudonym_key"
_MESSAGE = b"oncolake pseudonym key check v1"
_SCHEMA = T.StructType(
    [
        T.StructField("key_check", T.StringType(), False),
        T.StructField("first_used_at", T.TimestampType(), False),
    ]
)
_VERIFIED: set[tuple[str, str]] = set()  # (table path, check) already verified by this process


class SecretChanged(RuntimeError):
    """The pseudonym secret is not the one the lakehouse's pseudonyms were made with."""


def key_check(secret: bytes) -> str:
    """The secret's check value (16 hex characters)."""
    return hmac.new(secret, _MESSAGE, hashlib.sha256).hexdigest()[:16]


def verify_secret(
    spark: SparkSession, settings: Settings, secret: bytes, secret_env: str | None = None
) -> None:
    """Record the secret's check value on first use; afterwards refuse any other secret.

    Raises:
        SecretChanged: the lakehouse's pseudonyms were made with another secret.
    """
    path = settings.lakehouse.table(TABLE)
    check = key_check(secret)
    if (path, check) in _VERIFIED:
        return
    if not table_exists(spark, path):
        row = [(check, datetime.now(UTC))]
        append_new(spark, spark.createDataFrame(row, _SCHEMA), path, ["key_check"], {"job": "key check"})
    first = read_table(spark, path).orderBy("first_used_at", "key_check").first()
    if first is None or first["key_check"] != check:
        env = secret_env or settings.privacy.secret_env
        raise SecretChanged(
            f"the pseudonym secret (${env}) is not the one this lakehouse's pseudonyms were made with "
            f"(its check value is in {path}): with it, every patient and reader would get a new pseudonym "
            "and split from their earlier rows. Set the original secret. Pseudonyms cannot be re-keyed in "
            "place (the original identifiers are not kept): to change the secret, build a new lakehouse "
            "from the raw collections with the new one (docs/privacy.md)."
        )
    _VERIFIED.add((path, check))

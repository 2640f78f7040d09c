"""Keyed pseudonyms for patients: the only form in which a patient identity leaves ingestion.

A pseudonym is HMAC-SHA256 over the collection and the collection's own patient identifier, keyed by a
secret the user supplies. Without the secret the mapping cannot be recomputed or reversed; with it, the
same patient always gets the same key, so re-running ingestion or adding files keeps patients together.
The secret is passed in memory only: it is never logged, written to a table or sent to MLflow.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import sys

from conf.schema import PrivacySettings
from core.ids import stable_id

# A published key for synthetic data and demos only: anyone can recompute these pseudonyms.
DEMO_SECRET = b"oncolake-demo-secret-not-for-real-patients"


class SecretMissing(RuntimeError):
    """No pseudonym secret was supplied and the configuration forbids the demo secret."""


def resolve_secret(privacy: PrivacySettings) -> tuple[bytes, bool]:
    """The pseudonym secret from the configured environment variable, or the demo secret where allowed.

    Returns:
        The secret and whether it is the (public) demo secret.
    """
    value = os.environ.get(privacy.secret_env)
    if value:
        return value.encode(), False
    if not privacy.allow_demo_secret:
        raise SecretMissing(
            f"set ${privacy.secret_env}: this configuration forbids the demo pseudonym secret"
        )
    print(
        f"warning: ${privacy.secret_env} is not set; using the public demo pseudonym secret "
        "(fine for synthetic data, never for real patients)",
        file=sys.stderr,
    )
    return DEMO_SECRET, True


def pseudonymise(secret: bytes, collection: str, patient_ref: str) -> str:
    """The patient's keyed pseudonym: 20 hex characters (80 bits), stable for a given secret."""
    message = f"{collection}\x1f{patient_ref.strip()}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()[:20]


def path_key(collection: str, path: str) -> str:
    """A stable key for a source file, used to skip files already ingested and to hide private paths.

    Not keyed: :func:`core.ids.stable_id` of the collection and the path (relative to the collection root).
    """
    return stable_id(collection, path)


# What looks like a path or a collection's file name in a message: any token with a slash, or a name with
# one of the collections' extensions (BreaKHis and DDSM names carry patient and case numbers). Written to
# mean the same in Python's ``re`` and Java's regex (Spark's ``regexp_replace``).
PATH_PATTERN = (
    r"""[^\s'"]*[/\\][^\s'"]*"""
    r"|[\w.+-]+\.(?i:png|pgm|dcm|dicom|ics|ljpeg|overlay|csv|txt|json|tiff?|jpe?g)\b"
)
HIDDEN = "<path>"


def hide_paths(text: str) -> str:
    """``text`` with every path or file name replaced by ``<path>`` (``privacy.hash_source_paths``: a
    quarantine reason or a log line must not give back what the path column hides)."""
    return re.sub(PATH_PATTERN, HIDDEN, text)

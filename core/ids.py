"""Stable ids: SHA-256 over fields joined by the unit separator, as hex.

One definition, two forms: :func:`stable_id` in Python and :func:`stable_id_sql` as a Spark SQL expression,
so that a key computed on the driver and one computed in a Spark plan are the same string. Spark's
``concat_ws`` skips NULLs; :func:`stable_id` refuses ``None`` so the two forms can never disagree silently.
"""

from __future__ import annotations

import hashlib

SEPARATOR = "\x1f"  # ASCII unit separator: never part of a path, a label or a hash
ID_LENGTH = 32  # hex characters kept (128 bits)


def stable_id(*parts: object, length: int | None = ID_LENGTH) -> str:
    """SHA-256 of ``parts`` (as text) joined by :data:`SEPARATOR`, as ``length`` hex characters (None: 64)."""
    if any(p is None for p in parts):
        raise ValueError("stable_id: a part is None")
    digest = hashlib.sha256(SEPARATOR.join(str(p) for p in parts).encode()).hexdigest()
    return digest if length is None else digest[:length]


def stable_id_sql(*expressions: str, length: int | None = ID_LENGTH) -> str:
    """The same id as a Spark SQL expression over column expressions (``"image_id"``, ``"'collection'"``)."""
    joined = f"sha2(concat_ws('{SEPARATOR}', {', '.join(expressions)}), 256)"
    return joined if length is None else f"substring({joined}, 1, {length})"

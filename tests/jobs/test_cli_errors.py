"""A job that loses a commit race prints one line and exits 75 (``jobs.cli.CONFLICT_EXIT``), not a Java
stack trace: the message each of Delta's conflict errors becomes."""

from __future__ import annotations

import pytest
from delta.exceptions import ConcurrentAppendException, MetadataChangedException, ProtocolChangedException

from jobs.cli import concurrent_commit

CONFLICTS = [ProtocolChangedException, ConcurrentAppendException, MetadataChangedException]


@pytest.mark.parametrize("kind", CONFLICTS)
def test_delta_conflicts_become_one_line(kind: type[Exception]) -> None:
    text = "[DELTA_PROTOCOL_CHANGED] The protocol version of the Delta table has been changed\n\tat org..."
    line = concurrent_commit(kind(message=text))  # type: ignore[call-arg]
    assert line is not None and "\n" not in line and kind.__name__ in line and "Run it again" in line
    assert "\tat org" not in line
    assert concurrent_commit(ValueError("a bug")) is None

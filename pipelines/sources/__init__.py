"""Readers for the four public collections, each in the exact layout users download it in.

``SOURCES`` maps a collection name to its reader module; see :mod:`pipelines.sources.base` for the
contract every reader keeps (``NAME``, ``MODALITY``, ``scan`` on the driver, ``decode`` on executors).
``READERS`` adds the landing zone's reader (new unlabelled images, :mod:`pipelines.sources.landing`),
which the score job feeds rather than ``oncolake ingest``.
"""

from __future__ import annotations

from types import ModuleType

from pipelines.sources import breakhis, cbis_ddsm, ddsm, landing, mias

SOURCES: dict[str, ModuleType] = {module.NAME: module for module in (breakhis, mias, ddsm, cbis_ddsm)}
READERS: dict[str, ModuleType] = {**SOURCES, landing.NAME: landing}

"""Readers for the four public collections, each in the exact layout users download it in.

``SOURCES`` maps a collection name to its reader module; see :mod:`pipelines.sources.base` for the
contract every reader keeps (``NAME``, ``MODALITY``, ``scan`` on the driver, ``decode`` on executors).
"""

from __future__ import annotations

from types import ModuleType

from pipelines.sources import breakhis, cbis_ddsm, ddsm, mias

SOURCES: dict[str, ModuleType] = {module.NAME: module for module in (breakhis, mias, ddsm, cbis_ddsm)}

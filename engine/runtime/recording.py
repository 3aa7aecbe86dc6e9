"""The record of recent events the console shows: kept when the backend can keep one and the host wants it.

The record is glue, not delivery: a backend without one (in memory), or
``record=False``, gives an engine without a recorder, and nothing else changes.
"""

from __future__ import annotations

from ..language.model import Preset
from ..redaction import Redactor
from ..state.backend import StateBackend
from ..state.record import Recorder, RecordLimits


def recorder_for(
    backend: StateBackend, record: bool | RecordLimits, integration: str, preset: Preset, redactor: Redactor
) -> Recorder | None:
    """The engine's recorder, or None when the backend keeps no record (state.db and Redis do) or it is not wanted."""
    record_store = getattr(backend, "record", None) if record is not False else None
    return (
        Recorder(
            record_store(record if isinstance(record, RecordLimits) else RecordLimits()),
            integration,
            preset.name,
            redactor=redactor,
            preset_path=str(preset.path) if preset.path else None,
        )
        if record_store
        else None
    )

"""Loading traces into the store: JSON Lines reading (:mod:`.lines`), the checks and row shaping
every format goes through (:mod:`.rows`, :mod:`.loader`). The importers of each file format
(:mod:`manta_lib.importers`) and the collector (:mod:`manta_lib.collector`) build on it."""

from manta_lib.ingest.loader import (
    ImportInterrupted,
    ImportReport,
    LineError,
    SourceRecord,
    import_jsonl,
    load_records,
)

__all__ = [
    "ImportInterrupted",
    "ImportReport",
    "LineError",
    "SourceRecord",
    "import_jsonl",
    "load_records",
]

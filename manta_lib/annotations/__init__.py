"""Human annotation: label tasks, reproducible queues of sampled traces or datapoint groups,
and labels stored as results (judge = the task) so an LLM judge can be measured against them.

See ``docs/annotation.md``.
"""

from manta_lib.annotations.queue import (
    LEASE_SECONDS,
    Annotations,
    QueueItem,
    QueueProgress,
    QueueSummary,
    StoredLabel,
)
from manta_lib.annotations.task import AnnotationTask, LabelField

__all__ = [
    "LEASE_SECONDS",
    "AnnotationTask",
    "Annotations",
    "LabelField",
    "QueueItem",
    "QueueProgress",
    "QueueSummary",
    "StoredLabel",
]

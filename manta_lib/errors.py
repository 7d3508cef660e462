"""One exception hierarchy for Manta.

Every message says what was wrong, with which value, and how to fix it, so the CLI can print
it as is (no stack trace) and a notebook user knows what to change.
"""

from __future__ import annotations


class MantaError(Exception):
    """Base class of every error Manta raises on purpose."""


class ConfigError(MantaError):
    """A setting is missing or malformed (names the environment variable and the fix)."""


class StoreUnavailableError(MantaError):
    """ClickHouse cannot be reached or opened (server down, bad password, chDB path locked)."""


class QueryError(MantaError):
    """A query argument is invalid (unknown kind or phase, bad range, unknown run)."""


class ValidationError(MantaError):
    """Input data (an import line, a map output) does not match its schema."""


class PipelineDefinitionError(MantaError):
    """A MapReduceComputation is defined or called in a way that cannot work."""


class PersistenceError(MantaError):
    """Writing results to ClickHouse failed."""


class KestrelError(MantaError):
    """The Kestrel judge registry refused a request or could not be reached."""


class ComputationAborted(MantaError):
    """A computation stopped early (``max_failures`` exceeded); finished work was kept."""


class AnnotationError(MantaError):
    """A label, a label task or an annotation queue is invalid or unknown (names the field, the
    value and the fix); nothing was stored."""


class LLMError(MantaError):
    """An LLM judge call failed for one input (refused request, invalid answer, prompt too long).

    Raised inside a map function, it becomes that trace's error; other traces go on.
    """


class LLMBudgetExceeded(ComputationAborted):
    """The next LLM call would push spending past ``max_cost_usd``: a clean stop.

    Work finished before the stop is kept (and its answers are cached), so a new run with a
    higher cap continues where this one stopped without paying twice.
    """

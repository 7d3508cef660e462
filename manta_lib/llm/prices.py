"""Dollar cost of a call from a maintained price table (``genai-prices``), with overrides.

A private or self-hosted model is priced with an override (``price=ModelPrice(...)`` on the
judge, or ``MANTA_LLM_PRICES='{"my-model": {"input_per_mtok": 0.2, "output_per_mtok": 0.6}}'``).
A model found nowhere is *unknown*: a warning once, and its cost is ``None``, never 0.
"""

from __future__ import annotations

import functools
import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from manta_lib.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelPrice:
    """Dollars per million input and output tokens (an override for a private model)."""

    input_per_mtok: float
    output_per_mtok: float
    context_window: int | None = None

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input_per_mtok + output_tokens * self.output_per_mtok) / 1e6


@dataclass(frozen=True)
class PriceInfo:
    """Where a model's price comes from, and its context window when the table knows it."""

    model: str
    source: str  # "override" or "genai-prices:<provider>/<model id>"
    context_window: int | None


class PriceTable:
    """Looks up a model's price once and computes each call's cost.

    ``provider`` narrows the lookup (``"openai"``, ``"anthropic"``, ...); without it the table
    matches the model name across providers.
    """

    def __init__(
        self,
        overrides: dict[str, ModelPrice] | None = None,
        provider: str | None = None,
    ) -> None:
        self.overrides = dict(overrides or {})
        self.provider = provider
        self._warned: set[str] = set()
        self._info: dict[str, PriceInfo | None] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, raw: dict[str, dict[str, float]], provider: str | None) -> PriceTable:
        """Build from ``MANTA_LLM_PRICES`` (model -> input/output dollars per million tokens)."""
        overrides = {}
        for model, entry in raw.items():
            try:
                overrides[model] = ModelPrice(
                    float(entry["input_per_mtok"]),
                    float(entry["output_per_mtok"]),
                    int(entry["context_window"]) if entry.get("context_window") else None,
                )
            except (KeyError, TypeError, ValueError):
                raise ConfigError(
                    f"MANTA_LLM_PRICES entry for {model!r} is {entry!r}; it needs numeric "
                    f'"input_per_mtok" and "output_per_mtok" (dollars per million tokens)'
                ) from None
        return cls(overrides, provider)

    def info(self, model: str) -> PriceInfo | None:
        """The price source of ``model``, or None (with one warning) when it is unknown."""
        with self._lock:
            if model in self._info:
                return self._info[model]
        found = self._lookup(model)
        with self._lock:
            self._info[model] = found
            if found is None and model not in self._warned:
                self._warned.add(model)
                log.warning(
                    "no price known for model %r: its cost is reported as unknown. Pass "
                    "price=ModelPrice(input_per_mtok=..., output_per_mtok=...) to the judge or "
                    "set MANTA_LLM_PRICES to price it.",
                    model,
                )
        return found

    def known(self, model: str) -> bool:
        return self.info(model) is not None

    def cost(self, model: str, input_tokens: int, output_tokens: int) -> float | None:
        """Dollar cost of one call, or None when the model's price is unknown."""
        override = self.overrides.get(model)
        if override is not None:
            return override.cost(input_tokens, output_tokens)
        if self.info(model) is None:
            return None
        calc = self._calc(model, input_tokens, output_tokens)
        return float(calc.total_price) if calc is not None else None

    def _lookup(self, model: str) -> PriceInfo | None:
        override = self.overrides.get(model)
        if override is not None:
            return PriceInfo(model, "override", override.context_window)
        calc = self._calc(model, 1000, 1000)
        if calc is None:
            return None
        return PriceInfo(
            model,
            f"genai-prices:{calc.provider.id}/{calc.model.id}",
            getattr(calc.model, "context_window", None),
        )

    def _calc(self, model: str, input_tokens: int, output_tokens: int) -> Any:
        return table_price(model, input_tokens, output_tokens, self.provider)


def table_price(
    model: str, input_tokens: int, output_tokens: int, provider: str | None = None
) -> Any:
    """The maintained table's price calculation of one call (``genai_prices`` result: its
    ``total_price``, ``provider`` and ``model``), or None when the table has no such model.
    Quiet: the caller decides what an unknown model means."""
    from genai_prices import Usage, calc_price

    try:
        return calc_price(
            Usage(input_tokens=input_tokens, output_tokens=output_tokens),
            model_ref=model,
            provider_id=provider,
        )
    except LookupError:
        return None


def estimate_cost(model: str, input_tokens: int, output_tokens: int) -> float | None:
    """The table's dollar price of one call by model and tokens, or None for an unknown model.

    The table's model is looked up once per name (a name the table does not know is
    remembered as unknown, so its calls cost no lookup either); a flat per-token price is
    applied directly (the table's own calculation costs milliseconds a call, too slow for an
    import of many calls), anything else (tiers by prompt length) goes through the table's
    calculation.
    """
    rates = _table_rates(model)
    if rates is None:
        return None
    if rates is _NOT_FLAT:
        priced = table_price(model, input_tokens, output_tokens)
        return None if priced is None else float(priced.total_price)
    input_mtok, output_mtok = rates
    return float((input_mtok * input_tokens + output_mtok * output_tokens) / Decimal(1_000_000))


_NOT_FLAT: tuple[Decimal, Decimal] = (Decimal(-1), Decimal(-1))  # known, priced by tiers


@functools.lru_cache(maxsize=1024)
def _table_rates(model: str) -> tuple[Decimal, Decimal] | None:
    """``(input, output)`` dollars per million tokens when the model's price is flat,
    :data:`_NOT_FLAT` when the table prices it otherwise, None when the table does not know
    it (the lookup :func:`table_price` would fail on)."""
    from genai_prices import data_snapshot

    try:
        _provider, found = data_snapshot.get_snapshot().find_provider_model(model, None, None, None)
    except LookupError:
        return None
    prices = found.get_prices(datetime.now(UTC))
    rates = (prices.input_mtok, prices.output_mtok)
    if all(isinstance(rate, Decimal) for rate in rates):
        return rates[0], rates[1]  # type: ignore[return-value]
    return _NOT_FLAT

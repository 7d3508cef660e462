"""Settings of the LLM judge client: the usual ``OPENAI_*`` variables plus ``MANTA_LLM_*`` knobs."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from manta_lib.errors import ConfigError


class LLMSettings(BaseSettings):
    """Validated LLM configuration; build it with :func:`load_llm_settings` for clear errors.

    Every field can also be passed as a keyword (``LLMSettings(concurrency=4)``).
    """

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    api_key: SecretStr | None = Field(default=None, validation_alias="OPENAI_API_KEY")
    base_url: str | None = Field(default=None, validation_alias="OPENAI_BASE_URL")
    provider: str | None = Field(default=None, validation_alias="MANTA_LLM_PROVIDER")
    cache: bool = Field(default=True, validation_alias="MANTA_LLM_CACHE")
    cache_max_age_days: float | None = Field(
        default=None, gt=0, validation_alias="MANTA_LLM_CACHE_MAX_AGE_DAYS"
    )
    concurrency: int = Field(default=8, ge=1, validation_alias="MANTA_LLM_CONCURRENCY")
    max_concurrency: int = Field(default=64, ge=1, validation_alias="MANTA_LLM_MAX_CONCURRENCY")
    requests_per_minute: float | None = Field(default=None, gt=0, validation_alias="MANTA_LLM_RPM")
    tokens_per_minute: float | None = Field(default=None, gt=0, validation_alias="MANTA_LLM_TPM")
    timeout_s: float = Field(default=120.0, gt=0, validation_alias="MANTA_LLM_TIMEOUT_S")
    max_retries: int = Field(default=8, ge=0, validation_alias="MANTA_LLM_MAX_RETRIES")
    max_retry_wait_s: float = Field(
        default=300.0, ge=0, allow_inf_nan=False, validation_alias="MANTA_LLM_MAX_RETRY_WAIT_S"
    )
    # NoDecode: the validator below parses the JSON, so bad JSON names the variable
    prices: Annotated[dict[str, dict[str, float]], NoDecode] = Field(
        default_factory=dict, validation_alias="MANTA_LLM_PRICES"
    )
    flush_seconds: float = Field(default=2.0, gt=0, validation_alias="MANTA_LLM_FLUSH_SECONDS")

    @field_validator("api_key", "base_url", "provider", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("prices", mode="before")
    @classmethod
    def _parse_prices(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            try:
                return json.loads(text) if text else {}
            except ValueError as exc:
                raise ValueError(
                    f"{value[:80]!r} is not JSON ({exc}); expected e.g. "
                    '\'{"my-model": {"input_per_mtok": 0.2, "output_per_mtok": 0.6}}\''
                ) from None
        return value

    @field_validator("max_concurrency")
    @classmethod
    def _ceiling_not_below_start(cls, value: int, info: Any) -> int:
        start = info.data.get("concurrency", 1)
        if value < start:
            raise ValueError(
                f"MANTA_LLM_MAX_CONCURRENCY={value} is below MANTA_LLM_CONCURRENCY={start}; "
                f"raise the ceiling or lower the starting concurrency"
            )
        return value


def load_llm_settings(**overrides: Any) -> LLMSettings:
    """Read LLM settings from the environment, raising :class:`ConfigError` naming the variable."""
    try:
        return LLMSettings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "settings"
            alias = LLMSettings.model_fields.get(field)
            name = alias.validation_alias if alias and alias.validation_alias else field
            problems.append(f"{name}: {err['msg'].removeprefix('Value error, ')}")
        raise ConfigError("invalid LLM configuration: " + "; ".join(problems)) from None


def llm_worker_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The LLM variables set here, for a remote worker (a Modal container) to judge the same way.

    ``OPENAI_API_KEY``, ``OPENAI_BASE_URL`` and every ``MANTA_LLM_*`` variable that is set.
    """
    source = os.environ if environ is None else environ
    return {
        name: value
        for name, value in source.items()
        if value
        and (name in ("OPENAI_API_KEY", "OPENAI_BASE_URL") or name.startswith("MANTA_LLM_"))
    }

"""LLM judges at scale: structured answers, a ClickHouse response cache, adaptive rate limits,
prices, a dollar cap and cost estimates. See ``docs/llm_judges.md``."""

from manta_lib.llm.budget import Budget
from manta_lib.llm.client import JudgeAnswer, LLMJudge
from manta_lib.llm.concurrency import AdaptiveLimiter
from manta_lib.llm.estimate import Estimate, estimate
from manta_lib.llm.prices import ModelPrice, PriceTable
from manta_lib.llm.scope import LLMRunScope, is_budget_refusal
from manta_lib.llm.settings import LLMSettings, load_llm_settings
from manta_lib.llm.usage import CallAccount, LLMUsage, UsageSnapshot, call_accounting

__all__ = [
    "AdaptiveLimiter",
    "Budget",
    "CallAccount",
    "Estimate",
    "JudgeAnswer",
    "LLMJudge",
    "LLMRunScope",
    "LLMSettings",
    "LLMUsage",
    "ModelPrice",
    "PriceTable",
    "UsageSnapshot",
    "call_accounting",
    "estimate",
    "is_budget_refusal",
    "load_llm_settings",
]

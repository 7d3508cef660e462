"""``LLMJudge``: one structured LLM answer per input, cached, rate-limited, priced and capped.

Example::

    class FailureMode(BaseModel):
        category: Literal["tool_misuse", "reasoning", "gave_up", "none"]
        rationale: str

    judge = LLMJudge("gpt-4o-mini", FailureMode, system="Classify the failure mode.")
    verdict = judge(trace.conversation().to_text(max_chars=8000))   # a FailureMode

Built on the official ``openai`` client, so any OpenAI-compatible server works through
``OPENAI_BASE_URL`` (vLLM, Ollama, OpenRouter, Azure's v1 endpoint). The answer is requested
with a strict JSON schema (``response_format``) and validated by pydantic; an invalid answer
is asked again once with the validation error, then raises :class:`LLMError` (that trace's
error). The openai client's own retries are off: every retry goes through this module, so a
429 also slows every other thread (see :mod:`manta_lib.llm.concurrency`).
"""

from __future__ import annotations

import email.utils
import logging
import threading
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from manta_lib.errors import ConfigError, LLMBudgetExceeded, LLMError
from manta_lib.llm import shared
from manta_lib.llm.budget import active_budget
from manta_lib.llm.cache import ResponseCache, key_of, namespace_of
from manta_lib.llm.concurrency import AdaptiveLimiter, Permit
from manta_lib.llm.prices import ModelPrice, PriceTable
from manta_lib.llm.settings import LLMSettings, load_llm_settings
from manta_lib.llm.usage import PROCESS_USAGE, LLMUsage
from manta_lib.settings import MantaSettings
from manta_lib.store.llm_cache import CachedRow

if TYPE_CHECKING:
    import openai

log = logging.getLogger(__name__)

T = TypeVar("T", bound=BaseModel)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
_CORRECTION = (
    "Your answer did not match the required JSON schema: {error}\n"
    "Answer again with a single JSON object that matches the schema exactly."
)


@dataclass(frozen=True)
class JudgeAnswer(Generic[T]):
    """A validated answer with what it cost (``cost_usd`` None: the model has no price)."""

    value: T
    cached: bool
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    latency_ms: float


class _Retryable(Exception):
    """A transient failure (429, 5xx, timeout, connection): retried with jittered backoff."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class _Completion:
    content: str
    input_tokens: int
    output_tokens: int
    latency_ms: float
    usage_reported: bool


def retry_after_seconds(headers: Any) -> float | None:
    """Seconds to wait from ``retry-after-ms`` / ``retry-after`` (seconds or an HTTP date)."""
    if headers is None:
        return None
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None  # unreadable: the jittered backoff alone decides
    return max(0.0, parsed.timestamp() - time.time())


def _server_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
    return exc.message


def _is_context_error(exc: openai.APIStatusError) -> bool:
    body = exc.body
    code = ""
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            code = str(error.get("code") or "")
    text = (code + " " + _server_message(exc)).lower()
    return "context_length" in text or "context length" in text or "context window" in text


class LLMJudge(Generic[T]):
    """An LLM that answers with an instance of ``schema`` for each input.

    Args:
        model: model name as the server knows it (also the price-table key).
        schema: pydantic model of the answer (sent as a strict JSON schema).
        system: system prompt (part of every cache key).
        temperature, max_tokens, seed, params: sampling parameters (``params`` is passed to
            the server as is, e.g. ``{"top_p": 0.9}``); all part of the cache key.
        price: dollars per million tokens, for a model the price table does not know.
        context_window: the model's context size in tokens, if the price table does not know it.
        cache: False to skip the response cache (default: ``MANTA_LLM_CACHE``, on).
        settings: LLM settings (default: from the environment).
        manta_settings: where the cache lives (default: the store of the computation running
            the judge, else Manta's settings from the environment when first used).
    """

    # every judge of this process not yet garbage-collected (see :mod:`manta_lib.llm.registry`)
    _live: ClassVar[weakref.WeakSet[LLMJudge[Any]]] = weakref.WeakSet()
    _live_lock: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def live(cls) -> list[LLMJudge[Any]]:
        """Every judge created in this process and not yet garbage-collected."""
        with cls._live_lock:
            return list(cls._live)

    def __init__(
        self,
        model: str,
        schema: type[T],
        *,
        system: str | None = None,
        temperature: float = 0.0,
        max_tokens: int | None = None,
        seed: int | None = None,
        params: dict[str, Any] | None = None,
        price: ModelPrice | None = None,
        context_window: int | None = None,
        cache: bool | None = None,
        settings: LLMSettings | None = None,
        manta_settings: MantaSettings | None = None,
        cache_store: Any = None,
    ) -> None:
        if not (isinstance(schema, type) and issubclass(schema, BaseModel)):
            raise ConfigError(f"LLMJudge schema must be a pydantic BaseModel class, got {schema!r}")
        self.model = model
        self.schema = schema
        self.system = system
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.settings = settings or load_llm_settings()
        self.base_url = (self.settings.base_url or DEFAULT_BASE_URL).rstrip("/")
        self.prices = PriceTable.from_settings(self.settings.prices, self.settings.provider)
        if price is not None:
            self.prices.overrides[model] = price
        self._context_window = context_window
        self._json_schema = _strict_schema(schema)
        self._params: dict[str, Any] = {"temperature": temperature}
        if max_tokens is not None:
            self._params["max_tokens"] = max_tokens
        if seed is not None:
            self._params["seed"] = seed
        self._params.update(params or {})
        self.namespace = namespace_of(model, self._json_schema, self._params)
        use_cache = self.settings.cache if cache is None else cache
        self.use_cache = use_cache
        self._manta_settings = manta_settings
        self._cache_store = cache_store
        self.usage = LLMUsage(parent=PROCESS_USAGE)
        self.limiter: AdaptiveLimiter = shared.shared_limiter(self.base_url, self.settings)
        from openai import OpenAI  # deferred: importing openai takes ~0.5 s

        _quiet_http_logs()
        self._client = OpenAI(
            api_key=self._api_key(),
            base_url=self.base_url,
            max_retries=0,
            timeout=self.settings.timeout_s,
        )
        self._longest_output = 0
        with LLMJudge._live_lock:
            LLMJudge._live.add(self)

    def _api_key(self) -> str:
        if self.settings.api_key is not None:
            return self.settings.api_key.get_secret_value()
        # Local servers (vLLM, Ollama) accept any key; the real API is checked by preflight().
        return "unset"

    @property
    def cache(self) -> ResponseCache | None:
        """The response cache this judge uses now (None when caching is off)."""
        if not self.use_cache:
            return None
        return shared.shared_cache(self._manta_settings, self._cache_store, self.settings)

    @property
    def context_window(self) -> int | None:
        """The model's context size in tokens (argument, price override or price table)."""
        if self._context_window is not None:
            return self._context_window
        info = self.prices.info(self.model)
        return info.context_window if info else None

    # -- public calls ------------------------------------------------------------------------

    def __call__(self, prompt: str | list[dict[str, Any]]) -> T:
        """The validated answer for ``prompt`` (a user message, or a full list of messages)."""
        return self.complete(prompt).value

    def sample(self, prompt: str | list[dict[str, Any]], n: int) -> list[T]:
        """``n`` answers to the same prompt (temperature > 0), each cached by its index."""
        if self.temperature <= 0 and n > 1:
            raise ConfigError(
                f"sample(n={n}) at temperature={self.temperature} asks for the same answer "
                f"{n} times; create the judge with temperature > 0"
            )
        return [self.complete(prompt, sample_index=index).value for index in range(n)]

    def complete(
        self, prompt: str | list[dict[str, Any]], *, sample_index: int = 0
    ) -> JudgeAnswer[T]:
        """The answer with its tokens, cost, latency and whether it came from the cache."""
        messages = self._messages(prompt)
        key = key_of(self.namespace, messages, sample_index if self.temperature > 0 else None)
        cache = self.cache
        if cache is not None:
            row = cache.get(self.namespace, key)
            if row is not None:
                try:
                    value = self.schema.model_validate_json(row.response)
                except PydanticValidationError:
                    value = None  # written by an older schema of the same shape: ask again
                if value is not None:
                    self.usage.record_cache_hit(row.input_tokens, row.output_tokens, row.cost_usd)
                    return JudgeAnswer(
                        value,
                        True,
                        row.input_tokens,
                        row.output_tokens,
                        row.cost_usd,
                        row.latency_ms,
                    )
        self._check_context(messages)
        answer = self._ask(messages)
        if cache is not None:
            cache.put(
                self.namespace,
                key,
                self.model,
                CachedRow(
                    answer.value.model_dump_json(),
                    answer.input_tokens,
                    answer.output_tokens,
                    answer.cost_usd,
                    answer.latency_ms,
                ),
            )
        return answer

    def preflight(self) -> None:
        """Check the key and the server before any work; raises :class:`ConfigError`.

        One request (``GET /models``) with a short timeout: a missing key for the OpenAI API,
        an unreachable ``OPENAI_BASE_URL`` or a refused key each give one line saying what to set.
        """
        import openai

        if self.settings.api_key is None and self.settings.base_url is None:
            raise ConfigError(
                f"LLM judge {self.model!r}: OPENAI_API_KEY is not set. Set it, or point "
                f"OPENAI_BASE_URL at an OpenAI-compatible server that needs no key."
            )
        try:
            self._client.with_options(timeout=min(10.0, self.settings.timeout_s)).models.list()
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            raise ConfigError(
                f"LLM server {self.base_url} rejected the API key ({_server_message(exc)}); "
                f"fix OPENAI_API_KEY"
            ) from None
        except openai.APIStatusError:
            pass  # it answered: reachable (some servers have no /models)
        except openai.APIConnectionError as exc:
            cause = exc.__cause__ or exc
            raise ConfigError(
                f"cannot reach the LLM server at OPENAI_BASE_URL={self.base_url} "
                f"({type(cause).__name__}: {cause}); start it or fix OPENAI_BASE_URL"
            ) from None

    def flush(self) -> None:
        """Write buffered cache rows now."""
        cache = self.cache
        if cache is not None:
            cache.flush()

    def close(self) -> None:
        """Flush the cache and release its store connection (the judge stays usable; the
        cache is shared by the judges on the same store and reopens on next use)."""
        cache = self.cache
        if cache is not None:
            cache.close()

    def __enter__(self) -> LLMJudge[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LLMJudge(model={self.model!r}, schema={self.schema.__name__}, {self.base_url})"

    # -- internals ---------------------------------------------------------------------------

    def _messages(self, prompt: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
        if isinstance(prompt, str):
            messages: list[dict[str, Any]] = [{"role": "user", "content": prompt}]
        else:
            messages = [dict(message) for message in prompt]
        if self.system is not None:
            messages.insert(0, {"role": "system", "content": self.system})
        return messages

    @staticmethod
    def _prompt_size(messages: list[dict[str, Any]]) -> tuple[int, int]:
        """(characters, UTF-8 bytes) of the message contents."""
        text = "".join(str(m.get("content") or "") for m in messages)
        return len(text), len(text.encode())

    def _check_context(self, messages: list[dict[str, Any]]) -> None:
        window = self.context_window
        if window is None:
            return
        chars, _ = self._prompt_size(messages)
        estimated = chars // 4  # a low estimate: only clearly-too-long prompts are refused here
        if estimated > window:
            raise LLMError(
                f"prompt of {chars:,} characters (~{estimated:,} tokens) is over the "
                f"{window:,}-token context window of {self.model}; shorten it (e.g. "
                f"conversation().to_text(max_chars=...))"
            )

    def _cost_bound(self, messages: list[dict[str, Any]]) -> float:
        """An upper bound of one call's cost: every prompt byte a token, the longest answer."""
        _, size = self._prompt_size(messages)
        input_bound = size + 8 * len(messages) + 16
        output_bound = self.max_tokens or max(1024, 2 * self._longest_output)
        bound = self.prices.cost(self.model, input_bound, output_bound)
        assert bound is not None, "_ask refuses unpriced models under a budget"
        return bound

    def _ask(self, messages: list[dict[str, Any]]) -> JudgeAnswer[T]:
        budget = active_budget()
        if budget is not None and not self.prices.known(self.model):
            raise LLMBudgetExceeded(
                f"max_cost_usd is set but model {self.model!r} has no price, so the cap cannot "
                f"be enforced: pass price=ModelPrice(...) to the judge or set MANTA_LLM_PRICES"
            )
        conversation = list(messages)
        tokens_in = tokens_out = 0
        cost: float | None = 0.0
        latency = 0.0
        for attempt in (1, 2):
            bound = self._cost_bound(conversation) if budget is not None else 0.0
            if budget is not None:
                budget.reserve(bound)
            call_cost: float | None = 0.0
            answered = False
            try:
                completion = self._send(conversation)
                answered = True
                call_cost = (
                    self.prices.cost(self.model, completion.input_tokens, completion.output_tokens)
                    if completion.usage_reported
                    else None
                )
            finally:
                if budget is not None:
                    # Counted at the larger of the reported cost and the bound, so a server that
                    # under-reports cannot spend past the cap; a refused call counts 0.
                    counted = 0.0
                    if answered:
                        counted = bound if call_cost is None else max(call_cost, bound)
                    if call_cost is not None and call_cost > bound:
                        budget.flag_over_bound(self.model, call_cost, bound)
                    budget.settle(bound, counted)
            self.usage.record_call(
                completion.input_tokens, completion.output_tokens, call_cost, completion.latency_ms
            )
            self._longest_output = max(self._longest_output, completion.output_tokens)
            tokens_in += completion.input_tokens
            tokens_out += completion.output_tokens
            cost = None if cost is None or call_cost is None else cost + call_cost
            latency += completion.latency_ms
            try:
                value = self.schema.model_validate_json(completion.content)
            except PydanticValidationError as exc:
                error = _short_validation_error(exc)
                if attempt == 2:
                    self.usage.record_failure()
                    raise LLMError(
                        f"{self.model} answered twice without matching {self.schema.__name__} "
                        f"({error}); last answer: {completion.content[:200]!r}"
                    ) from None
                self.usage.record_retry()
                conversation = [
                    *conversation,
                    {"role": "assistant", "content": completion.content},
                    {"role": "user", "content": _CORRECTION.format(error=error)},
                ]
                continue
            return JudgeAnswer(value, False, tokens_in, tokens_out, cost, latency)
        raise AssertionError("unreachable")

    def _send(self, messages: list[dict[str, Any]]) -> _Completion:
        """One completion, retried on 429/5xx/timeouts/connection errors with jittered backoff."""
        _, size = self._prompt_size(messages)
        estimated_tokens = size / 4 + (self.max_tokens or 256)
        retrying = Retrying(
            retry=retry_if_exception_type(_Retryable),
            wait=wait_random_exponential(multiplier=0.25, max=20),
            stop=stop_after_attempt(self.settings.max_retries + 1),
            before_sleep=self._before_sleep,
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    return self._send_once(messages, estimated_tokens)
        except _Retryable as exc:
            self.usage.record_failure()
            raise LLMError(
                f"{self.model} at {self.base_url} failed {self.settings.max_retries + 1} times; "
                f"last: {exc.reason}. Lower MANTA_LLM_CONCURRENCY or set MANTA_LLM_RPM, or "
                f"raise MANTA_LLM_MAX_RETRIES"
            ) from None
        raise AssertionError("unreachable")

    def _before_sleep(self, state: RetryCallState) -> None:
        self.usage.record_retry()
        if state.outcome is not None and state.attempt_number >= 3:
            log.info("LLM call retry %d: %s", state.attempt_number, state.outcome.exception())

    def _send_once(self, messages: list[dict[str, Any]], estimated_tokens: float) -> _Completion:
        import openai

        request: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": self.schema.__name__,
                    "schema": self._json_schema,
                    "strict": True,
                },
            },
            **self._params,
        }
        with self.limiter.slot(estimated_tokens) as permit:
            started = time.perf_counter()
            try:
                raw = self._client.chat.completions.with_raw_response.create(**request)
                response = raw.parse()
            except openai.RateLimitError as exc:
                self.usage.record_rate_limited()
                self.limiter.learn_limits(exc.response.headers)
                retry_after = retry_after_seconds(exc.response.headers)
                cap = self.settings.max_retry_wait_s
                if retry_after is not None and retry_after > cap:
                    # Waiting that long would stall every thread: pause at most the cap, and
                    # fail this call with the server's reason.
                    self._overloaded(permit, cap)
                    self.usage.record_failure()
                    raise LLMError(
                        f"{self.model} at {self.base_url} answered HTTP 429 asking to wait "
                        f"{retry_after:,.0f} s (Retry-After), more than "
                        f"MANTA_LLM_MAX_RETRY_WAIT_S={cap:g} s: {_server_message(exc)}. Run "
                        f"again later (finished traces are kept) or raise the setting"
                    ) from None
                self._overloaded(permit, retry_after)
                raise _Retryable(f"HTTP 429: {_server_message(exc)}") from None
            except openai.APITimeoutError:
                self._overloaded(permit, None)
                raise _Retryable(f"no answer within {self.settings.timeout_s:g} s") from None
            except openai.APIConnectionError as exc:
                raise _Retryable(f"connection error: {exc.__cause__ or exc}") from None
            except openai.APIStatusError as exc:
                if exc.status_code >= 500:
                    raise _Retryable(f"HTTP {exc.status_code}: {_server_message(exc)}") from None
                self.usage.record_failure()
                raise self._refused(exc, messages) from None
            latency_ms = (time.perf_counter() - started) * 1000
        if not hasattr(response, "choices"):
            # A proxy's or gateway's page (HTML, plain text) with a 2xx status
            self.usage.record_failure()
            raise LLMError(
                f"{self.model} at {self.base_url} answered HTTP {raw.status_code} "
                f"({raw.headers.get('content-type') or 'no content type'}) with something "
                f"that is not a chat completion: {_excerpt(raw.text)}. Check OPENAI_BASE_URL "
                f"(it should end in /v1) and any proxy in between"
            )
        self.limiter.learn_limits(raw.headers)
        usage = response.usage
        tokens_in = usage.prompt_tokens if usage else 0
        tokens_out = usage.completion_tokens if usage else 0
        self.limiter.on_success(
            permit, tokens_in + tokens_out if usage else None, latency_s=latency_ms / 1000
        )
        if not response.choices:
            raise LLMError(f"{self.model} returned no choices")
        message = response.choices[0].message
        if getattr(message, "refusal", None):
            self.usage.record_failure()
            raise LLMError(f"{self.model} refused to answer: {message.refusal}")
        return _Completion(
            message.content or "", tokens_in, tokens_out, latency_ms, usage is not None
        )

    def _overloaded(self, permit: Permit, retry_after: float | None) -> None:
        self.limiter.on_overload(permit, retry_after)

    def _refused(self, exc: openai.APIStatusError, messages: list[dict[str, Any]]) -> LLMError:
        if _is_context_error(exc):
            chars, _ = self._prompt_size(messages)
            return LLMError(
                f"prompt of {chars:,} characters is over the context window of {self.model} "
                f"(server: {_server_message(exc)}); shorten it (e.g. "
                f"conversation().to_text(max_chars=...))"
            )
        return LLMError(
            f"{self.model} at {self.base_url} refused the request with HTTP {exc.status_code}: "
            f"{_server_message(exc)}"
        )


def _excerpt(text: str, limit: int = 200) -> str:
    """The start of a server's body, one line, for an error message."""
    flat = " ".join(text.split())
    return repr(flat[:limit] + ("..." if len(flat) > limit else ""))


def _quiet_http_logs() -> None:
    """httpx logs every request at INFO: 100k lines for a judge run. Keep them at WARNING
    unless the application configured that logger itself."""
    for name in ("httpx", "httpx2"):  # openai 3 ships on httpx2
        http_log = logging.getLogger(name)
        if http_log.level == logging.NOTSET:
            http_log.setLevel(logging.WARNING)


def _strict_schema(schema: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema in OpenAI's strict form (every field required, no extra properties)."""
    from openai.lib._pydantic import to_strict_json_schema

    return to_strict_json_schema(schema)


def _short_validation_error(exc: PydanticValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(part) for part in err["loc"]) or "answer"
        parts.append(f"{where}: {err['msg']}")
    more = exc.error_count() - 3
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")

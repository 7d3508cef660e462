"""Settings from the environment (the documented variables plus a few ``MANTA_*`` ones).

``CLICKHOUSE_URL`` unset means the embedded chDB engine under ``MANTA_DATA_DIR``, which
defaults to the per-user data directory (``~/.local/share/manta`` on Linux, from
platformdirs), so every process of a user finds the same store whatever its working directory.
"""

from __future__ import annotations

import ipaddress
import logging
from functools import cached_property
from pathlib import Path
from urllib.parse import urlparse

import platformdirs
from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from manta_lib.errors import ConfigError

log = logging.getLogger(__name__)

_MAX_DATABASE_CHARS = 64
_URL_HELP = (
    "set CLICKHOUSE_URL to http(s)://host:port (a ClickHouse server) or chdb:///absolute/path "
    "(embedded), or unset it to use the embedded default under MANTA_DATA_DIR"
)


class MantaSettings(BaseSettings):
    """Validated configuration. Build it with :func:`load_settings` to get friendly errors."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    clickhouse_url: str | None = Field(default=None, validation_alias="CLICKHOUSE_URL")
    clickhouse_user: str = Field(default="default", validation_alias="CLICKHOUSE_USER")
    clickhouse_password: SecretStr = Field(
        default=SecretStr(""), validation_alias="CLICKHOUSE_PASSWORD"
    )
    kestrel_api_url: str | None = Field(default=None, validation_alias="KESTREL_API_URL")
    kestrel_api_key: SecretStr | None = Field(default=None, validation_alias="KESTREL_API_KEY")
    modal_token_id: str | None = Field(default=None, validation_alias="MODAL_TOKEN_ID")
    modal_token_secret: SecretStr | None = Field(
        default=None, validation_alias="MODAL_TOKEN_SECRET"
    )
    data_dir: Path = Field(
        default_factory=lambda: default_data_dir(),
        validation_alias=AliasChoices("MANTA_DATA_DIR", "data_dir"),
    )
    database: str = Field(
        default="manta", validation_alias=AliasChoices("MANTA_DATABASE", "database")
    )
    runs_log_dir_override: Path | None = Field(default=None, validation_alias="MANTA_RUNS_LOG_DIR")
    connect_timeout_s: float = Field(
        default=10.0, gt=0, allow_inf_nan=False, validation_alias="MANTA_CONNECT_TIMEOUT_S"
    )
    query_timeout_s: float = Field(
        default=300.0, gt=0, allow_inf_nan=False, validation_alias="MANTA_QUERY_TIMEOUT_S"
    )
    lock_timeout_s: float = Field(
        default=30.0, ge=0, allow_inf_nan=False, validation_alias="MANTA_LOCK_TIMEOUT_S"
    )
    flush_seconds: float = Field(
        default=2.0, gt=0, allow_inf_nan=False, validation_alias="MANTA_FLUSH_SECONDS"
    )
    import_max_record_mb: float = Field(
        default=256.0, gt=0, allow_inf_nan=False, validation_alias="MANTA_IMPORT_MAX_RECORD_MB"
    )
    # where a rollout shipper sends its spool when another process holds the store
    collector_url: str | None = Field(default=None, validation_alias="MANTA_COLLECTOR_URL")
    collector_token: SecretStr | None = Field(
        default=None, validation_alias="MANTA_COLLECTOR_TOKEN"
    )
    explorer_token: SecretStr | None = Field(default=None, validation_alias="MANTA_EXPLORER_TOKEN")
    """One token for every explorer user (each then gives a name to annotate)."""
    explorer_tokens_file: Path | None = Field(
        default=None, validation_alias="MANTA_EXPLORER_TOKENS_FILE"
    )
    """A JSON object mapping each token to the annotator name it stands for."""
    #: Each of the embedded engine's caches (marks, primary index, index marks, query
    #: conditions), in MB: ClickHouse's defaults (5 GB each) are sized for a server.
    chdb_cache_mb: float = Field(
        default=64.0, ge=0, allow_inf_nan=False, validation_alias="MANTA_CHDB_CACHE_MB"
    )
    #: The embedded engine's cache of search index blocks, in MB: a text search over a store
    #: whose spans' n-gram index fits reads it from memory instead of decompressing it again.
    #: Filled only by searches.
    chdb_index_cache_mb: float = Field(
        default=256.0, ge=0, allow_inf_nan=False, validation_alias="MANTA_CHDB_INDEX_CACHE_MB"
    )
    #: The embedded engine's memory limit in MB (a query past it fails with a clear error);
    #: unset: ClickHouse's default, 90% of the machine's memory.
    chdb_max_memory_mb: float | None = Field(
        default=None, gt=0, allow_inf_nan=False, validation_alias="MANTA_CHDB_MAX_MEMORY_MB"
    )

    @field_validator("data_dir", "runs_log_dir_override")
    @classmethod
    def _check_directory(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        path = value.expanduser()
        for candidate in (path, *path.parents):
            if candidate.exists():
                if not candidate.is_dir():
                    raise ValueError(
                        f"{candidate} is a file, not a directory; point it at a directory "
                        f"(created if missing)"
                    )
                break
        return path

    @field_validator(
        "clickhouse_url",
        "kestrel_api_url",
        "collector_url",
        "explorer_token",
        "explorer_tokens_file",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("clickhouse_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parsed = urlparse(value)
        if parsed.scheme == "chdb":
            if parsed.netloc or not parsed.path.startswith("/"):
                raise ValueError(f"chdb URL needs an absolute path, got {value!r}; {_URL_HELP}")
            path = Path(parsed.path)
            if path.exists() and not path.is_dir():
                raise ValueError(
                    f"{path} is a file, not a directory: the embedded store is a directory "
                    f"(created if missing); {_URL_HELP}"
                )
            return value
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"{value!r} is not an http(s):// or chdb:/// URL; {_URL_HELP}")
        try:
            parsed.port  # noqa: B018 - raises on a non-numeric port
        except ValueError as exc:
            raise ValueError(f"{value!r} has an invalid port ({exc}); {_URL_HELP}") from exc
        return value

    @field_validator("collector_url")
    @classmethod
    def _check_collector_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parsed = urlparse(value)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(
                f"{value!r} is not an http(s):// URL; set it to the address `manta collect` "
                "serves, e.g. http://127.0.0.1:4318"
            )
        return value

    @field_validator("database")
    @classmethod
    def _check_database(cls, value: str) -> str:
        if not value.replace("_", "").isalnum():
            raise ValueError(
                f"MANTA_DATABASE={value!r} must contain only letters, digits and underscores"
            )
        if len(value) > _MAX_DATABASE_CHARS:
            # the store names files after the database; longer names overflow a file name
            raise ValueError(
                f"MANTA_DATABASE is {len(value)} characters long; use at most {_MAX_DATABASE_CHARS}"
            )
        return value

    @property
    def embedded(self) -> bool:
        """True when ClickHouse is the in-process chDB engine."""
        return self.clickhouse_url is None or self.clickhouse_url.startswith("chdb:")

    @cached_property
    def chdb_path(self) -> Path:
        """Directory of the embedded chDB store (only meaningful when :attr:`embedded`)."""
        if self.clickhouse_url:
            return Path(urlparse(self.clickhouse_url).path)
        return (self.data_dir / "clickhouse").resolve()

    @property
    def clickhouse_dsn(self) -> str:
        """The DSN handed to ``clickhouse_connect.get_client``."""
        if self.embedded:
            return f"chdb://{self.chdb_path}"
        assert self.clickhouse_url is not None
        return self.clickhouse_url

    @property
    def runs_log_dir(self) -> Path:
        """Directory of the JSONL runs log shards (``MANTA_RUNS_LOG_DIR``)."""
        return self.runs_log_dir_override or (self.data_dir / "runs_log")


def default_data_dir() -> Path:
    """The per-user data directory (``$XDG_DATA_HOME/manta``, else ``~/.local/share/manta``
    on Linux): the same for every process of the user, whatever its working directory."""
    return platformdirs.user_data_path("manta", appauthor=False)


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def log_level(value: str | None) -> int:
    """The logging level named by ``MANTA_LOG_LEVEL`` (default INFO), or :class:`ConfigError`."""
    name = (value or "INFO").strip().upper()
    if name not in LOG_LEVELS:
        raise ConfigError(
            f"MANTA_LOG_LEVEL={value!r} is not a log level; use one of {', '.join(LOG_LEVELS)}"
        )
    return int(getattr(logging, name))


def load_settings(**overrides: object) -> MantaSettings:
    """Read settings from the environment, raising :class:`ConfigError` with the variable name."""
    try:
        return MantaSettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = str(err["loc"][0]) if err["loc"] else "settings"
            env_name = _ENV_NAMES.get(name, name)
            given = err.get("input")
            msg = err["msg"].removeprefix("Value error, ")
            shown = f"={given!r}" if isinstance(given, str) and repr(given) not in msg else ""
            problems.append(f"{env_name}{shown}: {msg}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None


_ENV_NAMES = {
    "clickhouse_url": "CLICKHOUSE_URL",
    "CLICKHOUSE_URL": "CLICKHOUSE_URL",
    "database": "MANTA_DATABASE",
    "MANTA_DATABASE": "MANTA_DATABASE",
    "data_dir": "MANTA_DATA_DIR",
    "MANTA_DATA_DIR": "MANTA_DATA_DIR",
    "MANTA_CONNECT_TIMEOUT_S": "MANTA_CONNECT_TIMEOUT_S",
    "connect_timeout_s": "MANTA_CONNECT_TIMEOUT_S",
    "MANTA_QUERY_TIMEOUT_S": "MANTA_QUERY_TIMEOUT_S",
    "query_timeout_s": "MANTA_QUERY_TIMEOUT_S",
    "MANTA_LOCK_TIMEOUT_S": "MANTA_LOCK_TIMEOUT_S",
    "lock_timeout_s": "MANTA_LOCK_TIMEOUT_S",
    "MANTA_FLUSH_SECONDS": "MANTA_FLUSH_SECONDS",
    "flush_seconds": "MANTA_FLUSH_SECONDS",
    "MANTA_IMPORT_MAX_RECORD_MB": "MANTA_IMPORT_MAX_RECORD_MB",
    "import_max_record_mb": "MANTA_IMPORT_MAX_RECORD_MB",
    "MANTA_RUNS_LOG_DIR": "MANTA_RUNS_LOG_DIR",
    "MANTA_CHDB_CACHE_MB": "MANTA_CHDB_CACHE_MB",
    "chdb_cache_mb": "MANTA_CHDB_CACHE_MB",
    "MANTA_CHDB_INDEX_CACHE_MB": "MANTA_CHDB_INDEX_CACHE_MB",
    "chdb_index_cache_mb": "MANTA_CHDB_INDEX_CACHE_MB",
    "MANTA_CHDB_MAX_MEMORY_MB": "MANTA_CHDB_MAX_MEMORY_MB",
    "chdb_max_memory_mb": "MANTA_CHDB_MAX_MEMORY_MB",
    "runs_log_dir_override": "MANTA_RUNS_LOG_DIR",
    "MANTA_COLLECTOR_URL": "MANTA_COLLECTOR_URL",
    "collector_url": "MANTA_COLLECTOR_URL",
    "explorer_token": "MANTA_EXPLORER_TOKEN",
    "explorer_tokens_file": "MANTA_EXPLORER_TOKENS_FILE",
}


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (a name or an address to listen on) is this machine's loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

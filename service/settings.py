"""The one settings object for every `clickstream` command and the service.

Values come from `CLICKSTREAM_*` environment variables, then from an optional TOML file named by
`CLICKSTREAM_CONFIG` (or `--config`), then from the defaults below. The AWS endpoint, region and
credentials are deliberately not here: botocore reads `AWS_ENDPOINT_URL`,
`AWS_ENDPOINT_URL_<SERVICE>`, `AWS_REGION` and the credential chain itself, so production (ECS
task role) and the local stack are configured the same way.

Bad values are reported with the variable's name and the offending value, never a traceback:
operators set these in task definitions and unit files, where a stack trace helps nobody.
"""

from __future__ import annotations

import os
import re
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

if TYPE_CHECKING:
    from consumers.pages import SiteRules

ENV_PREFIX = "CLICKSTREAM_"
CONFIG_ENV = "CLICKSTREAM_CONFIG"

_STREAM_NAME = re.compile(r"^[a-zA-Z0-9_.-]{1,128}$")
_TABLE_NAME = re.compile(r"^[a-zA-Z0-9_.-]{3,255}$")
_BUCKET_NAME = re.compile(r"^(?!xn--)(?!.*\.\.)[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")

# The TOML file for the settings being built; set only inside `load_settings`, so a `--config`
# option never leaks into the process environment.
_config_file: ContextVar[Path | None] = ContextVar("clickstream_config_file", default=None)


def default_state_dir() -> Path:
    """XDG state home: checkpoints must survive a reboot, so never /tmp or /run."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "clickstream"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "clickstream"


class SettingsError(Exception):
    """Configuration that cannot be used; the message names each variable and what is wrong."""


class Settings(BaseSettings):
    """Everything an operator can set. Field `foo_bar` is read from `CLICKSTREAM_FOO_BAR`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        validate_default=True,
        frozen=True,
    )

    # Resources (DESIGN.md §9).
    stream: str = Field("cafe-clickstream", description="Kinesis data stream name")
    bucket: str = Field("cafe-clickstream-archive", description="S3 archive bucket")
    lease_table: str = Field("cafe-clickstream-leases", description="DynamoDB lease table (KCL)")
    shards: int = Field(2, ge=1, le=10_000, description="shard count when setup creates the stream")
    dashboard: str = Field("cafe-clickstream", description="CloudWatch dashboard name")
    metrics_namespace: str = Field("Clickstream", min_length=1, max_length=255)

    # Local files.
    state_dir: Path = Field(default_factory=default_state_dir)
    cache_dir: Path = Field(default_factory=default_cache_dir)
    geoip_db: Path | None = Field(
        None, description="MaxMind/DB-IP City .mmdb; the embedded database when unset"
    )

    # Logging.
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"

    # Agent (`clickstream agent`, on the web server; see agent/config.py for what each one does).
    agent_metrics_port: int = Field(
        9108, ge=0, le=65535, description="Prometheus /metrics and /healthz on 127.0.0.1 (0: any)"
    )
    agent_linger_ms: int = Field(
        250,
        ge=0,
        le=60_000,
        description="how long a shard's first waiting line may wait to be sent",
    )
    max_line_bytes: int = Field(
        64 * 1024, ge=64, le=1024 * 1024, description="longer lines are truncated or rejected"
    )
    oversize_policy: Literal["truncate", "reject"] = "truncate"
    aggregate: bool = Field(True, description="pack lines into KPL aggregated records")
    stall_seconds: float = Field(
        60.0,
        gt=0,
        le=86_400,
        description="no acknowledgement this long with lines waiting: unhealthy",
    )
    max_in_flight_bytes: int = Field(
        16 * 1024 * 1024,
        ge=256 * 1024,
        le=1024 * 1024 * 1024,
        description="bytes read but not yet acknowledged before reading pauses",
    )

    # Consumer (`clickstream consume` and the service's worker; see consumers/scheduler.py).
    worker_id: str | None = Field(
        None,
        max_length=200,
        description="lease owner name, unique per live worker; when unset, one kept in the "
        "state directory per running process slot (a restart resumes its leases at once)",
    )
    poll_seconds: float = Field(
        0.5, ge=0, le=60, description="wait between GetRecords calls at the tip of a shard"
    )
    flush_seconds: float = Field(
        10.0, gt=0, le=3600, description="commit a shard at least this often while it has data"
    )
    flush_records: int = Field(
        50_000, ge=1, le=10_000_000, description="commit a shard after this many records"
    )
    metrics_interval_seconds: float = Field(
        60.0, gt=0, le=3600, description="CloudWatch PutMetricData cycle"
    )
    top_cities: int = Field(
        20, ge=1, le=100_000, description="cities with their own CloudWatch series; others: Other"
    )
    failover_seconds: float = Field(
        10.0,
        ge=1,
        le=600,
        description="lease failover time: a silent worker's shards are taken after this",
    )
    fleet_refresh_seconds: float = Field(
        5.0, gt=0, le=600, description="re-read other workers' shard snapshots for the summary"
    )
    archive_ip_mode: Literal["full", "truncated", "hashed"] = "full"
    archive_ip_key: str | None = Field(
        None, description="secret for archive_ip_mode=hashed (at least 16 characters)"
    )
    trusted_proxies: str = Field(
        "", description="comma-separated CIDRs of balancers whose X-Forwarded-For is believed"
    )
    archive_prefix: str = Field("", max_length=200, description="key prefix of the S3 archive")
    site: dict[str, Any] = Field(
        default_factory=dict,
        description="the café site's page patterns and counting rules (consumers.pages.SiteRules"
        " fields: home, menu, order, static_prefixes, ...); a [site] table in the TOML file, or"
        " JSON in CLICKSTREAM_SITE; unset fields keep the defaults",
    )

    # Service (`clickstream serve`: the FastAPI app running the consumer; see service/app.py).
    serve_host: str = Field("127.0.0.1", min_length=1, description="address uvicorn listens on")
    serve_port: int = Field(8000, ge=0, le=65535, description="port of the service (0: any free)")
    ready_fetch_seconds: float = Field(
        30.0, gt=0, le=3600, description="/readyz fails when a held shard was not read this long"
    )
    ready_sink_seconds: float = Field(
        120.0, gt=0, le=86_400, description="/readyz fails when a sink has failed this long"
    )
    push_seconds: float = Field(
        2.0, gt=0, le=300, description="how often /api/stream pushes the summary"
    )

    @field_validator("archive_ip_key")
    @classmethod
    def _ip_key_length(cls, value: str | None) -> str | None:
        if value is not None and len(value.encode()) < 16:
            raise ValueError("must be at least 16 characters")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies_are_networks(cls, value: str) -> str:
        import ipaddress

        for part in (p.strip() for p in value.split(",")):
            if part:
                try:
                    ipaddress.ip_network(part, strict=False)
                except ValueError:
                    raise ValueError(f"{part!r} is not an address or CIDR network") from None
        return value

    @field_validator("site")
    @classmethod
    def _site_rules(cls, value: dict[str, Any]) -> dict[str, Any]:
        from consumers.pages import SiteRules

        try:
            SiteRules.from_mapping(value)
        except (TypeError, ValueError) as error:
            raise ValueError(f"is not valid: {error}") from None
        return value

    @property
    def site_rules(self) -> SiteRules:
        """The validated `site` table as the consumer's rules."""
        from consumers.pages import SiteRules

        return SiteRules.from_mapping(self.site)

    @field_validator("oversize_policy", mode="before")
    @classmethod
    def _lower_policy(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("stream")
    @classmethod
    def _stream_name(cls, value: str) -> str:
        if not _STREAM_NAME.match(value):
            raise ValueError("must be 1-128 characters of letters, digits, '_', '.', '-'")
        return value

    @field_validator("lease_table")
    @classmethod
    def _table_name(cls, value: str) -> str:
        if not _TABLE_NAME.match(value):
            raise ValueError("must be 3-255 characters of letters, digits, '_', '.', '-'")
        return value

    @field_validator("bucket")
    @classmethod
    def _bucket_name(cls, value: str) -> str:
        if not _BUCKET_NAME.match(value):
            raise ValueError(
                "must be a valid S3 bucket name: 3-63 lowercase letters, digits, '.', '-'"
            )
        return value

    @field_validator("geoip_db")
    @classmethod
    def _geoip_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError("is not a readable file")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _config_file.get()
        if config_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings, turning every validation problem into one readable `SettingsError`."""
    path = config_file or (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None)
    if path is not None and not path.is_file():
        raise SettingsError(f"{CONFIG_ENV} names '{path}', which is not a readable file")
    unknown = sorted(
        name
        for name in os.environ
        if name.startswith(ENV_PREFIX)
        and name != CONFIG_ENV
        and name[len(ENV_PREFIX) :].lower() not in Settings.model_fields
    )
    if unknown:
        raise SettingsError("\n".join(f"{name} is not a known setting" for name in unknown))
    token = _config_file.set(path)
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise SettingsError(describe_errors(exc)) from None
    except (OSError, ValueError) as exc:  # a TOML file that does not parse
        raise SettingsError(f"cannot read {CONFIG_ENV} file '{path}': {exc}") from None
    finally:
        _config_file.reset(token)


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def describe_errors(exc: ValidationError) -> str:
    """One line per problem: 'CLICKSTREAM_SHARDS must be >= 1, got 0'."""
    lines = []
    for error in exc.errors(include_url=False):
        loc = error.get("loc") or ("?",)
        name = env_name(str(loc[0]))
        got = error.get("input")
        lines.append(f"{name} {_phrase(error)}, got {got!r}")
    return "\n".join(lines)


def _phrase(error: Any) -> str:
    kind = error.get("type", "")
    ctx = error.get("ctx") or {}
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<"}
    bounds["less_than_equal"] = "<="
    if kind in bounds:
        limit = next(iter(ctx.values()), "?")
        return f"must be {bounds[kind]} {limit}"
    if kind == "extra_forbidden":
        return "is not a known setting"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '?')}"
    if kind in {"int_parsing", "int_from_float", "int_type"}:
        return "must be a whole number"
    if kind in {"float_parsing", "float_type"}:
        return "must be a number"
    if kind in {"bool_parsing", "bool_type"}:
        return "must be true or false"
    if kind in {"string_too_short", "string_too_long"}:
        return error.get("msg", "has the wrong length").lower().replace("string should", "must")
    if kind == "value_error":
        return str(ctx.get("error", error.get("msg", "is invalid")))
    return error.get("msg", "is invalid")

"""Daemon configuration: one YAML file, every key overridable by a ``FEDSILO_*`` variable.

A key's variable is its dotted path upper-cased with dots as underscores: ``database.url`` is
``FEDSILO_DATABASE_URL``. Bad configuration fails at start with the key and the reason.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, TypeVar

import yaml

from fedsilo.errors import FedsiloError

__all__ = [
    "AcceptSection",
    "ConfigError",
    "CoordinatorConfig",
    "ParticipantConfig",
    "TlsSection",
    "env_name",
    "format_duration",
    "load_config",
    "parse_duration",
]

T = TypeVar("T")


class ConfigError(FedsiloError, ValueError):
    """A configuration key is missing, unknown or has an invalid value."""


@dataclass(frozen=True)
class TlsSection:
    """Mutual TLS files. ``insecure: true`` is accepted only on loopback addresses."""

    ca_cert: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    insecure: bool = False


@dataclass(frozen=True)
class DatabaseSection:
    """SQLAlchemy URL; empty means a SQLite file in the data directory.

    ``auto_migrate`` upgrades an older schema when the coordinator starts, as ``fedsilo
    coordinator migrate`` would; without it such a database is refused.
    """

    url: str = ""
    auto_migrate: bool = False


@dataclass(frozen=True)
class LimitsSection:
    max_payload_bytes: int = 1 << 30
    liveness_seconds: float = 30.0
    max_workers: int = 32
    max_concurrent_rpcs: int = 256
    max_calls_per_org: int = 16
    reserved_workers: int = 0
    """Worker threads participant calls can never take (health checks, the admin API); 0: a
    quarter of ``max_workers``, at least one."""
    stream_idle_seconds: float = 30.0
    """A request stream (an upload) that brings no message for this long is cancelled."""
    spool_bytes_per_org: int = 0
    """Disk one organization's uploads in flight may hold in the spool; 0: twice
    ``max_payload_bytes``. An upload that does not fit is refused before it is read."""
    spool_bytes_total: int = 0
    """Disk all organizations' uploads in flight may hold in the spool; 0: eight times
    ``max_payload_bytes`` (at least ``spool_bytes_per_org``)."""

    def spool_org_budget(self) -> int:
        """``spool_bytes_per_org`` resolved."""
        return self.spool_bytes_per_org or 2 * self.max_payload_bytes

    def spool_total_budget(self) -> int:
        """``spool_bytes_total`` resolved."""
        return self.spool_bytes_total or max(8 * self.max_payload_bytes, self.spool_org_budget())

    def reserved(self) -> int:
        """The worker threads kept from participant calls (``reserved_workers`` resolved)."""
        if self.reserved_workers:
            return self.reserved_workers
        return min(max(1, self.max_workers // 4), self.max_workers - 1)


@dataclass(frozen=True)
class CoordinatorConfig:
    """``fedsilo coordinator serve`` settings."""

    listen: str = "127.0.0.1:50051"
    data_dir: Path = Path("fedsilo-data")
    database: DatabaseSection = field(default_factory=DatabaseSection)
    tls: TlsSection = field(default_factory=TlsSection)
    limits: LimitsSection = field(default_factory=LimitsSection)
    auto_approve: bool = False
    tick_seconds: float = 0.5
    grace_seconds: float = 10.0
    log_level: str = "INFO"
    health_listen: str = ""
    """``host:port`` of a plaintext listener serving only the health service (kubelet probes)."""
    log_format: str = "text"
    metrics_listen: str = ""
    tensorboard_dir: Path | None = None
    """Where to write TensorBoard event files, one run per job (docs/metrics.md); unset: none."""

    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{(self.data_dir / 'coordinator.db').resolve()}"


@dataclass(frozen=True)
class BackoffSection:
    initial_seconds: float = 0.5
    max_seconds: float = 30.0


@dataclass(frozen=True)
class AcceptSection:
    """What the organization accepts of any job, whatever the coordinator asks (ranges inclusive).

    ``min_threshold_fraction`` (``"2/3"`` or a number, in (1/2, 1]) and ``min_cohort`` (>= 2)
    bound every secure round: a round with ``t < ceil(fraction * n)`` or ``n < min_cohort`` is
    refused at KEYS. ``min_paillier_key_bits`` (>= 2048) bounds the key of every paillier job:
    a key ceremony for a smaller key is refused. The ``[min, max]`` ranges bound the training
    settings of every round. ``max_membership_age`` (a duration such as ``30d``, positive, at
    most ``3650d``) is how old the CA's membership list may be for a secure round step or key
    ceremony step to be answered (fedsilo/membership.py).
    """

    min_threshold_fraction: str = "2/3"
    min_cohort: int = 3
    min_paillier_key_bits: int = 2048
    learning_rate: tuple[float, float] = (1e-6, 1.0)
    local_epochs: tuple[int, int] = (1, 100)
    batch_size: tuple[int, int] = (1, 4096)
    # A month: the CA re-signs the list monthly, and a coordinator withholding a newer one keeps
    # an organization on the old one for a month at most (docs/configuration.md).
    max_membership_age: str = "30d"

    def threshold_fraction(self) -> Fraction:
        """``min_threshold_fraction`` as an exact fraction (validated at load)."""
        return Fraction(self.min_threshold_fraction)

    def membership_max_age(self) -> dt.timedelta:
        """``max_membership_age`` as a duration (validated at load)."""
        return parse_duration(self.max_membership_age)


@dataclass(frozen=True)
class ParticipantConfig:
    """``fedsilo participant run`` settings."""

    coordinator: str = "localhost:50051"
    state_dir: Path = Path("fedsilo-participant")
    tls: TlsSection = field(default_factory=TlsSection)
    tasks: dict[str, str] = field(default_factory=dict)
    task_config: dict[str, Any] = field(default_factory=dict)
    poll_seconds: float = 20.0
    rpc_timeout_seconds: float = 120.0
    backoff: BackoffSection = field(default_factory=BackoffSection)
    accept: AcceptSection = field(default_factory=AcceptSection)
    # No secure round or key-ceremony step until a membership list signed by the consortium CA
    # has arrived (docs/configuration.md); false checks peers against the CA only.
    require_membership_list: bool = True
    log_level: str = "INFO"
    log_format: str = "text"
    # host:port of a plaintext Prometheus /metrics endpoint of the daemon; empty: off.
    metrics_listen: str = ""


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")
_DURATION = re.compile(r"(?:\s*\d+(?:\.\d+)?\s*[smhd])+\s*\Z")
_DURATION_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
# Beyond ten years an age limit limits nothing (the demo CA's own certificate expires first).
_MAX_MEMBERSHIP_AGE = dt.timedelta(days=3650)


def parse_duration(text: str) -> dt.timedelta:
    """A duration written as numbers with units: ``30d``, ``12h``, ``1.5h``, ``31d 2h 5m 45s``.

    ValueError otherwise; a bare number is refused, so that no one means days and gets seconds.
    """
    lowered = text.lower()
    if _DURATION.match(lowered) is None:
        raise ValueError(f"{text!r} is not a duration like 30d, 12h, 90m or 45s")
    seconds = sum(
        float(number) * _DURATION_UNITS[unit] for number, unit in _DURATION_PART.findall(lowered)
    )
    try:
        return dt.timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError(f"{text!r} is too long a duration") from None


def format_duration(duration: dt.timedelta) -> str:
    """A duration as ``parse_duration`` reads it, to the second: ``30d``, ``31d 2h 5m``."""
    seconds = round(duration.total_seconds())
    if seconds < 0:
        return "-" + format_duration(-duration)
    parts = []
    for unit, size in _DURATION_UNITS.items():
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return " ".join(parts) or "0s"


def env_name(path: str) -> str:
    return "FEDSILO_" + path.upper().replace(".", "_")


def load_config(cls: type[T], path: Path | None, environ: Mapping[str, str] | None = None) -> T:
    """Read YAML (if given), apply FEDSILO_* overrides, and build a validated ``cls``."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from exc
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of keys to values")
        raw = loaded
        base_dir = path.resolve().parent
    else:
        base_dir = Path.cwd()
    result = _build(cls, raw, "", os.environ if environ is None else environ, base_dir)
    _validate(result)
    return result


def _build(
    cls: type[T], raw: Mapping[str, Any], prefix: str, env: Mapping[str, str], base: Path
) -> T:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(raw) - names
    if unknown:
        key = prefix + sorted(str(k) for k in unknown)[0]
        raise ConfigError(f"{key}: unknown configuration key")
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        key = prefix + f.name
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            section = raw.get(f.name, {})
            if not isinstance(section, Mapping):
                raise ConfigError(f"{key}: must be a mapping")
            values[f.name] = _build(hint, section, key + ".", env, base)  # type: ignore[arg-type]
            continue
        variable = env_name(key)
        if variable in env:
            values[f.name] = _coerce(hint, env[variable], key, from_env=True, base=base)
        elif f.name in raw:
            values[f.name] = _coerce(hint, raw[f.name], key, from_env=False, base=base)
    return cls(**values)


def _coerce(hint: Any, value: Any, key: str, *, from_env: bool, base: Path) -> Any:
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or value == "":
            return None
        return _coerce(options[0], value, key, from_env=from_env, base=base)
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
                return False
            raise ConfigError("expected true or false")
        if hint is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ConfigError("expected an integer")
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise ConfigError("expected a number")
            return float(value)
        if hint is str:
            if not isinstance(value, str | int | float):
                raise ConfigError("expected a string")
            return str(value)
        if hint is Path:
            if not isinstance(value, str) or not value:
                raise ConfigError("expected a path")
            path = Path(value).expanduser()
            return path if path.is_absolute() else base / path
        if origin is tuple:
            # A [min, max] range: a YAML list, or JSON in a variable.
            if from_env:
                value = json.loads(value)
            item_types = typing.get_args(hint)
            if not isinstance(value, list | tuple) or len(value) != len(item_types):
                raise ConfigError(f"expected a list of {len(item_types)} numbers")
            return tuple(
                _coerce(item, v, key, from_env=False, base=base)
                for item, v in zip(item_types, value, strict=True)
            )
        if origin is dict:
            if from_env:
                value = json.loads(value)
            if not isinstance(value, dict):
                raise ConfigError("expected a mapping")
            value_type = typing.get_args(hint)[1]
            if value_type is str and not all(isinstance(v, str) for v in value.values()):
                raise ConfigError("expected a mapping of strings")
            return dict(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}: invalid value {value!r}: {exc}") from None
    raise ConfigError(f"{key}: unsupported setting type")


def _check_spool_budgets(limits: LimitsSection) -> None:
    for key in ("spool_bytes_per_org", "spool_bytes_total"):
        if getattr(limits, key) < 0:
            raise ConfigError(f"limits.{key}: must not be negative")
    # A budget that cannot hold one payload of the largest size would refuse it for ever.
    if limits.spool_org_budget() < limits.max_payload_bytes:
        raise ConfigError(
            f"limits.spool_bytes_per_org: {limits.spool_bytes_per_org} is below "
            f"limits.max_payload_bytes={limits.max_payload_bytes}"
        )
    if limits.spool_total_budget() < limits.spool_org_budget():
        raise ConfigError(
            f"limits.spool_bytes_total: {limits.spool_bytes_total} is below the budget of one "
            f"organization ({limits.spool_org_budget()})"
        )


def _validate(config: object) -> None:
    log_format = getattr(config, "log_format", "text")
    if log_format not in ("text", "json"):
        raise ConfigError(f"log_format: {log_format!r} must be text or json")
    if isinstance(config, CoordinatorConfig):
        _positive(config.tick_seconds, "tick_seconds")
        _positive(config.grace_seconds, "grace_seconds")
        _positive(config.limits.max_payload_bytes, "limits.max_payload_bytes")
        _positive(config.limits.liveness_seconds, "limits.liveness_seconds")
        _positive(config.limits.max_workers, "limits.max_workers")
        _positive(config.limits.max_concurrent_rpcs, "limits.max_concurrent_rpcs")
        _positive(config.limits.max_calls_per_org, "limits.max_calls_per_org")
        _positive(config.limits.stream_idle_seconds, "limits.stream_idle_seconds")
        _check_spool_budgets(config.limits)
        if config.limits.reserved_workers < 0:
            raise ConfigError("limits.reserved_workers: must not be negative")
        if config.limits.reserved_workers >= config.limits.max_workers:
            raise ConfigError(
                f"limits.reserved_workers: {config.limits.reserved_workers} leaves no worker "
                f"of limits.max_workers={config.limits.max_workers} for the organizations"
            )
        if ":" not in config.listen:
            raise ConfigError(f"listen: {config.listen!r} must be host:port")
        if config.health_listen and ":" not in config.health_listen:
            raise ConfigError(f"health_listen: {config.health_listen!r} must be host:port")
        if config.metrics_listen and not config.metrics_listen.rpartition(":")[2].isdigit():
            raise ConfigError(f"metrics_listen: {config.metrics_listen!r} must be host:port")
        _check_tls(config.tls)
    if isinstance(config, ParticipantConfig):
        _positive(config.poll_seconds, "poll_seconds")
        _positive(config.rpc_timeout_seconds, "rpc_timeout_seconds")
        _positive(config.backoff.initial_seconds, "backoff.initial_seconds")
        if config.backoff.max_seconds < config.backoff.initial_seconds:
            raise ConfigError("backoff.max_seconds: must not be below backoff.initial_seconds")
        if ":" not in config.coordinator:
            raise ConfigError(f"coordinator: {config.coordinator!r} must be host:port")
        if config.metrics_listen and not config.metrics_listen.rpartition(":")[2].isdigit():
            raise ConfigError(f"metrics_listen: {config.metrics_listen!r} must be host:port")
        _check_accept(config.accept)
        _check_tls(config.tls)


def _check_accept(accept: AcceptSection) -> None:
    try:
        fraction = accept.threshold_fraction()
    except (ValueError, ZeroDivisionError):
        raise ConfigError(
            f"accept.min_threshold_fraction: {accept.min_threshold_fraction!r} is not a fraction "
            "like 2/3 or a number like 0.7"
        ) from None
    if not Fraction(1, 2) < fraction <= 1:
        raise ConfigError(
            f"accept.min_threshold_fraction: must be above 1/2 and at most 1, got {fraction}"
        )
    if accept.min_cohort < 2:
        raise ConfigError(f"accept.min_cohort: must be at least 2, got {accept.min_cohort}")
    # 2048 is the smallest key secagg.paillier makes or accepts at all.
    if accept.min_paillier_key_bits < 2048:
        raise ConfigError(
            f"accept.min_paillier_key_bits: must be at least 2048, got "
            f"{accept.min_paillier_key_bits}"
        )
    for name in ("learning_rate", "local_epochs", "batch_size"):
        low, high = getattr(accept, name)
        if not (0 < low <= high and math.isfinite(high)):
            raise ConfigError(
                f"accept.{name}: must be [min, max] with 0 < min <= max, got [{low}, {high}]"
            )
    try:
        max_age = accept.membership_max_age()
    except ValueError as exc:
        raise ConfigError(f"accept.max_membership_age: {exc}") from None
    # No off switch: a list that never ages lets a coordinator withhold a revocation for ever.
    # An operator who cannot re-sign often widens the window instead.
    if max_age <= dt.timedelta(0):
        raise ConfigError(
            f"accept.max_membership_age: must be positive (there is no off switch; give a "
            f"longer duration such as 365d to widen it), got {accept.max_membership_age!r}"
        )
    if max_age > _MAX_MEMBERSHIP_AGE:
        raise ConfigError(
            f"accept.max_membership_age: must be at most {format_duration(_MAX_MEMBERSHIP_AGE)}, "
            f"got {accept.max_membership_age!r}"
        )


def _positive(value: float, key: str) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{key}: must be positive, got {value}")


def _check_tls(tls: TlsSection) -> None:
    if tls.insecure:
        return
    for name in ("ca_cert", "cert", "key"):
        value = getattr(tls, name)
        if value is None:
            raise ConfigError(f"tls.{name}: required (mutual TLS is on by default)")
        if not value.is_file():
            raise ConfigError(f"tls.{name}: file {value} does not exist")

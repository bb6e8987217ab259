"""The appliance's one configuration file: YAML, validated at start with errors that name the key.

Defaults live in firmware_config/isonode.yaml; every key is optional there too, so an empty file runs the
embedded defaults (SQLite + local spool under ./var, AE title ISONODE, port 11112, CPU backends).
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "firmware_config" / "isonode.yaml"
_AE_TITLE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 AE VR: 16 chars, no backslash or control


class ConfigError(ValueError):
    """A configuration problem, already phrased for the person editing the file."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_ae_title(value: str) -> str:
    if not _AE_TITLE_RE.match(value) or not value.strip():
        raise ValueError("must be 1-16 printable characters without backslash")
    return value.strip()


class PeerConfig(_Strict):
    ae_title: str | None = None
    address: str | None = Field(None, description="IP address or CIDR network")

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, v: str | None) -> str | None:
        return None if v is None else _check_ae_title(v)

    @field_validator("address")
    @classmethod
    def _addr(cls, v: str | None) -> str | None:
        if v is not None:
            ipaddress.ip_network(v, strict=False)
        return v

    @model_validator(mode="after")
    def _one_of(self) -> PeerConfig:
        if self.ae_title is None and self.address is None:
            raise ValueError("a peer needs ae_title, address or both")
        return self


class NodeConfig(_Strict):
    ae_title: str = "ISONODE"
    port: int = Field(11112, ge=1, le=65535)
    bind_address: str = "0.0.0.0"
    max_pdu_size: int = Field(131072, ge=4096, le=16 * 1024 * 1024)
    maximum_associations: int = Field(16, ge=1, le=256)
    allowed_peers: list[PeerConfig] = Field(default_factory=list)
    dimse_timeout_s: float = Field(60.0, gt=0)
    network_timeout_s: float = Field(120.0, gt=0)
    poll_interval_ms: float = Field(0.2, ge=0.05, le=5.0, description="network poll sleep: lower is faster, "
                                    "costs CPU per open idle association")

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, v: str) -> str:
        return _check_ae_title(v)

    @field_validator("bind_address")
    @classmethod
    def _bind(cls, v: str) -> str:
        ipaddress.ip_address(v)
        return v


class StorageConfig(_Strict):
    data_dir: Path = Path("var")
    min_free_mb: int = Field(1024, ge=0, description="refuse new instances (0xA700) below this much free disk")
    fsync: bool = Field(True, description="fsync every instance before acknowledging it; keep on")


class RouteConfig(_Strict):
    """Per-sender overrides, matched on the calling and/or called AE title."""

    calling_ae_title: str | None = None
    called_ae_title: str | None = None
    completion_timeout_s: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _matcher(self) -> RouteConfig:
        if self.calling_ae_title is None and self.called_ae_title is None:
            raise ValueError("a route needs calling_ae_title and/or called_ae_title to match on")
        return self

    def matches(self, calling_ae: str, called_ae: str) -> bool:
        return (self.calling_ae_title is None or self.calling_ae_title.strip() == calling_ae.strip()) and (
            self.called_ae_title is None or self.called_ae_title.strip() == called_ae.strip()
        )


class SeriesConfig(_Strict):
    completion_timeout_s: float = Field(5.0, gt=0, description="idle time after which a series is complete")
    routes: list[RouteConfig] = Field(default_factory=list)

    def timeout_for(self, calling_ae: str, called_ae: str) -> float:
        for route in self.routes:
            if route.matches(calling_ae, called_ae) and route.completion_timeout_s is not None:
                return route.completion_timeout_s
        return self.completion_timeout_s


class RetentionConfig(_Strict):
    instances_days: float = Field(7.0, gt=0, description="keep received instances this long after processing")
    results_days: float = Field(30.0, gt=0)


class ProcessingConfig(_Strict):
    backend: Literal["auto", "cpu", "cuda"] = "auto"
    workers: int = Field(1, ge=1, le=8)
    threads: int = Field(0, ge=0, description="CPU threads for inference and meshing; 0 = all cores")
    lease_s: float = Field(300.0, gt=0, description="a job whose worker stops renewing its lease is re-queued")
    max_attempts: int = Field(3, ge=1)
    retry_backoff_s: float = Field(10.0, ge=0)


class LoggingConfig(_Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class AppConfig(_Strict):
    node: NodeConfig = NodeConfig()
    storage: StorageConfig = StorageConfig()
    series: SeriesConfig = SeriesConfig()
    retention: RetentionConfig = RetentionConfig()
    processing: ProcessingConfig = ProcessingConfig()
    logging: LoggingConfig = LoggingConfig()

    @property
    def data_dir(self) -> Path:
        return self.storage.data_dir

    @property
    def spool_dir(self) -> Path:
        return self.storage.data_dir / "spool"

    @property
    def results_dir(self) -> Path:
        return self.storage.data_dir / "results"

    @property
    def database_path(self) -> Path:
        return self.storage.data_dir / "isonode.db"


def _format_errors(source: str, exc: ValidationError) -> str:
    lines = [f"{source}: invalid configuration"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling against firmware_config/isonode.yaml)"
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def parse_config(text: str, source: str = "<config>", base_dir: Path | None = None) -> AppConfig:
    """Validate YAML text; relative storage paths are resolved against `base_dir`."""
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections (node, storage, ...)")
    try:
        config = AppConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(source, exc)) from exc
    if base_dir is not None and not config.storage.data_dir.is_absolute():
        config = with_overrides(config, data_dir=base_dir / config.storage.data_dir)
    return config


def load_config(path: Path | None) -> AppConfig:
    """Load a config file (default: the firmware defaults); relative data_dir is relative to the cwd."""
    path = DEFAULT_CONFIG_PATH if path is None else Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc.strerror}") from exc
    return parse_config(text, str(path))


def with_overrides(config: AppConfig, *, port: int | None = None, data_dir: Path | None = None) -> AppConfig:
    """Apply command-line flags, which win over the file."""
    node = config.node if port is None else config.node.model_copy(update={"port": port})
    storage = config.storage if data_dir is None else config.storage.model_copy(update={"data_dir": Path(data_dir)})
    return config.model_copy(update={"node": node, "storage": storage})

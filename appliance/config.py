"""The appliance's one configuration file: YAML, validated at start with errors that name the key.

Defaults live in firmware_config/isonode.yaml; every key is optional there too, so an empty file runs the
embedded defaults (SQLite + local spool under ./var, AE title ISONODE, port 11112, CPU backends).
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from dicom_node.access import LOOPBACK_NETWORKS
from dicom_node.tls import ClientTls
from dicom_node.volume import MAX_VOLUME_VOXELS

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


class NodeTlsConfig(_Strict):
    """DICOM TLS (PS3.15 B.1): on `port` beside plain TCP on node.port, or, without `port`, on node.port
    instead of plain TCP. With `ca_certificates`, senders' certificates are verified against them."""

    certificate: Path = Field(description="PEM certificate (chain) of this node")
    private_key: Path = Field(description="PEM private key of the certificate")
    ca_certificates: Path | None = Field(None, description="PEM CA certificates that senders' certificates "
                                         "must chain to")
    require_peer_certificate: bool = Field(False, description="refuse senders without a valid certificate")
    port: int | None = Field(None, ge=1, le=65535, description="TLS port beside plain TCP; unset: TLS only, "
                             "on node.port")

    @model_validator(mode="after")
    def _ca_for_peers(self) -> NodeTlsConfig:
        if self.require_peer_certificate and self.ca_certificates is None:
            raise ValueError("require_peer_certificate needs ca_certificates to verify senders against")
        return self


class NodeConfig(_Strict):
    ae_title: str = "ISONODE"
    port: int = Field(11112, ge=1, le=65535)
    bind_address: str = "0.0.0.0"
    max_pdu_size: int = Field(131072, ge=4096, le=16 * 1024 * 1024)
    maximum_associations: int = Field(16, ge=1, le=256)
    max_associations_per_peer: int = Field(8, ge=1, le=256, description="associations one address may hold "
                                           "open at once (idle ones end after network_timeout_s)")
    allowed_peers: list[PeerConfig] = Field(default_factory=list)
    tls: NodeTlsConfig | None = None
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

    @field_validator("allowed_peers")
    @classmethod
    def _peer_addresses(cls, v: list[PeerConfig]) -> list[PeerConfig]:
        return _with_addresses(v)

    @model_validator(mode="after")
    def _tls_port(self) -> NodeConfig:
        if self.tls is not None and self.tls.port == self.port:
            raise ValueError("tls.port is node.port: leave tls.port unset for TLS only on node.port")
        return self


def _with_addresses(peers: list[PeerConfig]) -> list[PeerConfig]:
    """Every access rule names an address: an AE title alone is whatever the peer claims."""
    for i, peer in enumerate(peers):
        if peer.address is None:
            raise ValueError(f"entry {i} needs an address (an AE title alone is what the peer claims)")
    return peers


def _loopback_peers() -> list[PeerConfig]:
    return [PeerConfig(address=net) for net in LOOPBACK_NETWORKS]


class QueryRetrieveConfig(_Strict):
    """C-FIND, C-MOVE and C-GET: who may use them is configured apart from who may store, since they hand
    out patient data. Each rule needs an address (an AE title alone is whatever the peer claims)."""

    enabled: bool = True
    allowed_peers: list[PeerConfig] = Field(default_factory=_loopback_peers)

    @field_validator("allowed_peers")
    @classmethod
    def _addresses(cls, v: list[PeerConfig]) -> list[PeerConfig]:
        return _with_addresses(v)


class StorageConfig(_Strict):
    data_dir: Path = Path("var")
    min_free_mb: int = Field(1024, ge=0, description="refuse new instances (0xA700) below this much free disk")
    fsync: bool = Field(True, description="fsync every instance before acknowledging it; keep on")
    max_dataset_mb: int = Field(512, ge=16, description="refuse (0xA700) an instance whose data set, inflated "
                                "if Deflated, or whose pixel data would take more memory than this")


class RouteConfig(_Strict):
    """Per-sender overrides, matched on the calling and/or called AE title."""

    calling_ae_title: str | None = None
    called_ae_title: str | None = None
    completion_timeout_s: float | None = Field(None, gt=0)
    complete_on_release: bool | None = None

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
    complete_on_release: bool = Field(True, description="a series is complete when the association that "
                                      "sent it is released (instances arriving later open a new version)")
    routes: list[RouteConfig] = Field(default_factory=list)

    def timeout_for(self, calling_ae: str, called_ae: str) -> float:
        for route in self.routes:
            if route.matches(calling_ae, called_ae) and route.completion_timeout_s is not None:
                return route.completion_timeout_s
        return self.completion_timeout_s

    def complete_on_release_for(self, calling_ae: str, called_ae: str) -> bool:
        for route in self.routes:
            if route.matches(calling_ae, called_ae) and route.complete_on_release is not None:
                return route.complete_on_release
        return self.complete_on_release


class RetentionConfig(_Strict):
    instances_days: float = Field(7.0, gt=0, description="keep received instances this long after processing")
    results_days: float = Field(30.0, gt=0)
    evict_margin_mb: int = Field(1024, ge=0, description="when free disk falls within this much of "
                                 "storage.min_free_mb, delete the received instances of the series processed "
                                 "and delivered longest ago first, before the node refuses new ones "
                                 "(0: by age only)")


class ProcessingConfig(_Strict):
    backend: Literal["auto", "cpu", "cuda"] = Field("auto", description="marching cubes: CUDA where a GPU answers")
    inference: Literal["auto", "tensorrt", "ort-gpu", "openvino", "ort-cpu", "cpu"] = Field(
        "auto", description="cpu: the fastest CPU runtime that passed the accuracy check; openvino / ort-cpu: "
        "that runtime")
    precision: Literal["auto", "fp32", "bf16", "int8"] = Field(
        "auto", description="auto: the fastest precision that passed the bundle's accuracy check on this CPU "
        "(timed once, cached); bf16 needs native bf16 (OpenVINO)")
    bundle: Path = Field(Path(__file__).resolve().parent.parent / "models" / "ct_chest",
                         description="the model bundle directory (manifest.json + ONNX files)")
    workers: int = Field(1, ge=1, le=8)
    decoded_cache_mb: int = Field(512, ge=0, description="keep frames decoded at ingest for the series' job "
                                  "(a 275-slice 512x512 series is 144 MB); 0: decode again from disk")
    threads: int = Field(0, ge=0, description="CPU threads for inference and meshing; 0 = all cores")
    max_volume_voxels: int = Field(MAX_VOLUME_VOXELS, ge=1_000_000, description="a series whose volume (or "
                                   "resampled grid) would hold more voxels fails its job with that reason")
    lease_s: float = Field(300.0, gt=0, description="a job whose worker stops renewing its lease is re-queued")
    max_attempts: int = Field(3, ge=1)
    retry_backoff_s: float = Field(10.0, ge=0)


class DestinationTlsConfig(_Strict):
    """DICOM TLS (PS3.15 B.1) to a destination: its certificate is verified against `ca_certificates` (the
    system's CAs when unset); ours (`certificate` + `private_key`) is presented if the destination asks.
    Files are read at each connection: one that cannot be used fails that destination's deliveries."""

    ca_certificates: Path | None = Field(None, description="PEM CA certificates the destination's certificate "
                                         "must chain to; unset: the system's CAs")
    certificate: Path | None = Field(None, description="PEM certificate (chain) of this node, presented when "
                                     "the destination asks for one (mutual TLS); needs private_key")
    private_key: Path | None = Field(None, description="PEM private key of certificate")
    verify_hostname: bool = Field(False, description="also require the certificate to name `host`; off by "
                                  "default because DICOM peers are often addressed by IP and their "
                                  "certificates rarely carry it (the CA check still applies)")

    @model_validator(mode="after")
    def _pair(self) -> DestinationTlsConfig:
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("certificate and private_key go together (both or neither)")
        return self

    @field_serializer("ca_certificates", "certificate", "private_key")
    def _path_text(self, v: Path | None) -> str | None:
        return None if v is None else str(v)  # runtime.json dumps the destinations as JSON


class DestinationConfig(_Strict):
    """A DICOM peer that receives the results (C-STORE SCP), and C-MOVE's destinations (by AE title)."""

    name: str = Field(min_length=1, max_length=64)
    ae_title: str
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    tls: DestinationTlsConfig | None = Field(None, description="connect with DICOM TLS; unset: plain TCP")

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, v: str) -> str:
        return _check_ae_title(v)

    def client_tls(self) -> ClientTls | None:
        t = self.tls
        return None if t is None else ClientTls(t.ca_certificates, t.certificate, t.private_key, t.verify_hostname)


Mode = Literal["preview", "full"]


class SeriesFacts(BaseModel):
    """What routing looks at: the association and a few attributes of the series (no patient data)."""

    calling_ae: str = ""
    called_ae: str = ""
    modality: str = ""
    body_part_examined: str = ""
    series_description: str = ""


class RoutingRule(_Strict):
    """Matches a series on every key it sets (patterns: `*` and `?`, case-insensitive); the first rule
    that matches decides the modes and destinations."""

    name: str = Field(min_length=1)
    calling_ae_title: str | None = None
    called_ae_title: str | None = None
    modality: str | None = None
    body_part_examined: str | None = None
    series_description: str | None = None
    modes: list[Mode] = Field(default_factory=lambda: ["preview", "full"])
    destinations: list[str] | None = Field(None, description="destination names; unset = every destination")
    experimental_segments: bool = Field(False, description="also send the bundle's experimental classes, "
                                        "each labelled experimental (Segment Label and Description, page, "
                                        "view); unset, their voxels count as body in every result")
    rendered_view: list[Mode] | None = Field(None, description="modes whose result series also holds the "
                                             "rendered 3D view; unset = output.rendered_view")

    def matches(self, facts: SeriesFacts) -> bool:
        pairs = ((self.calling_ae_title, facts.calling_ae), (self.called_ae_title, facts.called_ae),
                 (self.modality, facts.modality), (self.body_part_examined, facts.body_part_examined),
                 (self.series_description, facts.series_description))
        return all(pattern is None or fnmatch.fnmatchcase(value.strip().upper(), pattern.strip().upper())
                   for pattern, value in pairs)


class Route(BaseModel):
    """What one series gets: the modes to run (preview first), where results go, which segments."""

    model_config = ConfigDict(frozen=True)
    rule: str
    modes: tuple[Mode, ...]
    destinations: tuple[str, ...]
    experimental_segments: bool = False
    rendered_view: tuple[Mode, ...] | None = None  # None: the config's output.rendered_view


DEFAULT_ROUTE_NAME = "default"


class RoutingConfig(_Strict):
    rules: list[RoutingRule] = Field(default_factory=list)
    default_modalities: list[str] = Field(default_factory=lambda: ["CT"],
                                          description="with no matching rule, series of these modalities get "
                                          "preview then full, sent to every destination")


class MeshConfig(_Strict):
    """Per-mode surface settings: specks dropped, Taubin smoothing, a triangle budget per segment."""

    max_triangles: int = Field(ge=100, description="decimate each segment's surface to at most this many")
    smoothing_iterations: int = Field(ge=0, le=200)
    min_component_ml: float = Field(ge=0, description="drop disconnected pieces smaller than this")


class MeshingConfig(_Strict):
    preview: MeshConfig = MeshConfig(max_triangles=20000, smoothing_iterations=8, min_component_ml=1.0)
    full: MeshConfig = MeshConfig(max_triangles=150000, smoothing_iterations=12, min_component_ml=0.2)


class OutputConfig(_Strict):
    """Which objects a result series holds besides the Surface Segmentation."""

    seg: bool = Field(True, description="binary DICOM SEG on the CT grid (most viewers read SEG, few surfaces)")
    mesh_files: list[Literal["stl", "ply"]] = Field(default_factory=list,
                                                    description="also write STL/PLY per segment (not sent)")
    rendered_view: list[Mode] = Field(default_factory=lambda: ["preview"],
                                      description="modes whose result series also holds a rendered 3D view "
                                      "(Secondary Capture: any PACS viewer shows it)")


class OutboxConfig(_Strict):
    retry_base_s: float = Field(2.0, gt=0, description="first retry delay; doubles each attempt")
    retry_max_s: float = Field(300.0, gt=0)
    max_failure_statuses: int = Field(5, ge=1, description="a destination refusing this often: failed")
    max_age_h: float = Field(72.0, gt=0, description="undelivered this long: failed (kept on disk, retryable)")


class WebConfig(_Strict):
    """The bedside page and its JSON API. Everything but /api/health needs the token (a bearer header, or
    the session cookie the login page sets); HTTPS when a certificate and key are configured."""

    enabled: bool = True
    port: int = Field(8080, ge=1, le=65535)
    bind_address: str = "0.0.0.0"
    token_file: Path | None = Field(None, description="file holding the access token (the environment "
                                    "variable ISONODE_WEB_TOKEN wins); unset: <data_dir>/web-token, made at "
                                    "first start")
    certificate: Path | None = Field(None, description="PEM certificate chain: serve HTTPS")
    private_key: Path | None = None
    session_hours: float = Field(12.0, gt=0, le=168, description="a login lasts this long (one shift)")

    @field_validator("bind_address")
    @classmethod
    def _bind(cls, v: str) -> str:
        ipaddress.ip_address(v)
        return v

    @model_validator(mode="after")
    def _pair(self) -> WebConfig:
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("certificate and private_key go together (HTTPS needs both)")
        return self


class SyslogConfig(_Strict):
    """An audit record repository (IHE ATNA): RFC 5424 over TCP (RFC 6587) or TLS (RFC 5425)."""

    host: str = Field(min_length=1)
    port: int = Field(6514, ge=1, le=65535)
    transport: Literal["tcp", "tls"] = "tls"
    ca_certificates: Path | None = Field(None, description="TLS: verify the collector against these (unset: "
                                         "the system's CAs)")


class AuditConfig(_Strict):
    """The audit trail is always kept in the database (`isonode audit`); `syslog` also forwards a copy."""

    syslog: SyslogConfig | None = None


class LoggingConfig(_Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class AppConfig(_Strict):
    node: NodeConfig = NodeConfig()
    query_retrieve: QueryRetrieveConfig = QueryRetrieveConfig()
    storage: StorageConfig = StorageConfig()
    series: SeriesConfig = SeriesConfig()
    retention: RetentionConfig = RetentionConfig()
    processing: ProcessingConfig = ProcessingConfig()
    destinations: list[DestinationConfig] = Field(default_factory=list)
    routing: RoutingConfig = RoutingConfig()
    meshing: MeshingConfig = MeshingConfig()
    output: OutputConfig = OutputConfig()
    outbox: OutboxConfig = OutboxConfig()
    logging: LoggingConfig = LoggingConfig()
    web: WebConfig = WebConfig()
    audit: AuditConfig = AuditConfig()

    @model_validator(mode="after")
    def _known_destinations(self) -> AppConfig:
        names = [d.name for d in self.destinations]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"destinations: name {dupes[0]!r} is used twice")
        for i, rule in enumerate(self.routing.rules):
            unknown = sorted(set(rule.destinations or ()) - set(names))
            if unknown:
                raise ValueError(f"routing.rules.{i}.destinations: {unknown[0]!r} is not a configured destination")
        return self

    def route_for(self, facts: SeriesFacts) -> Route | None:
        """The first matching rule's route; without one, the default (preview then full to every
        destination) for the default modalities; None: the series is stored, not processed."""
        every = tuple(d.name for d in self.destinations)
        for rule in self.routing.rules:
            if rule.matches(facts):
                modes = tuple(m for m in ("preview", "full") if m in rule.modes)
                dests = every if rule.destinations is None else tuple(rule.destinations)
                return Route(rule=rule.name, modes=modes, destinations=dests,
                             experimental_segments=rule.experimental_segments,
                             rendered_view=None if rule.rendered_view is None else tuple(rule.rendered_view))
        if facts.modality.strip().upper() in {m.upper() for m in self.routing.default_modalities}:
            return Route(rule=DEFAULT_ROUTE_NAME, modes=("preview", "full"), destinations=every)
        return None

    def destination(self, name: str) -> DestinationConfig | None:
        return next((d for d in self.destinations if d.name == name), None)

    def destination_by_ae_title(self, ae_title: str) -> DestinationConfig | None:
        """A C-MOVE destination: the first configured destination with that AE title."""
        return next((d for d in self.destinations if d.ae_title == ae_title.strip()), None)

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


_DESTINATION_RE = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>[^:]+|\[[0-9a-fA-F:]+\]):(?P<port>\d{1,5})$")


def parse_destination(text: str) -> DestinationConfig:
    """`AE@HOST:PORT` (the `--destination` flag) -> a destination named after its AE title."""
    m = _DESTINATION_RE.match(text.strip())
    if not m:
        raise ConfigError(f"--destination {text!r}: expected AE@HOST:PORT, e.g. PACS@10.0.0.5:104")
    try:
        return DestinationConfig(name=m["ae"].strip(), ae_title=m["ae"], host=m["host"].strip("[]"),
                                 port=int(m["port"]))
    except ValidationError as exc:
        raise ConfigError(_format_errors(f"--destination {text!r}", exc)) from exc


def with_overrides(config: AppConfig, *, port: int | None = None, data_dir: Path | None = None,
                   destinations: list[str] | None = None, web_port: int | None = None) -> AppConfig:
    """Apply command-line flags, which win over the file; `--destination` adds to the config's list;
    `web_port` 0 turns the web page off, another number serves it there."""
    node = config.node if port is None else config.node.model_copy(update={"port": port})
    web = config.web
    if web_port is not None:
        if not 0 <= web_port <= 65535:
            raise ConfigError(f"--web-port {web_port}: must be 1-65535")
        web = web.model_copy(update={"enabled": web_port != 0, "port": web_port or web.port})
    storage = config.storage if data_dir is None else config.storage.model_copy(update={"data_dir": Path(data_dir)})
    extra = [parse_destination(d) for d in destinations or ()]
    taken = {d.name for d in config.destinations}
    for i, dest in enumerate(extra):
        name, n = dest.name, 2
        while name in taken:  # the same AE title twice (two hosts): a distinct name for each
            name, n = f"{dest.name}-{n}", n + 1
        taken.add(name)
        extra[i] = dest.model_copy(update={"name": name})
    return config.model_copy(update={"node": node, "storage": storage, "web": web,
                                     "destinations": [*config.destinations, *extra]})

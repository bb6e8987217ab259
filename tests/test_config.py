"""Configuration: defaults run as they are, mistakes are reported with the key that is wrong."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from appliance.config import DEFAULT_CONFIG_PATH, ConfigError, load_config, parse_config, with_overrides


def test_firmware_defaults_are_the_embedded_defaults():
    config = load_config(None)
    assert config.node.ae_title == "ISONODE"
    assert config.node.port == 11112
    assert config.storage.data_dir == Path("var")
    assert config.storage.fsync is True
    assert config.series.completion_timeout_s == 5
    assert config.processing.backend == "auto"
    assert config.database_path == Path("var/isonode.db")


def test_empty_file_gives_the_same_defaults_as_the_firmware_file():
    assert parse_config("") == load_config(DEFAULT_CONFIG_PATH)


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ("node: {port: 70000}", "node.port", "less than or equal"),
        ("node: {ae_title: 'THIS_TITLE_IS_FAR_TOO_LONG'}", "node.ae_title", "1-16"),
        ("node: {ae_title: 'BAD\\\\AE'}", "node.ae_title", "backslash"),
        ("node: {bind_adress: 0.0.0.0}", "node.bind_adress", "unknown key"),
        ("node: {allowed_peers: [{address: 10.0.0.300}]}", "node.allowed_peers.0.address", "does not appear"),
        ("node: {allowed_peers: [{}]}", "node.allowed_peers.0", "ae_title, address or both"),
        ("node: {allowed_peers: [{ae_title: CT1}]}", "node.allowed_peers", "needs an address"),
        ("node: {max_associations_per_peer: 0}", "node.max_associations_per_peer", "greater than"),
        ("series: {completion_timeout_s: 0}", "series.completion_timeout_s", "greater than 0"),
        ("series: {routes: [{completion_timeout_s: 3}]}", "series.routes.0", "calling_ae_title"),
        ("processing: {backend: tpu}", "processing.backend", "'auto', 'cpu' or 'cuda'"),
        ("storage: [1, 2]", "storage", "valid dictionary"),
        ("query_retrieve: {allowed_peers: [{ae_title: PACS}]}", "query_retrieve.allowed_peers",
         "needs an address"),
    ],
)
def test_invalid_value_is_reported_with_its_key(text, key, words):
    with pytest.raises(ConfigError) as err:
        parse_config(text, "site.yaml")
    message = str(err.value)
    assert message.startswith("site.yaml: invalid configuration")
    line = next(ln for ln in message.splitlines() if ln.strip().startswith(key + ":"))
    assert words in line


def test_yaml_syntax_error_is_reported():
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_config("node: [unclosed", "site.yaml")


def test_route_overrides_completion_timeout_for_matching_sender():
    config = parse_config("series: {completion_timeout_s: 5, routes: [{calling_ae_title: SLOW_PACS, "
                          "completion_timeout_s: 60}]}")
    assert config.series.timeout_for("SLOW_PACS", "ISONODE") == 60
    assert config.series.timeout_for("CT1", "ISONODE") == 5


def test_command_line_flags_override_the_file(tmp_path):
    config = with_overrides(load_config(None), port=4242, data_dir=tmp_path)
    assert config.node.port == 4242
    assert config.spool_dir == tmp_path / "spool"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "appliance.cli", *args], cwd=REPO, capture_output=True, text=True)


def test_config_check_accepts_the_firmware_file():
    result = _cli("config", "check", str(DEFAULT_CONFIG_PATH))
    assert result.returncode == 0
    assert "OK" in result.stdout


def test_config_check_names_the_bad_key_and_fails(tmp_path):
    bad = tmp_path / "site.yaml"
    bad.write_text("node:\n  port: -1\nstorage:\n  min_free_mb: lots\n")
    result = _cli("config", "check", str(bad))
    assert result.returncode == 2
    assert "node.port" in result.stderr and "storage.min_free_mb" in result.stderr


def test_config_check_reports_a_missing_file(tmp_path):
    result = _cli("config", "check", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert "cannot read configuration" in result.stderr


def test_destination_flag_adds_to_the_configured_destinations_and_names_repeats_apart():
    config = parse_config("destinations: [{name: PACS, ae_title: PACS, host: 10.0.0.5, port: 104}]")
    config = with_overrides(config, destinations=["ORTHANC@127.0.0.1:4242", "PACS@[::1]:11112"])
    assert [(d.name, d.ae_title, d.host, d.port) for d in config.destinations] == [
        ("PACS", "PACS", "10.0.0.5", 104), ("ORTHANC", "ORTHANC", "127.0.0.1", 4242), ("PACS-2", "PACS", "::1", 11112)]


@pytest.mark.parametrize("flag", ["PACS", "PACS@host", "PACS@host:notaport", "@host:104", "A" * 17 + "@h:104"])
def test_a_malformed_destination_flag_is_refused_with_the_expected_form(flag):
    with pytest.raises(ConfigError, match="AE@HOST:PORT|ae_title"):
        with_overrides(parse_config(""), destinations=[flag])


def test_without_a_rule_every_ct_series_gets_preview_then_full_to_every_destination():
    from appliance.config import SeriesFacts

    config = parse_config("destinations: [{name: A, ae_title: A, host: h, port: 1}, "
                          "{name: B, ae_title: B, host: h, port: 2}]")
    route = config.route_for(SeriesFacts(modality="CT"))
    assert (route.modes, route.destinations, route.experimental_segments) == (("preview", "full"), ("A", "B"), False)
    assert config.route_for(SeriesFacts(modality="MR")) is None, "other modalities are stored only"


def test_the_first_matching_rule_chooses_modes_destinations_and_segments():
    from appliance.config import SeriesFacts

    config = parse_config("""
destinations: [{name: PACS, ae_title: PACS, host: h, port: 1}, {name: ER, ae_title: ERVIEW, host: h, port: 2}]
routing:
  rules:
    - {name: er, called_ae_title: ISONODE_ER, modes: [full, preview], destinations: [ER]}
    - {name: lungs, modality: CT, body_part_examined: CHEST, series_description: "*lung*", modes: [full],
       experimental_segments: true}
""")
    er = config.route_for(SeriesFacts(called_ae="ISONODE_ER", modality="CT"))
    assert (er.rule, er.modes, er.destinations) == ("er", ("preview", "full"), ("ER",))  # preview always first
    lungs = config.route_for(SeriesFacts(modality="CT", body_part_examined="chest",
                                         series_description="Thin LUNG 1mm"))
    assert (lungs.rule, lungs.modes, lungs.destinations, lungs.experimental_segments) == (
        "lungs", ("full",), ("PACS", "ER"), True)
    other = config.route_for(SeriesFacts(modality="CT", body_part_examined="ABDOMEN"))
    assert other.rule == "default"


def test_a_rule_naming_an_unknown_destination_is_refused_naming_the_rule():
    with pytest.raises(ConfigError, match=r"routing.rules.0.destinations: 'NOPE'"):
        parse_config("routing: {rules: [{name: r, destinations: [NOPE]}]}")


def test_query_retrieve_is_loopback_only_by_default_and_off_when_disabled():
    from appliance.node import access_policy

    default = access_policy(parse_config(""))
    assert default.may_query_retrieve("ANY", "127.0.0.1") and default.may_query_retrieve("ANY", "::1")
    assert not default.may_query_retrieve("ANY", "10.1.2.3")
    assert default.may_store("ANY", "10.1.2.3")  # storing is configured apart (empty: every sender)
    site = access_policy(parse_config("query_retrieve: {allowed_peers: [{ae_title: PACS, address: 10.0.0.0/8}]}"))
    assert site.may_query_retrieve("PACS", "10.1.2.3") and not site.may_query_retrieve("OTHER", "10.1.2.3")
    assert not site.may_query_retrieve("PACS", "127.0.0.1")
    off = access_policy(parse_config("query_retrieve: {enabled: false}"))
    assert not off.may_query_retrieve("ANY", "127.0.0.1")

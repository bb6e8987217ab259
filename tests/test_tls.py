"""DICOM TLS on the node, spoken to by DCMTK's own TLS options: TLS only on the node's port (plain TCP
refused there), TLS beside plain TCP, senders' certificates verified against a CA, and unusable files
stopping the start with their name."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import free_port, make_test_pki, require_tool, shared_case, store_responses

SLICE = "dcmqa_ge_head_gantry_tilt"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    """A CA, the node's certificate and a sender's certificate it signed, and a stranger's self-signed one."""
    return make_test_pki(tmp_path_factory.mktemp("pki"), ("node", "sender"))


def _tls_node(node_factory, pki, **tls) -> object:
    lines = [f"    certificate: {pki['node_pem']}", f"    private_key: {pki['node_key']}"]
    lines += [f"    {k}: {v}" for k, v in tls.items()]
    node = node_factory()
    node.config_path.write_text(node.config_path.read_text().replace("node:\n", "node:\n  tls:\n" + "\n".join(lines)
                                                                     + "\n", 1))
    return node


def _dcmtk(tool: str, port: int, *args: str) -> subprocess.CompletedProcess:
    require_tool(tool)
    return subprocess.run([tool, "-aec", "ISONODE", *args, "127.0.0.1", str(port)], capture_output=True, text=True,
                          timeout=60)


def _first_slice() -> str:
    return str(sorted((shared_case(SLICE) / "ct_dicom").iterdir())[0])


def test_with_tls_only_dcmtk_stores_over_tls_and_plain_tcp_is_refused(node_factory, pki):
    node = _tls_node(node_factory, pki).start()
    assert _dcmtk("echoscu", node.port, "+tla", "-ic").returncode == 0
    plain = subprocess.run(["storescu", "-aec", "ISONODE", "127.0.0.1", str(node.port), _first_slice()],
                           capture_output=True, text=True, timeout=60)
    assert plain.returncode != 0
    result = subprocess.run(["storescu", "-v", "+tla", "-ic", "-aec", "ISONODE", "127.0.0.1", str(node.port),
                             _first_slice()], capture_output=True, text=True, timeout=60)
    assert [r for _, r in store_responses(result.stdout + result.stderr)] == ["(Success)"]
    assert node.status()["instances"] == 1


def test_tls_on_its_own_port_beside_plain_tcp(node_factory, pki):
    tls_port = free_port()
    node = _tls_node(node_factory, pki, port=tls_port).start()
    assert _dcmtk("echoscu", node.port).returncode == 0  # plain on node.port
    assert _dcmtk("echoscu", tls_port, "+tla", "-ic").returncode == 0
    assert _dcmtk("echoscu", tls_port).returncode != 0  # plain TCP to the TLS port


def test_a_required_sender_certificate_is_verified_against_the_ca(node_factory, pki):
    node = _tls_node(node_factory, pki, ca_certificates=pki["ca_pem"], require_peer_certificate="true").start()
    verified = ("+cf", str(pki["ca_pem"]))
    assert _dcmtk("echoscu", node.port, "+tla", *verified).returncode != 0  # no certificate
    assert _dcmtk("echoscu", node.port, "+tls", str(pki["stranger_key"]), str(pki["stranger_pem"]),
                  *verified).returncode != 0  # not signed by the CA
    ok = _dcmtk("echoscu", node.port, "+tls", str(pki["sender_key"]), str(pki["sender_pem"]), *verified)
    assert ok.returncode == 0, ok.stdout + ok.stderr


def test_an_unusable_certificate_stops_the_start_naming_the_file(node_factory, pki, tmp_path):
    node = node_factory()
    node.config_path.write_text(node.config_path.read_text().replace(
        "node:\n", f"node:\n  tls:\n    certificate: {tmp_path}/missing.pem\n    private_key: {pki['node_key']}\n", 1))
    with pytest.raises(RuntimeError, match="missing.pem"):
        node.start()


def test_tls_config_is_checked_at_the_door(tmp_path):
    from appliance.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match="node.tls"):
        parse_config("node: {tls: {certificate: a.pem, private_key: a.key, require_peer_certificate: true}}")
    with pytest.raises(ConfigError, match="tls.port is node.port"):
        parse_config("node: {port: 104, tls: {certificate: a.pem, private_key: a.key, port: 104}}")

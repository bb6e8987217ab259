"""The shipped system files agree with the software they start."""

from __future__ import annotations

import re
import shlex

import yaml
from conftest import REPO

from appliance.cli import build_parser


def test_systemd_unit_commands_parse_with_the_cli():
    unit = (REPO / "firmware_config/systemd/isonode.service").read_text()
    for key in ("ExecStart", "ExecStartPre"):
        line = re.search(rf"^{key}=(.*)$", unit, re.M).group(1)
        argv = shlex.split(line)
        assert argv[0].endswith("/isonode")
        args = build_parser().parse_args(argv[1:])
        assert callable(args.func)


def test_jetson_power_modes_cover_every_orin_module_the_script_knows():
    modes = yaml.safe_load((REPO / "firmware_config/jetson/power_modes.yaml").read_text())["modules"]
    script = (REPO / "firmware_config/jetson/isonode-power.sh").read_text()
    known = set(re.findall(r"key=(jetson-[a-z0-9-]+)", script))
    assert known == set(modes)
    for mode in modes.values():
        assert isinstance(mode["nvpmodel_mode"], int) and isinstance(mode["jetson_clocks"], bool)


def test_dockerfile_starts_the_node_with_the_firmware_defaults():
    dockerfile = (REPO / "Dockerfile.jetson").read_text()
    cmd = re.search(r'^CMD (\[.*\])$', dockerfile, re.M).group(1)
    args = build_parser().parse_args(yaml.safe_load(cmd))
    assert args.command == "serve" and str(args.config).endswith("firmware_config/isonode.yaml")


def test_the_node_keeps_freed_memory_the_same_way_wherever_it_is_started():
    unit = (REPO / "firmware_config/systemd/isonode.service").read_text()
    setting = re.search(r"^Environment=(MALLOC_MMAP_THRESHOLD_=\S+ MALLOC_TRIM_THRESHOLD_=\S+)$", unit, re.M).group(1)
    assert setting in (REPO / "Dockerfile.jetson").read_text()
    assert setting in (REPO / "Makefile").read_text()
    bench = (REPO / "bench/bench_end_to_end.py").read_text()
    for pair in setting.split():
        key, value = pair.split("=")
        assert f'"{key}": "{value}"' in bench

#!/usr/bin/env bash
# Apply the power mode from power_modes.yaml for this Jetson module (run once at boot, as root).
set -euo pipefail
conf="${1:-/opt/isonode/firmware_config/jetson/power_modes.yaml}"
model=$(tr -d '\0' </proc/device-tree/model 2>/dev/null | tr 'A-Z ' 'a-z-' || true)
key=""
case "$model" in
  *agx-orin*64*) key=jetson-agx-orin-64gb ;;
  *agx-orin*) key=jetson-agx-orin-32gb ;;
  *orin-nx*16*) key=jetson-orin-nx-16gb ;;
  *orin-nx*) key=jetson-orin-nx-8gb ;;
  *orin-nano*) key=jetson-orin-nano-8gb ;;
esac
if [ -z "$key" ] || ! command -v nvpmodel >/dev/null; then
  echo "isonode-power: not a known Jetson module ('$model'); leaving power settings alone"
  exit 0
fi
line=$(grep -E "^  $key:" "$conf" || true)
mode=$(sed -E 's/.*nvpmodel_mode: *([0-9]+).*/\1/' <<<"$line")
clocks=$(sed -E 's/.*jetson_clocks: *(true|false).*/\1/' <<<"$line")
echo "isonode-power: $key -> nvpmodel mode $mode, jetson_clocks $clocks"
nvpmodel -m "$mode"
if [ "$clocks" = true ]; then jetson_clocks; fi

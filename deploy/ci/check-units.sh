#!/usr/bin/env bash
# Checks every shipped systemd unit: `systemd-analyze verify` must pass without
# a warning, and `systemd-analyze security --offline=yes` must score each unit
# at or below its limit. Prints the scores beside Debian's
# prometheus-node-exporter.service, a well-known daemon, for comparison.
#
#   deploy/ci/check-units.sh
#
# Exits non-zero when a unit fails verify or scores above its limit.
set -euo pipefail
cd "$(dirname "$0")/../.."

# The limits, from the project's issue: the controller needs no privilege; the
# agent needs root for systemd's D-Bus API and nvpmodel's sysfs writes; the
# experiment template keeps what CUDA on a Jetson needs (a regression guard).
declare -A LIMIT=(
  [fleet-controller.service]=2.0
  [fleet-agent.service]=3.0
  [brain-experiment@.service]=3.5
)

command -v systemd-analyze >/dev/null 2>&1 || {
  echo "check-units: systemd-analyze is missing (apt-get install systemd)" >&2
  exit 1
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
units=$work/units
bin=$work/bin
mkdir -p "$units" "$bin"

# verify checks that ExecStart= programs exist. The units name
# /usr/bin/fleet-*, where the packages put the binaries; CI has not installed
# them, so the copies checked here name stand-ins in a scratch directory.
# Nothing else in the units is changed.
for b in fleet-agent fleet-controller; do
  ln -s /bin/true "$bin/$b"
done
for u in systemd/*.service systemd/*.target; do
  sed -e "s|/usr/bin/fleet-|$bin/fleet-|g" "$u" >"$units/$(basename "$u")"
done
# A template is verified and scored through an instance.
ln -s brain-experiment@.service "$units/brain-experiment@check.service"

failed=0

# verify, under the system manager, each unit alone with the shipped ones
# beside it (SYSTEMD_UNIT_PATH ends with ':' so the manager's own units, like
# multi-user.target, are found too).
verify() {
  local out
  if ! out=$(SYSTEMD_UNIT_PATH="$units:" systemd-analyze --system verify "$@" 2>&1) || [ -n "$out" ]; then
    echo "FAIL verify $*:"
    printf '%s\n' "$out" | sed 's/^/  /'
    failed=1
  else
    echo "ok   verify $(basename "$1")"
  fi
}

for u in "$units"/fleet-agent.service "$units"/fleet-controller.service "$units"/brain-experiment.target; do
  verify "$u"
done
for release in r35 r36 generic; do
  rm -rf "$units/brain-experiment@.service.d"
  mkdir "$units/brain-experiment@.service.d"
  cp "deploy/jetson/$release.conf" "$units/brain-experiment@.service.d/20-jetson-devices.conf"
  verify "$units/brain-experiment@check.service"
done

# exposure UNIT [DIR]: the overall exposure score systemd-analyze prints.
exposure() {
  local out
  out=$(SYSTEMD_UNIT_PATH="${2:-$units}:" systemd-analyze security --offline=yes --no-pager "$1" 2>&1) || true
  printf '%s\n' "$out" | sed -n 's/.*Overall exposure level for .*: \([0-9.]*\).*/\1/p'
}

# The comparison: Debian's node exporter unit, taken from its package without
# installing it (nothing to start, no user to create).
reference_unit() {
  local deb_dir=$work/deb unit=lib/systemd/system/prometheus-node-exporter.service
  if [ -f "/$unit" ]; then
    echo "/$unit"
    return
  fi
  mkdir -p "$deb_dir"
  if ! (cd "$deb_dir" && apt-get download -qq prometheus-node-exporter >/dev/null 2>&1); then
    apt-get update -qq >/dev/null 2>&1 || true
    (cd "$deb_dir" && apt-get download -qq prometheus-node-exporter >/dev/null 2>&1) || return 0
  fi
  dpkg-deb -x "$deb_dir"/prometheus-node-exporter_*.deb "$deb_dir/x" 2>/dev/null || return 0
  [ -f "$deb_dir/x/$unit" ] && echo "$deb_dir/x/$unit"
}

row() {
  printf '%-48s %8s %6s  %s\n' "$@"
}

echo
echo "systemd-analyze security --offline=yes ($(systemd-analyze --version | head -n 1))"
row UNIT EXPOSURE LIMIT RESULT
check_score() {
  local name=$1 unit=$2 limit=$3 score
  score=$(exposure "$unit")
  if [ -z "$score" ]; then
    row "$name" "?" "$limit" "FAIL (no score)"
    failed=1
  elif awk -v s="$score" -v l="$limit" 'BEGIN { exit !(s <= l) }'; then
    row "$name" "$score" "$limit" ok
  else
    row "$name" "$score" "$limit" "FAIL (above the limit)"
    failed=1
  fi
}
check_score fleet-controller.service fleet-controller.service "${LIMIT[fleet-controller.service]}"
check_score fleet-agent.service fleet-agent.service "${LIMIT[fleet-agent.service]}"
for release in r35 r36 generic; do
  rm -rf "$units/brain-experiment@.service.d"
  mkdir "$units/brain-experiment@.service.d"
  cp "deploy/jetson/$release.conf" "$units/brain-experiment@.service.d/20-jetson-devices.conf"
  check_score "brain-experiment@.service + jetson/$release.conf" brain-experiment@check.service "${LIMIT[brain-experiment@.service]}"
done

ref=$(reference_unit || true)
if [ -n "$ref" ]; then
  mkdir -p "$work/ref"
  cp "$ref" "$work/ref/"
  row "prometheus-node-exporter.service" "$(exposure prometheus-node-exporter.service "$work/ref")" "-" "Debian's unit, for comparison"
else
  row "prometheus-node-exporter.service" "?" "-" "(could not fetch Debian's package)"
fi
# `systemd-analyze security` explains each score, setting by setting:
#   SYSTEMD_UNIT_PATH=systemd: systemd-analyze security --offline=yes fleet-agent.service

if [ "$failed" != 0 ]; then
  echo "check-units: FAILED" >&2
  exit 1
fi
echo "check-units: every unit verifies and scores within its limit"

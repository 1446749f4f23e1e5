#!/usr/bin/env bash
# Memory and CPU of fleet-agent against prometheus-node-exporter, each serving
# one client once a second for the same time.
#
#   deploy/bench/agent-vs-node-exporter.sh [--duration SECONDS] [--dir DIR] [--port PORT]
#
# - fleet-agent (release build) runs on a simulated board of the dev fleet
#   (`fleet-dev up`: a private systemd manager, the AGX Orin R36 fixture sysfs
#   whose temperatures a thermal model drives, fleet-sim-nvpmodel), sampling
#   once a second, with one WatchNode subscriber at 1 s (`fleet-dev watch`) over
#   mTLS.
# - prometheus-node-exporter (installed with apt-get when missing) runs on this
#   machine with its default collectors and is scraped once a second with curl.
#
# After a warm-up of WARMUP seconds (default 10) both are measured for
# --duration seconds (default 600): CPU seconds (utime+stime from
# /proc/<pid>/stat) used during that window, and VmRSS and VmHWM at its end.
# The results go to stdout and to DIR/results.md.
#
# Needs root (the dev fleet creates cgroups and mount namespaces), systemd
# installed (not necessarily running as PID 1), cargo, curl and apt-get.
set -euo pipefail
cd "$(dirname "$0")/../.."

duration=600
dir=target/bench
port=19100
warmup=${WARMUP:-10}
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "agent-vs-node-exporter: unknown option $1 (see --help)" >&2; exit 64 ;;
  esac
done
case "$duration" in
  ''|*[!0-9]*) echo "agent-vs-node-exporter: --duration takes whole seconds" >&2; exit 64 ;;
esac

if [ "$(id -u)" -ne 0 ]; then
  echo "agent-vs-node-exporter: run as root (the dev fleet creates cgroups and mount namespaces)" >&2
  exit 1
fi

exporter=/usr/bin/prometheus-node-exporter
if [ ! -x "$exporter" ] || ! command -v curl >/dev/null 2>&1; then
  echo "installing prometheus-node-exporter and curl…"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus-node-exporter curl >/dev/null
fi

echo "building release binaries…"
cargo build -q --release -p fleet-agent --bin fleet-agent
cargo build -q --release -p fleet-testbed --bin fleet-dev --bin fleet-sim-nvpmodel
bin=target/release

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
rm -f "$dir/fleet.json"

pids=()
dev_pid=
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -n "$dev_pid" ] && kill -0 "$dev_pid" 2>/dev/null; then
    # fleet-dev tears its boards down on SIGINT.
    kill -INT "$dev_pid" 2>/dev/null || true
    wait "$dev_pid" 2>/dev/null || true
  fi
}
trap cleanup EXIT

echo "starting a simulated board with fleet-agent…"
setsid "$bin/fleet-dev" up --nodes 1 --boards agx-orin-r36 --sampling-ms 1000 --dir "$dir" \
  >"$dir/fleet-dev.log" 2>&1 &
dev_pid=$!
for _ in $(seq 1 120); do
  [ -s "$dir/fleet.json" ] && break
  kill -0 "$dev_pid" 2>/dev/null || { cat "$dir/fleet-dev.log" >&2; exit 1; }
  sleep 1
done
[ -s "$dir/fleet.json" ] || { echo "the dev fleet did not come up; see $dir/fleet-dev.log" >&2; exit 1; }
agent_pid=$(sed -n 's/.*"agent_pid": *\([0-9][0-9]*\).*/\1/p' "$dir/fleet.json" | head -n1)
[ -n "$agent_pid" ] || { echo "no agent_pid in $dir/fleet.json" >&2; exit 1; }

echo "starting prometheus-node-exporter on 127.0.0.1:$port…"
"$exporter" --web.listen-address="127.0.0.1:$port" >"$dir/node-exporter.log" 2>&1 &
exporter_pid=$!
pids+=("$exporter_pid")
for _ in $(seq 1 50); do
  curl -fs -o /dev/null "http://127.0.0.1:$port/metrics" && break
  sleep 0.2
done

total=$((warmup + duration))
"$bin/fleet-dev" watch --dir "$dir" --interval-ms 1000 --duration-s "$total" --quiet \
  >"$dir/watch.log" 2>&1 &
watch_pid=$!
pids+=("$watch_pid")

scrapes="$dir/scrapes"
: >"$scrapes"
(
  end=$(($(date +%s) + total))
  while [ "$(date +%s)" -lt "$end" ]; do
    next=$(date +%s.%N)
    if curl -fsS -o /dev/null "http://127.0.0.1:$port/metrics"; then echo ok >>"$scrapes"; fi
    # Once a second: sleep what is left of this second.
    left=$(awk -v t="$next" -v n="$(date +%s.%N)" 'BEGIN { d = 1 - (n - t); if (d > 0) printf "%.3f", d; else print 0 }')
    sleep "$left"
  done
) &
pids+=("$!")

ticks=$(getconf CLK_TCK)
cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }
status_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }

echo "warming up for ${warmup}s, then measuring for ${duration}s…"
sleep "$warmup"
agent_start=$(cpu_ticks "$agent_pid")
exporter_start=$(cpu_ticks "$exporter_pid")
scrapes_start=$(wc -l <"$scrapes")
sleep "$duration"
agent_end=$(cpu_ticks "$agent_pid")
exporter_end=$(cpu_ticks "$exporter_pid")
scrapes_end=$(wc -l <"$scrapes")
agent_rss=$(status_kb "$agent_pid" VmRSS)
agent_hwm=$(status_kb "$agent_pid" VmHWM)
exporter_rss=$(status_kb "$exporter_pid" VmRSS)
exporter_hwm=$(status_kb "$exporter_pid" VmHWM)
wait "$watch_pid" || true
samples=$(sed -n 's/.*: \([0-9]*\) samples.*/\1/p' "$dir/watch.log")

report() {
  awk -v d="$duration" -v t="$ticks" \
    -v ar="$agent_rss" -v ah="$agent_hwm" -v ac=$((agent_end - agent_start)) \
    -v er="$exporter_rss" -v eh="$exporter_hwm" -v ec=$((exporter_end - exporter_start)) \
    -v sc=$((scrapes_end - scrapes_start)) -v sa="${samples:-?}" '
    function mib(kb) { return sprintf("%.1f MiB", kb / 1024) }
    function ratio(a, b) { return b > 0 ? sprintf("%.2f", a / b) : "n/a" }
    BEGIN {
      acs = ac / t; ecs = ec / t
      printf "| | fleet-agent | node_exporter | agent / node_exporter |\n"
      printf "|---|---|---|---|\n"
      printf "| VmRSS at the end | %s | %s | %s |\n", mib(ar), mib(er), ratio(ar, er)
      printf "| VmHWM (peak RSS) | %s | %s | %s |\n", mib(ah), mib(eh), ratio(ah, eh)
      printf "| CPU (utime+stime) over %d s | %.2f s | %.2f s | %s |\n", d, acs, ecs, ratio(acs, ecs)
      printf "| CPU share of one core | %.3f %% | %.3f %% | |\n", 100 * acs / d, 100 * ecs / d
      printf "| clients served | %s WatchNode samples (whole run) | %d scrapes (window) | |\n", sa, sc
    }'
}

{
  echo "# fleet-agent vs prometheus-node-exporter"
  echo
  echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "- machine: $(uname -sr), $(nproc) CPU(s) ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)), $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo) RAM"
  echo "- node_exporter: $("$exporter" --version 2>&1 | head -n1)"
  echo "- fleet-agent: $(git rev-parse --short HEAD 2>/dev/null || echo unknown), release build"
  echo "- window: ${duration} s after a ${warmup} s warm-up"
  echo
  report
} | tee "$dir/results.md"

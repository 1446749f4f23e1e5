#!/usr/bin/env bash
# Installs the fleet agent on a Jetson board or the fleet controller on a lab
# server: binaries, systemd units, /etc/fleet, state directories, journald
# retention, Jetson GPU access, and enables the services.
#
#   install.sh agent      [--certs DIR] [--node NAME] [--controller URL] [OPTIONS]
#   install.sh controller [--certs DIR] [OPTIONS]
#
# Running it twice changes nothing the second time. Every file it writes is
# listed in docs/operations.md ("What the installer writes"). It never stops,
# restarts or starts an experiment (brain-experiment@*.service).
set -euo pipefail

readonly PROG=${0##*/}

usage() {
  cat <<'EOF'
Usage: install.sh agent|controller [OPTIONS]

Installs the fleet agent (on a Jetson board) or the fleet controller (on a lab
server), enables its service and starts it. A second run changes nothing.

Options:
  --certs DIR         take the TLS files from DIR, as `fleetctl pki issue` wrote
                      them: ca.pem, agent-<node>.pem/.key (agent) or
                      controller.pem/.key (controller), and crl.pem if present
  --node NAME         agent: this board's node name (default: from the single
                      agent-<node>.pem in --certs, else the host name)
  --controller URL    agent: the controller this board joins when the agent
                      starts, host:port or https://host:port (port 7444 if
                      none); written as FLEET_CONTROLLER to /etc/fleet/agent.env,
                      which overrides controller.address in agent.toml
  --jetpack RELEASE   agent: GPU device list r35, r36, generic or none
                      (default: picked from /etc/nv_tegra_release)
  --bin-dir DIR       where the built binaries are (default: bin/ beside this
                      script's folder, else target/release)
  --root DIR          install into DIR instead of / (a staged image); nothing is
                      started and no running service is touched
  --dry-run           print what would change and change nothing
  --uninstall         remove what was installed; keep configuration, keys and
                      state (/etc/fleet, /var/lib/fleet-*)
  --purge             with --uninstall: remove those too
  --no-start          enable but do not start or restart the service
  -h, --help          this help
EOF
}

die() {
  echo "$PROG: $*" >&2
  exit 1
}

note() {
  echo "$PROG: $*"
}

# --- Arguments ---------------------------------------------------------------

ROLE=""
ROOT=""
DRY_RUN=0
UNINSTALL=0
PURGE=0
START=1
CERTS=""
NODE=""
CONTROLLER=""
JETPACK=""
BIN_DIR=""

while [ $# -gt 0 ]; do
  case "$1" in
    agent | controller)
      [ -z "$ROLE" ] || die "give one role, agent or controller"
      ROLE=$1
      ;;
    --root) ROOT=${2:?--root needs a directory}; shift ;;
    --root=*) ROOT=${1#*=} ;;
    --certs) CERTS=${2:?--certs needs a directory}; shift ;;
    --certs=*) CERTS=${1#*=} ;;
    --node) NODE=${2:?--node needs a name}; shift ;;
    --node=*) NODE=${1#*=} ;;
    --controller) CONTROLLER=${2:?--controller needs a URL}; shift ;;
    --controller=*) CONTROLLER=${1#*=} ;;
    --jetpack) JETPACK=${2:?--jetpack needs r35, r36, generic or none}; shift ;;
    --jetpack=*) JETPACK=${1#*=} ;;
    --bin-dir) BIN_DIR=${2:?--bin-dir needs a directory}; shift ;;
    --bin-dir=*) BIN_DIR=${1#*=} ;;
    --dry-run) DRY_RUN=1 ;;
    --uninstall) UNINSTALL=1 ;;
    --purge) PURGE=1 ;;
    --no-start) START=0 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
  shift
done

[ -n "$ROLE" ] || { usage >&2; die "say what to install: agent or controller"; }
if [ "$PURGE" = 1 ] && [ "$UNINSTALL" = 0 ]; then
  die "--purge goes with --uninstall"
fi
if [ "$ROLE" = controller ] && { [ -n "$NODE" ] || [ -n "$CONTROLLER" ] || [ -n "$JETPACK" ]; }; then
  die "--node, --controller and --jetpack are for the agent"
fi
# The controller's address goes into an environment file: letters, digits and
# the punctuation of host:port, [IPv6]:port and https:// only. The agent checks
# the rest (check-config below).
case "$CONTROLLER" in
  *[!A-Za-z0-9.:/_\[\]-]*) die "--controller $CONTROLLER: give host:port or https://host:port" ;;
  *://*)
    case "$CONTROLLER" in
      https://* | HTTPS://*) ;;
      *) die "--controller $CONTROLLER: fleet speaks only gRPC over mutual TLS; give host:port or https://host:port" ;;
    esac
    ;;
esac
case "$JETPACK" in
  "" | r35 | r36 | generic | none) ;;
  *) die "--jetpack $JETPACK: use r35, r36, generic or none" ;;
esac

HERE=$(cd "$(dirname "$0")" && pwd)
SRC=$(cd "$HERE/.." && pwd)

if [ -n "$ROOT" ]; then
  [ -d "$ROOT" ] || die "--root $ROOT: no such directory"
  ROOT=$(cd "$ROOT" && pwd)
  [ "$ROOT" != / ] || ROOT=""
fi
# A staged install (--root) touches no running system.
LIVE=1
[ -z "$ROOT" ] || LIVE=0

# --- Where things go -----------------------------------------------------------

readonly BIN=/usr/local/bin
readonly UNITS=/usr/local/lib/systemd/system
readonly SYSUSERS=/usr/local/lib/sysusers.d
readonly ETC=/etc/fleet
readonly JOURNALD_DROPIN=/etc/systemd/journald.conf.d/60-fleet.conf
readonly UDEV_RULE=/etc/udev/rules.d/70-fleet-jetson-gpu.rules
readonly DEVICES_DROPIN=$UNITS/brain-experiment@.service.d/20-jetson-devices.conf

if [ "$ROLE" = agent ]; then
  SERVICE=fleet-agent.service
  BINARIES=(fleet-agent)
  STATE=/var/lib/fleet-agent
else
  SERVICE=fleet-controller.service
  BINARIES=(fleet-controller)
  STATE=/var/lib/fleet-controller
fi

# --- Checks before anything changes -------------------------------------------

need() {
  command -v "$1" >/dev/null 2>&1 || die "$1 is missing: $2"
}

need install "install it with: apt-get install coreutils"
need cmp "install it with: apt-get install diffutils"
need systemctl "this installer needs systemd (apt-get install systemd)"
if [ "$LIVE" = 1 ]; then
  [ "$(id -u)" = 0 ] || die "run it as root (sudo $0 $ROLE ...), or stage into a directory with --root DIR"
  [ -d /run/systemd/system ] || die "this machine was not booted with systemd; use --root DIR to stage an image"
  if command -v dpkg-query >/dev/null 2>&1 &&
    dpkg-query -W -f='${Status}' "${SERVICE%.service}" 2>/dev/null | grep -q "ok installed"; then
    die "the ${SERVICE%.service} package is installed; upgrade it with apt, or remove it before using this installer"
  fi
else
  [ -w "$ROOT" ] || [ "$DRY_RUN" = 1 ] || die "cannot write to --root $ROOT"
fi

if [ "$UNINSTALL" = 0 ]; then
  if [ -z "$BIN_DIR" ]; then
    for d in "$SRC/bin" "$SRC/target/release"; do
      if [ -x "$d/${BINARIES[0]}" ]; then BIN_DIR=$d; break; fi
    done
    [ -n "$BIN_DIR" ] || die "no ${BINARIES[0]} binary in $SRC/bin or $SRC/target/release: build it (cargo build --release -p ${BINARIES[0]}) or give --bin-dir DIR"
  fi
  [ -x "$BIN_DIR/${BINARIES[0]}" ] || die "--bin-dir $BIN_DIR has no executable ${BINARIES[0]}"
  # The controller's server may also get fleetctl, for its administrators.
  if [ "$ROLE" = controller ] && [ -x "$BIN_DIR/fleetctl" ]; then BINARIES+=(fleetctl); fi
  for f in "systemd/$SERVICE" systemd/brain-experiment@.service systemd/brain-experiment.target \
    deploy/agent.toml deploy/controller.toml deploy/journald/60-fleet.conf deploy/udev/70-fleet-jetson-gpu.rules; do
    [ -f "$SRC/$f" ] || die "$SRC/$f is missing: run this script from a fleet source tree or release archive"
  done
  if [ -n "$CERTS" ]; then
    [ -d "$CERTS" ] || die "--certs $CERTS: no such directory"
    [ -f "$CERTS/ca.pem" ] || die "--certs $CERTS has no ca.pem (make one with: fleetctl pki init --dir $CERTS --fleet NAME)"
  fi
fi

# --- Changing files, idempotently ----------------------------------------------

CHANGES=0

changed() {
  CHANGES=$((CHANGES + 1))
  if [ "$DRY_RUN" = 1 ]; then note "would $*"; else note "$*"; fi
}

# Runs a command unless --dry-run.
act() {
  [ "$DRY_RUN" = 1 ] || "$@"
}

# put MODE DEST SRC: installs SRC as $ROOT/DEST with MODE, when different.
put() {
  local mode=$1 dest=$ROOT$2 src=$3
  if [ -f "$dest" ] && cmp -s "$src" "$dest" &&
    [ "$(stat -c %a "$dest")" = "${mode#0}" ]; then
    return 0
  fi
  changed "install $2"
  act install -D -m "$mode" "$src" "$dest"
}

# put_text MODE DEST TEXT: like put, for generated content.
put_text() {
  local tmp
  tmp=$(mktemp)
  printf '%s\n' "$3" >"$tmp"
  put "$1" "$2" "$tmp"
  rm -f "$tmp"
}

# put_once MODE DEST SRC: installs SRC only when DEST does not exist yet
# (configuration the administrator owns from then on).
put_once() {
  if [ -e "$ROOT$2" ]; then return 0; fi
  put "$@"
}

make_dir() {
  local mode=$1 dir=$ROOT$2
  if [ -d "$dir" ] && [ "$(stat -c %a "$dir")" = "${mode#0}" ]; then return 0; fi
  changed "create $2 (mode $mode)"
  act install -d -m "$mode" "$dir"
}

remove() {
  local path=$ROOT$1
  if [ -e "$path" ] || [ -L "$path" ]; then
    changed "remove $1"
    act rm -rf -- "$path"
  fi
}

# Removes a directory left empty.
remove_empty_dir() {
  local dir=$ROOT$1
  if [ -d "$dir" ] && [ -z "$(ls -A "$dir")" ]; then
    changed "remove empty $1"
    act rmdir -- "$dir"
  fi
}

systemctl_root() {
  if [ "$LIVE" = 1 ]; then systemctl "$@"; else systemctl --root="$ROOT" "$@"; fi
}

enable_unit() {
  if [ "$(systemctl_root is-enabled "$1" 2>/dev/null || true)" = enabled ]; then return 0; fi
  changed "enable $1"
  act systemctl_root enable --quiet "$1"
}

disable_unit() {
  local state
  state=$(systemctl_root is-enabled "$1" 2>/dev/null || true)
  case "$state" in
    enabled | enabled-runtime | linked | alias)
      changed "disable $1"
      act systemctl_root disable --quiet "$1"
      ;;
  esac
}

# The unit as shipped, with the binaries where this installer puts them.
unit_text() {
  local text
  text=$(sed -e "s|/usr/bin/fleet-|$BIN/fleet-|g" "$SRC/systemd/$1")
  printf '# Installed by deploy/install.sh: the binaries are in %s.\n%s' "$BIN" "$text"
}

# r35, r36, generic (another L4T release) or none (not a Jetson).
jetpack_release() {
  local release=$ROOT/etc/nv_tegra_release line
  if [ ! -f "$release" ]; then echo none; return; fi
  line=$(head -n 1 "$release")
  case "$line" in
    "# R35 "*) echo r35 ;;
    "# R36 "*) echo r36 ;;
    *) echo generic ;;
  esac
}

# --- Agent -----------------------------------------------------------------------

install_agent_certs() {
  local cert key
  if [ -f "$CERTS/agent-$NODE.pem" ]; then
    cert=$CERTS/agent-$NODE.pem key=$CERTS/agent-$NODE.key
  elif [ -f "$CERTS/agent.pem" ]; then
    cert=$CERTS/agent.pem key=$CERTS/agent.key
  else
    die "--certs $CERTS has no agent-$NODE.pem (issue it with: fleetctl pki issue agent $NODE --dir $CERTS --san <board address>)"
  fi
  [ -f "$key" ] || die "$cert has no key beside it ($key)"
  put 0644 "$ETC/ca.pem" "$CERTS/ca.pem"
  put 0644 "$ETC/agent.pem" "$cert"
  put 0600 "$ETC/agent.key" "$key"
  if [ -f "$CERTS/crl.pem" ]; then put 0644 "$ETC/crl.pem" "$CERTS/crl.pem"; fi
}

agent_config() {
  local text
  text=$(sed -e "s|^node = \".*\"|node = \"$NODE\"|" "$SRC/deploy/agent.toml")
  if [ -f "$CERTS/crl.pem" ]; then
    text=$(printf '%s\n' "$text" | sed -e 's|^# crl = |crl = |')
  fi
  printf '%s' "$text"
}

install_agent() {
  if [ -z "$NODE" ] && [ -n "$CERTS" ]; then
    local found=("$CERTS"/agent-*.pem)
    if [ ${#found[@]} = 1 ] && [ -f "${found[0]}" ]; then
      NODE=$(basename "${found[0]}" .pem)
      NODE=${NODE#agent-}
    elif [ ${#found[@]} -gt 1 ]; then
      die "--certs $CERTS holds certificates for several boards; say which with --node NAME"
    fi
  fi
  [ -n "$NODE" ] || NODE=$(hostname)
  case "$NODE" in
    *[!a-z0-9_-]* | "" | [_-]*) die "node name \"$NODE\" is invalid: use lowercase letters, digits, '-' and '_' (give --node NAME)" ;;
  esac

  put 0755 "$BIN/fleet-agent" "$BIN_DIR/fleet-agent"
  put_text 0644 "$UNITS/fleet-agent.service" "$(unit_text fleet-agent.service)"
  put 0644 "$UNITS/brain-experiment@.service" "$SRC/systemd/brain-experiment@.service"
  put 0644 "$UNITS/brain-experiment.target" "$SRC/systemd/brain-experiment.target"

  local jetpack=${JETPACK:-$(jetpack_release)}
  case "$jetpack" in
    none)
      note "no /etc/nv_tegra_release: not a Jetson, so experiments get no GPU device (give --jetpack to choose)"
      remove "$DEVICES_DROPIN"
      ;;
    generic)
      note "L4T release \"$(head -n 1 "$ROOT/etc/nv_tegra_release" 2>/dev/null)\" has no device list of its own: allowing the nodes of R35 and R36"
      put 0644 "$DEVICES_DROPIN" "$SRC/deploy/jetson/generic.conf"
      ;;
    *) put 0644 "$DEVICES_DROPIN" "$SRC/deploy/jetson/$jetpack.conf" ;;
  esac
  put 0644 "$UDEV_RULE" "$SRC/deploy/udev/70-fleet-jetson-gpu.rules"
  put 0644 "$SYSUSERS/fleet-agent.conf" "$SRC/deploy/sysusers/fleet-agent.conf"
  put 0644 "$JOURNALD_DROPIN" "$SRC/deploy/journald/60-fleet.conf"

  make_dir 0755 "$ETC"
  if [ -n "$CERTS" ]; then install_agent_certs; fi
  if [ -e "$ROOT$ETC/agent.toml" ]; then
    if ! grep -q "^node = \"$NODE\"" "$ROOT$ETC/agent.toml"; then
      note "keeping $ETC/agent.toml, whose node is not \"$NODE\"; edit it if this board was renamed"
    fi
  else
    put_text 0644 "$ETC/agent.toml" "$(agent_config)"
  fi
  if [ -n "$CONTROLLER" ]; then
    # The unit loads it (EnvironmentFile=-/etc/fleet/agent.env); rewritten on
    # every run with --controller, so running again with another URL moves
    # the board. The agent joins at its next start.
    put_text 0644 "$ETC/agent.env" "$(printf '# Written by deploy/install.sh: the controller this board joins when the agent\n# starts (overrides controller.address in agent.toml).\nFLEET_CONTROLLER=%s' "$CONTROLLER")"
  fi
  make_dir 0700 "$STATE"

  create_users fleet-agent.conf
  enable_unit fleet-agent.service
  enable_unit brain-experiment.target
  check_config
}

check_config() {
  # The installed agent checks the installed config (when it runs here).
  local agent=$ROOT$BIN/fleet-agent
  [ "$DRY_RUN" = 0 ] && [ "$ROLE" = agent ] || return 0
  if "$agent" --version >/dev/null 2>&1; then
    # With the controller the unit will pass it, so a bad URL fails here.
    local controller=$CONTROLLER
    if [ -z "$controller" ] && [ -f "$ROOT$ETC/agent.env" ]; then
      controller=$(sed -n 's/^FLEET_CONTROLLER=//p' "$ROOT$ETC/agent.env" | tail -n 1)
    fi
    FLEET_CONTROLLER=$controller "$agent" --config "$ROOT$ETC/agent.toml" check-config >/dev/null ||
      die "$ETC/agent.toml or --controller does not pass fleet-agent check-config (see above)"
  fi
}

# --- Controller ------------------------------------------------------------------

install_controller() {
  local b
  for b in "${BINARIES[@]}"; do put 0755 "$BIN/$b" "$BIN_DIR/$b"; done
  put_text 0644 "$UNITS/fleet-controller.service" "$(unit_text fleet-controller.service)"
  put 0644 "$SYSUSERS/fleet-controller.conf" "$SRC/deploy/sysusers/fleet-controller.conf"
  create_users fleet-controller.conf
  make_dir 0755 "$ETC"
  # A skeleton: the controller takes no settings yet.
  put_once 0644 "$ETC/controller.toml" "$SRC/deploy/controller.toml"
  if [ -n "$CERTS" ]; then
    if [ ! -f "$CERTS/controller.pem" ] || [ ! -f "$CERTS/controller.key" ]; then
      die "--certs $CERTS has no controller.pem and controller.key (issue them with: fleetctl pki issue controller --dir $CERTS --san <server name>)"
    fi
    put 0644 "$ETC/ca.pem" "$CERTS/ca.pem"
    put 0644 "$ETC/controller.pem" "$CERTS/controller.pem"
    put 0640 "$ETC/controller.key" "$CERTS/controller.key"
    if [ -f "$CERTS/crl.pem" ]; then put 0644 "$ETC/crl.pem" "$CERTS/crl.pem"; fi
    # The controller runs as fleet and reads its key through the group.
    if [ "$LIVE" = 1 ] && [ "$(stat -c %G "$ETC/controller.key" 2>/dev/null)" != fleet ]; then
      changed "give group fleet read access to $ETC/controller.key"
      act chgrp fleet "$ETC/controller.key"
    fi
  fi
  # systemd makes it fleet's when the service starts (StateDirectory=).
  make_dir 0700 "$STATE"
  enable_unit fleet-controller.service
}

# A fingerprint of the users and groups databases (of the staged image).
users_db() {
  cat "$ROOT/etc/passwd" "$ROOT/etc/group" 2>/dev/null | cksum || true
}

create_users() {
  # systemd-sysusers creates the users and groups of the sysusers.d file
  # (in the staged image's /etc with --root) and leaves existing ones alone.
  command -v systemd-sysusers >/dev/null 2>&1 || die "systemd-sysusers is missing (apt-get install systemd)"
  local conf=$ROOT$SYSUSERS/$1
  if [ "$DRY_RUN" = 1 ]; then return 0; fi
  local before after
  before=$(users_db)
  if [ "$LIVE" = 1 ]; then
    systemd-sysusers "$conf"
  else
    mkdir -p "$ROOT/etc"
    systemd-sysusers --root="$ROOT" "$conf"
  fi
  after=$(users_db)
  [ "$before" = "$after" ] || changed "create the users and groups of $SYSUSERS/$1"
}

# --- Uninstall -------------------------------------------------------------------

uninstall() {
  if [ "$LIVE" = 1 ] && [ "$DRY_RUN" = 0 ] && systemctl is-active --quiet "$SERVICE"; then
    changed "stop $SERVICE"
    systemctl stop "$SERVICE"
  fi
  disable_unit "$SERVICE"
  remove "$UNITS/$SERVICE"
  if [ "$ROLE" = agent ]; then
    # Experiments keep running: they are systemd's. Without the template
    # they do not start again at the next boot.
    if [ "$LIVE" = 1 ]; then
      local running
      running=$(systemctl list-units --state=active --plain --no-legend 'brain-experiment@*.service' | awk '{print $1}')
      if [ -n "$running" ]; then
        note "these experiments keep running until they end or you stop them:"
        printf '  %s\n' "$running"
      fi
    fi
    disable_unit brain-experiment.target
    remove "$UNITS/brain-experiment@.service"
    remove "$UNITS/brain-experiment.target"
    remove "$DEVICES_DROPIN"
    remove_empty_dir "$UNITS/brain-experiment@.service.d"
    remove "$UDEV_RULE"
    remove "$SYSUSERS/fleet-agent.conf"
    remove "$BIN/fleet-agent"
    remove "$JOURNALD_DROPIN"
    if [ "$PURGE" = 1 ]; then
      remove "$ETC/agent.toml"
      remove "$ETC/agent.env"
      remove "$ETC/agent.pem"
      remove "$ETC/agent.key"
      remove "$STATE"
      # The experiments' own unit files (autostart) and enablement links.
      local d
      for d in "$ROOT"/etc/systemd/system/brain-experiment@*.service.d \
        "$ROOT"/etc/systemd/system/brain-experiment.target.wants; do
        if [ -e "$d" ]; then remove "${d#"$ROOT"}"; fi
      done
    fi
  else
    remove "$SYSUSERS/fleet-controller.conf"
    remove "$BIN/fleet-controller"
    remove "$BIN/fleetctl"
    if [ "$PURGE" = 1 ]; then
      remove "$ETC/controller.toml"
      remove "$ETC/controller.env"
      remove "$ETC/controller.pem"
      remove "$ETC/controller.key"
      remove "$STATE"
    fi
  fi
  if [ "$PURGE" = 1 ]; then
    # The CA certificate and CRL are shared by both roles.
    if [ ! -e "$ROOT$ETC/agent.pem" ] && [ ! -e "$ROOT$ETC/controller.pem" ]; then
      remove "$ETC/ca.pem"
      remove "$ETC/crl.pem"
    fi
    remove_empty_dir "$ETC"
  fi
  for d in "$UNITS" "$SYSUSERS" /usr/local/lib/systemd; do remove_empty_dir "$d"; done
}

# --- Applying it to the running system -------------------------------------------

apply_live() {
  [ "$LIVE" = 1 ] && [ "$DRY_RUN" = 0 ] || return 0
  systemctl daemon-reload
  if [ "$UNINSTALL" = 1 ]; then return 0; fi
  if [ "$CHANGES" -gt 0 ] && [ "$ROLE" = agent ]; then
    # New retention settings; stdout streams of running units survive a
    # journald restart (they are kept in its file descriptor store).
    systemctl try-restart systemd-journald.service
    if command -v udevadm >/dev/null 2>&1; then
      udevadm control --reload-rules || true
      udevadm trigger --action=change --sysname-match='nvhost-*' --sysname-match=nvmap || true
    fi
  fi
  if [ "$START" = 1 ]; then
    if [ "$CHANGES" -gt 0 ]; then
      # Restarting the agent never stops an experiment.
      systemctl restart "$SERVICE"
      note "restarted $SERVICE"
    elif ! systemctl is-active --quiet "$SERVICE"; then
      systemctl start "$SERVICE"
      note "started $SERVICE"
    fi
  fi
}

if [ "$UNINSTALL" = 1 ]; then
  uninstall
elif [ "$ROLE" = agent ]; then
  install_agent
else
  install_controller
fi
apply_live

if [ "$CHANGES" = 0 ]; then
  note "nothing to change"
elif [ "$DRY_RUN" = 1 ]; then
  note "$CHANGES changes (dry run: nothing was changed)"
else
  note "$CHANGES changes"
fi

#!/usr/bin/env bash
# Builds the .deb packages with cargo-deb, for the machine's own architecture
# (amd64 in CI; arm64 when run on a Jetson, see docs/operations.md), and
# checks that each package holds the files docs/operations.md lists.
#
#   deploy/build-debs.sh [PACKAGE...]     default: fleet-agent fleetctl fleet-controller
#
# The packages land in target/debian/. Needs cargo-deb (cargo install cargo-deb)
# and dpkg-deb.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=("$@")
[ ${#packages[@]} -gt 0 ] || packages=(fleet-agent fleetctl fleet-controller)

if ! cargo deb --version >/dev/null 2>&1; then
  echo "build-debs: cargo-deb is missing; install it with: cargo install cargo-deb --locked" >&2
  exit 1
fi
command -v dpkg-deb >/dev/null 2>&1 || {
  echo "build-debs: dpkg-deb is missing (apt-get install dpkg)" >&2
  exit 1
}

# The files each package must hold: the list in docs/operations.md, between
# the markers `<!-- deb:PACKAGE -->` and `<!-- /deb -->`, one path a line.
documented() {
  sed -n "/<!-- deb:$1 -->/,/<!-- \/deb -->/p" docs/operations.md |
    sed -n 's/^ *\(\/[^ ]*\).*/\1/p' | sort
}

# Installs the package into a scratch root with dpkg, upgrades it to a copy
# with a higher version, and purges it: the maintainer scripts run as dpkg
# runs them (chrootless, DPKG_ROOT set), and touch nothing outside that root.
# After the purge only the system users' databases may remain (Debian keeps
# system users).
dpkg_cycle() {
  local p=$1 deb=$2 root next
  root=$(mktemp -d)
  next=$(mktemp -d)
  mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates" "$root/etc"
  touch "$root/var/lib/dpkg/status"
  echo "# R36 (release), REVISION: 4.3" >"$root/etc/nv_tegra_release"
  dpkg-deb -R "$deb" "$next/pkg"
  sed -i 's/^Version: \(.*\)$/Version: \1+next/' "$next/pkg/DEBIAN/control"
  dpkg-deb -b -Zgzip "$next/pkg" "$next/next.deb" >/dev/null
  local dpkg=(dpkg --root="$root" --force-script-chrootless --force-not-root --force-depends)
  if "${dpkg[@]}" -i "$deb" >"$next/log" 2>&1 &&
    "${dpkg[@]}" -i "$next/next.deb" >>"$next/log" 2>&1 &&
    "${dpkg[@]}" -P "$p" >>"$next/log" 2>&1 &&
    ! find "$root" -path "$root/var/lib/dpkg" -prune -o -type f -print |
    grep -qvE '/etc/(nv_tegra_release|passwd|group|shadow|gshadow|\.pwd\.lock)$'; then
    echo "$p: installs, upgrades and purges cleanly with dpkg"
    rm -rf "$root" "$next"
  else
    cat "$next/log" >&2
    echo "build-debs: $p did not install, upgrade and purge cleanly; left in $root" >&2
    return 1
  fi
}

out=target/debian
mkdir -p "$out"
failed=0
for p in "${packages[@]}"; do
  start=$SECONDS
  deb=$(cargo deb -p "$p" --output "$out" 2>"$out/$p.log" | tail -n 1) || {
    cat "$out/$p.log" >&2
    echo "build-debs: cargo deb -p $p failed" >&2
    exit 1
  }
  echo "built $deb in $((SECONDS - start)) s"
  # dpkg-deb lists ./usr/bin/fleet-agent; compare the files (not directories).
  dpkg-deb --contents "$deb" | awk '$1 !~ /^d/ { sub(/^\./, "", $6); print $6 }' | sort >"$out/$p.contents"
  expected=$(documented "$p")
  if [ -z "$expected" ]; then
    echo "build-debs: docs/operations.md lists no files for $p" >&2
    failed=1
  elif ! diff -u <(printf '%s\n' "$expected") "$out/$p.contents"; then
    echo "build-debs: $deb does not hold what docs/operations.md lists (- documented, + in the package)" >&2
    failed=1
  else
    echo "$p: contents match docs/operations.md"
  fi
  dpkg-deb --info "$deb" | sed -n 's/^ \(Package\|Version\|Architecture\|Depends\):/  \1:/p'
  sha256sum "$deb" | sed 's/^/  sha256: /'
  dpkg_cycle "$p" "$deb" || failed=1
done
exit "$failed"

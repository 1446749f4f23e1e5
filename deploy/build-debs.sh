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
done
exit "$failed"

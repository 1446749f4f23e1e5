#!/usr/bin/env bash
# The repository stands alone: no tracked file may read a path beside it.
# A user's clone has nothing next to it, so a test, a script or a build step
# that reaches for a sibling directory or climbs out of the repository from a
# crate's manifest directory works here and nowhere else.
#
# .ci/run also runs everything in a copy of the repository in an empty
# scratch directory, which catches what this grep cannot name.
set -euo pipefail
cd "$(dirname "$0")/../.."

self=deploy/ci/check-standalone.sh
found=0

# Named places beside the repository.
if git grep --untracked -n -I -E '\.\./shared\b|shared/fixtures' -- . ":!$self"; then
  found=1
fi
# A crate sits one level below the repository: two `..` after its manifest
# directory leave the repository.
if git grep --untracked -n -I -E 'CARGO_MANIFEST_DIR.*\.\./\.\.' -- '*.rs' ":!$self"; then
  found=1
fi
# include!/include_str!/include_bytes! reach at most the repository's root
# from where the file is.
while IFS=: read -r file line rest; do
  depth=$(($(tr -cd '/' <<<"$file" | wc -c)))
  up=$(grep -o '\.\./' <<<"$rest" | wc -l)
  if [ "$up" -gt "$depth" ]; then
    echo "$file:$line: include climbs $up levels from a file $depth deep:$rest"
    found=1
  fi
done < <(git grep --untracked -n -I -E 'include(_str|_bytes)?!\("(\.\./)+' -- '*.rs' ":!$self" || true)

if [ "$found" -ne 0 ]; then
  echo "error: the lines above refer to paths outside the repository; copy what" >&2
  echo "they use into the repository (Jetson fixtures live in tests/fixtures/jetson)." >&2
  exit 1
fi
echo "standalone: no tracked file refers to a path beside the repository"

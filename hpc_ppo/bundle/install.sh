#!/bin/sh
# Install this hpc-ppo bundle without a package index: check every wheel's SHA-256 first, then
# `pip install --no-index --no-deps` exactly the wheels pinned in lock.txt.
#
#   ./install.sh                                  # into the active venv (its python3)
#   PYTHON=/path/to/venv/bin/python ./install.sh  # another interpreter
#   ./install.sh --target ~/hpc-ppo-site          # any pip install option; then
#   export PYTHONPATH=~/hpc-ppo-site              #   and run ~/hpc-ppo-site/bin/hpc-ppo
#
# A split bundle (wheels.tar.part-000, -001, ...): copy every part into this folder; this
# script checks each part against parts.sha256, joins them into wheels/ and checks the wheels.
# By hand: sha256sum -c parts.sha256 && cat wheels.tar.part-* | tar -xf - && sha256sum -c SHA256SUMS
#
# lock.txt names the Python the bundle is for ("# python:") and the packages the node must
# already have ("# skipped:", from `hpc-ppo bundle --skip`); both are checked before installing.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
py=${PYTHON:-python3}
fail() {
  echo "install.sh: error: $*" >&2
  exit 1
}

[ -f lock.txt ] || fail "no lock.txt in $here: copy the whole bundle folder"
want=$(sed -n 's/^# python: //p' lock.txt)
have=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])') ||
  fail "cannot run $py; name the interpreter: PYTHON=/path/to/python$want $0"
[ "$have" = "$want" ] ||
  fail "$py is Python $have, this bundle is for Python $want: run PYTHON=/path/to/python$want $0, or make the bundle with --python $have"

if [ ! -d wheels ]; then
  ls wheels.tar.part-* >/dev/null 2>&1 ||
    fail "no wheels/ and no wheels.tar.part-* in $here: copy the whole bundle folder"
  sha256sum -c --quiet parts.sha256 >&2 ||
    fail "a part is missing or damaged (listed above): copy it again; nothing was installed"
  # Join into a side folder, so that a failed join (no space) leaves no half wheels/ behind.
  rm -rf .joining && mkdir .joining
  cat wheels.tar.part-* | tar -xf - -C .joining ||
    { rm -rf .joining; fail "joining the parts failed (above): free space in $here; nothing was installed"; }
  mv .joining/wheels wheels && rmdir .joining
fi
sha256sum -c --quiet SHA256SUMS >&2 ||
  fail "wheels do not match SHA256SUMS (listed above): copy the bundle again; nothing was installed"

skipped=$(sed -n 's/^# skipped: //p' lock.txt)
if [ -n "$skipped" ]; then
  # shellcheck disable=SC2086  # one argument per pin
  "$py" - $skipped <<'EOF' || exit 1
import sys
from importlib import metadata

status = 0
for pin in sys.argv[1:]:
    name, _, want = pin.partition("==")
    try:
        have = metadata.version(name)
    except metadata.PackageNotFoundError:
        print(f"install.sh: warning: {name} is not installed for {sys.executable}; the bundle "
              f"leaves it to the node (--skip {pin}): make {pin} importable before running "
              f"hpc-ppo (module load, the site's venv), or make the bundle without --skip {pin}",
              file=sys.stderr)
        continue
    # The node's build 2.11.0+cu130 is the 2.11.0 the bundle was resolved against.
    if have != want and have.split("+")[0] != want:
        print(f"install.sh: error: {sys.executable} has {name} {have}, this bundle was made for "
              f"{pin} (--skip {pin}): use a node or interpreter with {pin}, or make the bundle "
              f"with --skip {name}=={have}; nothing was installed", file=sys.stderr)
        status = 1
sys.exit(status)
EOF
fi

# The bundle is the only source: no index, and none of pip's configured links or constraints.
export PIP_CONFIG_FILE=/dev/null
unset PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_FIND_LINKS PIP_CONSTRAINT PIP_REQUIREMENT
"$py" -m pip install --no-index --no-deps --find-links "$here/wheels" -r lock.txt "$@" ||
  fail "pip install failed (above)"
echo "install.sh: installed the $(grep -c '^[^#]' lock.txt) wheels of $here/lock.txt"

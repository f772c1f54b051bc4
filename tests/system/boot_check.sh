#!/usr/bin/env bash
# System test: the service under a real systemd. Boots a minimal Debian 12 in systemd-nspawn,
# installs cbr-replicator in it exactly as the README's "Running as a systemd service" section
# says (minus sudo), with the CBR emulator as a unit of its own standing in for the cloud, and
# checks what that section promises (tests/system/boot_check.py prints one PASS/FAIL line per
# check). Exits 0 when every check passed, 1 when one failed, 77 when this machine cannot run
# it (not root, or no systemd-nspawn and no apt-get to install it), saying why.
#
# The Debian tree is made once with debootstrap and cached outside the repository, keyed on
# its package list, under ${XDG_CACHE_HOME:-$HOME/.cache}/cbr-replicator/system-test/; every
# run boots a throwaway overlay of it (a copy where overlayfs is not available), so the cache
# is never written to. The mirror is the one apt uses on this host. pip inside the container
# has no index: the project's dependencies go in as a wheelhouse built here (also cached,
# keyed on pyproject.toml), the project itself from a copy of this work tree.
#
#   tests/system/boot_check.sh            # KEEP=1 keeps the run directory for a look after
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
suite=bookworm
variant=minbase
# What the tree holds beyond minbase: systemd as PID 1, D-Bus (systemctl, systemd-run,
# systemd-analyze security), Python and venv for the README's install, procps for the unit's
# /bin/kill, jq for the README's journald pipelines.
packages=systemd,systemd-sysv,dbus,python3,python3-venv,procps,jq
tree_format=1 # bump when the tree's preparation below changes
python=${PYTHON:-python3}
cache=${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/cbr-replicator/system-test
started=$SECONDS

say() { printf '== system test: %s\n' "$*"; }
cannot() {
  say "cannot run here: $*"
  exit 77
}

# -- can this machine run it? ---------------------------------------------------------------
if [ "$(id -u)" -ne 0 ]; then cannot "needs root (systemd-nspawn, debootstrap, mount)"; fi
missing=()
command -v systemd-nspawn >/dev/null 2>&1 || missing+=(systemd-container)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if [ "${#missing[@]}" -gt 0 ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    cannot "needs ${missing[*]} and there is no apt-get to install them"
  fi
  say "installing ${missing[*]} from Debian"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi
for tool in nsenter mount; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "FAIL: $tool is missing"
    exit 1
  }
done

# The Debian mirror apt uses here (deb822 .sources or one-line sources.list): its URI that
# serves $suite itself (not -security or -updates).
debian_mirror() {
  local file
  for file in /etc/apt/sources.list.d/*.sources; do
    [ -f "$file" ] || continue
    awk -v suite="$suite" '
      /^[[:space:]]*$/ { if (uri != "" && ok) print uri; uri = ""; ok = 0; next }
      /^URIs:/ { uri = $2 }
      /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite) ok = 1 }
      END { if (uri != "" && ok) print uri }' "$file"
  done
  cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
    awk -v suite="$suite" '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i == suite) { u = $(i - 1); if (u !~ /^\[/) print u } }'
}

# -- the cached tree -----------------------------------------------------------------------
key=$(printf '%s\n' "$suite" "$variant" "$packages" "$(dpkg --print-architecture)" "$tree_format" |
  sha256sum | cut -c1-16)
tree=$cache/debian-$suite-$key
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9 # one builder of the tree and wheelhouse at a time: a second run waits, then uses them
tree_seconds=0
if [ -f "$tree/.cbr-tree-complete" ]; then
  say "Debian tree: cached ($tree)"
else
  mirror=$(debian_mirror 2>/dev/null | head -n 1 || true)
  if [ -z "$mirror" ]; then
    echo "FAIL: no Debian mirror for $suite in /etc/apt/sources.list*"
    exit 1
  fi
  say "Debian tree: building with debootstrap ($packages)"
  building=$cache/.building-$key
  rm -rf "$building"
  tree_started=$SECONDS
  if ! debootstrap --variant="$variant" --include="$packages" "$suite" "$building" "$mirror" \
    >"$cache/debootstrap.log" 2>&1; then
    tail -n 20 "$cache/debootstrap.log"
    echo "FAIL: debootstrap failed (log: $cache/debootstrap.log)"
    exit 1
  fi
  rm -rf "$building"/var/cache/apt/archives/*.deb
  touch "$building/.cbr-tree-complete"
  rm -rf "$tree"
  mv "$building" "$tree"
  tree_seconds=$((SECONDS - tree_started))
  say "Debian tree: built in ${tree_seconds}s"
fi

tree_python=$(cd "$tree/usr/bin" && ls python3.* | grep -E '^python3\.[0-9]+$' | head -n 1)
host_python=python$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$tree_python" != "$host_python" ]; then
  echo "FAIL: the wheelhouse is built with $python ($host_python) but the tree has $tree_python;"
  echo "      set PYTHON= to a $tree_python interpreter"
  exit 1
fi

# -- the wheelhouse ------------------------------------------------------------------------
run=$(mktemp -d /var/tmp/cbr-system-test.XXXXXX)
root=$run/root
overlay=0
nspawn_pid=
teardown() {
  local status=$?
  trap - EXIT INT TERM
  if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
    kill -TERM "$nspawn_pid" 2>/dev/null || true # nspawn powers the container off
    local deadline=$((SECONDS + 30))
    while kill -0 "$nspawn_pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
    kill -KILL "$nspawn_pid" 2>/dev/null || true
    wait "$nspawn_pid" 2>/dev/null || true
  fi
  if [ "$overlay" -eq 1 ]; then umount "$root" 2>/dev/null || umount -l "$root" 2>/dev/null || true; fi
  if [ -n "${KEEP:-}" ]; then
    say "kept $run"
  elif mountpoint -q "$root" 2>/dev/null; then
    say "$root is still mounted: left $run in place"
  else
    rm -rf "$run"
  fi
  if [ "$tree_seconds" -gt 0 ]; then cache_state="cold cache: tree built in ${tree_seconds}s"; else cache_state="warm cache"; fi
  say "total $((SECONDS - started))s ($cache_state)"
  exit "$status"
}
trap teardown EXIT
trap 'exit 130' INT TERM
source_copy=$run/source
mkdir -p "$source_copy"
# The work tree as git sees it (tracked and new files, not ignored ones: no .venv, no build).
git -C "$repo" ls-files -z --cached --others --exclude-standard |
  (cd "$repo" && tar --null --files-from=- --ignore-failed-read -cf - 2>/dev/null) |
  tar -xf - -C "$source_copy"
wheel_key=$(cat "$repo/pyproject.toml" <(echo "$host_python") | sha256sum | cut -c1-16)
wheelhouse=$cache/wheelhouse-$wheel_key
if [ -f "$wheelhouse/.complete" ]; then
  say "wheelhouse: cached"
else
  say "wheelhouse: building with $python -m pip wheel"
  rm -rf "$wheelhouse.tmp"
  # Build requirements too: pip install . inside builds in an isolated environment.
  if ! "$python" -m pip wheel -q --disable-pip-version-check -w "$wheelhouse.tmp" \
    "$source_copy" 'setuptools>=69' wheel >"$run/pip-wheel.log" 2>&1; then
    tail -n 20 "$run/pip-wheel.log"
    echo "FAIL: pip wheel failed"
    exit 1
  fi
  rm -f "$wheelhouse.tmp"/cbr_replicator-*.whl # the project is installed from its source
  touch "$wheelhouse.tmp/.complete"
  rm -rf "$wheelhouse"
  mv "$wheelhouse.tmp" "$wheelhouse"
fi
flock -u 9

# -- a throwaway root over the cached tree, booted -------------------------------------------
mkdir -p "$run/upper" "$run/work" "$root"
if mount -t overlay overlay -o "lowerdir=$tree,upperdir=$run/upper,workdir=$run/work" "$root" 2>/dev/null; then
  overlay=1
else
  say "no overlayfs here: copying the tree"
  cp -a --reflink=auto "$tree/." "$root/"
fi

mkdir -p "$root/root/cbr-replicator" "$root/root/wheelhouse"
cp -a "$source_copy/." "$root/root/cbr-replicator/"
cp -a "$wheelhouse/." "$root/root/wheelhouse/"

machine=cbr-test-$$
boot_started=$SECONDS
# --private-network: the container has loopback only (the emulator, the metrics port); so pip
# in there has no index for sure.
systemd-nspawn --quiet --boot --directory="$root" --machine="$machine" --register=no \
  --keep-unit --console=passive --private-network >"$run/nspawn.log" 2>&1 &
nspawn_pid=$!

# PID 1 of the container: nspawn's child running systemd.
leader=
deadline=$((SECONDS + 60))
while [ -z "$leader" ] && [ "$SECONDS" -lt "$deadline" ]; do
  kill -0 "$nspawn_pid" 2>/dev/null || break
  for child in $(ps -o pid= --ppid "$nspawn_pid" 2>/dev/null); do
    if [ "$(cat "/proc/$child/comm" 2>/dev/null)" = systemd ]; then leader=$child; fi
  done
  [ -n "$leader" ] || sleep 0.1
done
if [ -z "$leader" ]; then
  cat "$run/nspawn.log"
  echo "FAIL: the container did not start (systemd-nspawn output above)"
  exit 1
fi
# Until its manager answers (not at once: PID 1 has just been executed) and has booted.
state=
deadline=$((SECONDS + 90))
while [ "$SECONDS" -lt "$deadline" ]; do
  state=$(nsenter -t "$leader" -a -- systemctl is-system-running 2>/dev/null || true)
  case "$state" in running | degraded | maintenance | stopping) break ;; esac
  sleep 0.2
done
case "$state" in
  running | degraded) say "booted in $((SECONDS - boot_started))s (system $state)" ;;
  *)
    cat "$run/nspawn.log"
    echo "FAIL: the container's systemd did not finish booting (state: ${state:-none})"
    exit 1
    ;;
esac

status=0
"$python" "$repo/tests/system/boot_check.py" --leader "$leader" \
  --source /root/cbr-replicator --wheelhouse /root/wheelhouse || status=$?
exit "$status" # the teardown prints the total time

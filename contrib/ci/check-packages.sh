#!/usr/bin/env bash
# Installs the .deb packages for real (CI runs this on its throwaway machine, as root, after the
# tests built the binaries), checks the installed units with systemd-analyze, runs the programs,
# and removes the packages again.
set -euo pipefail
cd "$(dirname "$0")/../.."
[[ $(id -u) -eq 0 ]] || { echo "check-packages.sh installs packages: run it as root" >&2; exit 1; }
# useradd needs the password file; a machine image without one gets it from /etc/passwd.
[[ -f /etc/shadow ]] || pwconv
out=$(mktemp -d)
bash contrib/package.sh --bin-dir "${CARGO_TARGET_DIR:-target}/debug" --out "$out"
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$out"/*.deb >/dev/null
for p in master nodeproxy edgeproxy; do
  systemd-analyze verify "/lib/systemd/system/shadow-$p.service"
  "/usr/bin/shadow-$p" --version
  test "$(stat -c %a "/etc/shadowd/$p.env")" = 600
done
getent passwd shadowd >/dev/null
shadow --version
dpkg --purge shadow-master shadow-nodeproxy shadow-edgeproxy shadow-cli >/dev/null
rm -rf "$out"
echo "packages install, their units verify, and they remove cleanly"

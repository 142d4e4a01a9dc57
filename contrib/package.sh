#!/usr/bin/env bash
# Builds Debian packages of Shadow's programs: shadow-master, shadow-nodeproxy, shadow-edgeproxy
# (each with its systemd unit and an example env file, installed as /etc/shadowd/<program>.env)
# and shadow-cli (the `shadow` command, with bash completion).
#
#   contrib/package.sh                     # release build of every binary, then the packages
#   contrib/package.sh --bin-dir DIR       # package binaries built already (e.g. target/debug)
#   contrib/package.sh --out DIR           # where the .deb files go (default: target/debian)
#
# The architecture is this machine's (dpkg --print-architecture): build on arm64 for arm64.
# Needs dpkg-deb (Debian's dpkg). Install with `apt-get install ./shadow-*.deb`.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN_DIR=""
OUT="target/debian"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --bin-dir) BIN_DIR="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    *) echo "unknown option $1; use --bin-dir DIR and/or --out DIR" >&2; exit 2 ;;
  esac
done

command -v dpkg-deb >/dev/null || { echo "dpkg-deb is missing: apt-get install dpkg" >&2; exit 1; }
if [[ -z "$BIN_DIR" ]]; then
  # The release build of every binary: this one command.
  cargo build --release --workspace --bins
  BIN_DIR="${CARGO_TARGET_DIR:-target}/release"
fi
# The sandbox's process (docs/operations.md, "Sandboxes"), static so the node can make its image
# FROM scratch: its own build, whatever --bin-dir says (it is tiny).
HOST_TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --release -p shadow-pause --target "$HOST_TRIPLE"
PAUSE_BIN="${CARGO_TARGET_DIR:-target}/$HOST_TRIPLE/release/shadow-pause"
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
ARCH=$(dpkg --print-architecture)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# package NAME BINARY SUMMARY DEPENDS [PROGRAM]: PROGRAM (master, nodeproxy, edgeproxy) adds the
# unit and the env file.
package() {
  local name=$1 bin=$2 summary=$3 depends=$4 program=${5:-}
  local root
  root=$(mktemp -d)
  trap 'rm -rf "$root"' RETURN
  [[ -x "$BIN_DIR/$bin" ]] || { echo "$BIN_DIR/$bin is missing: build it first (cargo build --release)" >&2; exit 1; }
  install -D -m 0755 "$BIN_DIR/$bin" "$root/usr/bin/$bin"
  [[ "$bin" != shadow-nodeproxy ]] || install -D -m 0755 "$PAUSE_BIN" "$root/usr/lib/shadow/shadow-pause"
  install -d "$root/DEBIAN" "$root/usr/share/doc/$name"
  printf 'Shadow %s: %s\ndocs/operations.md in Shadow'"'"'s source explains every setting.\n' \
    "$VERSION" "$summary" > "$root/usr/share/doc/$name/README"
  if [[ -n "$program" ]]; then
    # Packages install into /usr/bin, not /usr/local/bin as a hand install does.
    sed 's#/usr/local/bin/#/usr/bin/#g' "contrib/systemd/shadow-$program.service" \
      | install -D -m 0644 /dev/stdin "$root/lib/systemd/system/shadow-$program.service"
    install -D -m 0600 "contrib/systemd/$program.env.example" "$root/etc/shadowd/$program.env"
    echo "/etc/shadowd/$program.env" > "$root/DEBIAN/conffiles"
    cat > "$root/DEBIAN/postinst" <<SH
#!/bin/sh
set -e
if [ "\$1" = configure ]; then
  getent passwd shadowd >/dev/null || useradd --system --user-group --home-dir /var/lib/shadow \\
    --no-create-home --shell /usr/sbin/nologin shadowd
  if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
  echo "shadow-$program: edit /etc/shadowd/$program.env, then: systemctl enable --now shadow-$program"
fi
SH
    cat > "$root/DEBIAN/prerm" <<SH
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "\$1" = remove ]; then
  systemctl stop shadow-$program.service || true
  systemctl disable shadow-$program.service || true
fi
SH
    cat > "$root/DEBIAN/postrm" <<SH
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
SH
    chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/prerm" "$root/DEBIAN/postrm"
  fi
  if [[ "$bin" == shadow ]]; then
    install -d "$root/usr/share/bash-completion/completions" "$root/usr/share/zsh/vendor-completions"
    "$BIN_DIR/shadow" completions bash > "$root/usr/share/bash-completion/completions/shadow"
    "$BIN_DIR/shadow" completions zsh > "$root/usr/share/zsh/vendor-completions/_shadow"
  fi
  local size
  size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
  {
    echo "Package: $name"
    echo "Version: $VERSION"
    echo "Architecture: $ARCH"
    echo "Maintainer: Shadow developers <shadow@localhost>"
    echo "Installed-Size: $size"
    [[ -n "$depends" ]] && echo "Depends: $depends"
    echo "Section: net"
    echo "Priority: optional"
    echo "Description: Shadow, scale-to-zero app hosting: $summary"
    echo " Shadow hosts many small web apps for the price of their storage: apps start on"
    echo " their first request and stop when idle. See docs/operations.md."
  } > "$root/DEBIAN/control"
  dpkg-deb --root-owner-group --build "$root" "$OUT/${name}_${VERSION}_${ARCH}.deb" >/dev/null
  echo "$OUT/${name}_${VERSION}_${ARCH}.deb"
}

package shadow-master shadow-master "the master (tasks, nodes, volume leases, dashboard)" "passwd" master
package shadow-nodeproxy shadow-nodeproxy "the node proxy (starts apps on demand, stops them when idle)" \
  "passwd, docker.io | docker-ce | docker-engine, iptables" nodeproxy
package shadow-edgeproxy shadow-edgeproxy "the edge proxy (public entry, TLS, routing, failover)" "passwd" edgeproxy
package shadow-cli shadow "the shadow command line" ""

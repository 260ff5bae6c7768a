#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# Install what building and testing needs, once. Checks first, installs only
# what is missing, and says what it installs. Debian packages come from
# bookworm; QEMU from bookworm-backports (a NotAutomatic suite: nothing else
# is upgraded from it). trixie and sid are never added to the system.
set -euo pipefail

say() { echo ">> setup: $*"; }
[ "$(id -u)" = 0 ] && sudo= || sudo=sudo

# command -> Debian package
need_pkgs=()
for pair in clang-19:clang-19 ld.lld-19:lld-19 llvm-ar-19:llvm-19 flex:flex bison:bison bc:bc \
	    cpio:cpio rsync:rsync insmod:kmod patch:patch gcc:gcc make:make lz4:lz4; do
	command -v "${pair%%:*}" >/dev/null || need_pkgs+=("${pair#*:}")
done
for pkg in libclang-19-dev libelf-dev libssl-dev busybox-static; do
	dpkg -s "$pkg" >/dev/null 2>&1 || need_pkgs+=("$pkg")
done
[ -x /bin/busybox ] || need_pkgs+=(busybox-static)

# QEMU >= 9.1 reports every balloon stats tag; bookworm has 7.2.
qemu_ok() {
	command -v qemu-system-x86_64 >/dev/null || return 1
	v=$(qemu-system-x86_64 --version | sed -n 's/.*version \([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
	set -- $v
	[ "${1:-0}" -gt 9 ] || { [ "${1:-0}" -eq 9 ] && [ "${2:-0}" -ge 1 ]; }
}

apt_updated=
apt_update() {
	[ -n "$apt_updated" ] || { $sudo apt-get update -q >/dev/null; apt_updated=1; }
}

if [ ${#need_pkgs[@]} -gt 0 ]; then
	say "installing from bookworm: ${need_pkgs[*]}"
	apt_update
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends \
		-t bookworm "${need_pkgs[@]}" >/dev/null
fi

if ! qemu_ok; then
	bpo=/etc/apt/sources.list.d/bookworm-backports.sources
	if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d; then
		say "adding bookworm-backports (NotAutomatic) as $bpo"
		$sudo tee "$bpo" >/dev/null <<SRC
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
		apt_updated=
	fi
	say "installing qemu-system-x86 from bookworm-backports"
	apt_update
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends \
		-t bookworm-backports qemu-system-x86 >/dev/null
	qemu_ok || { echo "setup: qemu-system-x86_64 >= 9.1 is needed" >&2; exit 1; }
fi

if ! command -v rustup >/dev/null; then
	echo "setup: rustup is needed for the Rust toolchain (https://rustup.rs)" >&2
	exit 1
fi
for c in rust-src rustfmt clippy; do
	if ! rustup component list --installed 2>/dev/null | grep -q "^$c"; then
		say "adding the $c component"
		rustup component add "$c" >/dev/null
	fi
done
# make lint checks the documentation with docutils.
if ! python3 -c 'import docutils' 2>/dev/null; then
	say "installing docutils from PyPI"
	python3 -m pip install -q docutils ||
		{ echo "setup: pip install docutils failed" >&2; exit 1; }
fi

bindgen_ok() {
	command -v bindgen >/dev/null || return 1
	v=$(bindgen --version | awk '{print $2}')
	[ "$(printf '%s\n0.71.1\n' "$v" | sort -V | head -n 1)" = 0.71.1 ]
}
if ! bindgen_ok; then
	say "installing bindgen-cli from crates.io"
	cargo install --locked bindgen-cli >/dev/null 2>&1 ||
		{ echo "setup: cargo install bindgen-cli failed" >&2; exit 1; }
fi

rustc_v=$(rustc --version | awk '{print $2}')
[ "$(printf '%s\n1.85.0\n' "$rustc_v" | sort -V | head -n 1)" = 1.85.0 ] ||
	{ echo "setup: rustc >= 1.85 is needed, have $rustc_v" >&2; exit 1; }
say "toolchain ready (rustc $rustc_v, $(bindgen --version), clang-19, $(qemu-system-x86_64 --version | head -n 1))"

#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# Obtain Debian's linux-source-7.3 from trixie-backports and unpack it into
# the cache, without touching the system's apt sources: apt runs against a
# private sources list and state directory under the cache, so nothing on the
# system can be upgraded from trixie by accident.
#
# Usage: fetch-kernel.sh CACHE_DIR   -> prints the path of the unpacked tree
set -euo pipefail

cache=${1:?usage: fetch-kernel.sh CACHE_DIR}
pkg=linux-source-7.3
src=$cache/src
mkdir -p "$src"

tree=$(find "$src" -mindepth 1 -maxdepth 1 -type d -name 'linux-source-7.3*' | head -n 1)
if [ -n "$tree" ] && [ -f "$tree/.unpacked" ]; then
	echo "$tree"
	exit 0
fi

apt_dir=$src/apt
mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial"
cat > "$apt_dir/sources.list" <<LIST
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie-backports main
LIST
apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list"
	  -o "Dir::Etc::SourceParts=/nonexistent"
	  -o "Dir::State::Lists=$apt_dir/lists"
	  -o "Dir::Cache=$apt_dir/cache"
	  -o "APT::Default-Release=")
mkdir -p "$apt_dir/cache/archives/partial"

echo ">> fetching $pkg from trixie-backports (private apt state in $apt_dir)" >&2
apt-get -q "${apt_opts[@]}" update >&2
(cd "$src" && apt-get -q "${apt_opts[@]}" download "$pkg" >&2)

deb=$(ls -t "$src"/${pkg}_*.deb | head -n 1)
echo ">> unpacking $(basename "$deb")" >&2
rm -rf "$src/deb"
dpkg-deb -x "$deb" "$src/deb"
tarball=$(ls "$src"/deb/usr/src/linux-source-7.3*.tar.* | head -n 1)
tar -C "$src" -xf "$tarball"
rm -rf "$src/deb"
tree=$(find "$src" -mindepth 1 -maxdepth 1 -type d -name 'linux-source-7.3*' | head -n 1)
touch "$tree/.unpacked"
echo "$tree"

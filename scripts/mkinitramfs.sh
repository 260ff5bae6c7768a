#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# Build the test guest's initramfs: busybox (static), the balloon driver
# modules, the installed kselftests, the harness's init and any other static
# programs (into /bin).
#
# Usage: mkinitramfs.sh OUT.cpio.gz INIT KSELFTEST_DIR|- MODULE.ko|PROGRAM...
set -euo pipefail

out=${1:?usage: mkinitramfs.sh OUT INIT KSFT_DIR MODULE...}
init=$2
ksft=$3
shift 3

[ -x /bin/busybox ] || { echo "mkinitramfs: need /bin/busybox (busybox-static)" >&2; exit 1; }

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,lib/modules}
cp /bin/busybox "$root/bin/busybox"
cp "$init" "$root/init"
for m in "$@"; do
	case "$m" in
	*.ko) cp "$m" "$root/lib/modules/" ;;
	*) cp "$m" "$root/bin/" ;;
	esac
done
[ "$ksft" = - ] || cp -r "$ksft" "$root/kselftest"
(cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -1) > "$out.tmp"
mv "$out.tmp" "$out"
echo ">> initramfs: $out ($(du -h "$out" | cut -f1))"

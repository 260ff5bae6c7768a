#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# Make a kernel tree that carries this project: a hard-linked copy of the
# user's (or Debian's) 7.3 source, with the patches of patches/series
# applied and the new files its entries list laid over it at their in-tree
# paths. The result is what `git am` of the series (make series) gives.
#
# The source tree is never written to. Files are staged first and then
# synced with checksums, so a file that did not change keeps its mtime and
# the next kernel build is incremental.
#
# Usage: prepare-tree.sh SRC_TREE WORK_TREE
set -euo pipefail

src=$(cd "${1:?usage: prepare-tree.sh SRC WORK}" && pwd)
work=${2:?usage: prepare-tree.sh SRC WORK}
repo=$(cd "$(dirname "$0")/.." && pwd)
. "$repo/scripts/series.sh"

[ -f "$src/Makefile" ] && [ -d "$src/rust" ] ||
	{ echo "prepare-tree: $src is not a kernel tree with rust/" >&2; exit 1; }
version=$(make -s -C "$src" kernelversion 2>/dev/null || true)
case "$version" in
7.3*) ;;
*) echo "prepare-tree: $src is version '$version', 7.3 is needed" >&2; exit 1 ;;
esac
if [ -f "$src/.config" ]; then
	echo "prepare-tree: $src has a .config; run 'make mrproper' there first" >&2
	exit 1
fi

if [ ! -f "$work/.vb-src" ] || [ "$(cat "$work/.vb-src")" != "$src" ]; then
	echo ">> copying $src to $work (hard links)"
	rm -rf "$work"
	mkdir -p "$(dirname "$work")"
	cp -al "$src" "$work" 2>/dev/null || { rm -rf "$work"; cp -a "$src" "$work"; }
	echo "$src" > "$work/.vb-src"
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

# Files the series edits: start from the pristine source, apply in order;
# then the new files of each entry.
series_entries "$repo" | while read -r p paths; do
	for f in $(sed -n 's|^+++ b/\([^[:space:]]*\).*|\1|p' "$repo/patches/$p"); do
		[ -f "$stage/$f" ] && continue
		mkdir -p "$stage/$(dirname "$f")"
		if [ -f "$src/$f" ]; then cp "$src/$f" "$stage/$f"; fi
	done
	patch -s -p1 -d "$stage" --fuzz=0 --batch --no-backup-if-mismatch < "$repo/patches/$p" ||
		{ echo "prepare-tree: patches/$p does not apply to $src" >&2; exit 1; }
	# shellcheck disable=SC2086 # the paths are words
	for f in $(series_files "$repo" $paths); do
		if [ -e "$src/$f" ]; then
			echo "prepare-tree: $f (patches/series, $p) is in the source already" >&2
			exit 1
		fi
		mkdir -p "$stage/$(dirname "$f")"
		cp "$repo/$f" "$stage/$f"
	done
done

# Files the previous run laid over that are gone now: restore the source's.
( cd "$stage" && find . -type f | sed 's|^\./||' | sort ) > "$stage.list"
if [ -f "$work/.vb-files" ]; then
	comm -23 "$work/.vb-files" "$stage.list" | while read -r f; do
		if [ -f "$src/$f" ]; then cp "$src/$f" "$work/$f"; else rm -f "$work/$f"; fi
	done
fi

rsync -rc "$stage/" "$work/"
mv "$stage.list" "$work/.vb-files"
echo ">> tree ready: $work"

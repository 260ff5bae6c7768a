#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# Write the project as a patch series for Linux 7.3, or check that the
# series yields the tree the build uses.
#
#   make-series.sh write SRC OUT   one patch per entry of patches/series and a
#                                  cover letter (patches/cover-letter), in OUT
#   make-series.sh check SRC OUT TREE
#                                  `git am` OUT onto a pristine copy of SRC and
#                                  compare the result with TREE (prepare-tree.sh)
#
# The pristine copy is a git repository of SRC made once, next to OUT
# ($OUT.git): a hard-linked copy of SRC with one commit. git replaces a file
# it changes instead of writing into it, so SRC itself is never written to;
# the check makes sure of that too.
#
# Author and Signed-off-by of the patches: git's user.name and user.email.
set -euo pipefail

cmd=${1:?usage: make-series.sh write|check SRC OUT [TREE]}
src=$(cd "${2:?SRC}" && pwd)
out=${3:?OUT}
repo=$(cd "$(dirname "$0")/.." && pwd)
base=$out.git
. "$repo/scripts/series.sh"

g() { git -C "$base" -c core.autocrlf=false "$@"; }

# The pristine repository, made once per source tree.
if [ ! -f "$base/.vb-src" ] || [ "$(cat "$base/.vb-src")" != "$src" ]; then
	echo ">> series: making a git repository of $src in $base (once)"
	rm -rf "$base"
	mkdir -p "$(dirname "$base")"
	cp -al "$src" "$base"
	g init -q
	echo "/.vb-src" > "$base/.git/info/exclude"
	g add -A -f
	g -c user.name=pristine -c user.email=pristine@localhost commit -q \
		-m "Linux $(make -s -C "$src" kernelversion) (pristine)"
	g tag -f pristine >/dev/null
	echo "$src" > "$base/.vb-src"
fi
g reset -q --hard pristine
g clean -fdxq -e /.vb-src

case $cmd in
write)
	name=$(git -C "$repo" config user.name || git -C "$repo" log -1 --format=%an)
	email=$(git -C "$repo" config user.email || git -C "$repo" log -1 --format=%ae)
	id=(-c "user.name=$name" -c "user.email=$email")
	series_entries "$repo" | while read -r p paths; do
		g apply --index "$repo/patches/$p"
		# shellcheck disable=SC2086 # the paths are words
		for f in $(series_files "$repo" $paths); do
			mkdir -p "$base/$(dirname "$f")"
			cp "$repo/$f" "$base/$f"
			g add -f "$f"
		done
		# The patch's header is the commit message: the subject, then the body.
		sed -n '/^---$/q; p' "$repo/patches/$p" |
			sed '1s/^Subject: \(\[PATCH\] \)\?//' |
			g "${id[@]}" commit -q -s -F -
	done
	rm -rf "$out"
	n=$(g rev-list --count pristine..HEAD)
	g "${id[@]}" format-patch -q --cover-letter --thread=shallow --base=pristine \
		-o "$out" pristine..HEAD
	# The cover letter: subject and text from patches/cover-letter.
	cover=$(ls "$out"/0000-*.patch)
	subject=$(sed -n '1p' "$repo/patches/cover-letter")
	sed -n '3,$p' "$repo/patches/cover-letter" > "$out/.blurb"
	sed -i -e "s|\*\*\* SUBJECT HERE \*\*\*|$subject|" \
		-e "/\*\*\* BLURB HERE \*\*\*/{r $out/.blurb
d}" "$cover"
	rm -f "$out/.blurb"
	g reset -q --hard pristine
	echo ">> series: $n patches and a cover letter in $out"
	;;
check)
	tree=${4:?TREE}
	[ -f "$tree/.vb-files" ] || { echo "series: $tree is not a prepared tree" >&2; exit 1; }
	ls "$out"/0001-*.patch >/dev/null 2>&1 || { echo "series: no series in $out" >&2; exit 1; }
	g -c user.name=check -c user.email=check@localhost am -q --whitespace=error-all \
		$(ls "$out"/[0-9]*.patch | grep -v '/0000-') ||
		{ g am --abort 2>/dev/null; echo "series: $out does not apply to $src" >&2; exit 1; }
	bad=0
	# Every file the series touches, and every file the build lays over the source.
	files=$( { g diff --name-only pristine HEAD; cat "$tree/.vb-files"; } | sort -u)
	for f in $files; do
		if [ ! -f "$base/$f" ] || [ ! -f "$tree/$f" ]; then
			echo "series: $f is only in $([ -f "$base/$f" ] && echo the series || echo the build tree)"
			bad=1
		elif ! cmp -s "$base/$f" "$tree/$f"; then
			echo "series: $f differs from the build tree"
			bad=1
		fi
	done
	# The pristine source must not have been written to through a hard link.
	for f in $(g diff --name-only pristine HEAD); do
		if [ -f "$src/$f" ] && cmp -s "$src/$f" "$base/$f" &&
			! g diff --quiet pristine HEAD -- "$f"; then
			echo "series: $src/$f was changed"
			bad=1
		fi
	done
	n=$(g rev-list --count pristine..HEAD)
	g reset -q --hard pristine
	[ $bad -eq 0 ] || { echo "series: the series and the build tree differ" >&2; exit 1; }
	echo ">> series: $n patches apply to $src with git am and give the build tree ($(echo "$files" | wc -l) files)"
	;;
*)
	echo "usage: make-series.sh write|check SRC OUT [TREE]" >&2
	exit 2
	;;
esac

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
# The pristine copy is a git repository of SRC made once, at $OUT.git: a
# hard-linked copy of SRC with one commit. git replaces a file it changes
# (it unlinks it and creates a new one) instead of writing into it, so SRC
# itself is never written to; the check makes sure of that too.
#
# Author and Signed-off-by of the patches: git's user.name and user.email.
set -euo pipefail

cmd=${1:?usage: make-series.sh write|check SRC OUT [TREE]}
src=$(cd "${2:?SRC}" && pwd)
out=${3:?OUT}
repo=$(cd "$(dirname "$0")/.." && pwd)
. "$repo/scripts/series.sh"

# OUT: absolute, outside the repository, and only ever holding a series.
out=$(realpath -m "$out")
case "$out/" in
"$repo"/*) echo "series: $out is inside the repository; choose another SERIES" >&2; exit 1 ;;
esac
if [ -d "$out" ] && [ ! -f "$out/.vb-series" ] && [ -n "$(ls -A "$out")" ]; then
	echo "series: $out is not empty and holds no series; choose another SERIES" >&2
	exit 1
fi
base=$out.git

# git without the user's configuration or hooks, and without automatic gc
# (which would pack the whole kernel in the background).
g() {
	GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1 git -C "$base" \
		-c core.hooksPath=/dev/null -c gc.auto=0 -c maintenance.auto=false \
		-c core.autocrlf=false "$@"
}

# The pristine repository, made once per source tree (its path and version).
stamp="$src $(make -s -C "$src" kernelversion) $(stat -c %Y "$src/Makefile")"
if [ ! -f "$base/.vb-src" ] || [ "$(cat "$base/.vb-src")" != "$stamp" ]; then
	echo ">> series: making a git repository of $src in $base (once)"
	rm -rf "$base"
	mkdir -p "$(dirname "$base")"
	cp -al "$src" "$base" 2>/dev/null || { rm -rf "$base"; cp -a "$src" "$base"; }
	# A source that is a git checkout: its .git is hard-linked, not ours to use.
	rm -rf "$base/.git"
	g init -q
	echo "/.vb-src" > "$base/.git/info/exclude"
	g add -A -f
	g -c user.name=pristine -c user.email=pristine@localhost commit -q \
		-m "Linux $(make -s -C "$src" kernelversion) (pristine)"
	g tag -f pristine >/dev/null
	echo "$stamp" > "$base/.vb-src"
fi
g am --abort >/dev/null 2>&1 || true
g reset -q --hard pristine
g clean -fdxq -e /.vb-src

orphans=$(series_orphans "$repo")
if [ -n "$orphans" ]; then
	echo "series: files no entry of patches/series lists (neither built nor in the series):" >&2
	echo "$orphans" | sed 's/^/   /' >&2
	exit 1
fi

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
	mkdir -p "$out"
	rm -f "$out"/[0-9][0-9][0-9][0-9]-*.patch
	touch "$out/.vb-series"
	n=$(g rev-list --count pristine..HEAD)
	g "${id[@]}" format-patch -q --cover-letter --thread=shallow -o "$out" pristine..HEAD
	# The cover letter: subject and text from patches/cover-letter.
	cover=$(ls "$out"/0000-*.patch)
	awk -v subject="$(sed -n 1p "$repo/patches/cover-letter")" \
		-v blurb="$repo/patches/cover-letter" '
		/\*\*\* SUBJECT HERE \*\*\*/ { sub(/\*\*\* SUBJECT HERE \*\*\*/, ""); print $0 subject; next }
		/\*\*\* BLURB HERE \*\*\*/ { n = 0; while ((getline l < blurb) > 0) if (++n > 2) print l; next }
		{ print }' "$cover" > "$cover.tmp"
	mv "$cover.tmp" "$cover"
	g reset -q --hard pristine
	echo ">> series: $n patches and a cover letter in $out"
	;;
check)
	tree=${4:?TREE}
	[ -f "$tree/.vb-files" ] || { echo "series: $tree is not a prepared tree" >&2; exit 1; }
	patches=$(ls "$out"/[0-9][0-9][0-9][0-9]-*.patch 2>/dev/null | grep -v '/0000-' || true)
	[ -n "$patches" ] || { echo "series: no series in $out" >&2; exit 1; }
	# shellcheck disable=SC2086 # one word per patch
	if ! g -c user.name=check -c user.email=check@localhost am -q --whitespace=error-all \
		$patches; then
		g am --abort >/dev/null 2>&1 || true
		echo "series: $out does not apply to $src" >&2
		exit 1
	fi
	bad=0
	# Every file the series touches, and every file the build lays over the source.
	changed=$(g diff --name-only pristine HEAD)
	files=$( { echo "$changed"; cat "$tree/.vb-files"; } | sort -u)
	for f in $files; do
		if [ ! -f "$base/$f" ] || [ ! -f "$tree/$f" ]; then
			echo "series: $f is only in $([ -f "$base/$f" ] && echo the series || echo the build tree)"
			bad=1
		elif ! cmp -s "$base/$f" "$tree/$f"; then
			echo "series: $f differs from the build tree"
			bad=1
		fi
		if [ -f "$base/$f" ] && [ -f "$tree/$f" ] &&
			[ "$(stat -c %a "$base/$f" | cut -c1)" != "$(stat -c %a "$tree/$f" | cut -c1)" ]; then
			echo "series: $f has another mode than in the build tree"
			bad=1
		fi
	done
	# The pristine source must still be pristine: nothing wrote through a hard link.
	for f in $changed; do
		[ -f "$src/$f" ] || continue
		if ! g show "pristine:$f" | cmp -s - "$src/$f"; then
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

# SPDX-License-Identifier: GPL-2.0
#
# Reading patches/series, for prepare-tree.sh and make-series.sh (sourced).
#
# An entry is a patch name at the start of a line, followed by indented
# lines that name the new files the entry adds (files or directories of the
# repository). Comments start with '#'.

# Prints one line per entry: the patch name, then its new paths.
series_entries() {
	awk '/^[[:space:]]*(#|$)/ { next }
	     /^[^[:space:]]/ { if (e != "") print e; e = $1; next }
	     { e = e " " $1 }
	     END { if (e != "") print e }' "$1/patches/series"
}

# Prints the files under the repository paths given after the repository
# that git tracks (outside a git checkout, every file): a new file is part of
# the build and the series once it is added to git.
series_files() {
	local repo=$1
	shift
	[ $# -gt 0 ] || return 0
	if git -C "$repo" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
		git -C "$repo" ls-files -c -- "$@" |
			while read -r f; do [ -f "$repo/$f" ] && echo "$f"; done
	else
		(cd "$repo" && find "$@" -type f)
	fi | sort -u
}

# Prints the repository's files under the kernel-tree directories that no
# entry of patches/series lists: they would be in neither the build nor the
# series.
series_orphans() {
	local repo=$1
	# shellcheck disable=SC2046 # the paths are words
	comm -23 <(git -C "$repo" ls-files -c -- Documentation drivers kernel rust tools | sort) \
		<(series_files "$repo" $(series_entries "$repo" | cut -s -d' ' -f2-) | sort)
}

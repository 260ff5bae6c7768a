#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# The kernel's own tools on everything the series carries; prints one line
# per tool and exits non-zero on any finding that patches/lint-exceptions
# does not excuse, or when a tool cannot run.
#
#   checkpatch   scripts/checkpatch.pl --strict on every patch of the series
#   rustfmt      make rustfmtcheck
#   clippy       CLIPPY=1 W=1: the rust/ directory and the driver, built in
#                a build directory of their own (LINT), so that the test
#                kernel's objects are not rebuilt
#   rustdoc      make rustdoc, in LINT
#   docutils     the .rst files of the series
#   kernel-doc   scripts/kernel-doc -Wall on the C files of the series
#   harness      cargo clippy -D warnings and cargo fmt --check on balloon-vmtest
#
# clippy and rustdoc run again only when a file of the series, the
# configuration, the toolchain or this script changed; then the kernel
# crate, the C helpers and the driver are always recompiled, so that their
# warnings are reported even when only another file changed. The result of
# the last run is kept in LINT.
#
# Usage: lint.sh TREE BUILD LINT SERIES_DIR CARGO_TARGET_DIR
#   Environment: LLVM (default -19), JOBS (default: number of CPUs)
set -uo pipefail
shopt -s nullglob

tree=${1:?usage: lint.sh TREE BUILD LINT SERIES CARGO_TARGET}
build=${2:?} lint=${3:?} series=${4:?} cargo_target=${5:?}
llvm=${LLVM:--19}
jobs=${JOBS:-$(nproc)}
repo=$(cd "$(dirname "$0")/.." && pwd)
log=$lint/lint.log
mkdir -p "$lint"
: > "$log"
failed=0
exceptions=$repo/patches/lint-exceptions

# A finding is excused when patches/lint-exceptions has a line
# "TOOL FILE TYPE  reason" whose TOOL matches, FILE is a glob of the file
# the finding is in, and TYPE is the checkpatch type (or * for any).
excused() {
	local tool=$1 file=$2 type=$3 t f ty
	while read -r t f ty _; do
		case "$t" in ''|'#'*) continue ;; esac
		# shellcheck disable=SC2053 # globs on purpose
		[[ $t == "$tool" && $file == $f && ( $ty == '*' || $ty == "$type" ) ]] && return 0
	done < "$exceptions"
	return 1
}

report() {	# TOOL FINDINGS EXCUSED WHAT
	printf '   %-11s %3d finding(s), %d excused  (%s)\n' "$1" "$2" "$3" "$4"
	[ "$2" -eq 0 ] || failed=1
}

# Findings of a tool that failed without saying why count as one.
at_least_one() {	# RC COUNT
	if [ "$1" -ne 0 ] && [ "$2" -eq 0 ]; then echo 1; else echo "$2"; fi
}

echo ">> lint (details in $log)"

# checkpatch --strict, one patch at a time, from the tree (it reads MAINTAINERS and spelling.txt).
n=0 ex=0 np=0
for p in "$series"/[0-9][0-9][0-9][0-9]-*.patch; do
	case "$p" in */0000-*) continue ;; esac
	np=$((np + 1))
	out=$(cd "$tree" && scripts/checkpatch.pl --strict --show-types --no-summary --quiet "$p" 2>&1)
	rc=$?
	found=0 type=""
	while IFS= read -r line; do
		if [[ $line =~ ^(ERROR|WARNING|CHECK):([A-Z_0-9]+): ]]; then
			[ -z "$type" ] || { n=$((n + 1)); found=1; }	# a finding with no FILE line
			type=${BASH_REMATCH[2]}
		elif [ -n "$type" ] && [[ $line =~ FILE:\ ([^:]+): ]]; then
			if excused checkpatch "${BASH_REMATCH[1]}" "$type"; then
				ex=$((ex + 1))
			else
				n=$((n + 1))
			fi
			found=1 type=""
		fi
	done <<< "$out"
	[ -z "$type" ] || { n=$((n + 1)); found=1; }
	[ $rc -eq 0 ] || [ $found -ne 0 ] || n=$((n + 1))
	[ -z "$out" ] || printf '== checkpatch %s\n%s\n' "$(basename "$p")" "$out" >> "$log"
done
[ $np -gt 0 ] || { echo "   checkpatch: no patches in $series" >> "$log"; n=$((n + 1)); }
report checkpatch $n $ex "--strict, $np patches"

mk=(make -s -C "$tree" LLVM="$llvm" -j"$jobs")

# rustfmt: every Rust file of the tree, ours among them.
out=$("${mk[@]}" O="$build" rustfmtcheck 2>&1)
rc=$?
n=$(at_least_one $rc "$(grep -c '^Diff in' <<< "$out")")
[ -z "$out" ] || printf '== rustfmtcheck\n%s\n' "$out" >> "$log"
report rustfmt "$n" 0 "make rustfmtcheck"

# clippy and rustdoc, in their own build directory, when something changed.
sum=$( { cat "$build/.config" "$0"; rustc -V; clippy-driver -V; echo "$llvm";
	cd "$repo" && git ls-files -c rust drivers patches | sort | xargs cat; } |
	sha256sum | cut -d' ' -f1)
if [ "$(cat "$lint/.sum" 2>/dev/null)" != "$sum" ]; then
	cp "$build/.config" "$lint/.config"
	"${mk[@]}" O="$lint" olddefconfig >/dev/null 2>&1
	# Our crate and C files compile again, so that every warning of theirs shows.
	rm -f "$lint/rust/kernel.o" "$lint/rust/helpers/helpers.o" \
		"$lint"/drivers/virtio/virtio_balloon_rust/*.o
	"${mk[@]}" O="$lint" CLIPPY=1 W=1 rust/ drivers/virtio/virtio_balloon_rust/ \
		> "$lint/clippy.out" 2>&1
	echo $? > "$lint/clippy.rc"
	"${mk[@]}" O="$lint" rustdoc > "$lint/rustdoc.out" 2>&1
	echo $? > "$lint/rustdoc.rc"
	if [ "$(cat "$lint/clippy.rc")" -eq 0 ] && [ "$(cat "$lint/rustdoc.rc")" -eq 0 ]; then
		echo "$sum" > "$lint/.sum"
	else
		rm -f "$lint/.sum"
	fi
	cached=""
else
	cached=", unchanged since the last run"
fi
for t in clippy rustdoc; do
	n=$(grep -cE '(^|: )(warning|error)(\[|:)' "$lint/$t.out")
	n=$(at_least_one "$(cat "$lint/$t.rc")" "$n")
	[ -s "$lint/$t.out" ] && printf '== %s\n%s\n' "$t" "$(cat "$lint/$t.out")" >> "$log"
	case $t in
	clippy) report clippy "$n" 0 "CLIPPY=1 W=1 rust/ and the driver$cached" ;;
	rustdoc) report rustdoc "$n" 0 "make rustdoc$cached" ;;
	esac
done

# docutils on the .rst files, kernel-doc on the C files the series adds.
rst=$(cd "$repo" && git ls-files -c 'Documentation/*.rst')
n=0
if python3 -c 'import docutils' 2>/dev/null; then
	for f in $rst; do
		out=$(python3 -m docutils --report=2 --halt=5 "$repo/$f" /dev/null 2>&1)
		rc=$?
		[ -z "$out" ] && [ $rc -eq 0 ] && continue
		n=$((n + $(at_least_one $rc "$(grep -c '(\(WARNING\|ERROR\|SEVERE\)/' <<< "$out")")))
		printf '== docutils %s\n%s\n' "$f" "$out" >> "$log"
	done
else
	echo "== docutils: python3 has no docutils module (scripts/setup-host.sh installs it)" >> "$log"
	n=1
fi
report docutils $n 0 "$(wc -w <<< "$rst") files"
csrc=$(cd "$repo" && git ls-files -c 'rust/helpers/*.c' 'tools/testing/selftests/drivers/virtio_balloon/*.[ch]')
# shellcheck disable=SC2086 # one word per file
out=$(cd "$repo" && "$tree/scripts/kernel-doc" -none -Wall $csrc 2>&1)
rc=$?
n=$(at_least_one $rc "$(grep -c 'warning\|error' <<< "$out")")
[ -z "$out" ] || printf '== kernel-doc\n%s\n' "$out" >> "$log"
report kernel-doc "$n" 0 "$(wc -w <<< "$csrc") files"

# The host tool.
man=$repo/tools/virtio/balloon-vmtest/Cargo.toml
out=$(CARGO_TARGET_DIR=$cargo_target cargo clippy -q --release --manifest-path "$man" \
	--all-targets -- -D warnings 2>&1)
n=$(at_least_one $? "$(grep -cE '^(warning|error)' <<< "$out")")
out2=$(cargo fmt --manifest-path "$man" --check 2>&1)
n=$((n + $(at_least_one $? "$(grep -c '^Diff in' <<< "$out2")")))
[ -z "$out$out2" ] || printf '== harness\n%s\n%s\n' "$out" "$out2" >> "$log"
report harness "$n" 0 "cargo clippy -D warnings, cargo fmt --check"

if [ $failed -ne 0 ]; then
	echo "lint: findings above; see $log" >&2
	exit 1
fi

#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# Configure and build the test guest kernel out of tree.
#
# The configuration is tinyconfig plus the fragments under kernel/configs/.
# It is regenerated only when a fragment changes, and every option a fragment
# asks for is checked afterwards: Kconfig drops what it cannot satisfy
# silently, and a test kernel without KASAN would pass things it should not.
#
# Usage: build-kernel.sh TREE BUILD_DIR FRAGMENT...
#   Environment: LLVM (default -19), JOBS (default: number of CPUs)
set -euo pipefail

tree=${1:?usage: build-kernel.sh TREE BUILD FRAGMENT...}
build=${2:?usage: build-kernel.sh TREE BUILD FRAGMENT...}
shift 2
frags=("$@")
llvm=${LLVM:--19}
jobs=${JOBS:-$(nproc)}
mk=(make -s -C "$tree" O="$build" LLVM="$llvm" -j"$jobs")

mkdir -p "$build"
sum=$(cat "${frags[@]/#/$tree/}" | sha256sum | cut -d' ' -f1)
if [ ! -f "$build/.config" ] || [ "$(cat "$build/.vb-config-sum" 2>/dev/null)" != "$sum" ]; then
	echo ">> configuring $build: tinyconfig + ${frags[*]}"
	"${mk[@]}" tinyconfig >/dev/null
	"$tree/scripts/kconfig/merge_config.sh" -m -O "$build" "$build/.config" \
		"${frags[@]/#/$tree/}" >/dev/null
	"${mk[@]}" olddefconfig >/dev/null
	bad=0
	# What the fragments ask for, a later fragment overriding an earlier one
	# (as merge_config.sh does): "CONFIG_X=v" or "CONFIG_X=n" for "is not set".
	declare -A want from
	for f in "${frags[@]}"; do
		while IFS= read -r line; do
			case "$line" in
			'# CONFIG_'*' is not set') sym=${line#\# }; sym=${sym%% *}; line=$sym=n ;;
			CONFIG_*=*) sym=${line%%=*} ;;
			*) continue ;;
			esac
			want[$sym]=$line
			from[$sym]=$f
		done < "$tree/$f"
	done
	for sym in "${!want[@]}"; do
		line=${want[$sym]}
		case "$line" in
		*=n)
			grep -q "^$sym=" "$build/.config" &&
				{ echo "   ${from[$sym]}: $line, but .config has $(grep "^$sym=" "$build/.config")"; bad=1; } ;;
		*)
			grep -qx "$line" "$build/.config" ||
				{ echo "   ${from[$sym]}: $line, but .config has: $(grep -E "^(# )?$sym[= ]" "$build/.config" || echo nothing)"; bad=1; } ;;
		esac
	done
	if [ $bad -ne 0 ]; then
		echo "build-kernel: the options above did not survive olddefconfig" >&2
		exit 1
	fi
	echo "$sum" > "$build/.vb-config-sum"
fi

echo ">> building bzImage and modules in $build (LLVM=$llvm, -j$jobs)"
"${mk[@]}" bzImage modules
"${mk[@]}" headers >/dev/null
echo ">> kernel: $build/arch/x86/boot/bzImage ($(make -s -C "$tree" O="$build" kernelrelease))"

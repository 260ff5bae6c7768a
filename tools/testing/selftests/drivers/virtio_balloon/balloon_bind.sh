#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
#
# The balloon driver named by $BALLOON_DRV unbinds from the device and binds
# again through sysfs, leaving no page in the balloon.

DIR="$(dirname "$(readlink -f "$0")")"
. "$DIR"/../../kselftest/ktap_helpers.sh

drv=${BALLOON_DRV:-virtio_balloon}
dev=
for d in /sys/bus/virtio/devices/*; do
	[ "$(cat "$d/device" 2>/dev/null)" = 0x0005 ] && dev=$d
done

ktap_print_header
[ -n "$dev" ] || ktap_skip_all "no virtio-balloon device"
ktap_set_plan 3

name=$(basename "$dev")
bound() { [ "$(basename "$(readlink "$dev/driver" 2>/dev/null)")" = "$drv" ]; }

if bound; then ktap_test_pass "$drv is bound to $name"
else ktap_test_fail "$drv is bound to $name (bound: $(readlink "$dev/driver"))"; fi

echo "$name" > "/sys/bus/virtio/drivers/$drv/unbind" 2>/dev/null
if [ ! -e "$dev/driver" ] && [ "$(awk '/^Balloon:/ {print $2}' /proc/meminfo)" = 0 ]; then
	ktap_test_pass "unbind leaves the device free and the balloon empty"
else
	ktap_test_fail "unbind leaves the device free and the balloon empty"
fi

echo "$name" > "/sys/bus/virtio/drivers/$drv/bind" 2>/dev/null
if bound; then ktap_test_pass "$drv binds again"
else ktap_test_fail "$drv binds again"; fi

ktap_finished

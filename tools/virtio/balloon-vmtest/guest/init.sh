#!/bin/busybox sh
# SPDX-License-Identifier: GPL-2.0
#
# PID 1 of the balloon test guest. The kernel command line says what to do:
#   vb.driver=MODULE   balloon driver module to load (virtio_balloon, virtio_balloon_rust)
#   vb.mode=check      run the virtio_balloon kselftests, then power off
#   vb.tests=SEL,SEL   check: only these tests (FIXTURE or FIXTURE.TEST); the
#                      fixtures "balloon" and "polling" are balloon_test (the
#                      core suite), the "lifecycle*" fixtures are
#                      balloon_life_test, "faults", "soak" and "stop" are
#                      balloon_stress_test, every other one is in
#                      balloon_mm_test. Default: balloon.
#   vb.soak=N          check: target changes of soak.random_targets
#   vb.flap=S          check: seconds of soak.flapping_target
#   vb.stop=S          check: seconds of stop.long_mid_inflate
#   vb.mode=demo       print the guest's view of the balloon every 200 ms
#   vb.mode=idle       load the driver and wait (the host drives everything) until
#                      the host types "poweroff" on the console
#   vb.mode=bench      vb.driver=A,B: the drivers take turns, vb.rounds=N times
#                      (default 5), timing balloon changes through the host
#                      control port (see bench() below)
#   vb.mode=shell      an interactive shell on the console
# Lines starting with "@@" are for the host harness.

/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc none /proc
mount -t sysfs none /sys
mount -t devtmpfs none /dev 2>/dev/null
mount -t debugfs none /sys/kernel/debug
mount -t tmpfs none /tmp
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr

# Sends one request to the host harness and prints its answer (without "ok").
req() {
	n=$((n + 1))
	echo "#init.$n $*" >&3
	while read -r ans <&3; do
		case "$ans" in
		"#init.$n ok"*) ans=${ans#"#init.$n ok"}; echo "${ans# }"; return 0 ;;
		"#init.$n "*) echo "@@HOST-ERROR $ans"; return 1 ;;
		esac
	done
	return 1
}

# Guest CPU time used so far (all CPUs, user + system + irq), in 10 ms ticks.
busy() {
	awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat
}

# One timed change: DRIVER ROUND OP MIB TARGET_BYTES. The host answers with
# its timing; the guest adds its own CPU time.
bench_step() {
	c0=$(busy)
	a=$(req bench-target "$5") || return 1
	c1=$(busy)
	echo "@@BENCH drv=$1 round=$2 op=$3 mib=$4 $a guest_cpu_ms=$(((c1 - c0) * 10))"
}

# Runs sleeplat (1 ms sleeps) while "$@" runs; prints its summary.
with_sleeplat() {
	rm -f /tmp/lat.fifo
	mkfifo /tmp/lat.fifo
	/bin/sleeplat </tmp/lat.fifo >/tmp/lat.out &
	exec 4>/tmp/lat.fifo
	"$@" >/tmp/lat.step
	rc=$?
	exec 4>&-
	wait
	cat /tmp/lat.out /tmp/lat.step
	return $rc
}

# vb.mode=bench: DRIVERS (comma separated) take turns, in one order in odd
# rounds and the other in even ones; each round times inflate and deflate of
# 256 MiB, 1 GiB and 3 GiB, a 16 MiB change, and the 1 ms sleep latency of a
# process, idle and during a 3 GiB inflate.
bench() {
	for p in /sys/class/virtio-ports/*; do
		[ "$(cat "$p/name")" = org.kselftest.balloon ] && exec 3<>"/dev/$(basename "$p")"
	done
	n=0
	ram=$(req ram) || return
	# Kernel messages would split the @@BENCH lines on the shared console:
	# only emergencies print from here on.
	echo 1 >/proc/sys/kernel/printk
	order=$(echo "$1" | tr ',' ' ')
	reverse=$(for d in $order; do echo "$d"; done | tac | tr '\n' ' ')
	r=1
	while [ $r -le "$2" ]; do
		drivers=$order
		[ $((r % 2)) -eq 0 ] && drivers=$reverse
		for drv in $drivers; do
			insmod "/lib/modules/$drv.ko" || continue
			sleep 1
			for mib in 256 1024 3072; do
				bench_step "$drv" $r inflate $mib $((ram - mib * 1048576)) || break
				bench_step "$drv" $r deflate $mib "$ram" || break
			done
			bench_step "$drv" $r small-inflate 16 $((ram - 16 * 1048576))
			bench_step "$drv" $r small-deflate 16 "$ram"
			l=$(with_sleeplat sleep 2)
			echo "@@BENCH drv=$drv round=$r op=latency-idle mib=3072 $l"
			l=$(with_sleeplat req bench-target $((ram - 3072 * 1048576)) | tr '\n' ' ')
			echo "@@BENCH drv=$drv round=$r op=latency mib=3072 $l"
			req target "$ram" >/dev/null
			rmmod "$drv"
		done
		r=$((r + 1))
	done
}

driver=virtio_balloon
mode=check
tests=balloon
rounds=5
for arg in $(cat /proc/cmdline); do
	case "$arg" in
	vb.driver=*) driver=${arg#vb.driver=} ;;
	vb.mode=*) mode=${arg#vb.mode=} ;;
	vb.tests=*) tests=${arg#vb.tests=} ;;
	vb.rounds=*) rounds=${arg#vb.rounds=} ;;
	esac
done

# The kselftest programs that hold the selected tests, as run_kselftest.sh -t options.
programs() {
	core=
	mm=
	life=
	stress=
	for sel in $(echo "$1" | tr ',' ' '); do
		case "${sel%%.*}" in
		balloon | polling) core=1 ;;
		lifecycle*) life=1 ;;
		faults | soak | stop) stress=1 ;;
		*) mm=1 ;;
		esac
	done
	# run_kselftest.sh keeps this order. The life cycle goes before the mm
	# tests: those then also run on a device that was suspended and replugged,
	# and hint.migration_skips_free_memory leaves a free page report pending
	# for 300 s, which a reporting check after it would wait for.
	[ -n "$core" ] && printf ' -t drivers/virtio_balloon:balloon_test'
	[ -n "$life" ] && printf ' -t drivers/virtio_balloon:balloon_life_test'
	[ -n "$mm" ] && printf ' -t drivers/virtio_balloon:balloon_mm_test'
	[ -n "$stress" ] && printf ' -t drivers/virtio_balloon:balloon_stress_test'
}

echo "@@BOOTED uptime=$(cut -d' ' -f1 /proc/uptime) kernel=$(uname -r)"
if [ "$mode" = bench ]; then
	bench "$driver" "$rounds"
	echo "@@BENCH-DONE"
	echo "@@POWEROFF"
	poweroff -f
fi
if [ -d "/sys/bus/virtio/drivers/$driver" ]; then
	echo "@@BUILTIN $driver"
elif insmod "/lib/modules/$driver.ko"; then
	echo "@@LOADED $driver"
else
	echo "@@LOAD-FAILED $driver"
fi

balloon_dev() {
	for d in /sys/bus/virtio/devices/*; do
		[ "$(cat "$d/device" 2>/dev/null)" = 0x0005 ] && echo "$d"
	done
}
# Give the driver a moment to probe before reporting what is bound.
dev=$(balloon_dev)
i=0
while [ -n "$dev" ] && [ ! -e "$dev/driver" ] && [ $i -lt 20 ]; do
	sleep 0.1
	i=$((i + 1))
done
bound=none
[ -n "$dev" ] && [ -e "$dev/driver" ] && bound=$(basename "$(readlink "$dev/driver")")
echo "@@BOUND ${bound} features=$(cat "$dev/features" 2>/dev/null)"

kmemleak_report() {
	# The write fails (EPERM) when kmemleak is off: booted with kmemleak=off,
	# or it turned itself off (its object pool ran out).
	if ! echo scan 2>/dev/null >/sys/kernel/debug/kmemleak; then
		echo "@@KMEMLEAK-OFF"
		return
	fi
	echo scan > /sys/kernel/debug/kmemleak
	echo "@@KMEMLEAK-BEGIN"
	cat /sys/kernel/debug/kmemleak
	echo "@@KMEMLEAK-END"
}

case "$mode" in
check)
	cd /kselftest || exit 1
	echo "@@TESTS $tests"
	# shellcheck disable=SC2046 # one word per option
	BALLOON_DRV=$driver BALLOON_TESTS=$tests ./run_kselftest.sh $(programs "$tests")
	rc=$?
	cd /
	echo "@@KSFT-DONE rc=$rc"
	kmemleak_report
	;;
idle)
	echo "@@IDLE"
	# The host types "poweroff" on the console when it is done.
	while :; do
		read -r cmd || { sleep 3600; continue; }
		[ "$cmd" = poweroff ] && break
	done
	;;
demo)
	while :; do
		m=$(awk '/^(MemTotal|MemFree|Balloon):/ {printf "%s%s ", $1, $2}' /proc/meminfo)
		echo "@@GUEST $m"
		sleep 0.2
	done
	;;
*)
	echo "@@SHELL"
	setsid cttyhack sh
	;;
esac
echo "@@POWEROFF"
poweroff -f

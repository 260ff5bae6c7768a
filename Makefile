# SPDX-License-Identifier: GPL-2.0
#
# virtio-balloon in Rust: build a debug guest kernel carrying the driver,
# boot it under QEMU and run the kselftests against the C and Rust drivers.
#
#   make run     boot a guest with our driver and show the balloon working
#   make check   build everything and run the whole test suite
#   make bench   time both drivers on a release (non-debug) kernel
#   make soak    1000 random balloon targets under memory stress, both drivers
#
# Build outputs live in $(CACHE), outside the checkout, so a fresh clone on
# the same machine rebuilds only what changed. `make help` lists the knobs.

CACHE   ?= $(or $(VB_CACHE),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/virtio-balloon-rust)
KDIR    ?=
LLVM    ?= -19
JOBS    ?= $(shell nproc)
ACCEL   ?= tcg
MEM     ?= 1024
DRIVERS ?= virtio_balloon virtio_balloon_rust
DEVICES ?= plain deflate-on-oom reporting hint hint-reporting soak poison poison-unsupported zero-on-free zero-on-free-unsupported
DRIVER  ?= virtio_balloon_rust
ROUNDS  ?= 5
BOOTS   ?= 2
SOAK    ?= 1000
FLAP    ?= 60
STOP    ?= 150

TREE    := $(CACHE)/tree
BUILD   := $(CACHE)/build/debug
KSFT    := $(CACHE)/kselftest
INITRD  := $(CACHE)/initramfs.cpio.gz
LOGS    := $(CACHE)/logs
SERIES  ?= $(CACHE)/series
LINT    := $(CACHE)/build/lint
HARNESS_DIR := tools/virtio/balloon-vmtest
HARNESS := $(CACHE)/cargo/release/balloon-vmtest
FRAGMENTS := kernel/configs/virtio_balloon_guest.config kernel/configs/virtio_balloon_debug.config
RELEASE := $(CACHE)/build/release
RELEASE_INITRD := $(CACHE)/initramfs-release.cpio.gz
BUILTIN := $(CACHE)/build/builtin
BUILTIN_INITRD := $(CACHE)/initramfs-builtin.cpio.gz
# What make builtin runs: the core tests that need no module load or unload.
BUILTIN_TESTS := balloon.driver_bound+balloon.inflate_reaches_target_exactly+$\
	balloon.deflate_returns_every_page+balloon.host_stats_match_guest+$\
	balloon.steps_reach_exact_targets+lifecycle.unbind_mid_inflate_returns_every_page
MODULES := $(BUILD)/drivers/virtio/virtio_balloon.ko $(BUILD)/drivers/virtio/virtio_balloon_rust/virtio_balloon_rust.ko
VMARGS  := --kernel $(BUILD)/arch/x86/boot/bzImage --initrd $(INITRD) \
	   --accel $(ACCEL) --mem $(MEM) --log-dir $(LOGS)
CARGO   := CARGO_TARGET_DIR=$(CACHE)/cargo cargo

.NOTPARALLEL:
.PHONY: all setup tree kernel selftests initramfs harness harness-test check run bench soak release-kernel \
	series series-check lint builtin builtin-kernel kunit clean help

all: initramfs harness

setup:
	@scripts/setup-host.sh

# The 7.3 source: KDIR, or Debian's linux-source-7.3 (downloaded once).
SRC_TREE = src="$(KDIR)"; [ -n "$$src" ] || src=$$(scripts/fetch-kernel.sh $(CACHE))

tree: setup
	@$(SRC_TREE); scripts/prepare-tree.sh "$$src" $(TREE)

kernel: tree
	@LLVM=$(LLVM) JOBS=$(JOBS) scripts/build-kernel.sh $(TREE) $(BUILD) $(FRAGMENTS)

selftests: kernel
	@rm -rf $(KSFT)
	@$(MAKE) -s -C $(TREE)/tools/testing/selftests O=$(BUILD) \
		TARGETS=drivers/virtio_balloon KSFT_INSTALL_PATH=$(KSFT) \
		USERCFLAGS=-static install >/dev/null

initramfs: selftests
	@scripts/mkinitramfs.sh $(INITRD) $(HARNESS_DIR)/guest/init.sh $(KSFT) $(MODULES)

harness: setup
	@$(CARGO) build --release -q --manifest-path $(HARNESS_DIR)/Cargo.toml

harness-test: setup
	@$(CARGO) test --release -q --manifest-path $(HARNESS_DIR)/Cargo.toml

# The project as a patch series for 7.3 (SERIES=DIR to choose where), and the
# check that `git am` of it onto the pristine source gives the build's tree.
series: tree
	@$(SRC_TREE); scripts/make-series.sh write "$$src" $(SERIES)

series-check: series
	@$(SRC_TREE); scripts/make-series.sh check "$$src" $(SERIES) $(TREE)

# checkpatch, rustfmt, clippy, rustdoc, docutils, kernel-doc and the host tool's
# clippy and rustfmt (scripts/lint.sh).
lint: series-check
	@[ -f $(BUILD)/.config ] || $(MAKE) -s kernel
	@LLVM=$(LLVM) JOBS=$(JOBS) scripts/lint.sh $(TREE) $(BUILD) $(LINT) $(SERIES) $(CACHE)/cargo

# The lint, then the guest suite: both run, and either fails the check.
check: all harness-test
	@rc=0; $(MAKE) -s --no-print-directory lint || rc=1; \
	$(HARNESS) check $(VMARGS) --boots $(BOOTS) $(addprefix --driver ,$(DRIVERS)) \
		$(addprefix --device ,$(DEVICES)) || rc=1; exit $$rc

SOAK_DEVICE = soak,guest=vb.soak=$(SOAK),guest=vb.flap=$(FLAP),guest=vb.stop=$(STOP),$\
	kmemleak=on,tests=faults.hinting_and_reporting+soak+stop
# The long soak, with kmemleak: make check runs the same tests with 30 target
# changes, 5 s of a flapping target, no long stop and no kmemleak.
soak: all
	@$(HARNESS) check $(VMARGS) --test-timeout 7200 $(addprefix --driver ,$(DRIVERS)) \
		--device $(SOAK_DEVICE)

run: all
	@$(HARNESS) demo $(VMARGS) --driver $(DRIVER) --fallback virtio_balloon

# Speed is measured on a kernel without KASAN and lock debugging, which slow
# the drivers down about tenfold. Both drivers run in the same boot.
release-kernel: tree
	@LLVM=$(LLVM) JOBS=$(JOBS) scripts/build-kernel.sh $(TREE) $(RELEASE) \
		kernel/configs/virtio_balloon_guest.config

# The guest's 1 ms sleep-latency probe (static: the initramfs has no libc) and
# the host's 4 KiB discard-rate program.
$(CACHE)/bin/sleeplat: $(HARNESS_DIR)/guest/sleeplat.c
	@mkdir -p $(@D) && $(CC) -static -O2 -Wall -Wextra -o $@ $<
$(CACHE)/bin/discard_limit: $(HARNESS_DIR)/host/discard_limit.c
	@mkdir -p $(@D) && $(CC) -O2 -Wall -Wextra -o $@ $<

bench: release-kernel harness $(CACHE)/bin/sleeplat $(CACHE)/bin/discard_limit
	@scripts/mkinitramfs.sh $(RELEASE_INITRD) $(HARNESS_DIR)/guest/init.sh - \
		$(RELEASE)/drivers/virtio/virtio_balloon.ko $(RELEASE)/drivers/virtio/virtio_balloon_rust/virtio_balloon_rust.ko \
		$(CACHE)/bin/sleeplat
	@$(HARNESS) bench --kernel $(RELEASE)/arch/x86/boot/bzImage --initrd $(RELEASE_INITRD) \
		--accel $(ACCEL) --mem 4096 --cpus 2 --rounds $(ROUNDS) --log-dir $(LOGS) \
		--out $(CACHE)/bench --discard-prog $(CACHE)/bin/discard_limit $(addprefix --driver ,$(DRIVERS))

# The Rust driver built into the kernel and the C driver not built
# (kernel/configs/virtio_balloon_builtin.config), booted through the core tests.
builtin-kernel: tree
	@LLVM=$(LLVM) JOBS=$(JOBS) scripts/build-kernel.sh $(TREE) $(BUILTIN) \
		kernel/configs/virtio_balloon_guest.config kernel/configs/virtio_balloon_builtin.config

builtin: builtin-kernel selftests harness
	@scripts/mkinitramfs.sh $(BUILTIN_INITRD) $(HARNESS_DIR)/guest/init.sh $(KSFT)
	@$(HARNESS) check --kernel $(BUILTIN)/arch/x86/boot/bzImage --initrd $(BUILTIN_INITRD) \
		--accel $(ACCEL) --mem $(MEM) --log-dir $(LOGS) --driver virtio_balloon_rust \
		--device kmemleak=off,tests=$(BUILTIN_TESTS)

# The Rust KUnit tests the kernel's way: kunit.py with the driver's .kunitconfig,
# in a build directory of its own (make check runs them in every debug boot).
# kunit.py asks QEMU for KVM first; with ACCEL=tcg it runs where /dev/kvm is
# masked, as a /dev/kvm that exists but does not work would hang the guest.
KUNIT_RUN = cd $(TREE) && tools/testing/kunit/kunit.py run --arch=x86_64 \
	--build_dir=$(CACHE)/build/kunit --make_options LLVM=$(LLVM) --jobs $(JOBS) \
	--kunitconfig=drivers/virtio/virtio_balloon_rust
kunit: tree
ifeq ($(ACCEL),tcg)
	@unshare -m sh -c 'if [ -e /dev/kvm ]; then mount --bind /dev/null /dev/kvm; fi; $(KUNIT_RUN)'
else
	@$(KUNIT_RUN)
endif

clean:
	rm -rf $(BUILD) $(RELEASE) $(BUILTIN) $(CACHE)/build/kunit $(KSFT) $(INITRD) $(RELEASE_INITRD) $(LOGS) $(CACHE)/cargo

help:
	@echo "make run | check | bench | soak | series | lint | builtin | kunit | all | kernel | harness | clean"
	@echo "  KDIR=$(KDIR)  (empty: Debian's linux-source-7.3, unpacked in CACHE)"
	@echo "  CACHE=$(CACHE)"
	@echo "  LLVM=$(LLVM) JOBS=$(JOBS) ACCEL=$(ACCEL) MEM=$(MEM)"
	@echo "  BOOTS=$(BOOTS) (check: guests at a time)  SERIES=$(SERIES)"
	@echo "  DRIVERS=$(DRIVERS)  DEVICES=$(DEVICES)  DRIVER=$(DRIVER) (run)  ROUNDS=$(ROUNDS) (bench)  SOAK=$(SOAK) FLAP=$(FLAP) STOP=$(STOP) (soak)"

// SPDX-License-Identifier: GPL-2.0
/*
 * virtio balloon: the device's life cycle around the balloon.
 *
 * Suspend and resume (to idle and to RAM), suspend while the balloon moves,
 * the wakeup event that holds suspend off while the balloon changes, a VM
 * paused mid-inflate, hot-unplug and hot-plug of the device, and unbinds
 * mid-inflate and after a suspend. After each: the host's actual reaches its
 * target again, stats still flow, and MemTotal and nr_balloon_pages agree
 * with the host.
 *
 * The wake sources, found under QEMU 10 (pc machine, ACPI): the RTC alarm
 * does not end suspend-to-idle there (QEMU raises the ACPI RTC event only
 * for a guest in S3), so the host presses the ACPI power button until the
 * guest is back (wake-idle); from S3 the host wakes the guest with
 * system_wakeup once QEMU sees it suspended (wake-after-suspend), with the
 * RTC alarm as a fallback so that a lost wake fails the test instead of
 * hanging it. After every suspend the tests bind virtio_console again to get
 * their control port back (see reopen_host()).
 *
 * Fixtures: "lifecycle" (the plain configuration), "lifecycle_features"
 * (hint-reporting: one cycle with every feature the device offers) and
 * "lifecycle_s3" (a one-CPU boot: see suspend_mem_woken_by_host).
 */
#include <signal.h>
#include <sys/mman.h>

#include "kselftest_harness.h"
#include "balloon_host.h"

#define VIRTIO_ID_CONSOLE	3
#define STEP		(128 * MIB)
/*
 * Free memory after pages come back (MemFree and the per-CPU lists) moves
 * with what the kernel allocated meanwhile. A quarter of the balloon still
 * tells a lost one.
 */
#define FREE_SLACK	(STEP / 4)
/* The Rust driver's reserve: an eighth of MemTotal, at least 64 MiB (size.rs). */
#define RESERVE_MIN	(64 * MIB)
/* "A large target": all but the reserve and this much of what is available. */
#define LARGE_SPARE	(64 * MIB)
/* How often the host presses the power button while the guest suspends to idle. */
#define PRESS_MS	1500
/* The same where an early press would abort the suspend (wakeup count protocol). */
#define SETTLED_PRESS_MS 4000
/* An RTC alarm that wakes an S3 guest the host failed to wake. */
#define RTC_FALLBACK	"+60"
#define PAUSE_MS	10000
/* Reporting after a resume: QEMU's RSS falls by most of what the guest freed. */
#define DIRTY		(256 * MIB)
#define DIRTY_BACK	(128 * MIB)
#define REPORT_WAIT_MS	10000
#define LIFE_TIMEOUT	600

#define POWER_STATE	"/sys/power/state"
#define MEM_SLEEP	"/sys/power/mem_sleep"
#define WAKEUP_COUNT	"/sys/power/wakeup_count"
#define SUSPEND_OK	"/sys/power/suspend_stats/success"
#define RTC_ALARM	"/sys/class/rtc/rtc0/wakealarm"
#define SHRINKER_DIR	"/sys/kernel/debug/shrinker"

static void life_teardown(struct balloon_ctx *c)
{
	char path[PATH_MAX];

	if (c->host < 0)
		return;
	if (c->wakeup) {
		snprintf(path, sizeof(path), "%s/power/wakeup", c->dev);
		sysfs_write(path, "disabled");
	}
	if (c->unbound)
		bind_driver(c, 1);
	/* A test that failed between unplug and plug leaves the guest without a balloon. */
	if (!find_balloon(c->dev, sizeof(c->dev))) {
		host_req(c->host, c->why, sizeof(c->why), "plug");
		wait_bound(c, 30);
	}
	balloon_ctx_teardown(c);
}

FIXTURE(lifecycle) { struct balloon_ctx c; };
FIXTURE_SETUP(lifecycle) { balloon_ctx_setup(_metadata, &self->c); }
FIXTURE_TEARDOWN(lifecycle) { life_teardown(&self->c); }

FIXTURE(lifecycle_features) { struct balloon_ctx c; };
FIXTURE_SETUP(lifecycle_features) { balloon_ctx_setup(_metadata, &self->c); }
FIXTURE_TEARDOWN(lifecycle_features) { life_teardown(&self->c); }

FIXTURE(lifecycle_s3) { struct balloon_ctx c; };
FIXTURE_SETUP(lifecycle_s3) { balloon_ctx_setup(_metadata, &self->c); }
FIXTURE_TEARDOWN(lifecycle_s3) { life_teardown(&self->c); }

/* Where memory that is not free went: the /proc/meminfo lines that explain most of it. */
static void log_meminfo(struct __test_metadata *_metadata)
{
	static const char * const keys[] = {
		"MemFree", "Cached", "AnonPages", "Slab", "SUnreclaim", "KernelStack",
		"PageTables", "Percpu", "Balloon",
	};
	char line[512];
	int n = 0;

	for (size_t i = 0; i < ARRAY_SIZE(keys); i++)
		n += snprintf(line + n, sizeof(line) - n, " %s=%lldK", keys[i],
			      proc_meminfo(keys[i]) / 1024);
	TH_LOG("meminfo:%s per-CPU lists=%lldK", line, pcp_pages() * getpagesize() / 1024);
}

/* Every page is back: no balloon, MemTotal as before, free memory close to it. */
static void expect_all_back(struct __test_metadata *_metadata, struct balloon_ctx *c,
			    long long total0, long long free0)
{
	long long free = free_bytes();

	expect_balloon(_metadata, c, 0, total0);
	TH_LOG("free memory %lld MiB, %lld MiB before", free / MIB, free0 / MIB);
	EXPECT_LE(free0 - FREE_SLACK, free) {
		TH_LOG("free %lld MiB (%lld MiB on per-CPU lists), %lld MiB before", free / MIB,
		       pcp_pages() * getpagesize() / MIB, free0 / MIB);
		log_meminfo(_metadata);
	}
}

/* A guest-stats update made after the request reaches the host, and says MemTotal. */
static void expect_stats(struct __test_metadata *_metadata, struct balloon_ctx *c)
{
	long long total;

	ASSERT_EQ(0, host_req(c->host, c->why, sizeof(c->why), "stats")) {
		TH_LOG("host 'stats': %s", c->why);
	}
	refresh_counters();
	total = proc_meminfo("MemTotal");
	EXPECT_EQ(total, kv(c->why, "stat-total-memory")) TH_LOG("host stats: %s", c->why);
}

/*
 * A target most of what is available can fill, that the Rust driver's reserve
 * (MemTotal / 8, at least 64 MiB) still allows, in whole MiB.
 */
static long long large_balloon(void)
{
	long long total, avail, reserve;

	refresh_counters();
	total = proc_meminfo("MemTotal");
	avail = proc_meminfo("MemAvailable");
	reserve = max_ll(total / 8, RESERVE_MIN);
	return (avail - reserve - LARGE_SPARE) / MIB * MIB;
}

/*
 * Waits up to @secs for the guest's balloon to hold at least @bytes, to act
 * in the middle of an inflate; returns what it holds, -1 if not that much.
 */
static long long wait_inflating(long long bytes, int secs)
{
	long long have = 0;

	for (int i = 0; i < secs * 100; i++) {
		refresh_counters();
		have = proc_vmstat("nr_balloon_pages") * getpagesize();
		if (have >= bytes)
			return have;
		usleep(10 * 1000);
	}
	return -1;
}

/*
 * Sets a target @bytes below full RAM and returns once a quarter of it is in
 * (what the balloon then holds), to act in the middle of a large inflate.
 */
static long long start_inflate(struct __test_metadata *_metadata,
			       struct balloon_ctx *c, long long bytes)
{
	long long at;

	ASSERT_EQ(0, host_req(c->host, c->why, sizeof(c->why), "set %lld",
			      c->ram - bytes)) {
		TH_LOG("host 'set': %s", c->why);
	}
	at = wait_inflating(bytes / 4, 30);
	ASSERT_LT(0, at) TH_LOG("the balloon did not inflate");
	return at;
}

static long long suspend_count(void)
{
	return read_num(SUSPEND_OK);
}

/*
 * The control port after a suspend: virtio_console's restore (7.3) asks the
 * host for the port's state before it gives the control receive queue its
 * buffers, so QEMU's answer (PORT_OPEN) finds none and is lost; the port
 * then reads EOF and blocks writers for good. Binding virtio_console to the
 * device again asks anew. Closes and reopens c->host; 0 on success.
 */
static int reopen_host(struct balloon_ctx *c)
{
	DIR *d = opendir("/sys/bus/virtio/devices");
	char path[PATH_MAX], id[32], name[64] = "";
	struct dirent *e;

	if (!d)
		return -1;
	while ((e = readdir(d))) {
		snprintf(path, sizeof(path), "/sys/bus/virtio/devices/%s/device", e->d_name);
		if (e->d_name[0] != '.' && !read_line(path, id, sizeof(id)) &&
		    strtol(id, NULL, 0) == VIRTIO_ID_CONSOLE)
			snprintf(name, sizeof(name), "%.60s", e->d_name);
	}
	closedir(d);
	if (!name[0])
		return -1;
	close(c->host);
	c->host = -1;
	if (sysfs_write("/sys/bus/virtio/drivers/virtio_console/unbind", name) ||
	    sysfs_write("/sys/bus/virtio/drivers/virtio_console/bind", name))
		return -1;
	for (int i = 0; i < 100 && c->host < 0; i++) {
		c->host = open_host();
		if (c->host < 0)
			usleep(100 * 1000);
	}
	return c->host < 0 ? -1 : 0;
}

/*
 * Suspends to idle: the host presses the power button every @press_ms until
 * the guest is back and says so. Returns 0 or the -errno of the write to
 * /sys/power/state (-EIO: the control port failed, c->why says how); *@ms
 * gets how long the write took.
 */
static int suspend_idle_pressed(struct balloon_ctx *c, long long *ms, int press_ms)
{
	long long start = now_ms();
	int r;

	if (host_req(c->host, c->why, sizeof(c->why), "wake-idle %d", press_ms))
		return -EIO;
	r = sysfs_write(POWER_STATE, "freeze");
	*ms = now_ms() - start;
	if (reopen_host(c)) {
		snprintf(c->why, sizeof(c->why), "control port gone after the suspend");
		return -EIO;
	}
	if (host_req(c->host, c->why, sizeof(c->why), "wake-status"))
		return -EIO;
	return r;
}

static int suspend_idle(struct balloon_ctx *c, long long *ms)
{
	return suspend_idle_pressed(c, ms, PRESS_MS);
}

/* Only interrupts a read of /sys/power/wakeup_count, which blocks while an event is held. */
static void on_alarm(int sig)
{
	(void)sig;
}

/* /sys/power/wakeup_count, -1 if the read still blocks after @secs (an event is held). */
static long long read_wakeup_count(int secs)
{
	struct sigaction sa = { .sa_handler = on_alarm };
	char buf[32];
	ssize_t n;
	int fd;

	sigemptyset(&sa.sa_mask);
	sigaction(SIGALRM, &sa, NULL);
	fd = open(WAKEUP_COUNT, O_RDONLY);
	if (fd < 0)
		return -1;
	alarm(secs);
	n = read(fd, buf, sizeof(buf) - 1);
	alarm(0);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = '\0';
	return strtoll(buf, NULL, 10);
}

/*
 * The user-space half of the wakeup count protocol: a suspend after this
 * fails with EBUSY if a wakeup event started or ended since @count was read.
 */
static int write_wakeup_count(long long count)
{
	char buf[32];

	snprintf(buf, sizeof(buf), "%lld", count);
	return sysfs_write(WAKEUP_COUNT, buf);
}

static long long dev_power(struct balloon_ctx *c, const char *attr)
{
	char path[PATH_MAX];

	snprintf(path, sizeof(path), "%s/power/%s", c->dev, attr);
	return read_num(path);
}

/* Checks after a resume: the host's target comes back exactly, stats flow. */
static void expect_resumed(struct __test_metadata *_metadata, struct balloon_ctx *c,
			   long long bytes, long long total0)
{
	ASSERT_EQ(0, balloon_to(_metadata, c, bytes));
	expect_balloon(_metadata, c, bytes, total0);
	expect_stats(_metadata, c);
}

/*
 * Five suspends to idle with 128 MiB ballooned. The drivers empty the balloon
 * on freeze and inflate to the host's target again on restore: after each
 * resume the host's actual is back at the target, stats flow, and MemTotal and
 * nr_balloon_pages agree with it. Every suspend really happened (suspend_stats).
 * At the end every page comes back.
 */
TEST_F_TIMEOUT(lifecycle, suspend_idle_five_times, LIFE_TIMEOUT)
{
	struct balloon_ctx *c = &self->c;
	long long total0, free0, ok0, ms;

	refresh_counters();
	total0 = proc_meminfo("MemTotal");
	free0 = free_bytes();
	ok0 = suspend_count();
	ASSERT_EQ(0, balloon_to(_metadata, c, STEP));
	for (int i = 1; i <= 5; i++) {
		int r = suspend_idle(c, &ms);

		ASSERT_EQ(0, r) TH_LOG("suspend %d: %s (%s)", i, strerror(-r), c->why);
		TH_LOG("suspend %d: back after %lld ms (%s)", i, ms, c->why);
		expect_resumed(_metadata, c, STEP, total0);
	}
	EXPECT_EQ(ok0 + 5, suspend_count());
	ASSERT_EQ(0, balloon_to(_metadata, c, 0));
	expect_all_back(_metadata, c, total0, free0);
}

/*
 * Suspend while the balloon inflates to a large target: after the resume the
 * balloon settles exactly at the target, and everything comes back after.
 */
TEST_F_TIMEOUT(lifecycle, suspend_during_large_inflate, LIFE_TIMEOUT)
{
	struct balloon_ctx *c = &self->c;
	long long total0, free0, big, at, ms;
	int r;

	refresh_counters();
	total0 = proc_meminfo("MemTotal");
	free0 = free_bytes();
	big = large_balloon();
	ASSERT_LT(STEP, big);
	at = start_inflate(_metadata, c, big);
	r = suspend_idle(c, &ms);
	ASSERT_EQ(0, r) TH_LOG("suspend: %s (%s)", strerror(-r), c->why);
	TH_LOG("suspended with %lld of %lld MiB inflated; back after %lld ms", at / MIB,
	       big / MIB, ms);
	expect_resumed(_metadata, c, big, total0);
	ASSERT_EQ(0, balloon_to(_metadata, c, 0));
	expect_all_back(_metadata, c, total0, free0);
}

/*
 * With wakeup enabled on the device, the driver holds a wakeup event while the
 * balloon changes (as the C driver does since Linux 6.x): the event starts
 * with the change (wakeup_active_count grows), is active whenever the host's
 * actual is not yet the target, and ends once it is. A suspend under the
 * wakeup count protocol (read /sys/power/wakeup_count, write it back, then
 * suspend) fails with EBUSY when the change started after the count was read,
 * and goes through once the balloon settled. Deterministic: the event began
 * after the count was taken, whether or not it is still active at the suspend.
 */
TEST_F_TIMEOUT(lifecycle, wakeup_blocks_suspend_mid_change, LIFE_TIMEOUT)
{
	struct balloon_ctx *c = &self->c;
	long long total0, big, want, count, act0, actual, ms;
	int r = -1, held = 0, loose = 0;
	char path[PATH_MAX];

	refresh_counters();
	total0 = proc_meminfo("MemTotal");
	big = large_balloon();
	ASSERT_LT(STEP, big);
	want = c->ram - big;
	snprintf(path, sizeof(path), "%s/power/wakeup", c->dev);
	ASSERT_EQ(0, sysfs_write(path, "enabled")) TH_LOG("%s: not wakeup-capable", c->dev);
	c->wakeup = 1;
	act0 = dev_power(c, "wakeup_active_count");
	ASSERT_LE(0, act0);

	count = read_wakeup_count(20);
	ASSERT_LE(0, count) TH_LOG("a wakeup event is held with the balloon at rest");
	ASSERT_EQ(0, write_wakeup_count(count));
	ASSERT_EQ(0, host_req(c->host, c->why, sizeof(c->why), "set %lld", want)) {
		TH_LOG("host 'set': %s", c->why);
	}
	for (int i = 0; i < 1000 && dev_power(c, "wakeup_active_count") == act0; i++)
		usleep(10 * 1000);
	ASSERT_LT(act0, dev_power(c, "wakeup_active_count")) {
		TH_LOG("no wakeup event for the balloon change");
	}
	r = suspend_idle(c, &ms);
	EXPECT_EQ(-EBUSY, r) TH_LOG("suspend mid-change: %s (%s)", strerror(-r), c->why);

	/* Read wakeup_active before actual: an unfinished change then was unfinished before. */
	for (int i = 0; i < 6000; i++) {
		long long active = dev_power(c, "wakeup_active");

		actual = host_num(c->host, c->why, sizeof(c->why), "actual");
		if (actual == want)
			break;
		if (active == 1)
			held++;
		else
			loose++;
		usleep(10 * 1000);
	}
	TH_LOG("%d samples mid-change: %d with the event active", held + loose, held);
	EXPECT_EQ(0, loose) TH_LOG("the balloon changed without a wakeup event held");
	ASSERT_EQ(0, balloon_to(_metadata, c, big));
	for (int i = 0; i < 100 && dev_power(c, "wakeup_active") != 0; i++)
		usleep(50 * 1000);
	EXPECT_EQ(0, dev_power(c, "wakeup_active")) TH_LOG("the event outlived the change");

	/*
	 * Settled (at STEP: freeze empties the balloon, and a small one empties
	 * fast): the suspend goes through. A power button press that lands
	 * before the guest is in suspend-to-idle is a wakeup event too, so the
	 * first comes late, and a suspend it cut short is tried again.
	 */
	ASSERT_EQ(0, balloon_to(_metadata, c, STEP));
	for (int i = 0; i < 3 && r; i++) {
		count = read_wakeup_count(20);
		ASSERT_LE(0, count) TH_LOG("a wakeup event is held after the balloon settled");
		if (write_wakeup_count(count))
			continue;
		r = suspend_idle_pressed(c, &ms, SETTLED_PRESS_MS);
		TH_LOG("suspend after the change: %s after %lld ms", r ? strerror(-r) : "ok", ms);
	}
	ASSERT_EQ(0, r);
	expect_resumed(_metadata, c, STEP, total0);
}

/*
 * The VM stops for 10 s in the middle of an inflate (QMP stop, cont). The
 * balloon then reaches its target exactly and guest and host agree.
 */
TEST_F_TIMEOUT(lifecycle, pause_mid_inflate, LIFE_TIMEOUT)
{
	struct balloon_ctx *c = &self->c;
	long long total0, big, at, ms;

	refresh_counters();
	total0 = proc_meminfo("MemTotal");
	big = large_balloon();
	ASSERT_LT(STEP, big);
	at = start_inflate(_metadata, c, big);
	ASSERT_EQ(0, host_req(c->host, c->why, sizeof(c->why), "pause %d", PAUSE_MS)) {
		TH_LOG("host 'pause': %s", c->why);
	}
	ms = kv(c->why, "ms");
	TH_LOG("paused at %lld of %lld MiB for %lld ms", at / MIB, big / MIB, ms);
	EXPECT_LE(PAUSE_MS, ms);
	ASSERT_EQ(0, balloon_to(_metadata, c, big));
	expect_balloon(_metadata, c, big, total0);
	ASSERT_EQ(0, balloon_to(_metadata, c, 0));
	expect_balloon(_metadata, c, 0, total0);
}

/*
 * Hot-unplugs the device (ACPI PCI hotplug) with the balloon at @below, or on
 * its way there when @wait is 0: every page comes back to the guest and the
 * device is gone. A new device then binds to the driver under test and
 * reaches the host's target.
 */
static void unplug_and_plug(struct __test_metadata *_metadata, struct balloon_ctx *c,
			    long long below, int wait)
{
	long long total0, free0, at, actual;
	char dev[DEV_PATH_MAX];

	refresh_counters();
	total0 = proc_meminfo("MemTotal");
	free0 = free_bytes();
	if (wait) {
		ASSERT_EQ(0, balloon_to(_metadata, c, below));
		at = below;
	} else {
		at = start_inflate(_metadata, c, below);
	}
	ASSERT_EQ(0, host_req(c->host, c->why, sizeof(c->why), "unplug")) {
		TH_LOG("host 'unplug': %s", c->why);
	}
	TH_LOG("unplugged with %lld MiB ballooned: %s", at / MIB, c->why);
	EXPECT_FALSE(find_balloon(dev, sizeof(dev))) TH_LOG("%s is still there", dev);
	expect_all_back(_metadata, c, total0, free0);

	ASSERT_EQ(0, host_req(c->host, c->why, sizeof(c->why), "plug")) {
		TH_LOG("host 'plug': %s", c->why);
	}
	ASSERT_EQ(0, wait_bound(c, 30)) TH_LOG("no new balloon bound to %s", driver_name());
	TH_LOG("plugged: %s is %s", c->why, c->dev);
	/* A new device starts empty. */
	actual = host_num(c->host, c->why, sizeof(c->why), "actual");
	EXPECT_EQ(c->ram, actual);
	ASSERT_EQ(0, balloon_to(_metadata, c, STEP));
	expect_balloon(_metadata, c, STEP, total0);
	ASSERT_EQ(0, balloon_to(_metadata, c, 0));
	expect_balloon(_metadata, c, 0, total0);
}

TEST_F_TIMEOUT(lifecycle, unplug_inflated, LIFE_TIMEOUT)
{
	unplug_and_plug(_metadata, &self->c, STEP, 1);
}

TEST_F_TIMEOUT(lifecycle, unplug_mid_inflate, LIFE_TIMEOUT)
{
	long long big = large_balloon();

	ASSERT_LT(STEP, big);
	unplug_and_plug(_metadata, &self->c, big, 0);
}

/*
 * After a suspend and resume, unbinding the driver gives every page back and
 * binding it again inflates to the target: the device's state after restore
 * must be what unbind tears down (KASAN, kmemleak and lockdep watch the rest).
 */
TEST_F_TIMEOUT(lifecycle, unbind_after_suspend_returns_every_page, LIFE_TIMEOUT)
{
	struct balloon_ctx *c = &self->c;
	long long total0, free0, ms;
	int r;

	refresh_counters();
	total0 = proc_meminfo("MemTotal");
	free0 = free_bytes();
	ASSERT_EQ(0, balloon_to(_metadata, c, STEP));
	r = suspend_idle(c, &ms);
	ASSERT_EQ(0, r) TH_LOG("suspend: %s (%s)", strerror(-r), c->why);
	ASSERT_EQ(0, balloon_to(_metadata, c, STEP));

	ASSERT_EQ(0, bind_driver(c, 0));
	expect_all_back(_metadata, c, total0, free0);
	EXPECT_EQ(c->ram, host_num(c->host, c->why, sizeof(c->why), "actual"));
	ASSERT_EQ(0, bind_driver(c, 1));
	ASSERT_EQ(0, balloon_to(_metadata, c, STEP));
	expect_balloon(_metadata, c, STEP, total0);
}

/*
 * Unbinding the driver while the balloon inflates to a large target: the size
 * work stops, every page comes back, the host hears of all of them; binding
 * again inflates to the unchanged target exactly.
 */
TEST_F_TIMEOUT(lifecycle, unbind_mid_inflate_returns_every_page, LIFE_TIMEOUT)
{
	struct balloon_ctx *c = &self->c;
	long long total0, free0, big, at;

	refresh_counters();
	total0 = proc_meminfo("MemTotal");
	free0 = free_bytes();
	big = large_balloon();
	ASSERT_LT(STEP, big);
	at = start_inflate(_metadata, c, big);
	ASSERT_EQ(0, bind_driver(c, 0));
	TH_LOG("unbound with %lld of %lld MiB inflated", at / MIB, big / MIB);
	expect_all_back(_metadata, c, total0, free0);
	EXPECT_EQ(c->ram, host_num(c->host, c->why, sizeof(c->why), "actual"));
	ASSERT_EQ(0, bind_driver(c, 1));
	ASSERT_EQ(0, balloon_to(_metadata, c, big));
	expect_balloon(_metadata, c, big, total0);
	ASSERT_EQ(0, balloon_to(_metadata, c, 0));
	expect_balloon(_metadata, c, 0, total0);
}

/* Free page hinting shrinkers registered: their directories in debugfs. */
static int shrinkers(void)
{
	DIR *d = opendir(SHRINKER_DIR);
	struct dirent *e;
	int n = 0;

	if (!d)
		return -1;
	while ((e = readdir(d)))
		n += !strncmp(e->d_name, "virtio-balloon-", 15);
	closedir(d);
	return n;
}

/*
 * One suspend and resume with every feature the device offers (hint-reporting:
 * free page hinting, reporting, stats). The negotiated features are the same
 * after it, the balloon and stats come back, the hinting shrinker is registered
 * once (not twice, not gone), and reporting still returns freed memory to the
 * host.
 */
TEST_F_TIMEOUT(lifecycle_features, suspend_keeps_features, LIFE_TIMEOUT)
{
	struct balloon_ctx *c = &self->c;
	long long total0, ms, rss0, rss, drop = 0, start;
	char path[PATH_MAX], f0[256], f1[256];
	int r;

	snprintf(path, sizeof(path), "%s/features", c->dev);
	ASSERT_EQ(0, read_line(path, f0, sizeof(f0)));
	refresh_counters();
	total0 = proc_meminfo("MemTotal");
	ASSERT_EQ(0, balloon_to(_metadata, c, STEP));
	if (c->hint)
		EXPECT_EQ(1, shrinkers());
	r = suspend_idle(c, &ms);
	ASSERT_EQ(0, r) TH_LOG("suspend: %s (%s)", strerror(-r), c->why);
	TH_LOG("back after %lld ms", ms);
	ASSERT_EQ(0, read_line(path, f1, sizeof(f1)));
	EXPECT_STREQ(f0, f1);
	expect_resumed(_metadata, c, STEP, total0);
	if (c->hint)
		EXPECT_EQ(1, shrinkers()) TH_LOG("hinting shrinkers after the resume");
	if (c->reporting) {
		rss0 = host_num(c->host, c->why, sizeof(c->why), "rss");
		ASSERT_LT(0, rss0) TH_LOG("host 'rss': %s", c->why);
		ASSERT_EQ(0, dirty_and_free(DIRTY));
		rss0 = max_ll(rss0, host_num(c->host, c->why, sizeof(c->why), "rss"));
		start = now_ms();
		while (drop < DIRTY_BACK && now_ms() - start < REPORT_WAIT_MS) {
			usleep(100 * 1000);
			rss = host_num(c->host, c->why, sizeof(c->why), "rss");
			ASSERT_LT(0, rss) TH_LOG("host 'rss': %s", c->why);
			drop = max_ll(drop, rss0 - rss);
		}
		TH_LOG("QEMU RSS fell by %lld MiB after %lld MiB were freed", drop / MIB,
		       DIRTY / MIB);
		EXPECT_LE(DIRTY_BACK, drop);
	}
	ASSERT_EQ(0, balloon_to(_metadata, c, 0));
	expect_balloon(_metadata, c, 0, total0);
}

/*
 * Suspend to RAM (ACPI S3), woken by the host with system_wakeup once QEMU
 * sees the guest suspended; then the same checks as after a suspend to idle.
 *
 * Under TCG a guest with two CPUs takes from 3 s to minutes to resume from S3
 * (seen here: timer and RCU softirqs keep CPU 0 busy, and ACPI's PCI link
 * methods run slowly with the debug options; with one CPU it takes 3 s
 * every time), so the test runs in a one-CPU boot and skips in others.
 */
TEST_F_TIMEOUT(lifecycle_s3, suspend_mem_woken_by_host, LIFE_TIMEOUT)
{
	struct balloon_ctx *c = &self->c;
	long long total0, free0, ok0, start, ms;
	char states[256], modes[256];
	int r;

	if (read_line(POWER_STATE, states, sizeof(states)) || !strstr(states, "mem"))
		SKIP(return, "no suspend to RAM here (/sys/power/state)");
	if (read_line(MEM_SLEEP, modes, sizeof(modes)) || !strstr(modes, "deep"))
		SKIP(return, "no S3 here (/sys/power/mem_sleep: %s)", modes);
	if (sysconf(_SC_NPROCESSORS_ONLN) > 1)
		SKIP(return, "S3 resume of a guest with several CPUs takes minutes under TCG: run with cpus=1");
	ASSERT_EQ(0, sysfs_write(MEM_SLEEP, "deep"));
	refresh_counters();
	total0 = proc_meminfo("MemTotal");
	free0 = free_bytes();
	ok0 = suspend_count();
	log_meminfo(_metadata);
	ASSERT_EQ(0, balloon_to(_metadata, c, STEP));

	sysfs_write(RTC_ALARM, "0");
	ASSERT_EQ(0, sysfs_write(RTC_ALARM, RTC_FALLBACK));
	ASSERT_EQ(0, host_req(c->host, c->why, sizeof(c->why), "wake-after-suspend")) {
		TH_LOG("host 'wake-after-suspend': %s", c->why);
	}
	start = now_ms();
	r = sysfs_write(POWER_STATE, "mem");
	ms = now_ms() - start;
	sysfs_write(RTC_ALARM, "0");
	ASSERT_EQ(0, reopen_host(c)) TH_LOG("control port gone after the suspend");
	ASSERT_EQ(0, r) TH_LOG("suspend to RAM: %s", strerror(-r));
	ASSERT_EQ(0, host_req(c->host, c->why, sizeof(c->why), "wake-status")) {
		TH_LOG("host 'wake-status': %s", c->why);
	}
	TH_LOG("back after %lld ms; host: %s", ms, c->why);
	EXPECT_EQ(1, kv(c->why, "woke")) TH_LOG("the host never saw the guest suspended");
	EXPECT_EQ(ok0 + 1, suspend_count());
	expect_resumed(_metadata, c, STEP, total0);
	ASSERT_EQ(0, balloon_to(_metadata, c, 0));
	expect_all_back(_metadata, c, total0, free0);
}

int main(int argc, char **argv)
{
	char **args = balloon_test_args(&argc, argv);

	return test_harness_run(argc, args);
}

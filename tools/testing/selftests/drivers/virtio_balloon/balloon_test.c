// SPDX-License-Identifier: GPL-2.0
/*
 * virtio balloon: what the guest sees against what the host sees.
 *
 * Runs inside a guest with a virtio-balloon device. The driver under test is
 * named by $BALLOON_DRV (default virtio_balloon). Tests that need the host
 * (set the target, read QEMU's view) talk to the harness over the
 * org.kselftest.balloon virtio-serial port, and skip without it.
 */
#include "kselftest_harness.h"
#include "balloon_host.h"

#define STEP		(128 * MIB)
/* Gauges (free, available, caches) move while they are being compared. */
#define GAUGE_SLACK	(8 * MIB)
/*
 * MemFree after pages come back: freed pages sit on per-CPU lists for a while
 * and do not count as free. A quarter of the balloon still tells a lost one.
 */
#define FREE_SLACK	(STEP / 4)
/*
 * Per test: two target changes (the host gives each 60 s), plus teardown.
 * The default of kselftest_harness.h (30 s) is too short for a debug kernel
 * under TCG when something is slow, and a test killed mid-request says less
 * than one that gets the host's answer.
 */
#define BALLOON_TEST_TIMEOUT	200

FIXTURE(balloon) {
	struct balloon_ctx b;
};

FIXTURE_SETUP(balloon)
{
	balloon_ctx_setup(_metadata, &self->b);
}

FIXTURE_TEARDOWN(balloon)
{
	if (self->b.host >= 0) {
		/* Leave the guest at full size whatever happened. */
		host_num(self->b.host, self->b.why, sizeof(self->b.why), "target %lld",
			 self->b.ram);
		close(self->b.host);
	}
}

/* Waits up to @secs for the guest's balloon to be @bytes and the host to agree. */
static int wait_balloon(struct balloon_ctx *self, long long bytes, int secs)
{
	for (int i = 0; i < secs * 10; i++) {
		refresh_counters();
		if (proc_meminfo("Balloon") == bytes &&
		    host_num(self->host, self->why, sizeof(self->why), "actual") ==
			    self->ram - bytes)
			return 0;
		usleep(100 * 1000);
	}
	return -1;
}

TEST_F_TIMEOUT(balloon, driver_bound, BALLOON_TEST_TIMEOUT)
{
	char drv[128];
	int bit;

	bound_driver(self->b.dev, drv, sizeof(drv));
	ASSERT_STREQ(driver_name(), drv) {
		TH_LOG("%s is bound to '%s'", self->b.dev, drv);
	}
	bit = device_feature(self->b.dev, VIRTIO_BALLOON_F_DEFLATE_ON_OOM);
	EXPECT_EQ(self->b.deflate_on_oom, bit) {
		TH_LOG("DEFLATE_ON_OOM negotiated %d, host property %d", bit,
		       self->b.deflate_on_oom);
	}
}

TEST_F_TIMEOUT(balloon, inflate_reaches_target_exactly, BALLOON_TEST_TIMEOUT)
{
	long long total0, free0, pages;

	refresh_counters();
	total0 = proc_meminfo("MemTotal");
	/*
	 * Free memory with the per-CPU lists: a balloon page taken from them
	 * never counted in MemFree, and a few MiB of them moved MemFree by that
	 * much less than the balloon (seen right after boot).
	 */
	free0 = free_bytes();
	ASSERT_EQ(0, balloon_to(_metadata, &self->b, STEP));

	EXPECT_EQ(STEP, proc_meminfo("Balloon"));
	pages = proc_vmstat("nr_balloon_pages");
	EXPECT_EQ(STEP, pages * getpagesize());
	if (self->b.deflate_on_oom) {
		/* Ballooned pages stay managed: they can come back on OOM. */
		EXPECT_EQ(total0, proc_meminfo("MemTotal"));
		EXPECT_GE(free0 - STEP + GAUGE_SLACK, free_bytes());
	} else {
		EXPECT_EQ(total0 - STEP, proc_meminfo("MemTotal"));
	}
}

TEST_F_TIMEOUT(balloon, deflate_returns_every_page, BALLOON_TEST_TIMEOUT)
{
	long long total0, inflated0, deflated0;

	refresh_counters();
	total0 = proc_meminfo("MemTotal");
	inflated0 = proc_vmstat("balloon_inflate");
	deflated0 = proc_vmstat("balloon_deflate");
	ASSERT_EQ(0, balloon_to(_metadata, &self->b, STEP));
	ASSERT_EQ(0, balloon_to(_metadata, &self->b, 0));

	EXPECT_EQ(0, proc_meminfo("Balloon"));
	EXPECT_EQ(0, proc_vmstat("nr_balloon_pages"));
	EXPECT_EQ(total0, proc_meminfo("MemTotal"));
	EXPECT_EQ(STEP / getpagesize(), proc_vmstat("balloon_inflate") - inflated0);
	EXPECT_EQ(STEP / getpagesize(), proc_vmstat("balloon_deflate") - deflated0);
}

/*
 * A stat the host reported must lie between the guest's readings before the
 * request and after the answer. QEMU lists every tag it knows, with -1 for
 * one the guest did not send: that is a driver bug. A tag missing from the
 * answer is one this QEMU does not know, and cannot be compared.
 */
#define EXPECT_STAT(lo, stats, key, hi) do {					\
	long long __v = kv(stats, key);						\
	if (__v == KV_ABSENT) {							\
		TH_LOG("%s: not known to this QEMU, not compared", key);	\
		break;								\
	}									\
	EXPECT_NE(-1, __v) TH_LOG("%s: the guest did not send it", key);	\
	EXPECT_LE((lo), __v) TH_LOG("%s: host %lld < guest %lld", key,	\
				     __v, (long long)(lo));			\
	EXPECT_GE((hi), __v) TH_LOG("%s: host %lld > guest %lld", key,	\
				     __v, (long long)(hi));			\
} while (0)

struct guest_view {
	long long total, free, avail, caches;
	long long swap_in, swap_out, majflt, minflt, oom_kill, stalls;
	long long async_scan, direct_scan, async_reclaim, direct_reclaim;
	long long htlb_alloc, htlb_fail;
};

static void guest_view(struct guest_view *g)
{
	long long page = getpagesize();

	refresh_counters();
	g->total = proc_meminfo("MemTotal");
	g->free = proc_meminfo("MemFree");
	g->avail = proc_meminfo("MemAvailable");
	/* NR_FILE_PAGES, which meminfo splits into Cached, SwapCached, Buffers */
	g->caches = proc_meminfo("Cached") + proc_meminfo("SwapCached") + proc_meminfo("Buffers");
	g->swap_in = proc_vmstat("pswpin") * page;
	g->swap_out = proc_vmstat("pswpout") * page;
	g->majflt = proc_vmstat("pgmajfault");
	g->minflt = proc_vmstat("pgfault");
	g->oom_kill = proc_vmstat("oom_kill");
	/* one counter per zone the kernel has */
	g->stalls = proc_vmstat_sum("allocstall_");
	g->async_scan = proc_vmstat("pgscan_kswapd") * page;
	g->direct_scan = proc_vmstat("pgscan_direct") * page;
	g->async_reclaim = proc_vmstat("pgsteal_kswapd") * page;
	g->direct_reclaim = proc_vmstat("pgsteal_direct") * page;
	g->htlb_alloc = proc_vmstat("htlb_buddy_alloc_success");
	g->htlb_fail = proc_vmstat("htlb_buddy_alloc_fail");
}

TEST_F_TIMEOUT(balloon, host_stats_match_guest, BALLOON_TEST_TIMEOUT)
{
	struct guest_view a, b;
	const char *s = self->b.why;

	guest_view(&a);
	/* The host waits for a stats update the guest made after this request. */
	ASSERT_EQ(0, host_req(self->b.host, self->b.why, sizeof(self->b.why), "stats")) {
		TH_LOG("host 'stats': %s", self->b.why);
	}
	guest_view(&b);
	TH_LOG("host stats: %s", s);

	EXPECT_EQ(a.total, kv(s, "stat-total-memory"));
	EXPECT_STAT(min_ll(a.free, b.free) - GAUGE_SLACK, s, "stat-free-memory",
		    max_ll(a.free, b.free) + GAUGE_SLACK);
	EXPECT_STAT(min_ll(a.avail, b.avail) - GAUGE_SLACK, s, "stat-available-memory",
		    max_ll(a.avail, b.avail) + GAUGE_SLACK);
	EXPECT_STAT(min_ll(a.caches, b.caches) - GAUGE_SLACK, s, "stat-disk-caches",
		    max_ll(a.caches, b.caches) + GAUGE_SLACK);
	EXPECT_STAT(a.swap_in, s, "stat-swap-in", b.swap_in);
	EXPECT_STAT(a.swap_out, s, "stat-swap-out", b.swap_out);
	EXPECT_STAT(a.majflt, s, "stat-major-faults", b.majflt);
	EXPECT_STAT(a.minflt, s, "stat-minor-faults", b.minflt);
	EXPECT_STAT(a.oom_kill, s, "stat-oom-kills", b.oom_kill);
	EXPECT_STAT(a.stalls, s, "stat-alloc-stalls", b.stalls);
	EXPECT_STAT(a.async_scan, s, "stat-async-scans", b.async_scan);
	EXPECT_STAT(a.direct_scan, s, "stat-direct-scans", b.direct_scan);
	EXPECT_STAT(a.async_reclaim, s, "stat-async-reclaims", b.async_reclaim);
	EXPECT_STAT(a.direct_reclaim, s, "stat-direct-reclaims", b.direct_reclaim);
	EXPECT_STAT(a.htlb_alloc, s, "stat-htlb-pgalloc", b.htlb_alloc);
	EXPECT_STAT(a.htlb_fail, s, "stat-htlb-pgfail", b.htlb_fail);
}

/* Inflate and deflate in several steps; every step lands exactly. */
TEST_F_TIMEOUT(balloon, steps_reach_exact_targets, 600)
{
	static const int steps_mib[] = { 64, 192, 96, 320, 8, 200, 0 };
	long long total0, in0, de0, page = getpagesize();

	refresh_counters();
	total0 = proc_meminfo("MemTotal");
	in0 = proc_vmstat("balloon_inflate");
	de0 = proc_vmstat("balloon_deflate");
	for (size_t i = 0; i < ARRAY_SIZE(steps_mib); i++) {
		long long bytes = steps_mib[i] * MIB;

		ASSERT_EQ(0, balloon_to(_metadata, &self->b, bytes));
		expect_balloon(_metadata, &self->b, bytes, total0);
		EXPECT_EQ(bytes / page,
			  (proc_vmstat("balloon_inflate") - in0) -
			  (proc_vmstat("balloon_deflate") - de0));
	}
}

/*
 * The host asks for nearly all of the guest's memory. The balloon takes what
 * it can get, the guest keeps answering, nothing is OOM-killed, and it all
 * comes back when the host relents.
 */
TEST_F_TIMEOUT(balloon, oversized_target_takes_what_it_can, 600)
{
	long long total0, oom0, prev = -1, cur = 0, slowest = 0;
	int stable = 0;

	/*
	 * The C driver inflates until the guest runs out: without deflate-on-oom
	 * it OOM-kills the test runner; with it, the OOM notifier's 1 MiB
	 * deflates race the re-inflating size work and the guest stops answering
	 * for minutes. The Rust driver keeps a reserve.
	 */
	if (!strcmp(driver_name(), "virtio_balloon"))
		SKIP(return, "the C driver inflates until the guest runs out of memory (OOM kills, or a thrashing OOM notifier with deflate-on-oom); the Rust driver keeps a reserve");
	refresh_counters();
	total0 = proc_meminfo("MemTotal");
	oom0 = proc_vmstat("oom_kill");
	ASSERT_EQ(0, host_req(self->b.host, self->b.why, sizeof(self->b.why), "set %lld",
			      4 * MIB)) {
		TH_LOG("host 'set': %s", self->b.why);
	}
	/* Until the balloon stops growing for 5 s (at most 3 min). */
	for (int i = 0; i < 180 && stable < 5; i++) {
		long long ms;

		sleep(1);
		ms = run_true_ms();
		ASSERT_LE(0, ms) TH_LOG("the guest could not run a command");
		slowest = ms > slowest ? ms : slowest;
		refresh_counters();
		cur = proc_meminfo("Balloon");
		stable = cur == prev ? stable + 1 : 0;
		prev = cur;
	}
	TH_LOG("balloon stopped at %lld MiB of %lld; slowest command %lld ms",
	       cur / MIB, self->b.ram / MIB, slowest);
	EXPECT_EQ(5, stable);
	EXPECT_LT(self->b.ram / 2, cur);
	/* "Within seconds": a liveness bound, not a speed target. */
	EXPECT_GT(10000, slowest);
	EXPECT_EQ(self->b.ram - cur,
		  host_num(self->b.host, self->b.why, sizeof(self->b.why), "actual"));
	EXPECT_EQ(oom0, proc_vmstat("oom_kill"));

	ASSERT_EQ(0, balloon_to(_metadata, &self->b, 0));
	expect_balloon(_metadata, &self->b, 0, total0);
}

/* Dozens of targets in a row: the balloon settles exactly on the last. */
TEST_F_TIMEOUT(balloon, rapid_target_changes_settle_on_last, 300)
{
	long long total0;

	refresh_counters();
	total0 = proc_meminfo("MemTotal");
	for (int i = 0; i < 40; i++) {
		long long below = ((i * 37) % 300 + 1) * MIB;

		ASSERT_EQ(0, host_req(self->b.host, self->b.why, sizeof(self->b.why), "set %lld",
				      self->b.ram - below)) {
			TH_LOG("host 'set': %s", self->b.why);
		}
		if (i % 8 == 0)
			usleep(50 * 1000);
	}
	ASSERT_EQ(0, balloon_to(_metadata, &self->b, 200 * MIB));
	expect_balloon(_metadata, &self->b, 200 * MIB, total0);
}

/* Sets the host's target @below full RAM without waiting for the guest. */
static int set_below(struct balloon_ctx *c, long long below)
{
	return host_req(c->host, c->why, sizeof(c->why), "set %lld", c->ram - below);
}

/* Polls until the guest's balloon is strictly between @lo and @hi: it, or -1 after @secs. */
static long long wait_between(long long lo, long long hi, int secs)
{
	long long start = now_ms(), b;

	while (now_ms() - start < secs * 1000LL) {
		refresh_counters();
		b = proc_meminfo("Balloon");
		if (b > lo && b < hi)
			return b;
		usleep(1000);
	}
	return -1;
}

/*
 * The host turns its target around while the balloon moves: mid-inflate back
 * to empty, and mid-deflate up again. Pages still on their way to the host
 * when the target turns must neither be lost nor counted twice: the balloon
 * lands exactly, and host and guest agree.
 */
TEST_F_TIMEOUT(balloon, target_reversal_mid_change, 300)
{
	struct balloon_ctx *c = &self->b;
	long long total0, big = c->ram / 2, back = big * 3 / 4, at_inflate, at_deflate;

	refresh_counters();
	total0 = proc_meminfo("MemTotal");
	ASSERT_EQ(0, set_below(c, big)) TH_LOG("host 'set': %s", c->why);
	at_inflate = wait_between(0, big, 60);
	ASSERT_LT(0, at_inflate)
		TH_LOG("the balloon never showed between 0 and %lld MiB", big / MIB);
	/*
	 * The host cannot tell when a change ends: right after the turn,
	 * `actual` may still show a value the balloon passed on its way and
	 * equal the new target. So wait until guest and host agree.
	 */
	ASSERT_EQ(0, balloon_to(_metadata, c, 0));
	ASSERT_EQ(0, wait_balloon(c, 0, 60));
	expect_balloon(_metadata, c, 0, total0);

	ASSERT_EQ(0, balloon_to(_metadata, c, big));
	ASSERT_EQ(0, set_below(c, 0)) TH_LOG("host 'set': %s", c->why);
	at_deflate = wait_between(0, back, 60);
	ASSERT_LT(0, at_deflate)
		TH_LOG("the balloon never showed between 0 and %lld MiB", back / MIB);
	ASSERT_EQ(0, balloon_to(_metadata, c, back));
	ASSERT_EQ(0, wait_balloon(c, back, 60));
	expect_balloon(_metadata, c, back, total0);
	TH_LOG("%s: turned at %lld KiB of %lld MiB inflating, at %lld KiB deflating (to %lld MiB)",
	       driver_name(), at_inflate / 1024, big / MIB, at_deflate / 1024, back / MIB);
	ASSERT_EQ(0, balloon_to(_metadata, c, 0));
	expect_balloon(_metadata, c, 0, total0);
}

/*
 * Unbinding the driver, or unloading its module, with an inflated balloon
 * gives every page back; binding again inflates to the host's target again.
 */
TEST_F_TIMEOUT(balloon, rebind_and_reload_return_every_page, 600)
{
	char path[PATH_MAX], cmd[PATH_MAX], drv[128];
	const char *name = strrchr(self->b.dev, '/') + 1;
	long long total0, free0;

	refresh_counters();
	total0 = proc_meminfo("MemTotal");
	free0 = free_bytes();
	ASSERT_EQ(0, balloon_to(_metadata, &self->b, STEP));

	/* unbind and bind through sysfs */
	snprintf(path, sizeof(path), "/sys/bus/virtio/drivers/%s/unbind", driver_name());
	ASSERT_EQ(0, sysfs_write(path, name));
	bound_driver(self->b.dev, drv, sizeof(drv));
	EXPECT_STREQ("", drv);
	expect_balloon(_metadata, &self->b, 0, total0);
	EXPECT_LE(free0 - FREE_SLACK, free_bytes());
	EXPECT_EQ(self->b.ram, host_num(self->b.host, self->b.why, sizeof(self->b.why), "actual"));

	snprintf(path, sizeof(path), "/sys/bus/virtio/drivers/%s/bind", driver_name());
	ASSERT_EQ(0, sysfs_write(path, name));
	EXPECT_EQ(0, wait_balloon(&self->b, STEP, 60)) TH_LOG("no re-inflate after bind");

	/* unload and load the module */
	snprintf(cmd, sizeof(cmd), "rmmod %s", driver_name());
	ASSERT_EQ(0, system(cmd));
	expect_balloon(_metadata, &self->b, 0, total0);
	EXPECT_LE(free0 - FREE_SLACK, free_bytes());
	EXPECT_EQ(self->b.ram, host_num(self->b.host, self->b.why, sizeof(self->b.why), "actual"));

	snprintf(cmd, sizeof(cmd), "insmod /lib/modules/%s.ko", driver_name());
	ASSERT_EQ(0, system(cmd));
	EXPECT_EQ(0, wait_balloon(&self->b, STEP, 60)) TH_LOG("no re-inflate after insmod");
	bound_driver(self->b.dev, drv, sizeof(drv));
	EXPECT_STREQ(driver_name(), drv);
}

/*
 * A live migration (to a sink; the VM resumes here) keeps the balloon: the
 * host's actual, the guest's accounting, and a driver that still answers.
 */
TEST_F_TIMEOUT(balloon, balloon_survives_migration, 300)
{
	long long total0, sent;

	refresh_counters();
	total0 = proc_meminfo("MemTotal");
	ASSERT_EQ(0, balloon_to(_metadata, &self->b, STEP));
	sent = host_num(self->b.host, self->b.why, sizeof(self->b.why), "migrate");
	ASSERT_LT(0, sent) TH_LOG("host 'migrate': %s", self->b.why);
	TH_LOG("migration sent %lld MiB", sent / MIB);

	EXPECT_EQ(self->b.ram - STEP,
		  host_num(self->b.host, self->b.why, sizeof(self->b.why), "actual"));
	expect_balloon(_metadata, &self->b, STEP, total0);
	ASSERT_EQ(0, balloon_to(_metadata, &self->b, 0));
	expect_balloon(_metadata, &self->b, 0, total0);
}

/*
 * Stats polling does not depend on the device's other features: a fixture of
 * its own, so that one configuration runs it.
 */
FIXTURE(polling) {
	struct balloon_ctx b;
};

FIXTURE_SETUP(polling)
{
	balloon_ctx_setup(_metadata, &self->b);
}

FIXTURE_TEARDOWN(polling)
{
	if (self->b.host >= 0)
		close(self->b.host);
}

/* With a polling interval of 2 s, the host gets a fresh update every 2 s. */
TEST_F_TIMEOUT(polling, stats_follow_interval, 120)
{
	long long n, lo, hi;

	ASSERT_EQ(0, host_req(self->b.host, self->b.why, sizeof(self->b.why),
			      "stats-cadence 2 11")) {
		TH_LOG("host 'stats-cadence': %s", self->b.why);
	}
	n = kv(self->b.why, "updates");
	lo = kv(self->b.why, "min-gap");
	hi = kv(self->b.why, "max-gap");
	TH_LOG("%s", self->b.why);
	EXPECT_LE(4, n);
	/* last-update has one-second resolution */
	EXPECT_LE(1, lo);
	EXPECT_GE(3, hi);
}

int main(int argc, char **argv)
{
	char **args = balloon_test_args(&argc, argv);

	return test_harness_run(argc, args);
}

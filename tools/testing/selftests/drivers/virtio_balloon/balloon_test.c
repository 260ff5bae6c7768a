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
 * Per test: two target changes (the host gives each 60 s), plus teardown.
 * The default of kselftest_harness.h (30 s) is too short for a debug kernel
 * under TCG when something is slow, and a test killed mid-request says less
 * than one that gets the host's answer.
 */
#define BALLOON_TEST_TIMEOUT	200

static const char *driver_name(void)
{
	const char *d = getenv("BALLOON_DRV");

	return d && *d ? d : "virtio_balloon";
}

/* Fold per-CPU counters so /proc/meminfo and /proc/vmstat are current. */
static void refresh_counters(void)
{
	int fd = open("/proc/sys/vm/stat_refresh", O_WRONLY);

	if (fd >= 0) {
		if (write(fd, "1", 1) < 0)
			perror("stat_refresh");
		close(fd);
	}
}

FIXTURE(balloon) {
	char dev[DEV_PATH_MAX];
	char why[4096];
	int host;
	long long ram;		/* guest RAM as the host configured it */
	int deflate_on_oom;	/* device property, as the host set it */
};

FIXTURE_SETUP(balloon)
{
	self->host = -1;
	if (!find_balloon(self->dev, sizeof(self->dev)))
		SKIP(return, "no virtio-balloon device");
	self->host = open_host();
	if (self->host < 0)
		SKIP(return, "no host control port " BALLOON_CTL_PORT);
	self->ram = host_num(self->host, self->why, sizeof(self->why), "ram");
	ASSERT_LT(0, self->ram) TH_LOG("host 'ram': %s", self->why);
	ASSERT_EQ(0, host_req(self->host, self->why, sizeof(self->why), "device")) {
		TH_LOG("host 'device': %s", self->why);
	}
	self->deflate_on_oom = kv(self->why, "deflate-on-oom") == 1;
}

FIXTURE_TEARDOWN(balloon)
{
	if (self->host >= 0) {
		/* Leave the guest at full size whatever happened. */
		host_num(self->host, self->why, sizeof(self->why), "target %lld", self->ram);
		close(self->host);
	}
}

/* Sets the target to @bytes below full and checks the host reached it. */
static int balloon_to(struct __test_metadata *_metadata,
		      FIXTURE_DATA(balloon) *self, long long below)
{
	long long want = self->ram - below;
	long long actual = host_num(self->host, self->why, sizeof(self->why),
				    "target %lld", want);

	EXPECT_EQ(want, actual) {
		TH_LOG("host actual %lld, wanted %lld: %s", actual, want, self->why);
		return -1;
	}
	refresh_counters();
	return 0;
}

TEST_F_TIMEOUT(balloon, driver_bound, BALLOON_TEST_TIMEOUT)
{
	char drv[128];
	int bit;

	bound_driver(self->dev, drv, sizeof(drv));
	ASSERT_STREQ(driver_name(), drv) {
		TH_LOG("%s is bound to '%s'", self->dev, drv);
	}
	bit = device_feature(self->dev, VIRTIO_BALLOON_F_DEFLATE_ON_OOM);
	EXPECT_EQ(self->deflate_on_oom, bit) {
		TH_LOG("DEFLATE_ON_OOM negotiated %d, host property %d", bit,
		       self->deflate_on_oom);
	}
}

TEST_F_TIMEOUT(balloon, inflate_reaches_target_exactly, BALLOON_TEST_TIMEOUT)
{
	long long total0, free0, pages;

	refresh_counters();
	total0 = meminfo("MemTotal");
	free0 = meminfo("MemFree");
	ASSERT_EQ(0, balloon_to(_metadata, self, STEP));

	EXPECT_EQ(STEP, meminfo("Balloon"));
	pages = vmstat("nr_balloon_pages");
	EXPECT_EQ(STEP, pages * getpagesize());
	if (self->deflate_on_oom) {
		/* Ballooned pages stay managed: they can come back on OOM. */
		EXPECT_EQ(total0, meminfo("MemTotal"));
		EXPECT_GE(free0 - STEP + GAUGE_SLACK, meminfo("MemFree"));
	} else {
		EXPECT_EQ(total0 - STEP, meminfo("MemTotal"));
	}
}

TEST_F_TIMEOUT(balloon, deflate_returns_every_page, BALLOON_TEST_TIMEOUT)
{
	long long total0, inflated0, deflated0;

	refresh_counters();
	total0 = meminfo("MemTotal");
	inflated0 = vmstat("balloon_inflate");
	deflated0 = vmstat("balloon_deflate");
	ASSERT_EQ(0, balloon_to(_metadata, self, STEP));
	ASSERT_EQ(0, balloon_to(_metadata, self, 0));

	EXPECT_EQ(0, meminfo("Balloon"));
	EXPECT_EQ(0, vmstat("nr_balloon_pages"));
	EXPECT_EQ(total0, meminfo("MemTotal"));
	EXPECT_EQ(STEP / getpagesize(), vmstat("balloon_inflate") - inflated0);
	EXPECT_EQ(STEP / getpagesize(), vmstat("balloon_deflate") - deflated0);
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
	g->total = meminfo("MemTotal");
	g->free = meminfo("MemFree");
	g->avail = meminfo("MemAvailable");
	/* NR_FILE_PAGES, which meminfo splits into Cached, SwapCached, Buffers */
	g->caches = meminfo("Cached") + meminfo("SwapCached") + meminfo("Buffers");
	g->swap_in = vmstat("pswpin") * page;
	g->swap_out = vmstat("pswpout") * page;
	g->majflt = vmstat("pgmajfault");
	g->minflt = vmstat("pgfault");
	g->oom_kill = vmstat("oom_kill");
	/* one counter per zone the kernel has */
	g->stalls = vmstat_sum("allocstall_");
	g->async_scan = vmstat("pgscan_kswapd") * page;
	g->direct_scan = vmstat("pgscan_direct") * page;
	g->async_reclaim = vmstat("pgsteal_kswapd") * page;
	g->direct_reclaim = vmstat("pgsteal_direct") * page;
	g->htlb_alloc = vmstat("htlb_buddy_alloc_success");
	g->htlb_fail = vmstat("htlb_buddy_alloc_fail");
}

TEST_F_TIMEOUT(balloon, host_stats_match_guest, BALLOON_TEST_TIMEOUT)
{
	struct guest_view a, b;
	const char *s = self->why;

	guest_view(&a);
	/* The host waits for a stats update the guest made after this request. */
	ASSERT_EQ(0, host_req(self->host, self->why, sizeof(self->why), "stats")) {
		TH_LOG("host 'stats': %s", self->why);
	}
	guest_view(&b);
	TH_LOG("host stats: %s", s);

	EXPECT_EQ(a.total, kv(s, "stat-total-memory"));
	EXPECT_STAT(a.free - GAUGE_SLACK, s, "stat-free-memory", a.free + GAUGE_SLACK);
	EXPECT_STAT(a.avail - GAUGE_SLACK, s, "stat-available-memory", a.avail + GAUGE_SLACK);
	EXPECT_STAT(a.caches - GAUGE_SLACK, s, "stat-disk-caches", a.caches + GAUGE_SLACK);
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

TEST_HARNESS_MAIN

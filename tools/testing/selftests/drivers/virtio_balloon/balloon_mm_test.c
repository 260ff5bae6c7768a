// SPDX-License-Identifier: GPL-2.0
/*
 * virtio balloon: the memory-management features, seen from both sides.
 *
 * Deflate on OOM, page poison, free page reporting, free page hinting,
 * the queue each feature uses, and compaction of balloon pages. Each
 * fixture needs a device configuration the host harness sets up (see
 * Documentation/driver-api/virtio/virtio_balloon_rust_testing.rst); the harness runs only the
 * fixtures a configuration is made for ($BALLOON_TESTS). What only the host
 * can do or see (QEMU's RSS, migrations, the balloon target) goes over the
 * org.kselftest.balloon port.
 */
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include "kselftest_harness.h"
#include "balloon_host.h"

/* Freed memory the reporting and hinting tests give back to the host. */
#define DIRTY		(512 * MIB)
/* "Most of it": what the host must get back of DIRTY. */
#define DIRTY_BACK	(384 * MIB)
/* Reporting runs about 2 s after a free (page_reporting_delay_ms). */
#define REPORT_WAIT_MS	10000
/* Memory allocated after reporting, checked for zeros. */
#define CHECK_BYTES	(256 * MIB)
/* Memory kept in use while free memory goes to the host, checked after. */
#define KEEP_BYTES	(64 * MIB)
/* With nonzero poison QEMU keeps reported pages: RSS stays within this. */
#define RSS_NOISE	(64 * MIB)
/* A child that needs this much more than MemAvailable only fits if the balloon deflates. */
#define OOM_EXTRA	(64 * MIB)
/* Seconds of fork+exec probes after an OOM deflate: long enough for a ping-pong to show. */
#define PROBE_SECS	15
/* Liveness bound for a fork+exec while the guest is short of memory, not a speed target. */
#define PROBE_MAX_MS	2000
/*
 * Migration bandwidths, bytes per second. Hints only help with pages QEMU
 * has not sent yet: 64 MiB/s leaves the guest time to hint.
 */
#define HINT_BW		(64 * MIB)
#define SLOW_BW		(16 * MIB)
/* MemFree after hinted blocks come back: per-CPU lists and page tables move it a little. */
#define FREE_SLACK	(16 * MIB)
#define REPORTING_DELAY	"/sys/module/page_reporting/parameters/page_reporting_delay_ms"
#define SHRINKER_DIR	"/sys/kernel/debug/shrinker"

static void mm_teardown(struct balloon_ctx *c)
{
	char buf[32];

	if (c->host >= 0 && c->reporting_delay >= 0) {
		snprintf(buf, sizeof(buf), "%lld", c->reporting_delay);
		sysfs_write(REPORTING_DELAY, buf);
	}
	balloon_ctx_teardown(c);
}

FIXTURE(features) { struct balloon_ctx c; };
FIXTURE_SETUP(features) { balloon_ctx_setup(_metadata, &self->c); }
FIXTURE_TEARDOWN(features) { mm_teardown(&self->c); }

FIXTURE(queues) { struct balloon_ctx c; };
FIXTURE_SETUP(queues) { balloon_ctx_setup(_metadata, &self->c); }
FIXTURE_TEARDOWN(queues) { mm_teardown(&self->c); }

FIXTURE(oom) { struct balloon_ctx c; };
FIXTURE_SETUP(oom) { balloon_ctx_setup(_metadata, &self->c); }
FIXTURE_TEARDOWN(oom) { mm_teardown(&self->c); }

FIXTURE(poison) { struct balloon_ctx c; };
FIXTURE_SETUP(poison) { balloon_ctx_setup(_metadata, &self->c); }
FIXTURE_TEARDOWN(poison) { mm_teardown(&self->c); }

FIXTURE(reporting) { struct balloon_ctx c; };
FIXTURE_SETUP(reporting) { balloon_ctx_setup(_metadata, &self->c); }
FIXTURE_TEARDOWN(reporting) { mm_teardown(&self->c); }

FIXTURE(hint) { struct balloon_ctx c; };
FIXTURE_SETUP(hint) { balloon_ctx_setup(_metadata, &self->c); }
FIXTURE_TEARDOWN(hint) { mm_teardown(&self->c); }

FIXTURE(compaction) { struct balloon_ctx c; };
FIXTURE_SETUP(compaction) { balloon_ctx_setup(_metadata, &self->c); }
FIXTURE_TEARDOWN(compaction) { mm_teardown(&self->c); }

/* Fills @bytes at @p with a pattern that check_pattern() recognises. */
static void fill_pattern(char *p, long long bytes)
{
	unsigned long long *w = (unsigned long long *)p;

	for (long long i = 0; i < bytes / 8; i++)
		w[i] = 0xc0ffee0000000000ULL ^ i;
}

/* Number of words at @p that lost the pattern. */
static long long check_pattern(const char *p, long long bytes)
{
	const unsigned long long *w = (const unsigned long long *)p;
	long long bad = 0;

	for (long long i = 0; i < bytes / 8; i++)
		bad += w[i] != (0xc0ffee0000000000ULL ^ i);
	return bad;
}

/*
 * Pages that are not all zero in @bytes of fresh anonymous memory, populated
 * by the kernel (MAP_POPULATE write-faults every page); -1 if the mapping fails.
 */
static long long nonzero_pages(long long bytes)
{
	long page = getpagesize();
	long long bad = 0;
	char *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);

	if (p == MAP_FAILED)
		return -1;
	for (long long off = 0; off < bytes; off += page) {
		const unsigned long long *w = (const unsigned long long *)(p + off);

		for (long i = 0; i < page / 8; i++) {
			if (w[i]) {
				bad++;
				break;
			}
		}
	}
	munmap(p, bytes);
	return bad;
}

/*
 * Forks a child that maps and touches @bytes and exits 0. The child asks the
 * OOM killer to pick it first, so a test that goes wrong never takes the test
 * runner with it. Returns its pid, -1 if it could not fork.
 */
static pid_t hog_start(long long bytes)
{
	pid_t pid = fork();

	if (pid == 0) {
		long page = getpagesize();
		char *p;

		if (sysfs_write("/proc/self/oom_score_adj", "1000"))
			_exit(3);
		p = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		if (p == MAP_FAILED)
			_exit(2);
		for (long long off = 0; off < bytes; off += page)
			p[off] = 1;
		_exit(0);
	}
	return pid;
}

/* Runs hog_start() to its end: the child's wait status, -1 if it could not run. */
static int hog(long long bytes, long long *ms)
{
	long long start = now_ms();
	pid_t pid = hog_start(bytes);
	int st;

	if (pid < 0 || waitpid(pid, &st, 0) != pid)
		return -1;
	*ms = now_ms() - start;
	return st;
}

/*
 * Asks the host for all but 4 MiB of the guest and waits until the balloon
 * stops growing for 3 s (at most 45 s): with deflate-on-oom the OOM notifier
 * stops it short. "Growing" is by 4 MiB or more: the C driver never settles
 * exactly, its size work and OOM notifier keep trading 1 MiB back and forth
 * at the top. Returns the balloon size, -1 if the host refused; a fork+exec
 * every second meanwhile adds to @slowest (ms) and @failed.
 */
static long long grow_to_oom(struct balloon_ctx *c, int *stable, long long *slowest,
			     long long *failed)
{
	long long top = 0, cur = 0, ms;

	*stable = 0;
	if (host_req(c->host, c->why, sizeof(c->why), "set %lld", 4 * MIB))
		return -1;
	for (int i = 0; i < 45 && *stable < 3; i++) {
		sleep(1);
		ms = run_true_ms();
		*failed += ms < 0;
		*slowest = max_ll(*slowest, ms);
		refresh_counters();
		cur = proc_meminfo("Balloon");
		*stable = cur < top + 4 * MIB ? *stable + 1 : 0;
		top = max_ll(top, cur);
	}
	return cur;
}

/* Pages the driver's free page hinting shrinker holds (debugfs count), -1 without one. */
static long long shrinker_count(void)
{
	DIR *d = opendir(SHRINKER_DIR);
	struct dirent *e;
	long long sum = -1;

	if (!d)
		return -1;
	while ((e = readdir(d))) {
		char path[PATH_MAX], line[256], *p, *end;
		FILE *f;

		if (strncmp(e->d_name, "virtio-balloon-", 15))
			continue;
		snprintf(path, sizeof(path), SHRINKER_DIR "/%s/count", e->d_name);
		f = fopen(path, "r");
		if (!f)
			continue;
		sum = max_ll(sum, 0);
		/* "MEMCG_ID COUNT_NODE0 COUNT_NODE1 ..." per line; nothing when 0 */
		while (fgets(line, sizeof(line), f)) {
			strtoll(line, &p, 10);
			for (long long v = strtoll(p, &end, 10); end != p;
			     p = end, v = strtoll(p, &end, 10))
				sum += v;
		}
		fclose(f);
	}
	closedir(d);
	return sum;
}

/* Free blocks of order 9 (2 MiB, a huge page) or more, from /proc/buddyinfo. */
static long long huge_free_blocks(void)
{
	char line[512], *p, *end;
	long long n = 0;
	FILE *f = fopen("/proc/buddyinfo", "r");

	if (!f)
		return -1;
	/* "Node 0, zone   DMA32   n0 n1 ... n10" */
	while (fgets(line, sizeof(line), f)) {
		int order = 0;

		p = strstr(line, "zone");
		if (!p)
			continue;
		p += 4;
		while (*p == ' ')
			p++;
		while (*p && *p != ' ')
			p++;
		for (long long v = strtoll(p, &end, 10); end != p;
		     p = end, v = strtoll(p, &end, 10), order++)
			if (order >= 9)
				n += v << (order - 9);
	}
	fclose(f);
	return n;
}

/* Asks for @n huge pages and returns how many the kernel got, then frees them. */
static long long huge_pages(int n)
{
	char buf[16];
	long long got;

	snprintf(buf, sizeof(buf), "%d", n);
	if (sysfs_write("/proc/sys/vm/nr_hugepages", buf))
		return -1;
	got = read_num("/proc/sys/vm/nr_hugepages");
	sysfs_write("/proc/sys/vm/nr_hugepages", "0");
	return got;
}

/*
 * Negotiated features follow the device's offer and the guest's free page
 * contents, by the C driver's rules (virtballoon_validate()): PAGE_POISON
 * only when free pages have defined contents (init_on_free=1: zeros,
 * page_poison=1: 0xaa) and the device offers it; REPORTING dropped when free
 * pages have such contents but PAGE_POISON could not tell the host.
 */
TEST_F_TIMEOUT(features, match_device_and_guest, 60)
{
	struct balloon_ctx *c = &self->c;
	int contents = cmdline_flag("init_on_free") || cmdline_flag("page_poison");
	int poison = c->page_poison && contents;
	int reporting = c->reporting && !(contents && !poison);
	char bits[256] = "", path[PATH_MAX];

	snprintf(path, sizeof(path), "%s/features", c->dev);
	read_line(path, bits, sizeof(bits));
	TH_LOG("features %.41s (bit 0 first); device page-poison=%d reporting=%d hint=%d, guest init_on_free=%d page_poison=%d",
	       bits, c->page_poison, c->reporting, c->hint, cmdline_flag("init_on_free"),
	       cmdline_flag("page_poison"));
	EXPECT_EQ(1, device_feature(c->dev, VIRTIO_F_VERSION_1));
	/* QEMU always offers the stats queue. */
	EXPECT_EQ(1, device_feature(c->dev, VIRTIO_BALLOON_F_STATS_VQ));
	EXPECT_EQ(c->deflate_on_oom, device_feature(c->dev, VIRTIO_BALLOON_F_DEFLATE_ON_OOM));
	EXPECT_EQ(c->hint, device_feature(c->dev, VIRTIO_BALLOON_F_FREE_PAGE_HINT));
	EXPECT_EQ(poison, device_feature(c->dev, VIRTIO_BALLOON_F_PAGE_POISON));
	EXPECT_EQ(reporting, device_feature(c->dev, VIRTIO_BALLOON_F_REPORTING));
}

/*
 * QEMU numbers the queues by the features it offers, Linux by the ones
 * negotiated. Stats must reach the host's stats handler whatever else is
 * negotiated; the reporting and hint tests of the same boot show that their
 * queues reach theirs.
 */
TEST_F_TIMEOUT(queues, stats_reach_the_host, 120)
{
	struct balloon_ctx *c = &self->c;
	long long total, v;

	refresh_counters();
	total = proc_meminfo("MemTotal");
	/* The host waits for updates the guest made after this request. */
	ASSERT_EQ(0, host_req(c->host, c->why, sizeof(c->why), "stats")) {
		TH_LOG("host 'stats': %s", c->why);
	}
	TH_LOG("host stats: %s", c->why);
	EXPECT_EQ(total, kv(c->why, "stat-total-memory"));
	/*
	 * Free memory is not compared closely here: page reporting takes free
	 * pages off the free lists while the host handles them.
	 */
	v = kv(c->why, "stat-free-memory");
	EXPECT_LT(0, v);
	EXPECT_GE(total, v);
}

/*
 * Deflate on OOM. The host asks for nearly all memory; a child that needs
 * more than the guest has available must then complete without an OOM kill
 * (the balloon gives pages back), and the guest stays usable afterwards.
 */
TEST_F_TIMEOUT(oom, deflates_instead_of_killing, 600)
{
	struct balloon_ctx *c = &self->c;
	long long oom0, cur, slowest = 0, avail, need, ms = 0;
	long long in0, de0, in1, de1, in2, de2, pages, growth, failed = 0;
	long page = getpagesize();
	int stable = 0, st;

	if (!c->deflate_on_oom)
		SKIP(return, "the device does not offer DEFLATE_ON_OOM");
	ASSERT_EQ(1, device_feature(c->dev, VIRTIO_BALLOON_F_DEFLATE_ON_OOM));
	refresh_counters();
	oom0 = proc_vmstat("oom_kill");
	cur = grow_to_oom(c, &stable, &slowest, &failed);
	ASSERT_LE(0, cur) TH_LOG("host 'set': %s", c->why);
	avail = proc_meminfo("MemAvailable");
	need = avail + OOM_EXTRA;
	TH_LOG("balloon %lld MiB of %lld (settled for %d s), MemAvailable %lld MiB, slowest command %lld ms; child needs %lld MiB",
	       cur / MIB, c->ram / MIB, stable, avail / MIB, slowest, need / MIB);

	in0 = proc_vmstat("balloon_inflate");
	de0 = proc_vmstat("balloon_deflate");
	st = hog(need, &ms);
	refresh_counters();
	in1 = proc_vmstat("balloon_inflate");
	de1 = proc_vmstat("balloon_deflate");
	TH_LOG("child: status %#x after %lld ms; balloon deflated %lld and inflated %lld pages meanwhile, now %lld MiB",
	       st, ms, de1 - de0, in1 - in0, proc_meminfo("Balloon") / MIB);
	EXPECT_TRUE(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0) {
		TH_LOG("the child did not complete: %s",
		       st >= 0 && WIFSIGNALED(st) ? strsignal(WTERMSIG(st)) : "exit status");
	}
	EXPECT_EQ(oom0, proc_vmstat("oom_kill"));
	EXPECT_LE(OOM_EXTRA / page / 2, de1 - de0) TH_LOG("the balloon gave back too little");

	/* Then the guest must stay usable, and the balloon should not ping-pong. */
	pages = cur / page;
	slowest = 0;
	for (int i = 0; i < PROBE_SECS; i++) {
		sleep(1);
		ms = run_true_ms();
		failed += ms < 0;
		slowest = max_ll(slowest, ms);
	}
	refresh_counters();
	in2 = proc_vmstat("balloon_inflate");
	de2 = proc_vmstat("balloon_deflate");
	growth = (in2 - in1) + (de2 - de1);
	TH_LOG("%s: over %d s after the child: inflate +%lld, deflate +%lld pages (balloon was %lld pages), slowest fork+exec %lld ms, %lld failed; OOM kills %lld",
	       driver_name(), PROBE_SECS, in2 - in1, de2 - de1, pages, slowest, failed,
	       proc_vmstat("oom_kill") - oom0);
	EXPECT_EQ(0, failed);
	EXPECT_GT(PROBE_MAX_MS, slowest);
	EXPECT_EQ(oom0, proc_vmstat("oom_kill"));
	/*
	 * No ping-pong. Once the child is gone nothing presses on memory: the
	 * driver may take back what the OOM notifier gave it (at most the
	 * balloon) and should then stay put. So over the window, pages moved
	 * stay under twice the balloon (room for a second OOM episode), and
	 * pages given back stay within one OOM notifier call (256 pages). A
	 * driver that re-inflates right after each 1 MiB OOM deflate keeps
	 * trading pages as long as the target stands: the C driver does (its
	 * numbers are logged above, not judged).
	 */
	if (is_c_driver())
		return;
	EXPECT_GT(2 * pages, growth);
	EXPECT_GE(256, de2 - de1);
}

/* Resident bytes of process @pid, -1 when it is gone. */
static long long rss_of(pid_t pid)
{
	char path[64], line[128];
	long long size, resident;

	snprintf(path, sizeof(path), "/proc/%d/statm", pid);
	if (read_line(path, line, sizeof(line)) || sscanf(line, "%lld %lld", &size, &resident) != 2)
		return -1;
	return resident * getpagesize();
}

/*
 * Unbind while the OOM notifier deflates: the balloon holds all the memory
 * it could get, and a child needs far more than is available. Once the child
 * holds more than was available (so it lives on pages the OOM notifier gave
 * back, and keeps asking), the driver is unbound. The unbind must finish,
 * every page must come back to the guest, and the host must see an empty
 * balloon. The Rust driver keeps its OOM notifier until the balloon is
 * empty, so the child completes with no OOM kill; the C driver unregisters
 * it first, and an allocation failing in between OOM-kills the child: logged.
 */
TEST_F_TIMEOUT(oom, unbind_while_deflating, 300)
{
	struct balloon_ctx *c = &self->c;
	long long total0, cur, avail, de0, de1, rss = 0, start, unbind_ms, oom0;
	long long slowest = 0, failed = 0;
	int stable, st = -1, running, unbound;
	pid_t pid;

	if (!c->deflate_on_oom)
		SKIP(return, "the device does not offer DEFLATE_ON_OOM");
	refresh_counters();
	total0 = proc_meminfo("MemTotal");
	oom0 = proc_vmstat("oom_kill");
	cur = grow_to_oom(c, &stable, &slowest, &failed);
	ASSERT_LE(0, cur) TH_LOG("host 'set': %s", c->why);
	ASSERT_LT(c->ram / 2, cur) TH_LOG("the balloon only grew to %lld MiB", cur / MIB);

	de0 = proc_vmstat("balloon_deflate");
	avail = proc_meminfo("MemAvailable");
	/* Far more than the OOM notifier gives back at once (1 MiB a call). */
	pid = hog_start(avail + cur / 2);
	ASSERT_LT(0, pid);
	start = now_ms();
	while (now_ms() - start < 60000) {
		rss = rss_of(pid);
		if (rss < 0 || rss > avail + OOM_EXTRA / 4)
			break;
		usleep(10 * 1000);
	}
	de1 = proc_vmstat("balloon_deflate");
	running = waitpid(pid, &st, WNOHANG) == 0;
	start = now_ms();
	unbound = bind_driver(c, 0) == 0;
	unbind_ms = now_ms() - start;
	/* Without the unbind the child may wait on 1 MiB notifier calls for minutes. */
	if (running && !unbound)
		kill(pid, SIGKILL);
	if (running)
		waitpid(pid, &st, 0);
	refresh_counters();
	TH_LOG("%s: balloon %lld MiB, MemAvailable %lld MiB; unbound with the child at %lld MiB (%s) after %lld pages of OOM deflate; unbind took %lld ms; child status %#x; OOM kills %lld",
	       driver_name(), cur / MIB, avail / MIB, rss / MIB,
	       running ? "still allocating" : "already done", de1 - de0, unbind_ms, st,
	       proc_vmstat("oom_kill") - oom0);
	EXPECT_TRUE(unbound) TH_LOG("unbind failed, or the device stayed bound");
	EXPECT_LT(de0, de1) TH_LOG("no OOM deflate before the unbind");
	EXPECT_TRUE(running) TH_LOG("the child finished before the unbind: no race tested");
	EXPECT_EQ(0, proc_meminfo("Balloon"));
	EXPECT_EQ(0, proc_vmstat("nr_balloon_pages"));
	EXPECT_EQ(total0, proc_meminfo("MemTotal"));
	EXPECT_EQ(c->ram, host_num(c->host, c->why, sizeof(c->why), "actual")) {
		TH_LOG("host 'actual': %s", c->why);
	}
	if (is_c_driver())
		return;
	EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) TH_LOG("the child did not complete");
	EXPECT_EQ(oom0, proc_vmstat("oom_kill"));
}

/*
 * Without deflate-on-oom the balloon is not the guest's to take back: a
 * child that needs more than is available is OOM-killed and the balloon
 * stays as it is.
 */
TEST_F_TIMEOUT(oom, kills_without_deflate_on_oom, 300)
{
	struct balloon_ctx *c = &self->c;
	long long below = c->ram / 2, oom0, avail, need, ms = 0;
	int st;

	if (c->deflate_on_oom)
		SKIP(return, "the device offers DEFLATE_ON_OOM");
	ASSERT_EQ(0, device_feature(c->dev, VIRTIO_BALLOON_F_DEFLATE_ON_OOM));
	ASSERT_EQ(0, balloon_to(_metadata, c, below));
	oom0 = proc_vmstat("oom_kill");
	avail = proc_meminfo("MemAvailable");
	need = avail + OOM_EXTRA;
	st = hog(need, &ms);
	refresh_counters();
	TH_LOG("MemAvailable %lld MiB, child of %lld MiB: status %#x after %lld ms, OOM kills +%lld",
	       avail / MIB, need / MIB, st, ms, proc_vmstat("oom_kill") - oom0);
	EXPECT_TRUE(st >= 0 && WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) {
		TH_LOG("the child was not killed");
	}
	EXPECT_LT(oom0, proc_vmstat("oom_kill"));
	EXPECT_EQ(below, proc_meminfo("Balloon"));
	EXPECT_EQ(below, proc_vmstat("nr_balloon_pages") * getpagesize());
	EXPECT_EQ(c->ram - below, host_num(c->host, c->why, sizeof(c->why), "actual"));
}

/*
 * Page poison and reporting. With PAGE_POISON negotiated and a nonzero
 * poison value (page_poison=1) QEMU must keep reported pages, whose contents
 * the guest relies on (and checks on allocation: a changed page shows up as
 * "pagealloc: memory corruption" in the kernel log, which fails the boot's
 * "kernel log clean" row); with init_on_free=1 (poison value 0) it discards
 * them.
 */
TEST_F_TIMEOUT(poison, reporting_respects_poison_value, 300)
{
	struct balloon_ctx *c = &self->c;
	int pp = cmdline_flag("page_poison");
	long long rss1, drop, at = -1, bad;
	char *p;

	ASSERT_TRUE(pp || cmdline_flag("init_on_free")) {
		TH_LOG("configuration: the guest has neither page_poison=1 nor init_on_free=1");
	}
	ASSERT_EQ(1, device_feature(c->dev, VIRTIO_BALLOON_F_PAGE_POISON));
	ASSERT_EQ(1, device_feature(c->dev, VIRTIO_BALLOON_F_REPORTING));
	p = map_dirty(DIRTY);
	ASSERT_NE(NULL, p);
	rss1 = host_rss(c);
	ASSERT_LT(0, rss1) TH_LOG("host 'rss': %s", c->why);
	munmap(p, DIRTY);
	drop = rss_drop(c, rss1, pp ? 0 : DIRTY_BACK, REPORT_WAIT_MS, &at);
	TH_LOG("%s: QEMU RSS %lld MiB with %lld MiB dirtied; after the free it fell by up to %lld MiB (%lld ms)",
	       pp ? "page_poison=1" : "init_on_free=1", rss1 / MIB, DIRTY / MIB, drop / MIB, at);
	/* page_poison=1: kept, RSS moves only by noise; init_on_free=1: most comes back */
	EXPECT_TRUE(pp ? drop < RSS_NOISE : drop >= DIRTY_BACK);
	bad = nonzero_pages(CHECK_BYTES);
	EXPECT_EQ(0, bad) TH_LOG("%lld fresh pages were not zero", bad);
}

/*
 * Free page reporting: memory the guest frees goes back to the host (QEMU's
 * RSS falls), memory in use keeps its contents, and memory allocated
 * afterwards reads back as zeros.
 */
TEST_F_TIMEOUT(reporting, freed_memory_returns_to_host, 300)
{
	struct balloon_ctx *c = &self->c;
	long long rss0, rss1, drop, at = -1, bad;
	char *keep, *p;

	ASSERT_EQ(1, device_feature(c->dev, VIRTIO_BALLOON_F_REPORTING));
	keep = mmap(NULL, KEEP_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, keep);
	fill_pattern(keep, KEEP_BYTES);
	rss0 = host_rss(c);
	p = map_dirty(DIRTY);
	ASSERT_NE(NULL, p);
	rss1 = host_rss(c);
	ASSERT_LT(0, rss1) TH_LOG("host 'rss': %s", c->why);
	munmap(p, DIRTY);
	drop = rss_drop(c, rss1, DIRTY_BACK, REPORT_WAIT_MS, &at);
	TH_LOG("QEMU RSS %lld MiB, %lld MiB with %lld MiB dirtied; fell by %lld MiB, %lld ms after the free",
	       rss0 / MIB, rss1 / MIB, DIRTY / MIB, drop / MIB, at);
	EXPECT_LE(DIRTY_BACK, drop);
	bad = nonzero_pages(CHECK_BYTES);
	EXPECT_EQ(0, bad) TH_LOG("%lld fresh pages were not zero", bad);
	bad = check_pattern(keep, KEEP_BYTES);
	EXPECT_EQ(0, bad) TH_LOG("%lld words of memory in use changed", bad);
	munmap(keep, KEEP_BYTES);
}

/* Migrates at @bw bytes/s; *@max_held gets the most hinted pages seen held meanwhile. */
static int migrate_watch(struct balloon_ctx *c, long long bw, long long *normal,
			 long long *max_held)
{
	*max_held = 0;
	if (host_req(c->host, c->why, sizeof(c->why), "migrate-start %lld", bw))
		return -1;
	c->migrating = 1;
	for (;;) {
		*max_held = max_ll(*max_held, shrinker_count());
		if (host_req(c->host, c->why, sizeof(c->why), "migrate-status"))
			return -1;
		if (strstr(c->why, "status=completed") || strstr(c->why, "status=failed") ||
		    strstr(c->why, "status=cancelled"))
			break;
		usleep(50 * 1000);
	}
	if (host_req(c->host, c->why, sizeof(c->why), "migrate-wait 0"))
		return -1;
	c->migrating = 0;
	*normal = kv(c->why, "normal");
	return 0;
}

/*
 * Free page hinting. The same guest state (512 MiB dirtied and freed) is
 * migrated once with the driver unbound (nobody answers the host's hint
 * request) and once bound: with hints, QEMU skips the free pages, so it
 * sends at least half of them less. After the migration the host says DONE
 * and the guest gets its hinted blocks back. With reporting negotiated too,
 * reporting would discard the freed pages (which also makes them cheap to
 * migrate): the test holds reporting off for its duration with
 * page_reporting_delay_ms.
 */
TEST_F_TIMEOUT(hint, migration_skips_free_memory, 400)
{
	struct balloon_ctx *c = &self->c;
	long long normal_off = -1, normal_on = -1, held_off, held_on, free0, free1 = 0;
	long long page = getpagesize(), start;

	ASSERT_EQ(1, device_feature(c->dev, VIRTIO_BALLOON_F_FREE_PAGE_HINT));
	if (device_feature(c->dev, VIRTIO_BALLOON_F_REPORTING) == 1) {
		c->reporting_delay = read_num(REPORTING_DELAY);
		ASSERT_LE(0, c->reporting_delay);
		/* Longer than the test; a report queued before this runs within 2 s. */
		ASSERT_EQ(0, sysfs_write(REPORTING_DELAY, "300000"));
		sleep(3);
	}

	ASSERT_EQ(0, bind_driver(c, 0)) TH_LOG("unbind failed");
	ASSERT_EQ(0, dirty_and_free(DIRTY));
	/* Nothing to hint: bandwidth does not change what is sent, only how fast. */
	ASSERT_EQ(0, migrate_watch(c, BALLOON_FAST_BW, &normal_off, &held_off)) {
		TH_LOG("host: %s", c->why);
	}
	ASSERT_EQ(0, bind_driver(c, 1)) TH_LOG("bind failed");

	ASSERT_EQ(0, dirty_and_free(DIRTY));
	refresh_counters();
	free0 = proc_meminfo("MemFree");
	ASSERT_EQ(0, migrate_watch(c, HINT_BW, &normal_on, &held_on)) {
		TH_LOG("host: %s", c->why);
	}
	start = now_ms();
	while (now_ms() - start < 10000) {
		refresh_counters();
		free1 = proc_meminfo("MemFree");
		if (free1 >= free0 - FREE_SLACK)
			break;
		usleep(100 * 1000);
	}
	TH_LOG("%s: migrated %lld MiB of normal pages unbound, %lld MiB bound (%lld MiB less); hinted blocks held: %lld MiB at most",
	       driver_name(), normal_off * page / MIB, normal_on * page / MIB,
	       (normal_off - normal_on) * page / MIB, held_on * page / MIB);
	TH_LOG("MemFree %lld MiB before the migration, %lld MiB %lld ms after it; shrinker count now %lld",
	       free0 / MIB, free1 / MIB, now_ms() - start, shrinker_count());
	EXPECT_LE(DIRTY / 2, (normal_off - normal_on) * page);
	EXPECT_LT(0, held_on) TH_LOG("the guest never held hinted blocks");
	EXPECT_LE(free0 - FREE_SLACK, free1) TH_LOG("hinted blocks did not come back after DONE");
	if (c->reporting_delay >= 0) {
		char buf[32];

		snprintf(buf, sizeof(buf), "%lld", c->reporting_delay);
		EXPECT_EQ(0, sysfs_write(REPORTING_DELAY, buf));
		c->reporting_delay = -1;
	}
}

/*
 * While a slow migration holds hinted blocks, a process that needs most of
 * the guest's memory still runs: the shrinker gives the blocks back rather
 * than letting the OOM killer act.
 */
TEST_F_TIMEOUT(hint, shrinker_returns_blocks_during_migration, 400)
{
	struct balloon_ctx *c = &self->c;
	long long free0, free_mid, free_after, held = 0, held_after, oom0, need, ms = 0;
	long long page = getpagesize(), start;
	int st;

	ASSERT_EQ(1, device_feature(c->dev, VIRTIO_BALLOON_F_FREE_PAGE_HINT));
	ASSERT_EQ(0, dirty_and_free(DIRTY));
	refresh_counters();
	free0 = proc_meminfo("MemFree");
	oom0 = proc_vmstat("oom_kill");
	ASSERT_EQ(0, host_req(c->host, c->why, sizeof(c->why), "migrate-start %lld", SLOW_BW)) {
		TH_LOG("host 'migrate-start': %s", c->why);
	}
	c->migrating = 1;
	/* Until the guest holds hinted blocks and stops taking more (at most 30 s). */
	start = now_ms();
	while (now_ms() - start < 30000) {
		long long n = shrinker_count();

		if (n > 0 && n == held)
			break;
		held = n;
		usleep(500 * 1000);
	}
	refresh_counters();
	free_mid = proc_meminfo("MemFree");
	ASSERT_EQ(0, host_req(c->host, c->why, sizeof(c->why), "migrate-status"));
	TH_LOG("MemFree %lld MiB before the migration, %lld MiB with %lld MiB hinted; host: %s",
	       free0 / MIB, free_mid / MIB, held * page / MIB, c->why);
	ASSERT_LT(0, held) TH_LOG("the guest holds no hinted blocks");
	ASSERT_NE(NULL, strstr(c->why, "status=active")) {
		TH_LOG("the migration ended before the guest could be pressed");
	}
	EXPECT_GT(free0 - 128 * MIB, free_mid) TH_LOG("MemFree did not drop");

	need = free0 - 64 * MIB;
	st = hog(need, &ms);
	refresh_counters();
	held_after = shrinker_count();
	free_after = proc_meminfo("MemFree");
	TH_LOG("child of %lld MiB: status %#x after %lld ms; hinted %lld MiB -> %lld MiB, MemFree %lld MiB, OOM kills +%lld",
	       need / MIB, st, ms, held * page / MIB, held_after * page / MIB,
	       free_after / MIB, proc_vmstat("oom_kill") - oom0);
	EXPECT_TRUE(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0) {
		TH_LOG("the child did not complete");
	}
	EXPECT_EQ(oom0, proc_vmstat("oom_kill"));
	EXPECT_GT(held, held_after) TH_LOG("the shrinker gave nothing back");

	ASSERT_EQ(0, host_req(c->host, c->why, sizeof(c->why), "migrate-wait %lld",
			      BALLOON_FAST_BW)) {
		TH_LOG("host 'migrate-wait': %s", c->why);
	}
	c->migrating = 0;
	TH_LOG("migration: %s", c->why);
	start = now_ms();
	while (shrinker_count() > 0 && now_ms() - start < 10000)
		usleep(100 * 1000);
	EXPECT_EQ(0, max_ll(shrinker_count(), 0)) TH_LOG("hinted blocks kept after DONE");
}

/*
 * Compaction migrates balloon pages. Memory is fragmented so that balloon
 * pages and free pages alternate: every other 64 KiB of a large anonymous
 * region is freed while a second region holds most of the remaining free
 * memory, so that the balloon inflates into those holes, then both regions
 * are freed. Free 2 MiB blocks then need balloon pages moved: a full
 * compaction does it (balloon_migrate rises), and the balloon keeps its size
 * on both sides.
 *
 * The C driver allocates single pages, which the allocator takes from the
 * smallest free blocks, the holes. The Rust driver takes whole free 2 MiB
 * blocks first, and only then single pages: the filler leaves it
 * FRAG_WHOLE of them, so that most of its balloon lands in the holes too.
 */
#define FRAG_WHOLE	(48 * MIB)
TEST_F_TIMEOUT(compaction, moves_balloon_pages, 300)
{
	struct balloon_ctx *c = &self->c;
	long long below, frag, fill, free0, free1, mig0, mig1, nr0, total0, blocks0, blocks1, hp;
	long long chunk = 64 * 1024, start;
	int want_hp = 64;
	char *p, *q;

	refresh_counters();
	free0 = proc_meminfo("MemFree");
	frag = free0 * 2 / 3 / chunk * chunk;
	fill = (free0 - frag - FRAG_WHOLE) / chunk * chunk;
	ASSERT_LT(0, fill) TH_LOG("only %lld MiB free", free0 / MIB);
	/* MAP_POPULATE: the kernel faults the pages in, much faster than a write to each. */
	p = mmap(NULL, frag, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	ASSERT_NE(MAP_FAILED, p);
	q = mmap(NULL, fill, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	ASSERT_NE(MAP_FAILED, q);
	/* The guest kernel has no madvise() (tinyconfig: no ADVISE_SYSCALLS). */
	for (long long off = chunk; off < frag; off += 2 * chunk)
		ASSERT_EQ(0, munmap(p + off, chunk));
	refresh_counters();
	free1 = proc_meminfo("MemFree");
	/*
	 * As much as the holes give, but leave an eighth of the RAM free: the
	 * Rust driver keeps that reserve and would stop short of a bigger target.
	 */
	below = min_ll(c->ram / 2, free1 - c->ram / 8 - 32 * MIB) / MIB * MIB;
	ASSERT_LT(64 * MIB, below) TH_LOG("only %lld MiB free", free1 / MIB);
	ASSERT_EQ(0, balloon_to(_metadata, c, below));
	munmap(p, frag);
	munmap(q, fill);

	refresh_counters();
	mig0 = proc_vmstat("balloon_migrate");
	nr0 = proc_vmstat("nr_balloon_pages");
	total0 = proc_meminfo("MemTotal");
	blocks0 = huge_free_blocks();
	start = now_ms();
	ASSERT_EQ(0, sysfs_write("/proc/sys/vm/compact_memory", "1"));
	refresh_counters();
	mig1 = proc_vmstat("balloon_migrate");
	blocks1 = huge_free_blocks();
	/* A huge page allocation compacts by itself too, so it comes last. */
	hp = huge_pages(want_hp);
	refresh_counters();
	TH_LOG("%s: balloon %lld MiB; compaction took %lld ms, balloon_migrate +%lld; free 2 MiB blocks %lld before, %lld after; then got %lld of %d huge pages",
	       driver_name(), below / MIB, now_ms() - start, mig1 - mig0, blocks0, blocks1, hp,
	       want_hp);
	EXPECT_LT(mig0, mig1);
	/* Huge-page-sized free blocks only form where balloon pages moved away. */
	EXPECT_LT(blocks0, blocks1);
	EXPECT_EQ(nr0, proc_vmstat("nr_balloon_pages"));
	EXPECT_EQ(below, proc_meminfo("Balloon"));
	EXPECT_EQ(total0, proc_meminfo("MemTotal"));
	EXPECT_EQ(c->ram - below, host_num(c->host, c->why, sizeof(c->why), "actual"));
}

/*
 * Compaction while the balloon inflates: balloon pages move while others are
 * still on their way to the host. No page may be lost or counted twice: the
 * balloon lands exactly on the target, and host and guest agree, before and
 * after the deflate. A child compacts all the time (a whole inflate can take
 * less than one full compaction); the test counts the samples that saw pages
 * migrate before the balloon was full.
 */
TEST_F_TIMEOUT(compaction, during_large_inflate, 300)
{
	struct balloon_ctx *c = &self->c;
	long long below = c->ram / 2, total0, mig0, start, b, mig;
	int samples = 0, during = 0, status;
	pid_t child;

	refresh_counters();
	total0 = proc_meminfo("MemTotal");
	mig0 = proc_vmstat("balloon_migrate");
	child = fork();
	ASSERT_LE(0, child);
	if (child == 0) {
		for (;;)
			sysfs_write("/proc/sys/vm/compact_memory", "1");
	}
	ASSERT_EQ(0, host_req(c->host, c->why, sizeof(c->why), "set %lld", c->ram - below)) {
		kill(child, SIGKILL);
		TH_LOG("host 'set': %s", c->why);
	}
	for (start = now_ms(); now_ms() - start < 120000; samples++) {
		refresh_counters();
		b = proc_meminfo("Balloon");
		mig = proc_vmstat("balloon_migrate");
		if (b == below)
			break;
		during += b > 0 && mig > mig0;
	}
	kill(child, SIGKILL);
	ASSERT_EQ(child, waitpid(child, &status, 0));
	ASSERT_EQ(0, balloon_to(_metadata, c, below));
	refresh_counters();
	TH_LOG("%s: %d of %d samples mid-inflate saw balloon pages migrate (to %lld MiB, %lld ms); balloon_migrate +%lld",
	       driver_name(), during, samples, below / MIB, now_ms() - start,
	       proc_vmstat("balloon_migrate") - mig0);
	EXPECT_LT(0, during);
	expect_balloon(_metadata, c, below, total0);
	ASSERT_EQ(0, balloon_to(_metadata, c, 0));
	expect_balloon(_metadata, c, 0, total0);
}

int main(int argc, char **argv)
{
	char **args = balloon_test_args(&argc, argv);

	return test_harness_run(argc, args);
}

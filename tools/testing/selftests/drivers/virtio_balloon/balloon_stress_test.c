// SPDX-License-Identifier: GPL-2.0
/*
 * virtio balloon: reliability under faults and churn.
 *
 * faults: allocation failures injected with the kernel's own framework
 * (fail_page_alloc and failslab), limited by the stack-trace filter to
 * allocations made with the driver module on the stack, so that nothing
 * else in the guest fails. The filter looks 32 frames deep: allocations
 * deeper below the driver (some under MSI-X setup) never fail. One
 * exception, for both drivers: the IRQ core's register_irq_proc() ignores a
 * failure to create an entry under /proc/irq/N, and tearing the vectors down
 * later warns that the entry is missing (remove_proc_entry()), so its
 * allocations are left alone (the filter's reject range).
 *   - during an inflate, at random: the driver backs off, says so (rate
 *     limited), and in the end host and guest agree on every page;
 *   - during probe, the n-th allocation for every n until a bind goes
 *     through without one (/proc/self/fail-nth): each failed bind unwinds,
 *     and the driver binds and works afterwards. The boot's kmemleak scan
 *     then shows that nothing leaked;
 *   - at random during a migration with free page hinting and during free
 *     page reporting: the hinted blocks come back, and reporting works
 *     afterwards.
 *
 * soak: random targets (4 MiB to most of the guest) while a stressor
 * allocates, touches and frees memory of varying sizes, with whatever the
 * device offers (deflate-on-oom, free page hinting with migrations to a file
 * on the host, free page reporting). At checkpoints the stressor pauses, the
 * balloon reaches a target, and guest and host agree exactly; at the end the
 * balloon is empty, MemTotal and free memory are back, and nothing was
 * OOM-killed. vb.soak=N on the guest command line sets the number of target
 * changes (make check: 30; make soak: 1000). And a target that flaps every
 * few milliseconds for vb.flap=S seconds (make check: 5; make soak: 60):
 * the guest stays responsive (fork and exec under 2 s) and the balloon
 * settles exactly on the last one without being asked again.
 *
 * stop (make soak only): the host stops the VM mid-inflate for vb.stop=S
 * seconds (make soak: 150, longer than the hung-task timeout) and then lets it
 * go on; the balloon reaches its target exactly and the log stays clean.
 */
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>

#include "kselftest_harness.h"
#include "balloon_host.h"

#define DBGFS		"/sys/kernel/debug/"
#define FAULT_TIMES	100000
/* Enough to try every allocation of a probe, and to stop a runaway loop. */
#define PROBE_FAULTS_MAX 400
#define INFLATE		(256 * MIB)
#define PROBE_INFLATE	(64 * MIB)
/* Free memory after the balloon empties: per-CPU lists and the kernel's own use move it. */
#define FREE_SLACK	(32 * MIB)
#define SOAK_DEFAULT	30
#define SOAK_CHECK_EVERY 10
#define SOAK_MIN	(4 * MIB)
/* Largest stressor allocation, and the most of the guest a target may take. */
#define STRESS_MAX	(96 * MIB)
#define SOAK_MAX_PERMILLE 700
#define FLAP_DEFAULT	5
#define FLAP_LO		(16 * MIB)
#define FLAP_HI		(256 * MIB)
/* Dirtied and freed for free page reporting; QEMU's RSS must fall by half of it. */
#define DIRTY		(256 * MIB)
/* Deadline for reported memory to leave QEMU: rss_drop() returns as soon as half has. */
#define REPORT_WAIT_MS	30000
#define HINT_MIGRATIONS	2
/* "Responsive": a liveness bound, not a speed target (about 0.1 s measured here). */
#define RESPONSIVE_MS	2000
/* A bind that went through despite a failed allocation must still move the balloon. */
#define BIND_CHECK	(4 * MIB)

static const char *const fault_kinds[] = { "fail_page_alloc", "failslab" };

/*
 * Logs a line and hands it to the host harness, which shows it beside the
 * test's result in its table (@@NOTE FIXTURE.TEST text).
 */
#define NOTE(...) do {								\
	char note_[512];							\
										\
	snprintf(note_, sizeof(note_), __VA_ARGS__);				\
	TH_LOG("%s", note_);							\
	printf("@@NOTE %s.%s %s\n", _metadata->fixture->name, _metadata->name, note_);	\
	fflush(stdout);								\
} while (0)

static int fault_attr(const char *kind, const char *attr, const char *fmt, ...)
{
	char path[PATH_MAX], val[64];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(val, sizeof(val), fmt, ap);
	va_end(ap);
	snprintf(path, sizeof(path), DBGFS "%s/%s", kind, attr);
	return sysfs_write(path, val);
}

/*
 * A range that holds the driver module's text, [*start, *end): /proc/modules
 * gives the base of the text and the total size of the module's memory (its
 * text, data and read-only parts are separate allocations, so the range may
 * take in a neighbour; the test guest loads no other module).
 */
static int module_range(unsigned long long *start, unsigned long long *end)
{
	char line[512], name[128];
	unsigned long long size, base;
	FILE *f = fopen("/proc/modules", "r");
	int found = 0;

	if (!f)
		return -1;
	while (!found && fgets(line, sizeof(line), f))
		found = sscanf(line, "%127s %llu %*s %*s %*s %llx", name, &size, &base) == 3 &&
			!strcmp(name, driver_name()) && base;
	fclose(f);
	if (!found)
		return -1;
	*start = base;
	*end = base + size;
	return 0;
}

/* [*start, *end) of the kernel function @name, from /proc/kallsyms. */
static int symbol_range(const char *name, unsigned long long *start, unsigned long long *end)
{
	char line[512], sym[256], type;
	unsigned long long addr;
	FILE *f = fopen("/proc/kallsyms", "r");

	if (!f)
		return -1;
	*start = 0;
	*end = ~0ULL;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "%llx %c %255s", &addr, &type, sym) == 3 && !strcmp(sym, name))
			*start = addr;
	rewind(f);
	/* The next symbol up ends it. */
	while (*start && fgets(line, sizeof(line), f))
		if (sscanf(line, "%llx %c %255s", &addr, &type, sym) == 3 && addr > *start &&
		    addr < *end)
			*end = addr;
	fclose(f);
	return *start && *end != ~0ULL ? 0 : -1;
}

/*
 * Arms both kinds of fault for allocations with [start, end) on the stack:
 * with @probability percent each, at most @times in all (0 with probability
 * 0: only through /proc/self/fail-nth).
 */
static int faults_arm(unsigned long long start, unsigned long long end, int probability,
		      long long times)
{
	unsigned long long irq_proc, irq_proc_end;
	int err = symbol_range("register_irq_proc", &irq_proc, &irq_proc_end);

	for (size_t i = 0; i < ARRAY_SIZE(fault_kinds); i++) {
		const char *k = fault_kinds[i];

		err |= fault_attr(k, "probability", "0");
		/* Quiet: one line per fault would flood the log ring. */
		err |= fault_attr(k, "verbose", "0");
		err |= fault_attr(k, "task-filter", "N");
		err |= fault_attr(k, "interval", "1");
		err |= fault_attr(k, "space", "0");
		err |= fault_attr(k, "ignore-gfp-wait", "N");
		err |= fault_attr(k, "stacktrace-depth", "32");
		err |= fault_attr(k, "reject-start", "%llu", irq_proc);
		err |= fault_attr(k, "reject-end", "%llu", irq_proc_end);
		err |= fault_attr(k, "require-start", "%llu", start);
		err |= fault_attr(k, "require-end", "%llu", end);
		err |= fault_attr(k, "times", "%lld", times);
		err |= fault_attr(k, "probability", "%d", probability);
	}
	/* Balloon pages are highmem-capable movable pages, of any order. */
	err |= fault_attr("fail_page_alloc", "ignore-gfp-highmem", "N");
	err |= fault_attr("fail_page_alloc", "min-order", "0");
	return err;
}

/* Faults injected since faults_arm(..., FAULT_TIMES). */
static long long faults_injected(void)
{
	long long n = 0;

	for (size_t i = 0; i < ARRAY_SIZE(fault_kinds); i++) {
		char path[PATH_MAX];

		snprintf(path, sizeof(path), DBGFS "%s/times", fault_kinds[i]);
		n += FAULT_TIMES - read_num(path);
	}
	return n;
}

/* Disarms every fault and puts the kernel's defaults back. */
static void faults_off(void)
{
	sysfs_write("/proc/self/fail-nth", "0");
	for (size_t i = 0; i < ARRAY_SIZE(fault_kinds); i++) {
		const char *k = fault_kinds[i];

		fault_attr(k, "probability", "0");
		fault_attr(k, "times", "1");
		fault_attr(k, "verbose", "2");
		fault_attr(k, "ignore-gfp-wait", "Y");
		fault_attr(k, "require-start", "0");
		fault_attr(k, "require-end", "%llu", ~0ULL);
		fault_attr(k, "reject-start", "0");
		fault_attr(k, "reject-end", "0");
	}
	fault_attr("fail_page_alloc", "ignore-gfp-highmem", "Y");
	fault_attr("fail_page_alloc", "min-order", "1");
}

/* Kernel log lines containing @what. */
static int klog_count(const char *what)
{
	char line[1024];
	FILE *f = popen("dmesg", "r");
	int n = 0;

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		n += !!strstr(line, what);
	pclose(f);
	return n;
}

/* The module was unloaded by the test, and must be loaded again. */
static int unloaded;
/* The soak's stressor, killed by the teardown if the test stopped early. */
static pid_t stressor = -1;

static void stress_teardown(struct balloon_ctx *c)
{
	char cmd[PATH_MAX];
	int st;

	faults_off();
	if (stressor > 0) {
		kill(stressor, SIGKILL);
		waitpid(stressor, &st, 0);
		stressor = -1;
	}
	if (unloaded) {
		snprintf(cmd, sizeof(cmd), "insmod /lib/modules/%s.ko", driver_name());
		if (!system(cmd))
			wait_bound(c, 10);
		unloaded = 0;
	}
	balloon_ctx_teardown(c);
}

FIXTURE(faults) { struct balloon_ctx c; };
FIXTURE_SETUP(faults) { balloon_ctx_setup(_metadata, &self->c); }
FIXTURE_TEARDOWN(faults) { stress_teardown(&self->c); }

FIXTURE(soak) { struct balloon_ctx c; };
FIXTURE_SETUP(soak) { balloon_ctx_setup(_metadata, &self->c); }
FIXTURE_TEARDOWN(soak) { stress_teardown(&self->c); }

FIXTURE(stop) { struct balloon_ctx c; };
FIXTURE_SETUP(stop) { balloon_ctx_setup(_metadata, &self->c); }
FIXTURE_TEARDOWN(stop) { stress_teardown(&self->c); }

/*
 * A third of the driver's allocations fail while the balloon inflates by
 * 256 MiB. The driver must say so, in a few lines, not one per failure; and
 * once faults stop, the balloon must reach its target with host and guest
 * agreeing on every page, and give all of them back.
 */
TEST_F_TIMEOUT(faults, inflate_loses_no_page, 300)
{
	struct balloon_ctx *c = &self->c;
	unsigned long long start, end;
	long long total0, free0, injected, free1;
	int said0, said;

	ASSERT_EQ(0, module_range(&start, &end)) TH_LOG("%s not in /proc/modules", driver_name());
	refresh_counters();
	total0 = proc_meminfo("MemTotal");
	free0 = free_bytes();
	said0 = klog_count("Out of puff");

	ASSERT_EQ(0, faults_arm(start, end, 33, FAULT_TIMES)) TH_LOG("cannot arm fault injection");
	ASSERT_EQ(0, host_req(c->host, c->why, sizeof(c->why), "set %lld", c->ram - INFLATE)) {
		TH_LOG("host 'set': %s", c->why);
	}
	sleep(3);
	injected = faults_injected();
	faults_off();
	said = klog_count("Out of puff") - said0;
	NOTE("%lld allocations failed; \"Out of puff\" %d times; balloon %lld MiB after 3 s",
	     injected, said, proc_meminfo("Balloon") / MIB);
	EXPECT_LT(0, injected);
	EXPECT_LE(1, said);
	/* C: dev_info_ratelimited() (10 in 5 s); Rust: one every 10 s, with a count. */
	EXPECT_GE(20, said);

	if (balloon_to(_metadata, c, INFLATE))
		return;
	expect_balloon(_metadata, c, INFLATE, total0);
	if (balloon_to(_metadata, c, 0))
		return;
	expect_balloon(_metadata, c, 0, total0);
	free1 = free_bytes();
	EXPECT_GE(free1, free0 - FREE_SLACK) {
		TH_LOG("free memory %lld MiB before, %lld MiB after", free0 / MIB, free1 / MIB);
	}
}

/*
 * Fails the first, second, ... allocation the driver makes in probe, one per
 * bind, until a bind makes no allocation that fails. Every bind either fails
 * and leaves the device unbound, or succeeds (a failure the driver can do
 * without); then, with no faults, the driver binds and moves the balloon,
 * and the module unloads (balloon inflated) and loads again.
 */
TEST_F_TIMEOUT(faults, probe_unwinds, 600)
{
	struct balloon_ctx *c = &self->c;
	char bind[PATH_MAX], cmd[PATH_MAX], left[32], drv[128];
	unsigned long long start, end;
	const char *name;
	long long total0;
	int n, failed = 0, bound = 0;

	ASSERT_EQ(0, module_range(&start, &end)) TH_LOG("%s not in /proc/modules", driver_name());
	ASSERT_EQ(0, bind_driver(c, 0));
	total0 = proc_meminfo("MemTotal");
	name = strrchr(c->dev, '/') + 1;
	snprintf(bind, sizeof(bind), "/sys/bus/virtio/drivers/%s/bind", driver_name());
	ASSERT_EQ(0, faults_arm(start, end, 0, 0));

	for (n = 1; n <= PROBE_FAULTS_MAX; n++) {
		char nth[16];
		int fd = open(bind, O_WRONLY), err = 0;

		ASSERT_LE(0, fd);
		/* Counts allocations of this task only, from here on: the write below. */
		snprintf(nth, sizeof(nth), "%d", n);
		ASSERT_EQ(0, sysfs_write("/proc/self/fail-nth", nth));
		if (write(fd, name, strlen(name)) < 0)
			err = errno;
		ASSERT_EQ(0, read_line("/proc/self/fail-nth", left, sizeof(left)));
		sysfs_write("/proc/self/fail-nth", "0");
		close(fd);
		bound_driver(c->dev, drv, sizeof(drv));
		if (atoi(left) > 0) {
			/* Fewer than n allocations: the bind went through untouched. */
			EXPECT_EQ(0, err) TH_LOG("bind with no fault: %s", strerror(err));
			EXPECT_STREQ(driver_name(), drv);
			break;
		}
		if (drv[0]) {
			/*
			 * The driver did without that allocation: it must work all the
			 * same. (The target stays; the next bind inflates to it at once.)
			 */
			bound++;
			if (balloon_to(_metadata, c, BIND_CHECK))
				TH_LOG("bound without allocation %d, no balloon", n);
			ASSERT_EQ(0, bind_driver(c, 0));
		} else {
			EXPECT_NE(0, err) TH_LOG("allocation %d failed, not bound, bind said 0", n);
			failed++;
		}
	}
	faults_off();
	NOTE("bind makes %d allocations; one failing failed %d binds, %d went through",
	     n - 1, failed, bound);
	EXPECT_GE(PROBE_FAULTS_MAX, n) TH_LOG("probe never ran without a fault");
	EXPECT_LT(0, failed);

	bound_driver(c->dev, drv, sizeof(drv));
	if (!drv[0])
		ASSERT_EQ(0, bind_driver(c, 1));
	c->unbound = 0;
	if (balloon_to(_metadata, c, PROBE_INFLATE))
		return;
	expect_balloon(_metadata, c, PROBE_INFLATE, total0);

	/* Unloaded (with the balloon inflated) and loaded again; kmemleak scans after the suite. */
	snprintf(cmd, sizeof(cmd), "rmmod %s", driver_name());
	ASSERT_EQ(0, system(cmd));
	unloaded = 1;
	expect_balloon(_metadata, c, 0, total0);
	snprintf(cmd, sizeof(cmd), "insmod /lib/modules/%s.ko", driver_name());
	ASSERT_EQ(0, system(cmd));
	unloaded = 0;
	ASSERT_EQ(0, wait_bound(c, 10));
	if (balloon_to(_metadata, c, PROBE_INFLATE))
		return;
	expect_balloon(_metadata, c, PROBE_INFLATE, total0);
	if (balloon_to(_metadata, c, 0))
		return;
	expect_balloon(_metadata, c, 0, total0);
}

/*
 * A third of the driver's allocations fail while freed memory is reported,
 * then during two migrations to a file with free page hinting. Afterwards the hinted
 * blocks are back in the guest, the balloon moves exactly, and reporting
 * gives freed memory back to the host again.
 */
TEST_F_TIMEOUT(faults, hinting_and_reporting, 300)
{
	struct balloon_ctx *c = &self->c;
	unsigned long long start, end;
	long long total0, free0, free1 = 0, reporting, hinting, held = 0, rss, fell, at;

	if (!c->hint || !c->reporting)
		SKIP(return, "the device offers no free page hinting or reporting");
	ASSERT_EQ(0, module_range(&start, &end)) TH_LOG("%s not in /proc/modules", driver_name());
	refresh_counters();
	total0 = proc_meminfo("MemTotal");
	free0 = free_bytes();

	ASSERT_EQ(0, faults_arm(start, end, 33, FAULT_TIMES)) TH_LOG("cannot arm fault injection");
	/* Reporting alone: freed memory is reported after page_reporting_delay_ms (2 s). */
	EXPECT_EQ(0, dirty_and_free(DIRTY));
	sleep(3);
	reporting = faults_injected();
	/* A failed hint allocation ends that migration's hinting: several migrations. */
	for (int i = 0; i < HINT_MIGRATIONS; i++) {
		long long before = free_bytes();

		ASSERT_EQ(0, host_req(c->host, c->why, sizeof(c->why), "migrate-start %lld",
				      BALLOON_FAST_BW)) {
			TH_LOG("host 'migrate-start': %s", c->why);
		}
		c->migrating = 1;
		usleep(300 * 1000);
		held = max_ll(held, before - free_bytes());
		EXPECT_EQ(0, dirty_and_free(DIRTY));
		EXPECT_EQ(0, host_req(c->host, c->why, sizeof(c->why), "migrate-wait 0")) {
			TH_LOG("host 'migrate-wait': %s", c->why);
		}
		c->migrating = 0;
	}
	hinting = faults_injected() - reporting;
	faults_off();
	EXPECT_LT(0, reporting + hinting);

	/* Hinted blocks go back once the host says the migration is done. */
	for (int i = 0; i < 100; i++) {
		free1 = free_bytes();
		if (free1 >= free0 - FREE_SLACK)
			break;
		usleep(100 * 1000);
	}
	EXPECT_GE(free1, free0 - FREE_SLACK) {
		TH_LOG("free memory %lld MiB before, %lld MiB after", free0 / MIB, free1 / MIB);
	}
	if (balloon_to(_metadata, c, 64 * MIB))
		return;
	expect_balloon(_metadata, c, 64 * MIB, total0);
	if (balloon_to(_metadata, c, 0))
		return;
	expect_balloon(_metadata, c, 0, total0);

	/* Reporting recovered: freed memory leaves QEMU's RSS again. */
	rss = host_num(c->host, c->why, sizeof(c->why), "rss");
	ASSERT_LT(0, rss) TH_LOG("host 'rss': %s", c->why);
	ASSERT_EQ(0, dirty_and_free(DIRTY));
	rss = host_num(c->host, c->why, sizeof(c->why), "rss");
	fell = rss_drop(c, rss, DIRTY / 2, REPORT_WAIT_MS, &at);
	NOTE("failed: %lld reporting, %lld hinting (%lld MiB held); RSS then fell %lld of %lld MiB",
	     reporting, hinting, max_ll(held, 0) / MIB, fell / MIB, DIRTY / MIB);
	EXPECT_LE(DIRTY / 2, fell);
}

/* Allocates, touches and frees anonymous memory of random sizes until killed. */
static pid_t stressor_start(void)
{
	pid_t pid = fork();

	if (pid == 0) {
		long page = getpagesize();

		prctl(PR_SET_PDEATHSIG, SIGKILL);
		srandom(getpid());
		for (;;) {
			long long bytes = (random() % (STRESS_MAX / MIB) + 1) * MIB;
			char *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
				       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

			if (p == MAP_FAILED) {
				usleep(10000);
				continue;
			}
			for (long long off = 0; off < bytes; off += page)
				p[off] = (char)off;
			usleep(random() % 50000);
			munmap(p, bytes);
		}
	}
	return pid;
}

/*
 * Random targets under a memory stressor, with every feature the device
 * offers. At every checkpoint: the stressor stops, the balloon reaches a
 * target the guest can give, and the guest's counters equal the host's
 * actual. At the end the balloon is empty and the guest got all its memory
 * back, and nothing was OOM-killed.
 */
TEST_F_TIMEOUT(soak, random_targets, 3600)
{
	struct balloon_ctx *c = &self->c;
	long long total0, free0, oom0, most, started = now_ms(), checks = 0, migrations = 0;
	int iterations = cmdline_num("vb.soak", SOAK_DEFAULT), st = 0;
	pid_t stress;

	refresh_counters();
	total0 = proc_meminfo("MemTotal");
	free0 = free_bytes();
	oom0 = proc_vmstat("oom_kill");
	/* Without deflate-on-oom the guest cannot take memory back from the balloon. */
	most = c->ram / 1000 * (c->deflate_on_oom ? SOAK_MAX_PERMILLE : SOAK_MAX_PERMILLE / 2);
	srandom(12345);
	stress = stressor_start();
	ASSERT_LT(0, stress);
	stressor = stress;

	for (int i = 1; i <= iterations; i++) {
		long long balloon = SOAK_MIN + random() % (most - SOAK_MIN);

		balloon -= balloon % 4096;
		ASSERT_EQ(0, host_req(c->host, c->why, sizeof(c->why), "set %lld",
				      c->ram - balloon)) TH_LOG("host 'set': %s", c->why);
		usleep(random() % 300000);
		if (c->hint && i % (2 * SOAK_CHECK_EVERY) == SOAK_CHECK_EVERY / 2) {
			ASSERT_EQ(0, host_req(c->host, c->why, sizeof(c->why),
					      "migrate-start %lld", BALLOON_FAST_BW)) {
				TH_LOG("host 'migrate-start': %s", c->why);
			}
			c->migrating = 1;
			migrations++;
		}
		if (i % SOAK_CHECK_EVERY && i != iterations)
			continue;
		/* Checkpoint: a target any guest can give, with the stressor stopped. */
		kill(stress, SIGSTOP);
		if (c->migrating) {
			EXPECT_EQ(0, host_req(c->host, c->why, sizeof(c->why), "migrate-wait 0")) {
				TH_LOG("host 'migrate-wait': %s", c->why);
			}
			c->migrating = 0;
		}
		balloon = (SOAK_MIN + random() % (c->ram / 4)) & ~4095LL;
		if (balloon_to(_metadata, c, balloon))
			break;
		expect_balloon(_metadata, c, balloon, total0);
		checks++;
		kill(stress, SIGCONT);
	}
	kill(stress, SIGKILL);
	waitpid(stress, &st, 0);
	stressor = -1;
	EXPECT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) TH_LOG("stressor status %#x", st);

	if (balloon_to(_metadata, c, 0))
		return;
	expect_balloon(_metadata, c, 0, total0);
	EXPECT_EQ(oom0, proc_vmstat("oom_kill"));
	EXPECT_GE(free_bytes(), free0 - FREE_SLACK) {
		TH_LOG("free memory %lld MiB before, %lld MiB after", free0 / MIB,
		       free_bytes() / MIB);
	}
	NOTE("%d target changes, %lld checkpoints, %lld migrations in %lld s; OOM kills %lld",
	     iterations, checks, migrations, (now_ms() - started) / 1000,
	     proc_vmstat("oom_kill") - oom0);
}

/*
 * The host flips the target between two sizes every few milliseconds for
 * vb.flap seconds. Meanwhile a fork and exec never takes seconds; at the end
 * the balloon settles exactly on the last target (a config change the driver
 * must not lose), and nothing was OOM-killed.
 */
TEST_F_TIMEOUT(soak, flapping_target, 900)
{
	struct balloon_ctx *c = &self->c;
	int secs = cmdline_num("vb.flap", FLAP_DEFAULT);
	long long total0, oom0, begin = now_ms(), next_probe = 0, slowest = 0, ms, changes = 0;
	long long below = 0, actual = -1;
	int failed = 0;

	refresh_counters();
	total0 = proc_meminfo("MemTotal");
	oom0 = proc_vmstat("oom_kill");
	while (now_ms() - begin < secs * 1000LL) {
		below = changes % 2 ? FLAP_HI : FLAP_LO;
		ASSERT_EQ(0, host_req(c->host, c->why, sizeof(c->why), "set %lld",
				      c->ram - below)) {
			TH_LOG("host 'set': %s", c->why);
		}
		changes++;
		usleep(2000);
		if (now_ms() >= next_probe) {
			ms = run_true_ms();
			failed += ms < 0;
			slowest = max_ll(slowest, ms);
			next_probe = now_ms() + 500;
		}
	}
	/* The last change must take effect on its own: no further request. */
	for (int i = 0; i < 600 && actual != c->ram - below; i++) {
		usleep(100 * 1000);
		actual = host_num(c->host, c->why, sizeof(c->why), "actual");
	}
	EXPECT_EQ(c->ram - below, actual) TH_LOG("the balloon did not settle on the last target");
	expect_balloon(_metadata, c, below, total0);
	NOTE("%lld target changes in %d s; slowest fork+exec %lld ms", changes, secs, slowest);
	EXPECT_EQ(0, failed);
	EXPECT_GT(RESPONSIVE_MS, slowest);
	EXPECT_EQ(oom0, proc_vmstat("oom_kill"));
	if (balloon_to(_metadata, c, 0))
		return;
	expect_balloon(_metadata, c, 0, total0);
}

/*
 * QMP stop for vb.stop seconds while the balloon inflates by 512 MiB, then
 * cont: the balloon reaches the target exactly, guest and host agree, and no
 * hung-task warning appears (the harness fails the boot on one).
 */
TEST_F_TIMEOUT(stop, long_mid_inflate, 900)
{
	struct balloon_ctx *c = &self->c;
	int secs = cmdline_num("vb.stop", 150);
	long long total0, at = 0, before, guest_ms, host_ms;

	refresh_counters();
	total0 = proc_meminfo("MemTotal");
	ASSERT_EQ(0, host_req(c->host, c->why, sizeof(c->why), "set %lld", c->ram - 512 * MIB)) {
		TH_LOG("host 'set': %s", c->why);
	}
	for (int i = 0; i < 3000 && at < 32 * MIB; i++) {
		usleep(10 * 1000);
		refresh_counters();
		at = proc_meminfo("Balloon");
	}
	before = now_ms();
	ASSERT_EQ(0, host_req(c->host, c->why, sizeof(c->why), "pause %d", secs * 1000)) {
		TH_LOG("host 'pause': %s", c->why);
	}
	guest_ms = now_ms() - before;
	host_ms = kv(c->why, "ms");
	EXPECT_LE(secs * 1000LL, host_ms);
	if (balloon_to(_metadata, c, 512 * MIB))
		return;
	expect_balloon(_metadata, c, 512 * MIB, total0);
	NOTE("stopped %lld ms at %lld of 512 MiB; the guest's clock moved %lld ms", host_ms,
	     at / MIB, guest_ms);
	if (balloon_to(_metadata, c, 0))
		return;
	expect_balloon(_metadata, c, 0, total0);
}

int main(int argc, char **argv)
{
	return test_harness_run(argc, balloon_test_args(&argc, argv));
}

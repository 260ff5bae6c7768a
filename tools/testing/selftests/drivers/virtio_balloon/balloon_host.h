/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Guest side of the virtio balloon selftests: find the balloon device, read
 * the guest's own counters, and ask the host harness for things only the
 * host can do or see (set the balloon target, read QEMU's view).
 *
 * The host listens on a virtio-serial port named org.kselftest.balloon. Each
 * request is one line, each answer one line: "ok <value...>" or "err <why>".
 * Sizes are in bytes.
 */
#ifndef BALLOON_HOST_H
#define BALLOON_HOST_H

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kselftest_harness.h"

#define VIRTIO_ID_BALLOON		5
#define VIRTIO_BALLOON_F_STATS_VQ	1
#define VIRTIO_BALLOON_F_DEFLATE_ON_OOM	2
#define VIRTIO_BALLOON_F_FREE_PAGE_HINT	3
#define VIRTIO_BALLOON_F_PAGE_POISON	4
#define VIRTIO_BALLOON_F_REPORTING	5
#define VIRTIO_F_VERSION_1		32
#define BALLOON_CTL_PORT		"org.kselftest.balloon"
#define MIB				(1024LL * 1024)
/* Long enough for /sys/bus/virtio/devices/virtioN and its attributes. */
#define DEV_PATH_MAX			256

/* A "key value" file such as /proc/vmstat, or "Key: value kB" (meminfo). */
static inline long long read_keyed(const char *path, const char *key)
{
	char line[256], name[128];
	long long val = -1, v;
	FILE *f = fopen(path, "r");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%127[^: ]%*[: ]%lld", name, &v) == 2 &&
		    !strcmp(name, key)) {
			val = v;
			break;
		}
	}
	fclose(f);
	return val;
}

/* /proc/meminfo value in bytes, -1 when missing. */
static inline long long proc_meminfo(const char *key)
{
	long long kb = read_keyed("/proc/meminfo", key);

	return kb < 0 ? -1 : kb * 1024;
}

static inline long long proc_vmstat(const char *key)
{
	return read_keyed("/proc/vmstat", key);
}

/* Sum of the /proc/vmstat counters whose names start with @prefix. */
static inline long long proc_vmstat_sum(const char *prefix)
{
	char line[256], name[128];
	long long sum = 0, v;
	FILE *f = fopen("/proc/vmstat", "r");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "%127s %lld", name, &v) == 2 &&
		    !strncmp(name, prefix, strlen(prefix)))
			sum += v;
	fclose(f);
	return sum;
}

static inline int read_line(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY);
	ssize_t n;

	if (fd < 0)
		return -1;
	n = read(fd, buf, len - 1);
	close(fd);
	if (n < 0)
		return -1;
	buf[n] = '\0';
	buf[strcspn(buf, "\n")] = '\0';
	return 0;
}

/* Fills @dev with /sys/bus/virtio/devices/virtioN of the balloon device. */
static inline int find_balloon(char *dev, size_t len)
{
	DIR *d = opendir("/sys/bus/virtio/devices");
	struct dirent *e;
	char path[PATH_MAX], id[32];
	int found = 0;

	if (!d)
		return 0;
	while (!found && (e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/sys/bus/virtio/devices/%s/device", e->d_name);
		if (read_line(path, id, sizeof(id)) == 0 &&
		    strtol(id, NULL, 0) == VIRTIO_ID_BALLOON) {
			snprintf(dev, len, "/sys/bus/virtio/devices/%.200s", e->d_name);
			found = 1;
		}
	}
	closedir(d);
	return found;
}

/* Name of the driver bound to @dev, or "" when none is. */
static inline void bound_driver(const char *dev, char *name, size_t len)
{
	char path[PATH_MAX], target[PATH_MAX];
	ssize_t n;

	snprintf(path, sizeof(path), "%s/driver", dev);
	n = readlink(path, target, sizeof(target) - 1);
	name[0] = '\0';
	if (n > 0) {
		const char *base;
		size_t bl;

		target[n] = '\0';
		base = strrchr(target, '/') ? strrchr(target, '/') + 1 : target;
		bl = strlen(base) < len - 1 ? strlen(base) : len - 1;
		memcpy(name, base, bl);
		name[bl] = '\0';
	}
}

/* Negotiated feature bit @bit of @dev: 1, 0, or -1 when unreadable. */
static inline int device_feature(const char *dev, int bit)
{
	char path[PATH_MAX], bits[256];

	snprintf(path, sizeof(path), "%s/features", dev);
	if (read_line(path, bits, sizeof(bits)) || (int)strlen(bits) <= bit)
		return -1;
	return bits[bit] == '1';
}

/* Opens the host control port, -1 when the harness did not provide one. */
static inline int open_host(void)
{
	DIR *d = opendir("/sys/class/virtio-ports");
	struct dirent *e;
	char path[PATH_MAX], name[128];
	int fd = -1;

	if (!d)
		return -1;
	while (fd < 0 && (e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/sys/class/virtio-ports/%s/name", e->d_name);
		if (read_line(path, name, sizeof(name)) || strcmp(name, BALLOON_CTL_PORT))
			continue;
		snprintf(path, sizeof(path), "/dev/%s", e->d_name);
		fd = open(path, O_RDWR);
	}
	closedir(d);
	return fd;
}

/* Reads one line (without the newline) from @fd; -1 on EOF or error. */
static inline int read_reply_line(int fd, char *buf, size_t len)
{
	size_t got = 0;

	while (got < len - 1) {
		ssize_t r = read(fd, buf + got, 1);

		if (r <= 0)
			return -1;
		if (buf[got] == '\n')
			break;
		got++;
	}
	buf[got] = '\0';
	return 0;
}

/*
 * Sends one request and reads its one-line answer into @reply (without the
 * leading "ok "). Returns 0 on "ok", -1 on "err" or a broken port; @reply then
 * holds the reason. Requests carry an id ("#pid.n") that the host echoes, so
 * an answer meant for an earlier test that was killed while waiting is
 * skipped rather than taken for this one.
 */
static inline int host_req(int fd, char *reply, size_t len, const char *fmt, ...)
{
	static unsigned int seq;
	char req[256], id[32];
	size_t idl;
	va_list ap;
	int n;

	idl = snprintf(id, sizeof(id), "#%d.%u ", getpid(), ++seq);
	memcpy(req, id, idl);
	va_start(ap, fmt);
	n = idl + vsnprintf(req + idl, sizeof(req) - idl - 1, fmt, ap);
	va_end(ap);
	req[n++] = '\n';
	if (write(fd, req, n) != n) {
		snprintf(reply, len, "write to host port: %s", strerror(errno));
		return -1;
	}
	do {
		if (read_reply_line(fd, reply, len)) {
			snprintf(reply, len, "host port closed");
			return -1;
		}
	} while (strncmp(reply, id, idl));
	memmove(reply, reply + idl, strlen(reply + idl) + 1);
	if (!strncmp(reply, "ok", 2)) {
		memmove(reply, reply + (reply[2] == ' ' ? 3 : 2), strlen(reply) + 1);
		return 0;
	}
	return -1;
}

/* A request whose answer is one number; -1 on error (reason in @why). */
static inline long long host_num(int fd, char *why, size_t len, const char *fmt, ...)
{
	char req[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(req, sizeof(req), fmt, ap);
	va_end(ap);
	if (host_req(fd, why, len, "%s", req))
		return -1;
	return strtoll(why, NULL, 10);
}

#define KV_ABSENT	LLONG_MIN

/* Value of "key=value" in a space-separated answer, KV_ABSENT when absent. */
static inline long long kv(const char *answer, const char *key)
{
	size_t kl = strlen(key);
	const char *p = answer;

	while ((p = strstr(p, key))) {
		if ((p == answer || p[-1] == ' ') && p[kl] == '=')
			return strtoll(p + kl + 1, NULL, 10);
		p += kl;
	}
	return KV_ABSENT;
}

/* The driver under test: $BALLOON_DRV, default virtio_balloon (the C driver). */
static inline const char *driver_name(void)
{
	const char *d = getenv("BALLOON_DRV");

	return d && *d ? d : "virtio_balloon";
}

static inline int is_c_driver(void)
{
	return !strcmp(driver_name(), "virtio_balloon");
}

/* Fold per-CPU counters so /proc/meminfo and /proc/vmstat are current. */
static inline void refresh_counters(void)
{
	int fd = open("/proc/sys/vm/stat_refresh", O_WRONLY);

	if (fd >= 0) {
		if (write(fd, "1", 1) < 0)
			perror("stat_refresh");
		close(fd);
	}
}

/* Writes @val to the sysfs (or procfs) file @path; 0 or -errno. */
static inline int sysfs_write(const char *path, const char *val)
{
	int fd = open(path, O_WRONLY), r = 0;

	if (fd < 0)
		return -errno;
	if (write(fd, val, strlen(val)) < 0)
		r = -errno;
	close(fd);
	return r;
}

/* A number read from a one-line file, -1 when unreadable. */
static inline long long read_num(const char *path)
{
	char buf[64];

	if (read_line(path, buf, sizeof(buf)))
		return -1;
	return strtoll(buf, NULL, 10);
}

static inline long long now_ms(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000LL + t.tv_nsec / 1000000;
}

/* Milliseconds a fork and exec of a trivial command takes, -1 if it fails. */
static inline long long run_true_ms(void)
{
	long long start = now_ms();
	int st;
	pid_t pid;

	pid = fork();
	if (pid == 0) {
		execl("/bin/true", "true", NULL);
		_exit(127);
	}
	if (pid < 0 || waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st))
		return -1;
	return now_ms() - start;
}

/* Pages on the per-CPU free lists (/proc/zoneinfo "count:"), which MemFree leaves out. */
static inline long long pcp_pages(void)
{
	char line[256];
	long long sum = 0, v;
	FILE *f = fopen("/proc/zoneinfo", "r");

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, " count: %lld", &v) == 1)
			sum += v;
	fclose(f);
	return sum;
}

static inline long long min_ll(long long a, long long b)
{
	return a < b ? a : b;
}

static inline long long max_ll(long long a, long long b)
{
	return a > b ? a : b;
}

/* MemFree with what the per-CPU lists hold: free memory that a suspend or a deflate moved. */
static inline long long free_bytes(void)
{
	refresh_counters();
	return proc_meminfo("MemFree") + pcp_pages() * getpagesize();
}

/*
 * What a fixture knows: the balloon device, the host port, the device as the
 * host set it up, and what its teardown must undo.
 */
struct balloon_ctx {
	char dev[DEV_PATH_MAX];
	char why[4096];
	int host;
	long long ram;		/* guest RAM as the host configured it */
	/* device properties, as the host set them */
	int deflate_on_oom, reporting, hint, page_poison;
	/* for the teardown: the driver is unbound, wakeup was enabled, a migration may run */
	int unbound, wakeup, migrating;
	/* for the teardown: a page_reporting_delay_ms to put back, -1 for none */
	long long reporting_delay;
};

/*
 * Fixture setup: the device and the host port (the test skips without them),
 * and the device's properties.
 */
static inline void balloon_ctx_setup(struct __test_metadata *_metadata, struct balloon_ctx *c)
{
	c->host = -1;
	c->reporting_delay = -1;
	if (!find_balloon(c->dev, sizeof(c->dev)))
		SKIP(return, "no virtio-balloon device");
	c->host = open_host();
	if (c->host < 0)
		SKIP(return, "no host control port " BALLOON_CTL_PORT);
	c->ram = host_num(c->host, c->why, sizeof(c->why), "ram");
	ASSERT_LT(0, c->ram) TH_LOG("host 'ram': %s", c->why);
	ASSERT_EQ(0, host_req(c->host, c->why, sizeof(c->why), "device")) {
		TH_LOG("host 'device': %s", c->why);
	}
	c->deflate_on_oom = kv(c->why, "deflate-on-oom") == 1;
	c->reporting = kv(c->why, "free-page-reporting") == 1;
	c->hint = kv(c->why, "free-page-hint") == 1;
	c->page_poison = kv(c->why, "page-poison") == 1;
	ASSERT_NE(KV_ABSENT, kv(c->why, "page-poison")) TH_LOG("host 'device': %s", c->why);
}

/* Sets the target @below full RAM and checks the host reached it exactly. */
static inline int balloon_to(struct __test_metadata *_metadata, struct balloon_ctx *c,
			     long long below)
{
	long long want = c->ram - below;
	long long actual = host_num(c->host, c->why, sizeof(c->why), "target %lld", want);

	EXPECT_EQ(want, actual) {
		TH_LOG("host actual %lld, wanted %lld: %s", actual, want, c->why);
		return -1;
	}
	refresh_counters();
	return 0;
}

/* Everything the guest says about the balloon agrees with a balloon of @bytes. */
static inline void expect_balloon(struct __test_metadata *_metadata, struct balloon_ctx *c,
				  long long bytes, long long total0)
{
	refresh_counters();
	EXPECT_EQ(bytes, proc_meminfo("Balloon"));
	EXPECT_EQ(bytes, proc_vmstat("nr_balloon_pages") * getpagesize());
	/* MemTotal drops with the balloon, unless the guest may take it back on OOM */
	EXPECT_EQ(c->deflate_on_oom ? total0 : total0 - bytes, proc_meminfo("MemTotal"));
}

/* Waits up to @secs for a balloon device bound to the driver under test; updates c->dev. */
static inline int wait_bound(struct balloon_ctx *c, int secs)
{
	char drv[128];

	for (int i = 0; i < secs * 10; i++) {
		if (find_balloon(c->dev, sizeof(c->dev))) {
			bound_driver(c->dev, drv, sizeof(drv));
			if (!strcmp(drv, driver_name()))
				return 0;
		}
		usleep(100 * 1000);
	}
	return -1;
}

/*
 * Unbinds (@bind 0) or binds the driver under test; 0 once the device is in
 * that state (within 10 s of the write). The teardown binds it again.
 */
static inline int bind_driver(struct balloon_ctx *c, int bind)
{
	char path[PATH_MAX], drv[128];

	snprintf(path, sizeof(path), "/sys/bus/virtio/drivers/%s/%s", driver_name(),
		 bind ? "bind" : "unbind");
	if (sysfs_write(path, strrchr(c->dev, '/') + 1))
		return -1;
	c->unbound = !bind;
	if (bind)
		return wait_bound(c, 10);
	for (int i = 0; i < 100; i++) {
		bound_driver(c->dev, drv, sizeof(drv));
		if (!drv[0])
			return 0;
		usleep(100 * 1000);
	}
	return -1;
}

/* Migration bandwidth a teardown lets a migration finish at (QMP migrate-set-parameters). */
#define BALLOON_FAST_BW			(1024 * MIB)

/*
 * The teardown every fixture shares: a migration the test started has ended,
 * the guest is back at full size whatever happened, the driver is bound
 * again, and the host port is closed. Fixture-specific undo comes first.
 */
static inline void balloon_ctx_teardown(struct balloon_ctx *c)
{
	if (c->host < 0)
		return;
	if (c->migrating)
		host_req(c->host, c->why, sizeof(c->why), "migrate-wait %lld", BALLOON_FAST_BW);
	host_num(c->host, c->why, sizeof(c->why), "target %lld", c->ram);
	if (c->unbound)
		bind_driver(c, 1);
	close(c->host);
	c->host = -1;
}

/* QEMU's resident set size, as the host sees it; -1 on error (why in c->why). */
static inline long long host_rss(struct balloon_ctx *c)
{
	return host_num(c->host, c->why, sizeof(c->why), "rss");
}

/*
 * Polls QEMU's RSS every 100 ms for up to @ms and returns the largest drop
 * below @from. Stops once the drop reaches @enough (0: never); *@at_ms gets
 * how long that took, -1 if it never did.
 */
static inline long long rss_drop(struct balloon_ctx *c, long long from, long long enough,
				 long long ms, long long *at_ms)
{
	long long start = now_ms(), best = 0, rss;

	*at_ms = -1;
	while (now_ms() - start < ms) {
		rss = host_rss(c);
		if (rss < 0)
			return -1;
		if (from - rss > best)
			best = from - rss;
		if (enough && best >= enough) {
			*at_ms = now_ms() - start;
			break;
		}
		usleep(100 * 1000);
	}
	return best;
}

/* Maps @bytes of fresh anonymous memory and writes a nonzero word into every page. */
static inline char *map_dirty(long long bytes)
{
	long page = getpagesize();
	char *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

	if (p == MAP_FAILED)
		return NULL;
	for (long long off = 0; off < bytes; off += page)
		*(unsigned long long *)(p + off) = 0x5a5a5a5a00000000ULL | (off / page);
	return p;
}

/* Maps @bytes, writes every page, unmaps it: free memory the guest may report or hint. */
static inline int dirty_and_free(long long bytes)
{
	char *p = map_dirty(bytes);

	if (!p)
		return -1;
	munmap(p, bytes);
	return 0;
}

/* The value of guest kernel argument @name ("@name=value") in @val; -1 if it is absent. */
static inline int cmdline_arg(const char *name, char *val, size_t len)
{
	char line[4096], *tok, *save = NULL;
	size_t nl = strlen(name);

	if (read_line("/proc/cmdline", line, sizeof(line)))
		return -1;
	for (tok = strtok_r(line, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
		if (strncmp(tok, name, nl) || tok[nl] != '=')
			continue;
		snprintf(val, len, "%s", tok + nl + 1);
		return 0;
	}
	return -1;
}

/* Guest kernel argument @name given as 1/on/y. */
static inline int cmdline_flag(const char *name)
{
	char v[16];

	if (cmdline_arg(name, v, sizeof(v)))
		return 0;
	return !strcmp(v, "1") || !strcmp(v, "on") || !strcmp(v, "y");
}

/* The number given as guest kernel argument @name, or @def. */
static inline int cmdline_num(const char *name, int def)
{
	char v[32];

	return cmdline_arg(name, v, sizeof(v)) ? def : atoi(v);
}

/*
 * Test selection: $BALLOON_TESTS (set by the guest's init from vb.tests=) is a
 * comma-separated list of FIXTURE or FIXTURE.TEST names, turned into the
 * harness's -f FIXTURE and -r FIXTURE.TEST filters after the program's own
 * arguments. Without it every test runs. main() passes the result to
 * test_harness_run().
 */
static inline char **balloon_test_args(int *argc, char **argv)
{
	const char *env = getenv("BALLOON_TESTS");
	char *list, *sel, *save = NULL;
	char **args;
	int n = *argc;

	if (!env || !*env)
		return argv;
	list = strdup(env);
	args = calloc(*argc + 2 * strlen(env) + 2, sizeof(*args));
	if (!list || !args)
		return argv;
	memcpy(args, argv, *argc * sizeof(*args));
	for (sel = strtok_r(list, ",", &save); sel; sel = strtok_r(NULL, ",", &save)) {
		args[n++] = strchr(sel, '.') ? "-r" : "-f";
		args[n++] = sel;
	}
	*argc = n;
	return args;
}

#endif /* BALLOON_HOST_H */

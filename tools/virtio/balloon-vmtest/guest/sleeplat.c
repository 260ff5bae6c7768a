// SPDX-License-Identifier: GPL-2.0
/*
 * Latency a guest process sees, for the balloon benchmark: sleeps 1 ms in a
 * loop and records how late each wakeup comes, until its standard input
 * becomes readable (data or end of file).
 *
 * Prints: samples=N p50_us=A p99_us=B max_us=C
 */
#define _GNU_SOURCE
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define MAX_SAMPLES 1048576

static long late_us[MAX_SAMPLES];

static long long now_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
	long x = *(const long *)a, y = *(const long *)b;

	return (x > y) - (x < y);
}

int main(void)
{
	const struct timespec ms = { .tv_nsec = 1000000 };
	struct pollfd in = { .fd = 0, .events = POLLIN };
	size_t n = 0;

	while (n < MAX_SAMPLES) {
		long long t = now_ns();
		int r = ppoll(&in, 1, &ms, NULL);

		if (r != 0)
			break;
		late_us[n++] = (now_ns() - t - 1000000) / 1000;
	}
	if (!n) {
		printf("samples=0 p50_us=-1 p99_us=-1 max_us=-1\n");
		return 0;
	}
	qsort(late_us, n, sizeof(late_us[0]), cmp);
	printf("samples=%zu p50_us=%ld p99_us=%ld max_us=%ld\n", n, late_us[n / 2],
	       late_us[n * 99 / 100], late_us[n - 1]);
	return 0;
}

// SPDX-License-Identifier: GPL-2.0
/*
 * The host's discard limit for the balloon benchmark: how fast this machine
 * drops anonymous memory with one madvise(MADV_DONTNEED) per 4 KiB page, as
 * QEMU does for each page frame a guest inflates (ram_block_discard_range on a
 * host with 4 KiB pages). Measured over memory never touched, then over the
 * same memory once every page was written.
 *
 * Usage: discard_limit [MIB]    (default 1024)
 * Prints: untouched_mib_s=U touched_mib_s=T
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

#define PAGE 4096UL

static double now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

/* MiB/s of 4 KiB discards over @len bytes at @p. */
static double discard(char *p, size_t len)
{
	double start = now();

	for (size_t off = 0; off < len; off += PAGE)
		if (madvise(p + off, PAGE, MADV_DONTNEED)) {
			perror("madvise");
			exit(1);
		}
	return (len >> 20) / (now() - start);
}

int main(int argc, char **argv)
{
	size_t len = (argc > 1 ? strtoul(argv[1], NULL, 0) : 1024) << 20;
	double untouched, touched;
	char *p;

	if (!len) {
		fprintf(stderr, "usage: %s [MIB]\n", argv[0]);
		return 2;
	}
	p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	untouched = discard(p, len);
	for (size_t off = 0; off < len; off += PAGE)
		p[off] = 1;
	touched = discard(p, len);
	printf("untouched_mib_s=%.0f touched_mib_s=%.0f\n", untouched, touched);
	return 0;
}

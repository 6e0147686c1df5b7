/*
 * The sizes of memcpy and memmove calls, as a histogram: a preloaded shim.
 *
 * Callgrind counts a memcpy as a few instructions whatever its size (`rep movsb` is one
 * instruction), so moves of large values never show in instruction counts. This shim counts
 * every call through the PLT by size (sizes above 4096 in one bucket), then makes the real call;
 * at exit it writes the sizes called more than 1000 times, and the bytes copied in all, to
 * $MEMCPY_SIZES_OUT (default memcpy-sizes.txt).
 *
 *     gcc -O2 -shared -fPIC cim-integrate-bench/tools/memcpy_sizes.c -o memcpy_sizes.so -ldl
 *     LD_PRELOAD=$PWD/memcpy_sizes.so target/release/cim-integrate-bench --only dispatch --quick \
 *         --dispatch-rounds 1 --dispatch-rows mem1 --dispatch-side ours
 *     sort -k2 -rn memcpy-sizes.txt | head
 *
 * Its own atomic counter slows every copy: read the sizes and counts from it, not times.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LARGEST 4096
static void *(*real_memcpy)(void *, const void *, size_t);
static void *(*real_memmove)(void *, const void *, size_t);
static unsigned long calls[LARGEST + 1];
static unsigned long bytes;

static void dump(void) {
    const char *path = getenv("MEMCPY_SIZES_OUT");
    FILE *f = fopen(path ? path : "memcpy-sizes.txt", "w");
    if (!f) return;
    for (int i = 0; i <= LARGEST; i++)
        if (calls[i] > 1000) fprintf(f, "%d %lu\n", i, calls[i]);
    fprintf(f, "bytes %lu\n", bytes);
    fclose(f);
}

__attribute__((constructor)) static void init(void) { atexit(dump); }

static inline void count(size_t n) {
    __atomic_fetch_add(&calls[n > LARGEST ? LARGEST : n], 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&bytes, n, __ATOMIC_RELAXED);
}

void *memcpy(void *d, const void *s, size_t n) {
    if (!real_memcpy) real_memcpy = dlsym(RTLD_NEXT, "memcpy");
    count(n);
    return real_memcpy(d, s, n);
}

void *memmove(void *d, const void *s, size_t n) {
    if (!real_memmove) real_memmove = dlsym(RTLD_NEXT, "memmove");
    count(n);
    return real_memmove(d, s, n);
}

#include "common/mem.h"

#include <malloc.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define S_HUGE ((size_t)2 << 20)

void *cm_alloc_big(size_t bytes)
{
    if (bytes < 4 * S_HUGE)
        return aligned_alloc(64, (bytes + 63) / 64 * 64 + (bytes == 0 ? 64 : 0));
    if (bytes > SIZE_MAX - S_HUGE)
        return NULL;
    bytes = (bytes + S_HUGE - 1) / S_HUGE * S_HUGE;
    void *p = aligned_alloc(S_HUGE, bytes);
#ifdef MADV_HUGEPAGE
    if (p)
        (void)madvise(p, bytes, MADV_HUGEPAGE); /* a hint: fine if refused */
#endif
    return p;
}

void cm_mem_keep_buffers(void)
{
    mallopt(M_MMAP_THRESHOLD, 64 << 20);
    mallopt(M_TRIM_THRESHOLD, 256 << 20);
}

void *cm_calloc_big(size_t n, size_t size)
{
    if (size != 0 && n > SIZE_MAX / size)
        return NULL;
    void *p = cm_alloc_big(n * size);
    if (p)
        memset(p, 0, n * size);
    return p;
}

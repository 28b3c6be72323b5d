/* mem: allocations of rows that run to gigabytes.
 *
 * Tables, held rows and message buffers are touched first while a job
 * runs, one 4 KiB page fault at a time unless the kernel can back them
 * with transparent huge pages. In the VMs psrec was measured on a fault
 * costs several microseconds, enough to make the first write-back of a
 * table or the loading of a shard take seconds. */
#ifndef PSREC_COMMON_MEM_H
#define PSREC_COMMON_MEM_H

#include <stddef.h>

/* bytes of memory, 64-byte aligned; from 8 MiB on 2 MiB aligned and
 * advised onto transparent huge pages (a hint the kernel may ignore).
 * Contents undefined; NULL when out of memory. Free with free(). */
void *cm_alloc_big(size_t bytes);

/* The same, zeroed. */
void *cm_calloc_big(size_t n, size_t size);

/* Tunes malloc for a process that moves messages of rows: buffers below
 * 64 MiB come from the heap and up to 256 MiB of freed heap is kept for
 * the next ones. By default malloc maps each large buffer afresh and
 * unmaps it when freed, so every message pays a page fault per 4 KiB it
 * touches (a server's pulls took 1.5x as long). Call once, early. */
void cm_mem_keep_buffers(void);

#endif

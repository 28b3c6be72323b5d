#include "common/sorted.h"

#include <string.h>

void cm_sort_u64_pairs(uint64_t *keys, uint64_t *vals, size_t n, uint64_t *tk, uint64_t *tv)
{
    uint64_t diff = 0;
    for (size_t j = 1; j < n; j++)
        diff |= keys[j] ^ keys[0];
    uint64_t *ak = keys, *av = vals, *bk = tk, *bv = tv;
    for (int shift = 0; shift < 64 && (diff >> shift); shift += 8) {
        if (((diff >> shift) & 0xff) == 0)
            continue;
        size_t count[257] = {0};
        for (size_t j = 0; j < n; j++)
            count[((ak[j] >> shift) & 0xff) + 1]++;
        for (int d = 0; d < 256; d++)
            count[d + 1] += count[d];
        for (size_t j = 0; j < n; j++) {
            size_t at = count[(ak[j] >> shift) & 0xff]++;
            bk[at] = ak[j];
            bv[at] = av[j];
        }
        uint64_t *t = ak;
        ak = bk;
        bk = t;
        t = av;
        av = bv;
        bv = t;
    }
    if (ak != keys) {
        memcpy(keys, ak, n * sizeof *keys);
        memcpy(vals, av, n * sizeof *vals);
    }
}

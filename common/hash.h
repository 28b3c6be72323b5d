/* hash: the key hashes psrec uses everywhere (xxh64) and small mixers. */
#ifndef PSREC_COMMON_HASH_H
#define PSREC_COMMON_HASH_H

#include <stddef.h>
#include <stdint.h>
#include <xxhash.h>

/* xxh64 of a 64-bit key with a seed (slot of a key, worker of a user). */
static inline uint64_t cm_hash_key(uint64_t key, uint64_t seed)
{
    return XXH64(&key, sizeof key, seed);
}

/* xxh64 of bytes (string ids hash to keys with this, seed 0). */
static inline uint64_t cm_hash_bytes(const void *p, size_t n, uint64_t seed)
{
    return XXH64(p, n, seed);
}

/* splitmix64 finaliser: a cheap bijective mixer for seeding streams. */
static inline uint64_t cm_mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

#endif

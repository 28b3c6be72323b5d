/* hash: the key hashes psrec uses everywhere (xxh64) and small mixers. */
#ifndef PSREC_COMMON_HASH_H
#define PSREC_COMMON_HASH_H

#include <stddef.h>
#include <stdint.h>
#include <xxhash.h>

/* xxh64 of a 64-bit key with a seed (slot of a key, worker of a user):
 * the same value as XXH64(&key, 8, seed) on a little-endian host, with the
 * steps of the xxh64 specification for an 8-byte input written out so
 * that the hottest loops (slot, block and worker of every rating) inline
 * it instead of calling into the library. */
static inline uint64_t cm_rotl64(uint64_t x, int r)
{
    return (x << r) | (x >> (64 - r));
}

static inline uint64_t cm_hash_key(uint64_t key, uint64_t seed)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    const uint64_t p1 = 0x9E3779B185EBCA87ULL, p2 = 0xC2B2AE3D27D4EB4FULL,
                   p3 = 0x165667B19E3779F9ULL, p4 = 0x85EBCA77C2B2AE63ULL,
                   p5 = 0x27D4EB2F165667C5ULL;
    uint64_t h = seed + p5 + 8;
    h ^= cm_rotl64(key * p2, 31) * p1;
    h = cm_rotl64(h, 27) * p1 + p4;
    h ^= h >> 33;
    h *= p2;
    h ^= h >> 29;
    h *= p3;
    return h ^ (h >> 32);
#else
    return XXH64(&key, sizeof key, seed);
#endif
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

/* Helpers for the serving tests: deterministic checkpoints and models. */
#ifndef PSREC_TESTS_SERVE_HELPERS_H
#define PSREC_TESTS_SERVE_HELPERS_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "common/ckpt.h"
#include "common/hash.h"

/* Id of row i of table t (0 user, 1 item). */
static inline uint64_t sh_id(uint32_t t, size_t i) { return t == 0 ? 1 + 3 * i : 10 + 7 * i; }

/* Weight j of the row of id in table t, in [-0.5, 0.5): a seeded hash so
 * every test can recompute what a checkpoint holds. */
static inline float sh_val(uint64_t seed, uint32_t t, uint64_t id, int j)
{
    uint64_t x = cm_mix64(seed * 0x9e3779b97f4a7c15ull + id * 1000003ull + (uint64_t)t * 7919 +
                          (uint64_t)j);
    return (float)(x >> 40) / (float)(1u << 24) - 0.5f;
}

/* Writes an "mf" checkpoint into dir (which must exist): tables user
 * (n_users rows) and item (n_items rows), rows of dim weights then
 * row_floats - dim optimizer floats (99, to be dropped by export), each
 * table split over n_shards files (row i in shard i % n_shards). */
static inline int sh_make_ckpt(const char *dir, size_t n_users, size_t n_items, int dim,
                               int row_floats, int n_shards, uint64_t seed, double gm,
                               cm_error *err)
{
    static char job[] = "";
    cm_ckpt_table tables[2];
    memset(tables, 0, sizeof tables);
    cm_ckpt_file files[2 * 16];
    memset(files, 0, sizeof files);
    size_t nf = 0;
    int rc = 0;
    for (uint32_t t = 0; t < 2; t++) {
        snprintf(tables[t].name, sizeof tables[t].name, "%s", t == 0 ? "user" : "item");
        tables[t].dim = dim;
        tables[t].row_floats = row_floats;
        size_t n = t == 0 ? n_users : n_items;
        uint64_t *keys = malloc((n + 1) * sizeof *keys);
        float *rows = malloc((n + 1) * (size_t)row_floats * sizeof *rows);
        for (int s = 0; s < n_shards && rc == 0; s++) {
            size_t k = 0;
            for (size_t i = (size_t)s; i < n; i += (size_t)n_shards, k++) {
                keys[k] = sh_id(t, i);
                for (int j = 0; j < row_floats; j++)
                    rows[k * (size_t)row_floats + (size_t)j] =
                        j < dim ? sh_val(seed, t, keys[k], j) : 99.f;
            }
            cm_ckpt_file *cf = &files[nf++];
            snprintf(cf->name, sizeof cf->name, "t%u-w%d.rows", t, s);
            char path[4096];
            if (snprintf(path, sizeof path, "%s/%s", dir, cf->name) >= (int)sizeof path)
                rc = CM_EINVAL;
            cf->table = t;
            cf->rows = k;
            cf->writer = s;
            if (rc == 0)
                rc = cm_shard_write(path, t, dim, row_floats, keys, rows, k, &cf->size,
                                    &cf->checksum, err);
        }
        free(keys);
        free(rows);
    }
    if (rc != 0)
        return rc;
    cm_manifest m;
    memset(&m, 0, sizeof m);
    m.version = 1;
    m.job = job;
    snprintf(m.model, sizeof m.model, "mf");
    m.n_tables = 2;
    m.tables = tables;
    m.n_files = nf;
    m.files = files;
    m.global_mean = gm;
    m.clip_lo = 1.f;
    m.clip_hi = 5.f;
    m.epoch = 1;
    return cm_manifest_write(dir, &m, err);
}

/* Peak resident memory of process pid (0: this one), in bytes; -1 when
 * /proc cannot say. */
static inline long long sh_peak_rss(int pid)
{
    char path[64], line[256];
    if (pid > 0)
        snprintf(path, sizeof path, "/proc/%d/status", pid);
    else
        snprintf(path, sizeof path, "/proc/self/status");
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    long long kb = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmHWM: %lld kB", &kb) == 1)
            break;
    fclose(f);
    return kb < 0 ? -1 : kb * 1024;
}

/* Plays a ZeroMQ DEALER by hand (ZMTP 3.0, NULL mechanism) on a plain TCP
 * connection to 127.0.0.1:port and announces one frame of `frame` bytes,
 * then streams zeros for it from a 64 KiB buffer, so a test can claim a
 * huge message without holding it. Returns the bytes of the frame body
 * written before the peer dropped the connection (== frame when it read
 * it all), or -1 when the connection could not be made. Each write waits
 * at most 10 s. */
static inline long long sh_zmtp_flood(int port, unsigned long long frame)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    /* greeting: signature, version 3.0, mechanism NULL, as-server 0 */
    unsigned char hello[64 + 2 + 6 + 1 + 11 + 4 + 6 + 9];
    memset(hello, 0, sizeof hello);
    hello[0] = 0xff;
    hello[9] = 0x7f;
    hello[10] = 3;
    memcpy(hello + 12, "NULL", 4);
    /* READY command: [flags 4][size][5 "READY"][11 "Socket-Type"][0 0 0 6 "DEALER"] */
    unsigned char *r = hello + 64;
    r[0] = 0x04;
    r[1] = 1 + 5 + 1 + 11 + 4 + 6;
    r[2] = 5;
    memcpy(r + 3, "READY", 5);
    r[8] = 11;
    memcpy(r + 9, "Socket-Type", 11);
    r[20] = 0;
    r[21] = 0;
    r[22] = 0;
    r[23] = 6;
    memcpy(r + 24, "DEALER", 6);
    /* a long frame, last of its message: [flags 2][8-byte size] */
    unsigned char *h = r + 30;
    h[0] = 0x02;
    for (int i = 0; i < 8; i++)
        h[1 + i] = (unsigned char)(frame >> (56 - 8 * i));
    const size_t head = 64 + 30 + 9;
    if (send(fd, hello, head, MSG_NOSIGNAL) != (ssize_t)head) {
        close(fd);
        return 0;
    }
    static const unsigned char zeros[1 << 16];
    unsigned long long sent = 0;
    while (sent < frame) {
        size_t n = frame - sent < sizeof zeros ? (size_t)(frame - sent) : sizeof zeros;
        ssize_t w = send(fd, zeros, n, MSG_NOSIGNAL);
        if (w <= 0)
            break;
        sent += (unsigned long long)w;
    }
    close(fd);
    return (long long)sent;
}

#endif

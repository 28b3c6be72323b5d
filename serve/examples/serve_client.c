/* serve_client: a psrec serve client that needs only libzmq and libc.
 *
 *   cc -std=c11 serve_client.c -lzmq -o serve_client
 *   serve_client ENDPOINT USER K [SERVER_PUBLIC_KEY [EXCLUDED_ITEM...]]
 *
 * Sends one RecRequest {user, k, exclude} from a DEALER socket and prints
 * the reply as `rank item score` lines, best first (lines starting with
 * '#' are comments), like psrec recommend. With SERVER_PUBLIC_KEY (the 40
 * characters psrec serve prints when started with --curve-secret-file;
 * "-" for none) the connection is a CURVE client: encrypted, with a key
 * pair made for this run. The two protobuf messages are small enough to
 * write and read by hand (proto/psrec.proto): varints, one packed list of
 * varints and one of floats. Exit status: 0 ok, 1 no reply within 5 s or
 * an error reply, 2 bad usage. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

enum { MAX_IDS = 1000 };

static size_t put_varint(uint8_t *p, uint64_t v)
{
    size_t n = 0;
    while (v >= 0x80) {
        p[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    p[n++] = (uint8_t)v;
    return n;
}

/* Reads a varint at *p; 0 ok, -1 when the bytes end first. */
static int get_varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
    *v = 0;
    for (int shift = 0; shift < 64 && *p < end; shift += 7) {
        uint8_t b = *(*p)++;
        *v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80))
            return 0;
    }
    return -1;
}

typedef struct {
    int64_t status;
    char error[256];
    uint64_t items[MAX_IDS];
    float scores[MAX_IDS];
    size_t n_items, n_scores;
    int fallback;
    uint64_t version;
} reply;

/* Decodes a RecReply (repeated fields packed or not); -1 when malformed. */
static int decode(const uint8_t *p, size_t len, reply *r)
{
    const uint8_t *end = p + len;
    memset(r, 0, sizeof *r);
    while (p < end) {
        uint64_t tag, v;
        if (get_varint(&p, end, &tag) != 0)
            return -1;
        unsigned field = (unsigned)(tag >> 3), type = (unsigned)(tag & 7);
        if (type == 0) {
            if (get_varint(&p, end, &v) != 0)
                return -1;
            if (field == 1)
                r->status = (int64_t)v;   /* int32: negatives are sign-extended */
            else if (field == 3 && r->n_items < MAX_IDS)
                r->items[r->n_items++] = v;
            else if (field == 5)
                r->fallback = v != 0;
            else if (field == 6)
                r->version = v;
        } else if (type == 2) {
            if (get_varint(&p, end, &v) != 0 || v > (uint64_t)(end - p))
                return -1;
            const uint8_t *q = p, *qe = p + v;
            if (field == 2) {
                size_t n = v < sizeof r->error - 1 ? (size_t)v : sizeof r->error - 1;
                memcpy(r->error, q, n);
            } else if (field == 3) {
                while (q < qe && r->n_items < MAX_IDS)
                    if (get_varint(&q, qe, &r->items[r->n_items++]) != 0)
                        return -1;
            } else if (field == 4) {
                for (; q + 4 <= qe && r->n_scores < MAX_IDS; q += 4)
                    memcpy(&r->scores[r->n_scores++], q, 4);   /* little-endian hosts */
            }
            p = qe;
        } else if (type == 5) {
            if (end - p < 4)
                return -1;
            if (field == 4 && r->n_scores < MAX_IDS)
                memcpy(&r->scores[r->n_scores++], p, 4);
            p += 4;
        } else if (type == 1) {
            if (end - p < 8)
                return -1;
            p += 8;
        } else {
            return -1;
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: %s ENDPOINT USER K [SERVER_PUBLIC_KEY|- [EXCLUDED_ITEM...]]\n",
                argv[0]);
        return 2;
    }
    const char *server_key = argc > 4 && strcmp(argv[4], "-") != 0 ? argv[4] : NULL;
    const int n_ex = argc > 5 ? argc - 5 : 0;
    if (n_ex > MAX_IDS) {
        fprintf(stderr, "at most %d excluded items\n", MAX_IDS);
        return 2;
    }
    /* RecRequest: 1 user, 2 k, 3 packed exclude */
    static uint8_t req[32 + 10 * MAX_IDS];
    uint8_t packed[10 * MAX_IDS];
    size_t n = 0, np = 0;
    req[n++] = 0x08;
    n += put_varint(req + n, strtoull(argv[2], NULL, 10));
    req[n++] = 0x10;
    n += put_varint(req + n, strtoull(argv[3], NULL, 10));
    for (int i = 0; i < n_ex; i++)
        np += put_varint(packed + np, strtoull(argv[5 + i], NULL, 10));
    if (np) {
        req[n++] = 0x1a;
        n += put_varint(req + n, np);
        memcpy(req + n, packed, np);
        n += np;
    }

    void *ctx = zmq_ctx_new();
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    int timeout = 5000, zero = 0, status = 1;
    zmq_setsockopt(s, ZMQ_RCVTIMEO, &timeout, sizeof timeout);
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    if (server_key) {
        char pub[41], sec[41];
        if (strlen(server_key) != 40 || zmq_curve_keypair(pub, sec) != 0 ||
            zmq_setsockopt(s, ZMQ_CURVE_SERVERKEY, server_key, 41) != 0 ||
            zmq_setsockopt(s, ZMQ_CURVE_PUBLICKEY, pub, 41) != 0 ||
            zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, sec, 41) != 0) {
            fprintf(stderr, "bad server key, or a libzmq without CURVE: %s\n",
                    zmq_strerror(zmq_errno()));
            goto out;
        }
    }
    if (zmq_connect(s, argv[1]) != 0 || zmq_send(s, req, n, 0) < 0) {
        fprintf(stderr, "%s: %s\n", argv[1], zmq_strerror(zmq_errno()));
        goto out;
    }
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, s, 0) < 0) {
        fprintf(stderr, "no reply within %d ms from %s\n", timeout, argv[1]);
        zmq_msg_close(&m);
        goto out;
    }
    static reply r;
    int bad = decode(zmq_msg_data(&m), zmq_msg_size(&m), &r);
    zmq_msg_close(&m);
    if (bad || r.n_items != r.n_scores) {
        fprintf(stderr, "malformed reply\n");
    } else if (r.status != 0) {
        fprintf(stderr, "error %lld: %s\n", (long long)r.status, r.error);
    } else {
        printf("# user %s: %zu items, model version %llu%s\n# rank item score\n", argv[2],
               r.n_items, (unsigned long long)r.version, r.fallback ? ", fallback" : "");
        for (size_t j = 0; j < r.n_items; j++)
            printf("%zu %llu %.9g\n", j + 1, (unsigned long long)r.items[j], r.scores[j]);
        status = 0;
    }
out:
    zmq_close(s);
    zmq_ctx_term(ctx);
    return status;
}

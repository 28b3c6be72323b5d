#define _GNU_SOURCE
#include "serve/cli.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/dataset.h"
#include "common/hash.h"
#include "common/log.h"
#include "common/opts.h"
#include "common/van.h"
#include "serve/export.h"
#include "serve/score.h"
#include "serve/service.h"

/* ---------------------------------------------------- option parsing -- */

/* The shared subcommand parser (common/opts.h), reporting to stderr:
 * 0, 2 after a usage error, or -1 for --help. */
static int s_parse(int argc, char **argv, const cm_opt *opts, size_t n, const char **pos,
                   int max_pos, int *n_pos)
{
    return cm_opts_parse_cmd(stderr, argc, argv, opts, n, pos, max_pos, n_pos);
}

/* A user or item id as the data loader reads it: a plain decimal that
 * fits 64 bits is the key, anything else hashes (docs/formats.md). */
static uint64_t s_parse_id(const char *s)
{
    size_t n = strlen(s);
    if (n > 0 && n <= 20) {
        uint64_t v = 0;
        size_t i = 0;
        for (; i < n; i++) {
            unsigned d = (unsigned char)s[i] - '0';
            if (d > 9 || v > (UINT64_MAX - d) / 10)
                break;
            v = v * 10 + d;
        }
        if (i == n)
            return v;
    }
    return cm_hash_bytes(s, n, 0);
}

/* ------------------------------------------------------------ export -- */

int sv_export_main(int argc, char **argv)
{
    const char *out = NULL, *formats = NULL, *level = "warn";
    const cm_opt opts[] = {
        {"out", 'o', CM_OPT_STR, &out, "output directory (created if missing; required)"},
        {"format", 0, CM_OPT_STR, &formats, "comma-separated: npy, fvecs, psm (default: all that apply; fvecs needs an item table)"},
        {"log-level", 0, CM_OPT_STR, &level, "debug, info, warn (default), error"},
    };
    const size_t n_opts = sizeof opts / sizeof opts[0];
    const char *pos[1];
    int n_pos = 0;
    int rc = s_parse(argc, argv, opts, n_opts, pos, 1, &n_pos);
    if (rc < 0) {
        printf("usage: psrec export CHECKPOINT --out DIR [--format npy,fvecs,psm]\n\n"
               "Turns a checkpoint (a ckpt-NNNNNN directory, or a checkpoint root: the\n"
               "one BEST names, else its newest intact one) into files serving systems read:\n"
               "  npy    <table>.npy (float32 rows) and <table>.ids.npy (int64 ids)\n"
               "  fvecs  item.fvecs: item vectors [bias, factors] for ANN tools (Faiss);\n"
               "         query with [1, user factors] (see manifest.json)\n"
               "  psm    model.psm: one mmap-able file with every table (docs/psm.md),\n"
               "         read by psrec recommend / serve and by serve/psm.c\n"
               "manifest.json states the model and its scoring formula.\n\n");
        cm_opts_print(stdout, opts, n_opts);
        return 0;
    }
    if (rc != 0)
        return rc;
    if (n_pos != 1 || !out) {
        fprintf(stderr, "psrec export: need CHECKPOINT and --out DIR (see --help)\n");
        return 2;
    }
    unsigned fmt = SV_FMT_ALL;
    cm_error err = {0};
    if (formats && sv_export_parse_formats(formats, &fmt, &err) != 0) {
        fprintf(stderr, "psrec export: %s\n", err.msg);
        return 2;
    }
    int lv = cm_log_level_parse(level);
    cm_log_set_level(lv < 0 ? CM_LOG_WARN : lv);
    cm_log_set_identity("psrec", -1);
    sv_export_model m;
    rc = sv_export_load(pos[0], &m, &err);
    if (rc == 0 && !formats) {
        /* unasked, item vectors only where the model has items (mf, implicit) */
        int items = 0;
        for (size_t t = 0; t < m.n_tables; t++)
            items |= strcmp(m.tables[t].name, "item") == 0;
        if (!items)
            fmt &= ~(unsigned)SV_FMT_FVECS;
    }
    if (rc == 0)
        rc = sv_export_write(&m, out, fmt, &err);
    if (rc != 0) {
        fprintf(stderr, "psrec export: %s\n", err.msg);
        sv_export_model_free(&m);
        return 1;
    }
    printf("exported %s (model %s, global mean %.6g) to %s:", pos[0], m.model, m.global_mean,
           out);
    for (size_t t = 0; t < m.n_tables; t++)
        printf(" %s %zu x %d;", m.tables[t].name, m.tables[t].n, m.tables[t].dim);
    printf(" formats%s%s%s\n", fmt & SV_FMT_NPY ? " npy" : "", fmt & SV_FMT_FVECS ? " fvecs" : "",
           fmt & SV_FMT_PSM ? " psm" : "");
    sv_export_model_free(&m);
    return 0;
}

/* --------------------------------------------------------- recommend -- */

int sv_recommend_main(int argc, char **argv)
{
    const char *model = NULL, *user_s = NULL, *exclude = NULL;
    int k = 10;
    const cm_opt opts[] = {
        {"model", 'm', CM_OPT_STR, &model, "an export directory or its model.psm (required)"},
        {"user", 'u', CM_OPT_STR, &user_s, "the user id, as in the ratings (required)"},
        {"k", 'k', CM_OPT_INT, &k, "how many items (default 10)"},
        {"exclude", 0, CM_OPT_STR, &exclude,
         "ratings file (text or .psrd): skip items this user rated there"},
    };
    const size_t n_opts = sizeof opts / sizeof opts[0];
    const char *pos[1];
    int n_pos = 0;
    int rc = s_parse(argc, argv, opts, n_opts, pos, 0, &n_pos);
    if (rc < 0) {
        printf("usage: psrec recommend --model EXPORT --user ID [-k 10] [--exclude FILE]\n\n"
               "Prints the top-K items for a user, best first, as `rank item score`\n"
               "lines (lines starting with '#' are comments). score = global_mean +\n"
               "user bias + item bias + dot(user factors, item factors), unclipped. A\n"
               "user the model does not know gets the popularity fallback (items by\n"
               "global_mean + item bias), flagged in a '# fallback' line. For an\n"
               "implicit model the score has no global_mean and no user bias: it\n"
               "ranks, it does not predict a rating.\n\n");
        cm_opts_print(stdout, opts, n_opts);
        return 0;
    }
    if (rc != 0)
        return rc;
    if (!model || !user_s) {
        fprintf(stderr, "psrec recommend: need --model and --user (see --help)\n");
        return 2;
    }
    if (k < 1) {
        fprintf(stderr, "psrec recommend: -k must be at least 1\n");
        return 2;
    }
    cm_log_set_identity("psrec", -1);
    const uint64_t user = s_parse_id(user_s);
    cm_error err = {0};
    cm_ratings r = {0};
    uint64_t *ex = NULL;
    size_t n_ex = 0;
    sv_hit *hits = NULL;
    sv_scorer *sc = NULL;
    int status = 1;
    sv_model *m = sv_model_open(model, &err);
    if (!m)
        goto out;
    if (exclude) {
        if (cm_ratings_load(exclude, NULL, &r, &err) != 0)
            goto out;
        for (size_t j = 0; j < r.n; j++)
            n_ex += r.user[j] == user;
        ex = malloc((n_ex ? n_ex : 1) * sizeof *ex);
        if (!ex) {
            cm_error_set(&err, CM_ENOMEM, "out of memory");
            goto out;
        }
        n_ex = 0;
        for (size_t j = 0; j < r.n; j++)
            if (r.user[j] == user)
                ex[n_ex++] = r.item[j];
    }
    if ((size_t)k > sv_model_n_items(m))
        k = (int)sv_model_n_items(m) + 1; /* room enough; never a huge buffer */
    hits = malloc((size_t)k * sizeof *hits);
    sc = sv_scorer_new(&err);
    if (!hits || !sc) {
        cm_error_set(&err, CM_ENOMEM, "out of memory");
        goto out;
    }
    size_t n = 0;
    int fallback = 0;
    if (sv_recommend(sc, m, user, (size_t)k, ex, n_ex, hits, &n, &fallback, &err) != 0)
        goto out;
    printf("# user %s: top %zu of %zu items", user_s, n, sv_model_n_items(m));
    if (exclude)
        printf(", %zu rated in %s excluded", n_ex, exclude);
    printf("\n");
    if (fallback)
        printf("# fallback: user %s is not in the model; items ranked by popularity "
               "(global_mean + item bias)\n",
               user_s);
    printf("# rank item score\n");
    for (size_t j = 0; j < n; j++)
        printf("%zu %llu %.9g\n", j + 1, (unsigned long long)hits[j].item, hits[j].score);
    status = 0;
out:
    if (status != 0)
        fprintf(stderr, "psrec recommend: %s\n", err.msg);
    sv_scorer_destroy(&sc);
    free(hits);
    free(ex);
    cm_ratings_free(&r);
    sv_model_destroy(&m);
    return status;
}

/* ------------------------------------------------------------- serve -- */

static atomic_int s_stop;

static void s_on_signal(int sig)
{
    (void)sig;
    atomic_store(&s_stop, 1);
}

/* Writes a new CURVE secret key to path (created, never overwritten,
 * readable by its owner only) and prints the public key. */
static int s_keygen(const char *path)
{
    uint8_t pk[CM_KEY_BYTES], sk[CM_KEY_BYTES];
    cm_error err = {0};
    if (cm_van_keypair(pk, sk, &err) != 0) {
        fprintf(stderr, "psrec serve: --keygen: %s\n", err.msg);
        return 1;
    }
    char pub[41], sec[41];
    cm_van_key_text(pub, pk);
    cm_van_key_text(sec, sk);
    memset(sk, 0, sizeof sk);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        fprintf(stderr, "psrec serve: --keygen %s: %s\n", path, strerror(errno));
        return 1;
    }
    char line[42];
    snprintf(line, sizeof line, "%s\n", sec);
    int ok = write(fd, line, 41) == 41;
    ok = fsync(fd) == 0 && ok;
    ok = close(fd) == 0 && ok;
    if (!ok) {
        fprintf(stderr, "psrec serve: --keygen %s: %s\n", path, strerror(errno));
        unlink(path);
        return 1;
    }
    printf("secret key written to %s\npublic key: %s\n", path, pub);
    return 0;
}

/* Reads a secret key file: 40 Z85 characters, then optional whitespace.
 * Refused when others may read it, as ssh does with its keys. */
static int s_read_secret(const char *path, uint8_t sec[CM_KEY_BYTES], char pub[41])
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        fprintf(stderr, "psrec serve: --curve-secret-file %s: %s\n", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return 1;
    }
    if (st.st_mode & 077) {
        fprintf(stderr, "psrec serve: --curve-secret-file %s: readable by others (mode %03o); "
                "chmod 600 it\n", path, (unsigned)(st.st_mode & 0777));
        close(fd);
        return 1;
    }
    char buf[128];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    size_t len = n > 0 ? (size_t)n : 0;
    while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r' || buf[len - 1] == ' '))
        len--;
    buf[len] = '\0';
    uint8_t pk[CM_KEY_BYTES];
    cm_error err = {0};
    int rc = cm_van_key_parse(sec, buf);
    memset(buf, 0, sizeof buf);
    if (rc != 0) {
        fprintf(stderr, "psrec serve: --curve-secret-file %s: expected a 40-character Z85 "
                "secret key (psrec serve --keygen FILE makes one)\n", path);
        return 1;
    }
    if (cm_van_public_of(pk, sec, &err) != 0) {
        fprintf(stderr, "psrec serve: --curve-secret-file %s: %s\n", path, err.msg);
        return 1;
    }
    cm_van_key_text(pub, pk);
    return 0;
}

/* Serves p until a signal or p->max_requests: the CURVE key read from
 * secret_file (NULL: none), logging at level lv. The exit status. */
static int s_serve(sv_service_params *p, const char *secret_file, int lv)
{
    uint8_t sec[CM_KEY_BYTES] = {0};
    char pub[41] = "";
    if (secret_file) {
        if (s_read_secret(secret_file, sec, pub) != 0)
            return 1;
        p->curve_secret = sec;
    }
    cm_log_set_level(lv);
    cm_log_set_identity("serve", -1);
    cm_error err = {0};
    cm_van *van = cm_van_new(&err);
    if (!van) {
        fprintf(stderr, "psrec serve: %s\n", err.msg);
        return 1;
    }
    sv_service *s = sv_service_new(van, p, &err);
    memset(sec, 0, sizeof sec);
    if (!s) {
        fprintf(stderr, "psrec serve: %s\n", err.msg);
        cm_van_destroy(&van);
        return 1;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = s_on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    if (secret_file)
        printf("psrec serve: CURVE on; server public key %s\n", pub);
    printf("psrec serve: serving %s on %s (%d threads)\n", p->model, sv_service_endpoint(s),
           (int)p->threads);
    fflush(stdout);
    int rc = sv_service_run(s, &s_stop);
    printf("psrec serve: stopped after %llu requests (model version %llu)\n",
           (unsigned long long)sv_service_requests(s),
           (unsigned long long)sv_service_model_version(s));
    sv_service_destroy(&s);
    cm_van_destroy(&van);
    return rc == 0 ? 0 : 1;
}

int sv_serve_main(int argc, char **argv)
{
    sv_service_params p = sv_service_params_default();
    const char *level = "info", *secret_file = NULL, *keygen = NULL;
    uint64_t max_requests = 0, max_msg = (uint64_t)p.max_msg_bytes;
    int max_k = (int)p.max_k, max_exclude = (int)p.max_exclude, threads = (int)p.threads,
        queue = (int)p.queue;
    p.bind = "tcp://127.0.0.1:5555";
    const cm_opt opts[] = {
        {"model", 'm', CM_OPT_STR, &p.model, "an export directory or its model.psm (required)"},
        {"bind", 'b', CM_OPT_STR, &p.bind, "endpoint to listen on (default tcp://127.0.0.1:5555; "
                                      "port * picks a free one)"},
        {"poll-ms", 0, CM_OPT_INT, &p.poll_ms, "check the model file for a new version this often "
                                          "(default 200)"},
        {"max-k", 0, CM_OPT_INT, &max_k, "largest k a request may ask for (default 1000)"},
        {"max-exclude", 0, CM_OPT_INT, &max_exclude,
         "most excluded ids in one request (default 100000)"},
        {"max-msg-bytes", 0, CM_OPT_U64, &max_msg,
         "larger request messages are dropped with their connection, unread "
         "(default 1048576)"},
        {"threads", 0, CM_OPT_INT, &threads, "workers answering requests (default 4, max 64)"},
        {"queue", 0, CM_OPT_INT, &queue, "requests waiting for a worker before the server "
                                         "stops reading (default 64)"},
        {"curve-secret-file", 0, CM_OPT_STR, &secret_file,
         "encrypt with CURVE: the server's secret key (mode 600; see --keygen)"},
        {"keygen", 0, CM_OPT_STR, &keygen,
         "write a new CURVE secret key to this file, print its public key, exit"},
        {"max-requests", 0, CM_OPT_U64, &max_requests, "exit after this many requests "
                                                  "(default 0: run until SIGINT/SIGTERM)"},
        {"log-level", 0, CM_OPT_STR, &level, "debug, info (default), warn, error"},
    };
    const size_t n_opts = sizeof opts / sizeof opts[0];
    const char *pos[1];
    int n_pos = 0;
    int rc = s_parse(argc, argv, opts, n_opts, pos, 0, &n_pos);
    if (rc < 0) {
        printf("usage: psrec serve --model EXPORT [--bind ENDPOINT] [options]\n"
               "       psrec serve --keygen SECRET_FILE\n\n"
               "Answers top-K requests over ZeroMQ: a ROUTER socket takes a protobuf\n"
               "psrec.pb.RecRequest {user, k, exclude} from DEALER (or REQ) clients and\n"
               "replies with a RecReply {status, error, items, scores, fallback,\n"
               "model_version}. Unknown users get the popularity fallback, flagged.\n"
               "A pool of --threads workers answers; each client's replies come in\n"
               "order. k, the exclude list and the message size are limited; a\n"
               "request over a limit gets an error reply (an oversized message loses\n"
               "its connection). With --curve-secret-file traffic is encrypted and\n"
               "clients need the public key printed at start (serve/examples/).\n"
               "When model.psm is replaced (rename) the new file is validated and\n"
               "swapped in; a broken file is logged and the old model keeps serving.\n"
               "docs/serving.md has the protocol and the limits.\n\n");
        cm_opts_print(stdout, opts, n_opts);
        return 0;
    }
    if (rc != 0)
        return rc;
    if (keygen)
        return s_keygen(keygen);
    if (!p.model) {
        fprintf(stderr, "psrec serve: need --model (see --help)\n");
        return 2;
    }
    if (max_k < 1 || max_exclude < 0 || threads < 1 || threads > 64 || queue < 1 ||
        max_msg < 64 || max_msg > ((uint64_t)1 << 40)) {
        fprintf(stderr, "psrec serve: --max-k, --threads (1..64) and --queue must be at least "
                "1, --max-msg-bytes 64..2^40\n");
        return 2;
    }
    p.max_k = (uint32_t)max_k;
    p.max_exclude = (uint32_t)max_exclude;
    p.max_msg_bytes = (int64_t)max_msg;
    p.threads = (uint32_t)threads;
    p.queue = (uint32_t)queue;
    p.max_requests = max_requests;
    int lv = cm_log_level_parse(level);
    if (lv < 0) {
        fprintf(stderr, "psrec serve: --log-level: bad value '%s'\n", level);
        return 2;
    }
    return s_serve(&p, secret_file, lv);
}

/* Top-K scoring (against brute force), exclusions, the popularity
 * fallback, and the ZeroMQ server: replies, malformed requests, hot reload
 * (a new model swapped in; a torn one refused while the old one serves),
 * and the ways it stops. */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/codec.h"
#include "common/log.h"
#include "common/van.h"
#include "serve/psm_write.h"
#include "serve/score.h"
#include "serve/service.h"
#include "serve_helpers.h"

static char s_dir[] = "/tmp/psrec-serve-XXXXXX";
static char s_path[512];

static void s_setup(void)
{
    cr_assert_not_null(mkdtemp(s_dir));
    snprintf(s_path, sizeof s_path, "%s/model.psm", s_dir);
    cm_log_set_level(CM_LOG_WARN);
}

static void s_teardown(void)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", s_dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", s_dir);
}

TestSuite(serve, .init = s_setup, .fini = s_teardown, .timeout = 120);

/* ------------------------------------------------------------ models -- */

typedef struct {
    size_t nu, ni;
    int dim;
    uint64_t seed;
    double gm;
    int same_items;      /* every item row identical (ties) */
} s_spec;

static void s_write_mf(const char *path, s_spec sp)
{
    uint64_t *uid = malloc(sp.nu * sizeof *uid), *iid = malloc(sp.ni * sizeof *iid);
    float *ur = malloc(sp.nu * (size_t)sp.dim * sizeof *ur);
    float *ir = malloc(sp.ni * (size_t)sp.dim * sizeof *ir);
    for (size_t i = 0; i < sp.nu; i++) {
        uid[i] = sh_id(0, i);
        for (int j = 0; j < sp.dim; j++)
            ur[i * (size_t)sp.dim + (size_t)j] = sh_val(sp.seed, 0, uid[i], j);
    }
    for (size_t i = 0; i < sp.ni; i++) {
        iid[i] = sh_id(1, i);
        for (int j = 0; j < sp.dim; j++)
            ir[i * (size_t)sp.dim + (size_t)j] =
                sh_val(sp.seed, 1, sp.same_items ? 1 : iid[i], j);
    }
    sv_psm_table t[2] = {{"user", sp.dim, sp.nu, uid, ur}, {"item", sp.dim, sp.ni, iid, ir}};
    sv_psm_model m = {"mf", "f", sp.gm, 1.f, 5.f, 2, t};
    cm_error err = {0};
    cr_assert_eq(sv_psm_write(path, &m, &err), 0, "%s", err.msg);
    free(uid);
    free(iid);
    free(ur);
    free(ir);
}

static sv_model *s_open(const char *path)
{
    cm_error err = {0};
    sv_model *m = sv_model_open(path, &err);
    cr_assert_not_null(m, "%s", err.msg);
    return m;
}

/* The exact score, in double. */
static double s_score(s_spec sp, uint64_t user, size_t item_row)
{
    uint64_t iid = sh_id(1, item_row), src = sp.same_items ? 1 : iid;
    double s = sp.gm + sh_val(sp.seed, 0, user, 0) + sh_val(sp.seed, 1, src, 0);
    for (int j = 1; j < sp.dim; j++)
        s += (double)sh_val(sp.seed, 0, user, j) * sh_val(sp.seed, 1, src, j);
    return s;
}

typedef struct {
    double s;
    uint64_t item;
} s_ref;

static int s_ref_cmp(const void *a, const void *b)
{
    const s_ref *x = a, *y = b;
    if (x->s != y->s)
        return x->s < y->s ? 1 : -1;
    return x->item < y->item ? -1 : x->item > y->item;
}

/* ----------------------------------------------------------- scoring -- */

Test(serve, top_k_matches_brute_force)
{
    s_spec sp = {.nu = 60, .ni = 1500, .dim = 9, .seed = 3, .gm = 3.5};
    s_write_mf(s_path, sp);
    sv_model *m = s_open(s_dir); /* an export directory works too */
    cr_expect_eq(sv_model_n_items(m), 1500);
    cr_expect_eq(sv_model_n_users(m), 60);
    cr_expect_eq(sv_model_dim(m), 9);
    cr_expect_eq(sv_model_global_mean(m), 3.5);
    sv_scorer *sc = sv_scorer_new(NULL);
    s_ref *ref = malloc(sp.ni * sizeof *ref);
    sv_hit hits[50];
    size_t ks[] = {1, 10, 50};
    for (size_t u = 0; u < sp.nu; u++) {
        uint64_t user = sh_id(0, u);
        cr_assert(sv_model_has_user(m, user));
        for (size_t i = 0; i < sp.ni; i++)
            ref[i] = (s_ref){s_score(sp, user, i), sh_id(1, i)};
        qsort(ref, sp.ni, sizeof *ref, s_ref_cmp);
        for (size_t kk = 0; kk < 3; kk++) {
            size_t n = 0;
            int fb = -1;
            cm_error err = {0};
            cr_assert_eq(sv_recommend(sc, m, user, ks[kk], NULL, 0, hits, &n, &fb, &err), 0,
                         "%s", err.msg);
            cr_assert_eq(n, ks[kk]);
            cr_assert_eq(fb, 0);
            for (size_t j = 0; j < n; j++) {
                size_t row = (size_t)(hits[j].item - 10) / 7;
                double exact = s_score(sp, user, row);
                cr_assert(fabs(exact - hits[j].score) < 1e-4, "user %llu item %llu: %f vs %f",
                          (unsigned long long)user, (unsigned long long)hits[j].item,
                          hits[j].score, exact);
                /* the same item, or one tied with it within float rounding */
                cr_assert(hits[j].item == ref[j].item || fabs(exact - ref[j].s) < 1e-5,
                          "user %llu rank %zu: %llu, brute force %llu",
                          (unsigned long long)user, j, (unsigned long long)hits[j].item,
                          (unsigned long long)ref[j].item);
                if (j > 0)
                    cr_assert_geq(hits[j - 1].score, hits[j].score, "best first");
            }
        }
    }
    free(ref);
    sv_scorer_destroy(&sc);
    cr_expect_null(sc);
    sv_model_destroy(&m);
    cr_expect_null(m);
    sv_model_destroy(&m); /* no-op */
}

Test(serve, exclusions_are_skipped)
{
    s_spec sp = {.nu = 5, .ni = 40, .dim = 4, .seed = 5, .gm = 3.0};
    s_write_mf(s_path, sp);
    sv_model *m = s_open(s_path);
    sv_scorer *sc = sv_scorer_new(NULL);
    sv_hit all[40], some[40];
    size_t n_all = 0, n = 0;
    uint64_t user = sh_id(0, 2);
    cr_assert_eq(sv_recommend(sc, m, user, 40, NULL, 0, all, &n_all, NULL, NULL), 0);
    cr_assert_eq(n_all, 40);
    /* exclude the 1st and 3rd best, plus ids the model lacks, in any order */
    uint64_t ex[] = {all[2].item, 999999, all[0].item, all[2].item, 11};
    cr_assert_eq(sv_recommend(sc, m, user, 5, ex, 5, some, &n, NULL, NULL), 0);
    cr_assert_eq(n, 5);
    uint64_t want[] = {all[1].item, all[3].item, all[4].item, all[5].item, all[6].item};
    for (size_t j = 0; j < 5; j++)
        cr_expect_eq(some[j].item, want[j], "rank %zu", j);
    /* k beyond what is left */
    cr_assert_eq(sv_recommend(sc, m, user, 100, ex, 5, some, &n, NULL, NULL), 0);
    cr_expect_eq(n, 38);
    /* everything excluded */
    uint64_t every[40];
    for (size_t i = 0; i < 40; i++)
        every[i] = sh_id(1, i);
    cr_assert_eq(sv_recommend(sc, m, user, 10, every, 40, some, &n, NULL, NULL), 0);
    cr_expect_eq(n, 0);
    cm_error err = {0};
    cr_expect_eq(sv_recommend(sc, m, user, 0, NULL, 0, some, &n, NULL, &err), CM_EINVAL);
    sv_scorer_destroy(&sc);
    sv_model_destroy(&m);
}

Test(serve, unknown_user_gets_the_flagged_popularity_fallback)
{
    s_spec sp = {.nu = 5, .ni = 300, .dim = 6, .seed = 9, .gm = 3.5};
    s_write_mf(s_path, sp);
    sv_model *m = s_open(s_path);
    sv_scorer *sc = sv_scorer_new(NULL);
    sv_hit hits[20];
    size_t n = 0;
    int fb = 0;
    cr_expect(!sv_model_has_user(m, 2));
    cr_assert_eq(sv_recommend(sc, m, 2, 20, NULL, 0, hits, &n, &fb, NULL), 0);
    cr_expect_eq(fb, 1);
    cr_assert_eq(n, 20);
    /* items by global_mean + b_i */
    s_ref ref[300];
    for (size_t i = 0; i < 300; i++)
        ref[i] = (s_ref){(double)sh_val(sp.seed, 1, sh_id(1, i), 0), sh_id(1, i)};
    qsort(ref, 300, sizeof *ref, s_ref_cmp);
    for (size_t j = 0; j < 20; j++) {
        cr_expect_eq(hits[j].item, ref[j].item, "rank %zu", j);
        cr_expect(fabs(hits[j].score - (3.5 + ref[j].s)) < 1e-5);
    }
    /* the fallback honours exclusions */
    uint64_t ex[] = {ref[0].item};
    cr_assert_eq(sv_recommend(sc, m, 2, 1, ex, 1, hits, &n, &fb, NULL), 0);
    cr_expect_eq(hits[0].item, ref[1].item);
    sv_scorer_destroy(&sc);
    sv_model_destroy(&m);
}

Test(serve, ties_go_to_the_smaller_id)
{
    s_spec sp = {.nu = 3, .ni = 100, .dim = 5, .seed = 2, .gm = 3.0, .same_items = 1};
    s_write_mf(s_path, sp);
    sv_model *m = s_open(s_path);
    sv_scorer *sc = sv_scorer_new(NULL);
    sv_hit hits[7];
    size_t n = 0;
    cr_assert_eq(sv_recommend(sc, m, sh_id(0, 1), 7, NULL, 0, hits, &n, NULL, NULL), 0);
    for (size_t j = 0; j < n; j++)
        cr_expect_eq(hits[j].item, sh_id(1, j));
    sv_scorer_destroy(&sc);
    sv_model_destroy(&m);
}

Test(serve, model_open_errors)
{
    cm_error err = {0};
    cr_expect_null(sv_model_open("/nonexistent/model.psm", &err));
    cr_expect_eq(err.code, CM_ENOTFOUND);
    cr_expect_null(sv_model_open(s_dir, &err), "an export directory without model.psm");
    cr_expect(strstr(err.msg, "model.psm") != NULL, "%s", err.msg);
    /* not an mf model / missing table / dims differ */
    uint64_t ids[] = {1, 2};
    float rows[8] = {0};
    sv_psm_table t[2] = {{"user", 2, 2, ids, rows}, {"item", 3, 2, ids, rows}};
    sv_psm_model pm = {"fm", "", 0, 1, 5, 2, t};
    cr_assert_eq(sv_psm_write(s_path, &pm, &err), 0, "%s", err.msg);
    cr_expect_null(sv_model_open(s_path, &err));
    cr_expect(strstr(err.msg, "'fm'") != NULL, "%s", err.msg);
    pm.model = "nosuch"; /* a name the model table does not know */
    cr_assert_eq(sv_psm_write(s_path, &pm, &err), 0, "%s", err.msg);
    cr_expect_null(sv_model_open(s_path, &err));
    cr_expect(strstr(err.msg, "'nosuch'") != NULL, "%s", err.msg);
    pm.model = "mf";
    cr_assert_eq(sv_psm_write(s_path, &pm, &err), 0, "%s", err.msg);
    cr_expect_null(sv_model_open(s_path, &err));
    cr_expect(strstr(err.msg, "floats") != NULL, "%s", err.msg);
    pm.n_tables = 1;
    cr_assert_eq(sv_psm_write(s_path, &pm, &err), 0, "%s", err.msg);
    cr_expect_null(sv_model_open(s_path, &err));
    cr_expect(strstr(err.msg, "'item'") != NULL, "%s", err.msg);
    /* a corrupt file names the file */
    int fd = open(s_path, O_WRONLY);
    cr_assert_geq(fd, 0);
    cr_assert_eq(pwrite(fd, "X", 1, 0), 1);
    close(fd);
    cr_expect_null(sv_model_open(s_path, &err));
    cr_expect(strstr(err.msg, s_path) && strstr(err.msg, "bad magic"), "%s", err.msg);
}

/* ------------------------------------------------------------ server -- */

typedef struct {
    cm_van *van;
    sv_service *srv;
    cm_sock *client;
    atomic_int stop;
    int rc;
    pthread_t th;
    char endpoint[CM_ENDPOINT_MAX];
} s_rig;

static void *s_serve_thread(void *arg)
{
    s_rig *r = arg;
    r->rc = sv_service_run(r->srv, &r->stop);
    return NULL;
}

static void s_start(s_rig *r, const char *name, uint64_t max_requests)
{
    memset(r, 0, sizeof *r);
    cm_error err = {0};
    r->van = cm_van_new(&err);
    cr_assert_not_null(r->van, "%s", err.msg);
    sv_service_params p = sv_service_params_default();
    p.model = s_dir;
    snprintf(r->endpoint, sizeof r->endpoint, "inproc://%s", name);
    p.bind = r->endpoint;
    p.poll_ms = 30;
    p.max_k = 100;
    p.max_requests = max_requests;
    r->srv = sv_service_new(r->van, &p, &err);
    cr_assert_not_null(r->srv, "%s", err.msg);
    cr_expect_str_eq(sv_service_endpoint(r->srv), r->endpoint);
    cr_expect_eq(sv_service_model_version(r->srv), 1);
    r->client = cm_sock_new(r->van, CM_SOCK_DEALER, &err);
    cr_assert_not_null(r->client, "%s", err.msg);
    cr_assert_eq(cm_sock_connect(r->client, r->endpoint), 0);
    cr_assert_eq(pthread_create(&r->th, NULL, s_serve_thread, r), 0);
}

static void s_stop(s_rig *r)
{
    atomic_store(&r->stop, 1);
    pthread_join(r->th, NULL);
    cr_expect_eq(r->rc, 0);
    cm_sock_destroy(&r->client);
    sv_service_destroy(&r->srv);
    cr_expect_null(r->srv);
    cm_van_destroy(&r->van);
}

/* Sends raw frames and decodes the one-frame (or [empty][reply]) answer. */
static void s_raw(s_rig *r, const cm_iov *iov, size_t n, size_t want_frames, cm_rec_reply *rep)
{
    cr_assert_eq(cm_sock_send(r->client, iov, n), 0, "%s", cm_sock_errmsg(r->client));
    cm_frames *f = NULL;
    cr_assert_eq(cm_sock_recv(r->client, &f, 5000), 0, "no reply");
    cr_assert_eq(cm_frames_count(f), want_frames);
    size_t last = want_frames - 1;
    if (want_frames == 2)
        cr_expect_eq(cm_frames_size(f, 0), 0, "the REQ delimiter comes back");
    cm_error err = {0};
    cr_assert_eq(cm_codec_rec_reply_unpack(cm_frames_data(f, last), cm_frames_size(f, last), rep,
                                           &err),
                 0, "%s", err.msg);
    cm_frames_destroy(&f);
}

static void s_query(s_rig *r, uint64_t user, uint32_t k, uint64_t *ex, size_t n_ex,
                    cm_rec_reply *rep)
{
    cm_rec_request q = {.user = user, .k = k, .n_exclude = n_ex, .exclude = ex};
    uint8_t *buf = NULL;
    size_t len = 0;
    cr_assert_eq(cm_codec_rec_request_pack(&q, &buf, &len), 0);
    cm_iov iov = {buf, len};
    s_raw(r, &iov, 1, 1, rep);
    free(buf);
}

static void s_reply_free(cm_rec_reply *rep)
{
    free(rep->items);
    free(rep->scores);
    memset(rep, 0, sizeof *rep);
}

/* The answer sv_recommend gives on the model now at s_path. */
static void s_expect_same(const cm_rec_reply *rep, uint64_t user, uint32_t k)
{
    sv_model *m = s_open(s_path);
    sv_scorer *sc = sv_scorer_new(NULL);
    sv_hit hits[100];
    size_t n = 0;
    cr_assert_eq(sv_recommend(sc, m, user, k, NULL, 0, hits, &n, NULL, NULL), 0);
    cr_assert_eq(rep->n, n);
    for (size_t j = 0; j < n; j++) {
        cr_expect_eq(rep->items[j], hits[j].item, "rank %zu", j);
        cr_expect_eq(rep->scores[j], hits[j].score, "rank %zu", j);
    }
    sv_scorer_destroy(&sc);
    sv_model_destroy(&m);
}

Test(serve, server_answers_flags_fallback_and_survives_garbage)
{
    s_spec sp = {.nu = 20, .ni = 500, .dim = 8, .seed = 11, .gm = 3.5};
    s_write_mf(s_path, sp);
    s_rig r;
    s_start(&r, "serve-basic", 0);
    cm_rec_reply rep;

    s_query(&r, sh_id(0, 4), 10, NULL, 0, &rep);
    cr_expect_eq(rep.status, 0, "%s", rep.error);
    cr_expect_eq(rep.fallback, 0);
    cr_expect_eq(rep.model_version, 1);
    s_expect_same(&rep, sh_id(0, 4), 10);
    uint64_t top = rep.items[0];
    s_reply_free(&rep);

    uint64_t ex[] = {top};
    s_query(&r, sh_id(0, 4), 10, ex, 1, &rep);
    cr_expect_eq(rep.status, 0);
    for (size_t j = 0; j < rep.n; j++)
        cr_expect_neq(rep.items[j], top, "excluded item returned");
    s_reply_free(&rep);

    s_query(&r, 2, 5, NULL, 0, &rep); /* not a user id of this model */
    cr_expect_eq(rep.status, 0);
    cr_expect_eq(rep.fallback, 1, "unknown users are flagged");
    cr_expect_eq(rep.n, 5);
    s_reply_free(&rep);

    /* garbage: a varint cut short */
    const uint8_t junk[] = {0x08, 0xff};
    cm_iov iov = {junk, sizeof junk};
    s_raw(&r, &iov, 1, 1, &rep);
    cr_expect_eq(rep.status, CM_EPROTO);
    cr_expect(strstr(rep.error, "RecRequest") != NULL, "%s", rep.error);
    cr_expect_eq(rep.n, 0);
    s_reply_free(&rep);

    /* two frames after the route */
    cm_iov two[2] = {{"a", 1}, {"b", 1}};
    s_raw(&r, two, 2, 1, &rep);
    cr_expect_eq(rep.status, CM_EPROTO);
    cr_expect(strstr(rep.error, "frames") != NULL, "%s", rep.error);
    s_reply_free(&rep);

    /* an empty request decodes as k = 0 */
    cm_iov empty = {"", 0};
    s_raw(&r, &empty, 1, 1, &rep);
    cr_expect_eq(rep.status, CM_ERANGE);
    s_reply_free(&rep);
    s_query(&r, sh_id(0, 1), 101, NULL, 0, &rep);
    cr_expect_eq(rep.status, CM_ERANGE, "k above max_k");
    cr_expect(strstr(rep.error, "100") != NULL, "%s", rep.error);
    s_reply_free(&rep);

    /* a REQ-style envelope: [empty][request] */
    cm_rec_request q = {.user = sh_id(0, 4), .k = 3};
    uint8_t *buf = NULL;
    size_t len = 0;
    cr_assert_eq(cm_codec_rec_request_pack(&q, &buf, &len), 0);
    cm_iov env[2] = {{"", 0}, {buf, len}};
    s_raw(&r, env, 2, 2, &rep);
    cr_expect_eq(rep.status, 0);
    cr_expect_eq(rep.items[0], top);
    s_reply_free(&rep);
    free(buf);

    /* and it still serves */
    s_query(&r, sh_id(0, 4), 10, NULL, 0, &rep);
    cr_expect_eq(rep.status, 0);
    cr_expect_eq(rep.items[0], top);
    s_reply_free(&rep);
    cr_expect_eq(sv_service_requests(r.srv), 9);
    s_stop(&r);
}

/* Queries until the reply carries `version` (or 5 s pass). */
static void s_wait_version(s_rig *r, uint64_t user, uint64_t version, cm_rec_reply *rep)
{
    for (int i = 0; i < 500; i++) {
        s_query(r, user, 10, NULL, 0, rep);
        if (rep->model_version == version)
            return;
        s_reply_free(rep);
        usleep(10000);
    }
    cr_assert_fail("model_version never reached %llu", (unsigned long long)version);
}

static unsigned char *s_slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f);
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc(*n);
    cr_assert_eq(fread(b, 1, *n, f), *n);
    fclose(f);
    return b;
}

Test(serve, hot_reload_swaps_whole_models_only)
{
    s_spec a = {.nu = 20, .ni = 400, .dim = 8, .seed = 21, .gm = 3.5};
    s_spec b = a, c = a;
    b.seed = 22;
    c.seed = 23;
    c.ni = 450;
    s_write_mf(s_path, a);
    s_rig r;
    s_start(&r, "serve-reload", 0);
    const uint64_t user = sh_id(0, 3);
    cm_rec_reply rep;
    s_query(&r, user, 10, NULL, 0, &rep);
    cr_expect_eq(rep.model_version, 1);
    s_expect_same(&rep, user, 10);
    float score_a = rep.scores[0];
    s_reply_free(&rep);

    /* a new model, renamed into place */
    s_write_mf(s_path, b);
    s_wait_version(&r, user, 2, &rep);
    s_expect_same(&rep, user, 10);
    cr_expect_neq(rep.scores[0], score_a, "the answers changed with the model");
    uint64_t first_b = rep.items[0];
    float score_b = rep.scores[0];
    s_reply_free(&rep);
    cr_expect_eq(sv_service_model_version(r.srv), 2);

    /* make the next model's bytes, then tear it */
    char tmp[600], full[600];
    snprintf(full, sizeof full, "%s/next.psm", s_dir);
    s_write_mf(full, c);
    size_t n;
    unsigned char *bytes = s_slurp(full, &n);
    snprintf(tmp, sizeof tmp, "%s/torn.psm", s_dir);
    FILE *f = fopen(tmp, "wb");
    cr_assert_eq(fwrite(bytes, 1, n / 2, f), n / 2);
    fclose(f);
    cr_assert_eq(rename(tmp, s_path), 0);
    usleep(200000); /* several poll periods */
    s_query(&r, user, 10, NULL, 0, &rep);
    cr_expect_eq(rep.status, 0);
    cr_expect_eq(rep.model_version, 2, "a torn file is never served");
    cr_expect_eq(rep.items[0], first_b);
    cr_expect_eq(rep.scores[0], score_b);
    s_reply_free(&rep);

    /* written in place, slowly: half, then the rest */
    int fd = open(s_path, O_WRONLY | O_TRUNC);
    cr_assert_geq(fd, 0);
    cr_assert_eq(pwrite(fd, bytes, n / 3, 0), (ssize_t)(n / 3));
    usleep(150000);
    s_query(&r, user, 10, NULL, 0, &rep);
    cr_expect_eq(rep.model_version, 2, "a half-written file is never served");
    cr_expect_eq(rep.items[0], first_b);
    s_reply_free(&rep);
    cr_assert_eq(pwrite(fd, bytes + n / 3, n - n / 3, (off_t)(n / 3)), (ssize_t)(n - n / 3));
    close(fd);
    s_wait_version(&r, user, 3, &rep);
    s_expect_same(&rep, user, 10);
    s_reply_free(&rep);
    free(bytes);
    s_stop(&r);
}

Test(serve, stops_on_shutdown_and_after_max_requests)
{
    s_spec sp = {.nu = 4, .ni = 50, .dim = 3, .seed = 1, .gm = 3.0};
    s_write_mf(s_path, sp);
    s_rig r;
    s_start(&r, "serve-max", 3);
    cm_rec_reply rep;
    for (int i = 0; i < 3; i++) {
        s_query(&r, sh_id(0, 1), 2, NULL, 0, &rep);
        cr_expect_eq(rep.status, 0);
        s_reply_free(&rep);
    }
    pthread_join(r.th, NULL);
    cr_expect_eq(r.rc, 0);
    cr_expect_eq(sv_service_requests(r.srv), 3);
    cm_sock_destroy(&r.client);
    sv_service_destroy(&r.srv);
    cm_van_destroy(&r.van);

    s_start(&r, "serve-shutdown", 0);
    s_query(&r, sh_id(0, 1), 2, NULL, 0, &rep);
    s_reply_free(&rep);
    cm_van_shutdown(r.van);
    pthread_join(r.th, NULL);
    cr_expect_eq(r.rc, 0, "a shut-down van is a clean stop");
    cm_sock_destroy(&r.client);
    sv_service_destroy(&r.srv);
    cm_van_destroy(&r.van);
}

Test(serve, new_server_errors)
{
    cm_error err = {0};
    cm_van *van = cm_van_new(&err);
    cr_assert_not_null(van);
    sv_service_params p = sv_service_params_default();
    p.model = s_dir;
    p.bind = "inproc://serve-err";
    cr_expect_null(sv_service_new(van, &p, &err), "no model yet");
    cr_expect(strstr(err.msg, "model.psm") != NULL, "%s", err.msg);
    s_spec sp = {.nu = 4, .ni = 50, .dim = 3, .seed = 1, .gm = 3.0};
    s_write_mf(s_path, sp);
    p.bind = "bogus://nowhere";
    cr_expect_null(sv_service_new(van, &p, &err));
    cr_expect(strstr(err.msg, "bogus://nowhere") != NULL, "%s", err.msg);
    p.bind = NULL;
    cr_expect_null(sv_service_new(van, &p, &err));
    cm_van_destroy(&van);
}

/* ------------------------------------------------------------ limits -- */

/* A server on tcp loopback with the given limits (and threads), and a
 * DEALER client; the port for raw connections goes to *port. */
static void s_start_tcp(s_rig *r, const sv_service_params *lim, int *port)
{
    memset(r, 0, sizeof *r);
    cm_error err = {0};
    r->van = cm_van_new(&err);
    cr_assert_not_null(r->van, "%s", err.msg);
    sv_service_params p = *lim;
    p.model = s_dir;
    p.bind = "tcp://127.0.0.1:*";
    p.poll_ms = 30;
    r->srv = sv_service_new(r->van, &p, &err);
    cr_assert_not_null(r->srv, "%s", err.msg);
    snprintf(r->endpoint, sizeof r->endpoint, "%s", sv_service_endpoint(r->srv));
    const char *colon = strrchr(r->endpoint, ':');
    cr_assert_not_null(colon, "%s", r->endpoint);
    if (port)
        *port = atoi(colon + 1);
    r->client = cm_sock_new(r->van, CM_SOCK_DEALER, &err);
    cr_assert_not_null(r->client, "%s", err.msg);
    cr_assert_eq(cm_sock_connect(r->client, r->endpoint), 0);
    cr_assert_eq(pthread_create(&r->th, NULL, s_serve_thread, r), 0);
}

Test(serve, each_limit_has_its_error)
{
    s_spec sp = {.nu = 10, .ni = 300, .dim = 5, .seed = 31, .gm = 3.5};
    s_write_mf(s_path, sp);
    sv_service_params lim = sv_service_params_default();
    lim.max_k = 20;
    lim.max_exclude = 50;
    lim.max_msg_bytes = 4096;
    s_rig r;
    int port = 0;
    s_start_tcp(&r, &lim, &port);
    cm_rec_reply rep;
    uint64_t ex[64];
    for (size_t i = 0; i < 64; i++)
        ex[i] = sh_id(1, i);

    /* k */
    s_query(&r, sh_id(0, 1), 21, NULL, 0, &rep);
    cr_expect_eq(rep.status, CM_ERANGE);
    cr_expect(strstr(rep.error, "--max-k") && strstr(rep.error, "20"), "%s", rep.error);
    s_reply_free(&rep);
    s_query(&r, sh_id(0, 1), 20, NULL, 0, &rep);
    cr_expect_eq(rep.status, 0, "%s", rep.error);
    cr_expect_eq(rep.n, 20);
    s_reply_free(&rep);

    /* the exclude list: at the limit served, one more refused */
    s_query(&r, sh_id(0, 1), 5, ex, 50, &rep);
    cr_expect_eq(rep.status, 0, "%s", rep.error);
    for (size_t j = 0; j < rep.n; j++)
        cr_expect_gt(rep.items[j], ex[49], "an excluded item came back");
    s_reply_free(&rep);
    s_query(&r, sh_id(0, 1), 5, ex, 51, &rep);
    cr_expect_eq(rep.status, CM_ERANGE);
    cr_expect(strstr(rep.error, "--max-exclude") && strstr(rep.error, "51"), "%s", rep.error);
    cr_expect_eq(rep.n, 0);
    s_reply_free(&rep);
    /* the same ids unpacked (one tag per id) are counted too */
    uint8_t unpacked[3 + 51 * 3];
    size_t len = 0;
    unpacked[len++] = 0x10;   /* k = 5 */
    unpacked[len++] = 5;
    for (size_t i = 0; i < 51; i++) {
        unpacked[len++] = 0x18;   /* field 3, varint */
        unpacked[len++] = (uint8_t)(0x80 | (i & 0x7f));
        unpacked[len++] = 1;
    }
    cm_iov iov = {unpacked, len};
    s_raw(&r, &iov, 1, 1, &rep);
    cr_expect_eq(rep.status, CM_ERANGE, "%s", rep.error);
    cr_expect(strstr(rep.error, "51 ids") != NULL, "%s", rep.error);
    s_reply_free(&rep);

    /* the message size: a frame over max_msg_bytes loses its connection
     * before it is read; one at the limit is read and answered */
    long long sent = sh_zmtp_flood(port, 64ull << 20);
    cr_assert_geq(sent, 0, "no tcp connection to port %d", port);
    cr_expect_lt(sent, 64ll << 20, "the server read a 64 MiB frame over a 4 KiB limit");
    uint8_t *big = calloc(1, 4096);
    cm_iov at_limit = {big, 4096};
    s_raw(&r, &at_limit, 1, 1, &rep);
    cr_expect_eq(rep.status, CM_EPROTO, "4096 zero bytes are read, and are no RecRequest");
    s_reply_free(&rep);
    free(big);

    /* and it still serves */
    s_query(&r, sh_id(0, 2), 3, NULL, 0, &rep);
    cr_expect_eq(rep.status, 0, "%s", rep.error);
    cr_expect_eq(rep.n, 3);
    s_reply_free(&rep);
    s_stop(&r);
}

typedef struct {
    int port;
    long long sent;
} s_flood;

static void *s_flood_thread(void *arg)
{
    s_flood *f = arg;
    f->sent = sh_zmtp_flood(f->port, 512ull << 20);
    return NULL;
}

Test(serve, oversized_frames_leave_memory_bounded)
{
    s_spec sp = {.nu = 10, .ni = 300, .dim = 5, .seed = 33, .gm = 3.5};
    s_write_mf(s_path, sp);
    sv_service_params lim = sv_service_params_default();   /* 1 MiB */
    s_rig r;
    int port = 0;
    s_start_tcp(&r, &lim, &port);
    cm_rec_reply rep;
    s_query(&r, sh_id(0, 1), 10, NULL, 0, &rep);
    cr_expect_eq(rep.status, 0, "%s", rep.error);
    s_reply_free(&rep);
    const long long idle = sh_peak_rss(0);
    cr_assert_gt(idle, 0, "/proc/self/status has no VmHWM");

    /* four clients at once, each announcing a 512 MiB frame */
    s_flood fl[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        fl[i] = (s_flood){port, 0};
        cr_assert_eq(pthread_create(&th[i], NULL, s_flood_thread, &fl[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        cr_expect_geq(fl[i].sent, 0, "client %d could not connect", i);
        cr_expect_lt(fl[i].sent, 512ll << 20, "client %d: the whole frame was read", i);
    }
    const long long peak = sh_peak_rss(0);
    cr_expect_lt(peak - idle, 64ll << 20, "peak RSS grew by %lld MiB", (peak - idle) >> 20);

    s_query(&r, sh_id(0, 1), 10, NULL, 0, &rep);
    cr_expect_eq(rep.status, 0, "%s", rep.error);
    s_reply_free(&rep);
    s_stop(&r);
}

/* -------------------------------------------------- slow and small -- */

/* Sends a request on sock without waiting for the reply. */
static void s_send_req(cm_sock *sock, uint64_t user, uint32_t k, const uint64_t *ex, size_t n)
{
    cm_rec_request q = {.user = user, .k = k, .n_exclude = n, .exclude = (uint64_t *)ex};
    uint8_t *buf = NULL;
    size_t len = 0;
    cr_assert_eq(cm_codec_rec_request_pack(&q, &buf, &len), 0);
    cm_iov iov = {buf, len};
    cr_assert_eq(cm_sock_send(sock, &iov, 1), 0, "%s", cm_sock_errmsg(sock));
    free(buf);
}

static void s_recv_rep(cm_sock *sock, int timeout_ms, cm_rec_reply *rep)
{
    cm_frames *f = NULL;
    cr_assert_eq(cm_sock_recv(sock, &f, timeout_ms), 0, "no reply within %d ms", timeout_ms);
    cm_error err = {0};
    cr_assert_eq(cm_codec_rec_reply_unpack(cm_frames_data(f, 0), cm_frames_size(f, 0), rep, &err),
                 0, "%s", err.msg);
    cm_frames_destroy(&f);
}

/* Sends a slow request (every item excluded twice over plus k = all
 * items) from one client, waits until a worker has it, then a small one
 * from another client. Returns 1 when the small reply came first. */
static int s_small_first(uint32_t threads)
{
    const size_t ni = 100000, n_ex = 2000000;
    sv_service_params lim = sv_service_params_default();
    lim.threads = threads;
    lim.max_k = (uint32_t)ni;
    lim.max_exclude = (uint32_t)n_ex;
    lim.max_msg_bytes = 64 << 20;
    s_rig r;
    s_start_tcp(&r, &lim, NULL);
    cm_error err = {0};
    cm_sock *small = cm_sock_new(r.van, CM_SOCK_DEALER, &err);
    cr_assert_not_null(small);
    cr_assert_eq(cm_sock_connect(small, r.endpoint), 0);
    /* the small client is connected and answered before the race starts */
    cm_rec_reply rep;
    s_send_req(small, sh_id(0, 1), 5, NULL, 0);
    s_recv_rep(small, 30000, &rep);
    cr_assert_eq(rep.status, 0, "%s", rep.error);
    s_reply_free(&rep);

    /* ids the model has, from the far end (the last half of the items
     * stays eligible until the list wraps) */
    uint64_t *ex = malloc(n_ex * sizeof *ex);
    for (size_t i = 0; i < n_ex; i++)
        ex[i] = sh_id(1, (i * 7919) % ni);
    const uint64_t before = sv_service_dispatched(r.srv);
    s_send_req(r.client, sh_id(0, 2), (uint32_t)ni, ex, n_ex);
    free(ex);
    for (int i = 0; i < 30000 && sv_service_dispatched(r.srv) == before; i++)
        usleep(1000);
    cr_assert_gt(sv_service_dispatched(r.srv), before, "the slow request never reached a worker");
    s_send_req(small, sh_id(0, 3), 5, NULL, 0);

    /* whichever reply comes first */
    cm_sock *socks[2] = {small, r.client};
    uint64_t ready = 0;
    for (int i = 0; i < 600 && !ready; i++)
        cr_assert_eq(cm_sock_poll(socks, 2, 100, &ready), 0);
    cr_assert_neq(ready, 0, "no reply within 60 s");
    const int small_first = (ready & 1) && !(ready & 2);
    s_recv_rep(small, 60000, &rep);
    cr_expect_eq(rep.status, 0, "%s", rep.error);
    cr_expect_eq(rep.n, 5);
    s_reply_free(&rep);
    s_recv_rep(r.client, 60000, &rep);
    cr_expect_eq(rep.status, 0, "%s", rep.error);
    cr_expect_eq(rep.n, 0, "every item was excluded");
    s_reply_free(&rep);
    cm_sock_destroy(&small);
    s_stop(&r);
    return small_first;
}

Test(serve, a_slow_request_does_not_hold_up_a_small_one, .timeout = 300)
{
    s_spec sp = {.nu = 10, .ni = 100000, .dim = 8, .seed = 35, .gm = 3.5};
    s_write_mf(s_path, sp);
    /* one worker: the small request must wait (shows the race is real) */
    cr_expect_eq(s_small_first(1), 0, "with one worker the small request overtook");
    cr_expect_eq(s_small_first(2), 1, "with two workers the small request waited for the slow one");
}

Test(serve, one_client_gets_its_replies_in_order)
{
    s_spec sp = {.nu = 10, .ni = 20000, .dim = 8, .seed = 37, .gm = 3.5};
    s_write_mf(s_path, sp);
    sv_service_params lim = sv_service_params_default();
    lim.threads = 3;
    lim.queue = 2;   /* the rest wait in ZeroMQ's queues, none is lost */
    lim.max_k = 20000;
    lim.max_exclude = 500000;
    lim.max_msg_bytes = 16 << 20;
    s_rig r;
    s_start_tcp(&r, &lim, NULL);
    /* a slow request first, then quick ones, pipelined on one socket */
    uint64_t *ex = malloc(500000 * sizeof *ex);
    for (size_t i = 0; i < 500000; i++)
        ex[i] = sh_id(1, (i * 131) % 10000);   /* half the items stay */
    s_send_req(r.client, sh_id(0, 1), 20000, ex, 400000);
    free(ex);
    for (uint32_t k = 1; k <= 8; k++)
        s_send_req(r.client, sh_id(0, 1), k, NULL, 0);
    cm_rec_reply rep;
    s_recv_rep(r.client, 60000, &rep);
    cr_expect_eq(rep.status, 0, "%s", rep.error);
    cr_expect_gt(rep.n, 8, "the slow request's reply comes first");
    s_reply_free(&rep);
    for (uint32_t k = 1; k <= 8; k++) {
        s_recv_rep(r.client, 60000, &rep);
        cr_expect_eq(rep.n, k, "reply %u out of order", k);
        s_reply_free(&rep);
    }
    cr_expect_eq(sv_service_requests(r.srv), 9);
    s_stop(&r);
}

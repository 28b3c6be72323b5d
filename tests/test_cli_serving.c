/* The serving commands as a user meets them, through the psrec binary:
 * export, recommend (with --exclude and the fallback), serve over TCP,
 * the standalone psm reader's example, and the Faiss cross-check
 * (tests/faiss_check.py, Debian's python3-numpy and python3-faiss). */
#include <criterion/criterion.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/codec.h"
#include "common/van.h"
#include "helpers.h"
#include "serve_helpers.h"

static char s_dir[] = "/tmp/psrec-cli-serving-XXXXXX";
static char s_ckpt[512], s_exp[512];
static char s_out[1 << 16];

enum { NU = 300, NI = 4000, DIM = 17, RF = 34, SEED = 77 };

static void s_setup(void)
{
    cr_assert_not_null(mkdtemp(s_dir));
    snprintf(s_ckpt, sizeof s_ckpt, "%s/ckpt", s_dir);
    snprintf(s_exp, sizeof s_exp, "%s/export", s_dir);
    cr_assert_eq(mkdir(s_ckpt, 0755), 0);
    cm_error err = {0};
    cr_assert_eq(sh_make_ckpt(s_ckpt, NU, NI, DIM, RF, 2, SEED, 3.6, &err), 0, "%s", err.msg);
}

static void s_teardown(void)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", s_dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", s_dir);
}

TestSuite(cli_serving, .init = s_setup, .fini = s_teardown, .timeout = 300);

/* Runs `psrec ARGS` in the test's directory; its exit status, its output
 * in s_out. */
#define s_psrec(...) th_psrec(s_dir, s_out, sizeof s_out, __VA_ARGS__)

static void s_export(void)
{
    cr_assert_eq(s_psrec("export %s --out %s", s_ckpt, s_exp), 0, "%s", s_out);
}

/* Parses `rank item score` lines of recommend's output. */
static size_t s_parse(const char *out, uint64_t *items, double *scores, size_t cap)
{
    size_t n = 0;
    const char *p = out;
    while (*p && n < cap) {
        const char *e = strchr(p, '\n');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        unsigned long long item;
        size_t rank;
        double score;
        if (p[0] != '#' && sscanf(p, "%zu %llu %lf", &rank, &item, &score) == 3) {
            cr_expect_eq(rank, n + 1);
            items[n] = item;
            scores[n++] = score;
        }
        p += len + (e ? 1 : 0);
    }
    return n;
}

Test(cli_serving, help_and_usage_errors)
{
    cr_expect_eq(s_psrec("--help"), 0);
    cr_expect(strstr(s_out, "export") && strstr(s_out, "recommend") && strstr(s_out, "serve"),
              "%s", s_out);
    const char *cmds[] = {"export", "recommend", "serve"};
    for (int i = 0; i < 3; i++) {
        cr_expect_eq(s_psrec("%s --help", cmds[i]), 0);
        cr_expect(strstr(s_out, "usage: psrec") != NULL, "%s", s_out);
        cr_expect_eq(s_psrec("help %s", cmds[i]), 0);
        cr_expect(strstr(s_out, cmds[i]) != NULL, "%s", s_out);
        cr_expect_eq(s_psrec("%s --bogus 1", cmds[i]), 2);
        cr_expect(strstr(s_out, "--bogus") != NULL, "%s", s_out);
    }
    cr_expect_eq(s_psrec("export %s", s_ckpt), 2, "no --out");
    cr_expect_eq(s_psrec("export %s --out x --format parquet", s_ckpt), 2);
    cr_expect(strstr(s_out, "parquet") != NULL, "%s", s_out);
    cr_expect_eq(s_psrec("export %s/nothing --out x", s_dir), 1);
    cr_expect(strstr(s_out, "nothing") != NULL, "%s", s_out);
    cr_expect_eq(s_psrec("recommend --user 1"), 2, "no --model");
    cr_expect_eq(s_psrec("recommend --model %s --user 1 -k 0", s_dir), 2);
    cr_expect_eq(s_psrec("recommend --model %s --user 1 -k ten", s_dir), 2);
    cr_expect_eq(s_psrec("recommend --model %s/none --user 1", s_dir), 1);
    cr_expect(strstr(s_out, "none/model.psm") || strstr(s_out, "none"), "%s", s_out);
    cr_expect_eq(s_psrec("serve"), 2, "no --model");
}

Test(cli_serving, export_then_recommend)
{
    s_export();
    cr_expect(strstr(s_out, "user 300 x 17") && strstr(s_out, "item 4000 x 17"), "%s", s_out);
    const char *files[] = {"user.npy", "user.ids.npy", "item.npy", "item.ids.npy",
                           "item.fvecs", "model.psm", "manifest.json"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char p[1200];
        struct stat st;
        snprintf(p, sizeof p, "%s/%s", s_exp, files[i]);
        cr_expect_eq(stat(p, &st), 0, "%s missing", p);
    }
    uint64_t user = sh_id(0, 5);
    cr_assert_eq(s_psrec("recommend --model %s --user %llu -k 10", s_exp,
                         (unsigned long long)user),
                 0, "%s", s_out);
    uint64_t items[64], items2[64];
    double scores[64], scores2[64];
    cr_assert_eq(s_parse(s_out, items, scores, 64), 10, "%s", s_out);
    cr_expect(strstr(s_out, "fallback") == NULL);
    /* the model file itself works as --model too, and --k= / -k agree */
    cr_assert_eq(s_psrec("recommend --model %s/model.psm --user=%llu --k=10", s_exp,
                         (unsigned long long)user),
                 0, "%s", s_out);
    cr_assert_eq(s_parse(s_out, items2, scores2, 64), 10);
    cr_expect_eq(memcmp(items, items2, sizeof(uint64_t) * 10), 0);

    /* --exclude: the user's rated items (text ratings), another user ignored */
    char rated[1200];
    snprintf(rated, sizeof rated, "%s/train.tsv", s_dir);
    FILE *f = fopen(rated, "w");
    cr_assert_not_null(f);
    fprintf(f, "%llu\t%llu\t4\n%llu\t%llu\t5\n%llu\t%llu\t3\n%llu\t%llu\t1\n",
            (unsigned long long)user, (unsigned long long)items[0], (unsigned long long)user,
            (unsigned long long)items[3], (unsigned long long)sh_id(0, 6),
            (unsigned long long)items[1], (unsigned long long)user, 999999999ull);
    fclose(f);
    cr_assert_eq(s_psrec("recommend --model %s --user %llu -k 10 --exclude %s", s_exp,
                         (unsigned long long)user, rated),
                 0, "%s", s_out);
    cr_expect(strstr(s_out, "3 rated") != NULL, "%s", s_out);
    size_t n = s_parse(s_out, items2, scores2, 64);
    cr_assert_eq(n, 10);
    uint64_t want[] = {items[1], items[2], items[4], items[5], items[6], items[7], items[8],
                       items[9]};
    for (size_t j = 0; j < 8; j++)
        cr_expect_eq(items2[j], want[j], "rank %zu", j + 1);
    cr_expect_eq(s_psrec("recommend --model %s --user 1 --exclude %s/missing.tsv", s_exp,
                         s_dir),
                 1);
    cr_expect(strstr(s_out, "missing.tsv") != NULL, "%s", s_out);

    /* an unknown user (a string id hashes; numeric 2 is not a user here) */
    cr_assert_eq(s_psrec("recommend --model %s --user 2 -k 5", s_exp), 0, "%s", s_out);
    cr_expect(strstr(s_out, "# fallback") != NULL, "%s", s_out);
    cr_expect_eq(s_parse(s_out, items2, scores2, 64), 5);
    cr_assert_eq(s_psrec("recommend --model %s --user alice -k 5", s_exp), 0, "%s", s_out);
    cr_expect(strstr(s_out, "# fallback") != NULL, "%s", s_out);
}

Test(cli_serving, psm_example_builds_from_the_reader_alone)
{
    s_export();
    char exe[1200], cmd[4096];
    snprintf(exe, sizeof exe, "%s/psm_example", s_dir);
    snprintf(cmd, sizeof cmd,
             "cc -std=c11 -O1 -Wall -Wextra -Werror -I %s/serve %s/serve/examples/psm_example.c "
             "%s/serve/psm.c -o %s",
             PSREC_SOURCE_DIR, PSREC_SOURCE_DIR, PSREC_SOURCE_DIR, exe);
    cr_assert_eq(th_run(cmd, s_out, sizeof s_out), 0, "psm.c needs only libc: %s", s_out);
    uint64_t user = sh_id(0, 9);
    cr_assert_eq(s_psrec("recommend --model %s --user %llu -k 1", s_exp,
                         (unsigned long long)user),
                 0, "%s", s_out);
    uint64_t item;
    double score;
    cr_assert_eq(s_parse(s_out, &item, &score, 1), 1);
    snprintf(cmd, sizeof cmd, "%s %s/model.psm %llu %llu", exe, s_exp,
             (unsigned long long)user, (unsigned long long)item);
    cr_assert_eq(th_run(cmd, s_out, sizeof s_out), 0, "%s", s_out);
    const char *p = strstr(s_out, " score ");
    cr_assert_not_null(p, "%s", s_out);
    double got = strtod(p + 7, NULL);
    cr_expect(fabs(got - score) < 1e-4, "example %f, recommend %f", got, score);
    cr_expect(strstr(s_out, "global_mean") != NULL, "prints the formula: %s", s_out);
    snprintf(cmd, sizeof cmd, "%s %s/model.psm 2 %llu", exe, s_exp, (unsigned long long)item);
    cr_expect_eq(th_run(cmd, s_out, sizeof s_out), 1);
    cr_expect(strstr(s_out, "not in the model") != NULL, "%s", s_out);
    snprintf(cmd, sizeof cmd, "%s %s/manifest.json 1 1", exe, s_exp);
    cr_expect_eq(th_run(cmd, s_out, sizeof s_out), 1);
    cr_expect(strstr(s_out, "bad magic") != NULL, "%s", s_out);
}

Test(cli_serving, serve_over_tcp)
{
    s_export();
    char log[1200];
    snprintf(log, sizeof log, "%s/serve.log", s_dir);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        if (!freopen(log, "w", stdout) || dup2(fileno(stdout), 2) < 0)
            _exit(127);
        execl(PSREC_BINARY, PSREC_BINARY, "serve", "--model", s_exp, "--bind",
              "tcp://127.0.0.1:*", "--max-requests", "3", (char *)NULL);
        _exit(127);
    }
    char endpoint[CM_ENDPOINT_MAX] = "";
    for (int i = 0; i < 500 && !endpoint[0]; i++) {
        usleep(20000);
        FILE *f = fopen(log, "r");
        if (!f)
            continue;
        char line[1024];
        while (fgets(line, sizeof line, f)) {
            const char *p = strstr(line, " on tcp://");
            if (p)
                sscanf(p + 4, "%255s", endpoint);
        }
        fclose(f);
    }
    if (!endpoint[0]) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        cr_assert_fail("psrec serve did not start");
    }
    cm_error err = {0};
    cm_van *van = cm_van_new(&err);
    cr_assert_not_null(van);
    cm_sock *c = cm_sock_new(van, CM_SOCK_DEALER, &err);
    cr_assert_not_null(c);
    cr_assert_eq(cm_sock_connect(c, endpoint), 0, "%s", endpoint);
    uint64_t users[3] = {sh_id(0, 5), 2, sh_id(0, 5)};
    uint64_t ex[1] = {0};
    for (int q = 0; q < 3; q++) {
        cm_rec_request rq = {.user = users[q], .k = 10, .n_exclude = q == 2, .exclude = ex};
        uint8_t *buf = NULL;
        size_t len = 0;
        cr_assert_eq(cm_codec_rec_request_pack(&rq, &buf, &len), 0);
        cm_iov iov = {buf, len};
        cr_assert_eq(cm_sock_send(c, &iov, 1), 0);
        free(buf);
        cm_frames *f = NULL;
        cr_assert_eq(cm_sock_recv(c, &f, 10000), 0, "no reply over tcp");
        cm_rec_reply rep;
        cr_assert_eq(cm_codec_rec_reply_unpack(cm_frames_data(f, 0), cm_frames_size(f, 0), &rep,
                                               &err),
                     0, "%s", err.msg);
        cm_frames_destroy(&f);
        cr_expect_eq(rep.status, 0, "%s", rep.error);
        cr_expect_eq(rep.n, 10);
        cr_expect_eq(rep.fallback, users[q] == 2);
        cr_expect_eq(rep.model_version, 1);
        if (q == 0)
            ex[0] = rep.items[0];
        if (q == 2)
            for (size_t j = 0; j < rep.n; j++)
                cr_expect_neq(rep.items[j], ex[0]);
        free(rep.items);
        free(rep.scores);
    }
    int st = 0;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "serve exits cleanly after 3 requests");
    cm_sock_destroy(&c);
    cm_van_destroy(&van);
}

Test(cli_serving, faiss_ranks_fvecs_like_recommend)
{
    char out[4096];
    if (th_run("/usr/bin/python3 -c 'import numpy, faiss'", out, sizeof out) != 0)
        cr_skip_test("/usr/bin/python3 cannot import numpy and faiss (apt-get install "
                     "python3-numpy python3-faiss, or run cluster/deps.sh): %s",
                     out);
    s_export();
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s/tests/faiss_check.py %s %s 25",
             PSREC_SOURCE_DIR, s_exp, PSREC_BINARY);
    int rc = th_run(cmd, s_out, sizeof s_out);
    cr_expect_eq(rc, 0, "%s", s_out);
    cr_expect(strstr(s_out, "faiss_check: OK") != NULL, "%s", s_out);
    printf("%s", s_out);
}

/* Starts `psrec serve --model EXPORT --bind tcp://127.0.0.1:* EXTRA...`
 * (extra: NULL-terminated), output to log; waits for its endpoint line
 * and, when it prints one, its CURVE public key. Returns the pid. */
static pid_t s_start_serve(const char *log, char *endpoint, char *pubkey, const char **extra)
{
    const char *argv[32] = {PSREC_BINARY, "serve", "--model", s_exp, "--bind",
                            "tcp://127.0.0.1:*"};
    size_t n = 6;
    for (size_t i = 0; extra && extra[i] && n < 31; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        if (!freopen(log, "w", stdout) || dup2(fileno(stdout), 2) < 0)
            _exit(127);
        execv(PSREC_BINARY, (char *const *)argv);
        _exit(127);
    }
    endpoint[0] = '\0';
    if (pubkey)
        pubkey[0] = '\0';
    for (int i = 0; i < 500 && !endpoint[0]; i++) {
        usleep(20000);
        FILE *f = fopen(log, "r");
        if (!f)
            continue;
        char line[1024];
        while (fgets(line, sizeof line, f)) {
            const char *p = strstr(line, " on tcp://");
            if (p)
                sscanf(p + 4, "%255s", endpoint);
            p = strstr(line, "public key ");
            if (p && pubkey)
                sscanf(p + 11, "%40s", pubkey);
        }
        fclose(f);
    }
    if (!endpoint[0]) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        cr_assert_fail("psrec serve did not start");
    }
    return pid;
}

static void s_stop_serve(pid_t pid)
{
    kill(pid, SIGTERM);
    int st = 0;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "serve exits cleanly on SIGTERM");
}

Test(cli_serving, curve_key_limits_and_the_example_client)
{
    s_export();
    /* a key: written once, owner-only, its public half printed */
    char key[1200], key2[1200], cmd[4096];
    snprintf(key, sizeof key, "%s/serve.key", s_dir);
    snprintf(key2, sizeof key2, "%s/other.key", s_dir);
    cr_assert_eq(s_psrec("serve --keygen %s", key), 0, "%s", s_out);
    char pub_printed[64] = "";
    const char *p = strstr(s_out, "public key: ");
    cr_assert_not_null(p, "%s", s_out);
    sscanf(p + 12, "%63s", pub_printed);
    cr_expect_eq(strlen(pub_printed), 40, "%s", pub_printed);
    struct stat st;
    cr_assert_eq(stat(key, &st), 0);
    cr_expect_eq(st.st_mode & 0777, 0600);
    cr_expect_eq(st.st_size, 41);
    cr_expect_eq(s_psrec("serve --keygen %s", key), 1, "an existing key is never overwritten");
    cr_expect(strstr(s_out, "exists") != NULL, "%s", s_out);
    cr_assert_eq(s_psrec("serve --keygen %s", key2), 0, "%s", s_out);
    char wrong_pub[64] = "";
    p = strstr(s_out, "public key: ");
    cr_assert_not_null(p);
    sscanf(p + 12, "%63s", wrong_pub);

    /* key files serve refuses: readable by others; not a key */
    cr_assert_eq(chmod(key2, 0644), 0);
    cr_expect_eq(s_psrec("serve --model %s --curve-secret-file %s", s_exp, key2), 1);
    cr_expect(strstr(s_out, "readable by others") != NULL, "%s", s_out);
    char junk[1200];
    snprintf(junk, sizeof junk, "%s/junk.key", s_dir);
    FILE *f = fopen(junk, "w");
    cr_assert_not_null(f);
    fprintf(f, "not a key\n");
    fclose(f);
    cr_assert_eq(chmod(junk, 0600), 0);
    cr_expect_eq(s_psrec("serve --model %s --curve-secret-file %s", s_exp, junk), 1);
    cr_expect(strstr(s_out, "40-character") != NULL, "%s", s_out);
    cr_expect_eq(s_psrec("serve --model %s --threads 65", s_exp), 2);

    /* the example client builds from libzmq alone */
    char exe[1200];
    snprintf(exe, sizeof exe, "%s/serve_client", s_dir);
    snprintf(cmd, sizeof cmd,
             "cc -std=c11 -O1 -Wall -Wextra -Werror %s/serve/examples/serve_client.c -lzmq -o %s",
             PSREC_SOURCE_DIR, exe);
    cr_assert_eq(th_run(cmd, s_out, sizeof s_out), 0, "%s", s_out);

    /* what recommend says, to compare with */
    const uint64_t user = sh_id(0, 7);
    cr_assert_eq(s_psrec("recommend --model %s --user %llu -k 10", s_exp,
                         (unsigned long long)user),
                 0, "%s", s_out);
    uint64_t want[16], got[16];
    double wscore[16], gscore[16];
    cr_assert_eq(s_parse(s_out, want, wscore, 16), 10);

    char log[1200], endpoint[CM_ENDPOINT_MAX], pub[64];
    snprintf(log, sizeof log, "%s/serve-curve.log", s_dir);
    const char *extra[] = {"--curve-secret-file", key, "--max-k", "50", "--max-exclude", "2",
                           NULL};
    pid_t pid = s_start_serve(log, endpoint, pub, extra);
    cr_expect_str_eq(pub, pub_printed, "serve prints the public key of its secret key");

    snprintf(cmd, sizeof cmd, "%s %s %llu 10 '%s'", exe, endpoint, (unsigned long long)user, pub);
    cr_expect_eq(th_run(cmd, s_out, sizeof s_out), 0, "%s", s_out);
    cr_expect_eq(s_parse(s_out, got, gscore, 16), 10, "%s", s_out);
    for (size_t j = 0; j < 10; j++) {
        cr_expect_eq(got[j], want[j], "rank %zu", j + 1);
        cr_expect(fabs(gscore[j] - wscore[j]) < 1e-5, "rank %zu: %f vs %f", j + 1, gscore[j],
                  wscore[j]);
    }
    /* with two exclusions (at the limit) the first two are gone */
    snprintf(cmd, sizeof cmd, "%s %s %llu 8 '%s' %llu %llu", exe, endpoint,
             (unsigned long long)user, pub, (unsigned long long)want[0],
             (unsigned long long)want[1]);
    cr_expect_eq(th_run(cmd, s_out, sizeof s_out), 0, "%s", s_out);
    cr_expect_eq(s_parse(s_out, got, gscore, 16), 8);
    cr_expect_eq(memcmp(got, want + 2, 8 * sizeof *got), 0, "%s", s_out);
    /* the limits, each with its error */
    snprintf(cmd, sizeof cmd, "%s %s %llu 8 '%s' 1 2 3", exe, endpoint, (unsigned long long)user,
             pub);
    cr_expect_eq(th_run(cmd, s_out, sizeof s_out), 1);
    cr_expect(strstr(s_out, "error -12") && strstr(s_out, "--max-exclude"), "%s", s_out);
    snprintf(cmd, sizeof cmd, "%s %s %llu 51 '%s'", exe, endpoint, (unsigned long long)user, pub);
    cr_expect_eq(th_run(cmd, s_out, sizeof s_out), 1);
    cr_expect(strstr(s_out, "--max-k") != NULL, "%s", s_out);
    /* without the key, or with another server's: no reply at all */
    snprintf(cmd, sizeof cmd, "%s %s %llu 10 -", exe, endpoint, (unsigned long long)user);
    cr_expect_eq(th_run(cmd, s_out, sizeof s_out), 1);
    cr_expect(strstr(s_out, "no reply") != NULL, "%s", s_out);
    snprintf(cmd, sizeof cmd, "%s %s %llu 10 '%s'", exe, endpoint, (unsigned long long)user,
             wrong_pub);
    cr_expect_eq(th_run(cmd, s_out, sizeof s_out), 1);
    cr_expect(strstr(s_out, "no reply") != NULL, "%s", s_out);
    /* the right key still works after those */
    snprintf(cmd, sizeof cmd, "%s %s %llu 3 '%s'", exe, endpoint, (unsigned long long)user, pub);
    cr_expect_eq(th_run(cmd, s_out, sizeof s_out), 0, "%s", s_out);
    s_stop_serve(pid);
}

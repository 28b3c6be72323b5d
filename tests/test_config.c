/* Tests for common/config.c: defaults, every value type (good values and
 * each kind of bad one, with the exact message), job files (sections,
 * comments, syntax errors, unknown keys with suggestions), the command
 * line (precedence over the file, --key=value, dashes, --help, missing
 * values), validation, help output and print/load round trips. */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/config.h"

/* Every key of the table, as docs and users know them. */
static const char *const s_all_keys[] = {
    "train", "test", "metrics", "model", "dim", "epochs", "servers",
    "optimizer", "lr", "l2", "regularization", "init_std", "batch", "seed", "max_bad_lines",
    "slots", "progress", "log_level", "local", "workers", "timeout",
    "schedule", "method", "checkpoint_dir", "checkpoint_every", "checkpoint_secs",
    "checkpoint_keep",
    "restarts", "restart_backoff",
    "validation", "validation_fraction", "patience", "refit",
    "resume", "eval_every", "min_count", "ttl", "max_rows", "adam_beta1", "adam_beta2",
    "ftrl_l1", "ftrl_beta", "adagrad_init", "task", "format", "label_column",
    "numeric_columns", "numeric_transform",
    "categorical_columns", "user_column", "item_column", "rating_column", "timestamp_column",
    "consistency", "staleness", "user_features", "item_features",
    "memory_limit", "loss", "negatives", "sampler", "positive_threshold", "top_k", "hidden",
    "fm_term", "fields", "wire_dtype", "ingest", "worker_affinity", "blocks_per_worker",
    "encrypt", "interface", "host", "transport", "shared_rows", "allow_singleton",
    "heartbeat", "heartbeat_misses",
};
#define N_KEYS (sizeof s_all_keys / sizeof s_all_keys[0])

/* A temp directory per test, removed by s_cleanup. */
static char s_dir[64];
static char s_files[8][CM_PATH_MAX];
static int s_nfiles;

static void s_setup(void)
{
    snprintf(s_dir, sizeof s_dir, "/tmp/psrec-cfg-XXXXXX");
    cr_assert_not_null(mkdtemp(s_dir));
    s_nfiles = 0;
}

static void s_cleanup(void)
{
    for (int i = 0; i < s_nfiles; i++)
        unlink(s_files[i]);
    rmdir(s_dir);
}

/* Writes text to <dir>/name and returns the path (valid for the test). */
static const char *s_write(const char *name, const char *text)
{
    cr_assert_lt(s_nfiles, 8);
    char *path = s_files[s_nfiles++];
    snprintf(path, CM_PATH_MAX, "%s/%s", s_dir, name);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
    return path;
}

/* cm_job_set must fail with CM_ECONFIG and exactly this message. */
static void s_set_fails(const char *key, const char *value, const char *msg)
{
    cm_job job = cm_job_default(), before = job;
    cm_error err = {0};
    int rc = cm_job_set(&job, key, value, "job.ini:3", &err);
    cr_assert_eq(rc, CM_ECONFIG, "%s=%s: rc %d", key, value, rc);
    cr_assert_eq(err.code, CM_ECONFIG);
    cr_assert_str_eq(err.msg, msg);
    cr_assert(memcmp(&job, &before, sizeof job) == 0, "a failed set changed the job");
}

static void s_set_ok(cm_job *job, const char *key, const char *value)
{
    cm_error err = {0};
    int rc = cm_job_set(job, key, value, "test", &err);
    cr_assert_eq(rc, 0, "%s=%s: %s", key, value, err.msg);
}

/* Parses argv (NULL-terminated) into *job; returns rc. */
static int s_args(cm_job *job, int *help, cm_error *err, const char **argv)
{
    int argc = 0;
    while (argv[argc])
        argc++;
    return cm_job_parse_args(job, argc, (char **)argv, help, err);
}

/* -------------------------------------------------------------------------
 * Defaults
 * ------------------------------------------------------------------------- */

Test(config, defaults)
{
    cm_job j = cm_job_default();
    cr_assert_str_eq(j.train, "");
    cr_assert_str_eq(j.test, "");
    cr_assert_str_eq(j.metrics, "");
    cr_assert_str_eq(j.model, "mf");
    cr_assert_eq(j.dim, 32);
    cr_assert_eq(j.epochs, 20);
    cr_assert_eq(j.servers, 1);
    cr_assert_eq(j.optimizer, CM_OPT_ADAGRAD);
    cr_assert_eq(j.lr, 0.07);
    cr_assert_eq(j.l2, 0.12);
    cr_assert_eq(j.init_std, 0.05);
    cr_assert_eq(j.batch, 256);
    cr_assert_eq(j.schedule, CM_SCHED_BLOCKS);
    cr_assert_eq(j.checkpoint_every, 1);
    cr_assert_eq(j.checkpoint_keep, 3);
    cr_assert_str_eq(j.resume, "");
    cr_assert_eq(j.seed, 1);
    cr_assert_eq(j.max_bad_lines, 10);
    cr_assert_eq(j.slots, 4096);
    cr_assert_eq(j.progress, -1);
    cr_assert_eq(j.log_level, 1); /* CM_LOG_INFO */
    cr_assert_eq(j.local, 0);
    cr_assert_eq(j.workers, 2);
    cr_assert_eq(j.timeout, 60.0);
}

Test(config, defaults_validate_once_train_is_set)
{
    cm_job j = cm_job_default();
    cm_error err = {0};
    cr_assert_eq(cm_job_validate(&j, &err), CM_ECONFIG);
    cr_assert(strstr(err.msg, "train") != NULL, "%s", err.msg);
    strcpy(j.train, "ratings.csv");
    cr_assert_eq(cm_job_validate(&j, &err), 0, "%s", err.msg);
}

/* -------------------------------------------------------------------------
 * Value types
 * ------------------------------------------------------------------------- */

Test(config, int_good)
{
    cm_job j = cm_job_default();
    s_set_ok(&j, "dim", "1");
    cr_assert_eq(j.dim, 1);
    s_set_ok(&j, "dim", "1024");
    cr_assert_eq(j.dim, 1024);
    s_set_ok(&j, "dim", "+64");
    cr_assert_eq(j.dim, 64);
    s_set_ok(&j, "batch", "10000000");
    cr_assert_eq(j.batch, 10000000);
    s_set_ok(&j, "slots", "1048576");
    cr_assert_eq(j.slots, 1 << 20);
    s_set_ok(&j, "max_bad_lines", "1000000000000");
    cr_assert_eq(j.max_bad_lines, 1000000000000L);
    s_set_ok(&j, "max_bad_lines", "0");
    cr_assert_eq(j.max_bad_lines, 0);
}

Test(config, int_bad)
{
    const char *want = "job.ini:3: dim: expected an integer in [1, 1024], got '%s'";
    const char *bad[] = {"abc", "12x", "1.5", "", " 5", "0", "1025", "-1",
                         "99999999999999999999999", "0x10", "1e3"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char msg[256];
        snprintf(msg, sizeof msg, want, bad[i]);
        s_set_fails("dim", bad[i], msg);
    }
    s_set_fails("max_bad_lines", "1000000000001",
                "job.ini:3: max_bad_lines: expected an integer in [0, 1000000000000], got "
                "'1000000000001'");
    s_set_fails("slots", "1048577",
                "job.ini:3: slots: expected an integer in [1, 1048576], got '1048577'");
    s_set_fails("epochs", "0", "job.ini:3: epochs: expected an integer in [1, 100000], got '0'");
    s_set_fails("workers", "2000",
                "job.ini:3: workers: expected an integer in [1, 1024], got '2000'");
}

Test(config, u64)
{
    cm_job j = cm_job_default();
    s_set_ok(&j, "seed", "0");
    cr_assert_eq(j.seed, 0);
    s_set_ok(&j, "seed", "18446744073709551615");
    cr_assert_eq(j.seed, UINT64_MAX);
    const char *bad[] = {"-1", "18446744073709551616", "1.5", "seed", "", "7 "};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char msg[256];
        snprintf(msg, sizeof msg,
                 "job.ini:3: seed: expected an unsigned 64-bit integer, got '%s'", bad[i]);
        s_set_fails("seed", bad[i], msg);
    }
}

Test(config, double_good)
{
    cm_job j = cm_job_default();
    s_set_ok(&j, "lr", "0.1");
    cr_assert_eq(j.lr, 0.1);
    s_set_ok(&j, "lr", "1e-3");
    cr_assert_eq(j.lr, 1e-3);
    s_set_ok(&j, "lr", "100");
    cr_assert_eq(j.lr, 100.0);
    s_set_ok(&j, "l2", "0");
    cr_assert_eq(j.l2, 0.0);
    s_set_ok(&j, "init_std", "10");
    cr_assert_eq(j.init_std, 10.0);
    s_set_ok(&j, "timeout", "0.5");
    cr_assert_eq(j.timeout, 0.5);
}

Test(config, double_bad)
{
    const char *bad[] = {"nan", "NaN", "inf", "-inf", "infinity", "1e999", "0", "-0.1",
                         "100.5", "0.1x", "", "fast"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char msg[256];
        snprintf(msg, sizeof msg, "job.ini:3: lr: expected a number in (0, 100], got '%s'",
                 bad[i]);
        s_set_fails("lr", bad[i], msg);
    }
    s_set_fails("l2", "-1", "job.ini:3: l2: expected a number in [0, 100], got '-1'");
    s_set_fails("init_std", "11",
                "job.ini:3: init_std: expected a number in [0, 10], got '11'");
    s_set_fails("timeout", "0",
                "job.ini:3: timeout: expected a number in (0, 1e+06], got '0'");
}

Test(config, enums)
{
    cm_job j = cm_job_default();
    s_set_ok(&j, "optimizer", "sgd");
    cr_assert_eq(j.optimizer, CM_OPT_SGD);
    s_set_ok(&j, "optimizer", "AdaGrad");
    cr_assert_eq(j.optimizer, CM_OPT_ADAGRAD);
    s_set_ok(&j, "progress", "on");
    cr_assert_eq(j.progress, 1);
    s_set_ok(&j, "progress", "off");
    cr_assert_eq(j.progress, 0);
    s_set_ok(&j, "progress", "auto");
    cr_assert_eq(j.progress, -1);
    const char *levels[] = {"debug", "info", "warn", "error", "silent"};
    for (int i = 0; i < 5; i++) {
        s_set_ok(&j, "log_level", levels[i]);
        cr_assert_eq(j.log_level, i);
    }
    s_set_ok(&j, "model", "MF");
    cr_assert_str_eq(j.model, "mf");
    cr_assert_eq(j.worker_affinity, CM_AFFINITY_AUTO);
    s_set_ok(&j, "worker_affinity", "off");
    cr_assert_eq(j.worker_affinity, CM_AFFINITY_OFF);

    s_set_fails("optimizer", "adamw",
                "job.ini:3: optimizer: expected one of "
                "sgd|adagrad|rowwise_adagrad|adam|ftrl, got 'adamw'");
    s_set_fails("progress", "1", "job.ini:3: progress: expected one of auto|on|off, got '1'");
    s_set_fails("log_level", "verbose",
                "job.ini:3: log_level: expected one of debug|info|warn|error|silent, got "
                "'verbose'");
    s_set_fails("model", "gbdt",
                "job.ini:3: model: expected one of mf|fm|ffm|deep|implicit, got 'gbdt'");
    s_set_fails("worker_affinity", "on",
                "job.ini:3: worker_affinity: expected one of auto|off, got 'on'");
}

/* A numeric_transform psrec does not know is refused, in a job file and on
 * the command line, naming the key and the values it takes; the job keeps
 * its transform. */
Test(config, numeric_transform_refuses_unknown_values)
{
    s_set_fails("numeric_transform", "sqrt",
                "job.ini:3: numeric_transform: expected one of none|log, got 'sqrt'");
    s_set_fails("numeric_transform", "",
                "job.ini:3: numeric_transform: expected one of none|log, got ''");
    cm_job j = cm_job_default();
    cm_error err = {0};
    const char *a[] = {"train", "--model", "fm", "--numeric-transform", "log10", NULL};
    cr_assert_eq(s_args(&j, NULL, &err, a), CM_ECONFIG);
    cr_assert_str_eq(err.msg, "--numeric-transform: expected one of none|log, got 'log10'",
                     "the key as the user wrote it");
    s_set_ok(&j, "numeric_transform", "None");
    cr_expect_eq(j.numeric_transform, 0, "names match in any case");
}

Test(config, bools)
{
    const char *yes[] = {"1", "true", "yes", "on", "TRUE", "Yes"};
    const char *no[] = {"0", "false", "no", "off", "False", "OFF"};
    for (size_t i = 0; i < 6; i++) {
        cm_job j = cm_job_default();
        s_set_ok(&j, "local", yes[i]);
        cr_assert_eq(j.local, 1, "%s", yes[i]);
        s_set_ok(&j, "local", no[i]);
        cr_assert_eq(j.local, 0, "%s", no[i]);
    }
    s_set_fails("local", "2",
                "job.ini:3: local: expected a boolean (1/0, true/false, yes/no, on/off), got "
                "'2'");
    s_set_fails("local", "",
                "job.ini:3: local: expected a boolean (1/0, true/false, yes/no, on/off), got "
                "''");
}

Test(config, strings)
{
    cm_job j = cm_job_default();
    s_set_ok(&j, "train", "/data/ml-100k/u1.base");
    cr_assert_str_eq(j.train, "/data/ml-100k/u1.base");
    s_set_ok(&j, "test", "");
    cr_assert_str_eq(j.test, "");

    char longest[CM_PATH_MAX];
    memset(longest, 'a', sizeof longest - 1);
    longest[sizeof longest - 1] = '\0';
    s_set_ok(&j, "metrics", longest);
    cr_assert_eq(strlen(j.metrics), CM_PATH_MAX - 1);

    char too_long[CM_PATH_MAX + 1];
    memset(too_long, 'b', sizeof too_long - 1);
    too_long[sizeof too_long - 1] = '\0';
    s_set_fails("train", too_long, "job.ini:3: train: longer than 1023 bytes");
}

Test(config, set_sources_and_errors)
{
    cm_job j = cm_job_default();
    cm_error err = {0};
    /* a command-line source names the flag only */
    cr_assert_eq(cm_job_set(&j, "dim", "x", "--dim", &err), CM_ECONFIG);
    cr_assert_str_eq(err.msg, "--dim: expected an integer in [1, 1024], got 'x'");
    /* no source: just the key */
    cr_assert_eq(cm_job_set(&j, "dim", "x", NULL, &err), CM_ECONFIG);
    cr_assert_str_eq(err.msg, "dim: expected an integer in [1, 1024], got 'x'");
    cr_assert_eq(cm_job_set(&j, "dim", NULL, "job.ini:2", &err), CM_ECONFIG);
    cr_assert_str_eq(err.msg, "job.ini:2: dim: missing value");
    /* dashes equal underscores */
    cr_assert_eq(cm_job_set(&j, "max-bad-lines", "7", NULL, &err), 0);
    cr_assert_eq(j.max_bad_lines, 7);
    /* a NULL error record is fine */
    cr_assert_eq(cm_job_set(&j, "dim", "x", NULL, NULL), CM_ECONFIG);
    cr_assert_eq(cm_job_set(&j, "nope", "1", NULL, NULL), CM_ECONFIG);
    cr_assert_eq(cm_job_set(NULL, "dim", "1", NULL, &err), CM_EINVAL);
}

Test(config, unknown_key_suggestions)
{
    cm_job j = cm_job_default();
    cm_error err = {0};
    cr_assert_eq(cm_job_set(&j, "lrr", "1", "job.ini:7", &err), CM_ECONFIG);
    cr_assert_str_eq(err.msg, "job.ini:7: unknown key 'lrr' (did you mean 'lr'?)");
    cr_assert_eq(cm_job_set(&j, "epoch", "1", "job.ini:1", &err), CM_ECONFIG);
    cr_assert_str_eq(err.msg, "job.ini:1: unknown key 'epoch' (did you mean 'epochs'?)");
    cr_assert_eq(cm_job_set(&j, "Dim", "1", "job.ini:1", &err), CM_ECONFIG);
    cr_assert_str_eq(err.msg, "job.ini:1: unknown key 'Dim' (did you mean 'dim'?)");
    cr_assert_eq(cm_job_set(&j, "max_bad", "1", "job.ini:1", &err), CM_ECONFIG);
    cr_assert_str_eq(err.msg, "job.ini:1: unknown key 'max_bad' (did you mean 'max_bad_lines'?)");
    cr_assert_eq(cm_job_set(&j, "banana", "1", "job.ini:2", &err), CM_ECONFIG);
    cr_assert_str_eq(err.msg, "job.ini:2: unknown key 'banana'");
}

/* -------------------------------------------------------------------------
 * Job files
 * ------------------------------------------------------------------------- */

Test(config, file_all_keys_sections_comments, .init = s_setup, .fini = s_cleanup)
{
    const char *path = s_write("job.ini",
                               "# a psrec job\n"
                               "; also a comment\n"
                               "train = /data/train.csv\n"
                               "test=/data/test.csv\n"
                               "\n"
                               "[model]\n"
                               "model = mf\n"
                               "dim = 64\n"
                               "  optimizer = sgd\n"
                               "\tlr = 0.01 ; inline comment\n"
                               "l2 = 0.5\n"
                               "init_std = 0.2\n"
                               "[run]\n"
                               "epochs = 3\n"
                               "servers = 2\n"
                               "batch = 1000\n"
                               "seed = 42\n"
                               "max-bad-lines = 0\n"
                               "slots = 16\n"
                               "progress = off\n"
                               "log_level = warn\n"
                               "local = yes\n"
                               "workers = 4\n"
                               "timeout = 5\n"
                               "metrics = /tmp/m.jsonl\n");
    cm_job j = cm_job_default();
    cm_error err = {0};
    cr_assert_eq(cm_job_load_file(&j, path, &err), 0, "%s", err.msg);
    cr_assert_str_eq(j.train, "/data/train.csv");
    cr_assert_str_eq(j.test, "/data/test.csv");
    cr_assert_str_eq(j.metrics, "/tmp/m.jsonl");
    cr_assert_eq(j.dim, 64);
    cr_assert_eq(j.optimizer, CM_OPT_SGD);
    cr_assert_eq(j.lr, 0.01);
    cr_assert_eq(j.l2, 0.5);
    cr_assert_eq(j.init_std, 0.2);
    cr_assert_eq(j.epochs, 3);
    cr_assert_eq(j.servers, 2);
    cr_assert_eq(j.batch, 1000);
    cr_assert_eq(j.seed, 42);
    cr_assert_eq(j.max_bad_lines, 0);
    cr_assert_eq(j.slots, 16);
    cr_assert_eq(j.progress, 0);
    cr_assert_eq(j.log_level, 2);
    cr_assert_eq(j.local, 1);
    cr_assert_eq(j.workers, 4);
    cr_assert_eq(j.timeout, 5.0);
}

Test(config, file_keeps_absent_keys, .init = s_setup, .fini = s_cleanup)
{
    const char *path = s_write("job.ini", "dim = 8\n");
    cm_job j = cm_job_default();
    j.epochs = 7;
    cr_assert_eq(cm_job_load_file(&j, path, NULL), 0);
    cr_assert_eq(j.dim, 8);
    cr_assert_eq(j.epochs, 7);
}

Test(config, file_bad_value_names_line, .init = s_setup, .fini = s_cleanup)
{
    const char *path = s_write("job.ini", "train = x\n[model]\ndim = abc\nlr = nope\n");
    cm_job j = cm_job_default(), before = j;
    cm_error err = {0};
    cr_assert_eq(cm_job_load_file(&j, path, &err), CM_ECONFIG);
    char want[CM_PATH_MAX + 128];
    snprintf(want, sizeof want, "%s:3: dim: expected an integer in [1, 1024], got 'abc'", path);
    cr_assert_str_eq(err.msg, want);
    /* nothing applied, not even line 1 */
    cr_assert(memcmp(&j, &before, sizeof j) == 0);
}

Test(config, file_unknown_key, .init = s_setup, .fini = s_cleanup)
{
    const char *path = s_write("job.ini", "# c\n\ntrain = x\n[a]\n\ndim = 4\nlrr = 0.1\n");
    cm_job j = cm_job_default();
    cm_error err = {0};
    cr_assert_eq(cm_job_load_file(&j, path, &err), CM_ECONFIG);
    char want[CM_PATH_MAX + 128];
    snprintf(want, sizeof want, "%s:7: unknown key 'lrr' (did you mean 'lr'?)", path);
    cr_assert_str_eq(err.msg, want);
}

Test(config, file_syntax_error, .init = s_setup, .fini = s_cleanup)
{
    const char *path = s_write("job.ini", "dim = 4\n\nthis line has no equals sign\ndim = x\n");
    cm_job j = cm_job_default();
    cm_error err = {0};
    cr_assert_eq(cm_job_load_file(&j, path, &err), CM_ECONFIG);
    char want[CM_PATH_MAX + 64];
    snprintf(want, sizeof want, "%s:3: syntax error", path);
    cr_assert(strncmp(err.msg, want, strlen(want)) == 0, "%s", err.msg);

    /* an unterminated section header, after a bad value: the first wins */
    path = s_write("job2.ini", "dim = 0\n[section\n");
    cr_assert_eq(cm_job_load_file(&j, path, &err), CM_ECONFIG);
    snprintf(want, sizeof want, "%s:1: dim:", path);
    cr_assert(strncmp(err.msg, want, strlen(want)) == 0, "%s", err.msg);
    path = s_write("job3.ini", "dim = 2\n[section\n");
    cr_assert_eq(cm_job_load_file(&j, path, &err), CM_ECONFIG);
    snprintf(want, sizeof want, "%s:2: syntax error", path);
    cr_assert(strncmp(err.msg, want, strlen(want)) == 0, "%s", err.msg);
}

Test(config, file_unreadable, .init = s_setup, .fini = s_cleanup)
{
    cm_job j = cm_job_default();
    cm_error err = {0};
    char path[CM_PATH_MAX];
    snprintf(path, sizeof path, "%s/missing.ini", s_dir);
    cr_assert_eq(cm_job_load_file(&j, path, &err), CM_EIO);
    cr_assert(strncmp(err.msg, path, strlen(path)) == 0, "%s", err.msg);
    cr_assert(strstr(err.msg, "No such file") != NULL, "%s", err.msg);
    /* a directory opens but cannot be read */
    cr_assert_eq(cm_job_load_file(&j, s_dir, &err), CM_EIO);
    cr_assert(strncmp(err.msg, s_dir, strlen(s_dir)) == 0, "%s", err.msg);
}

Test(config, file_long_lines, .init = s_setup, .fini = s_cleanup)
{
    /* a path of CM_PATH_MAX - 1 bytes fits (inih's default line is 200) */
    static char text[3 * CM_PATH_MAX + 16384];
    char longest[CM_PATH_MAX];
    memset(longest, 'p', sizeof longest - 1);
    longest[sizeof longest - 1] = '\0';
    snprintf(text, sizeof text, "dim = 3\ntrain = %s\nepochs = 2\n", longest);
    const char *path = s_write("long.ini", text);
    cm_job j = cm_job_default();
    cm_error err = {0};
    cr_assert_eq(cm_job_load_file(&j, path, &err), 0, "%s", err.msg);
    cr_assert_str_eq(j.train, longest);
    cr_assert_eq(j.epochs, 2);

    /* a path one byte too long is a value error on its line */
    snprintf(text, sizeof text, "dim = 3\ntrain = %sq\n", longest);
    path = s_write("long2.ini", text);
    cr_assert_eq(cm_job_load_file(&j, path, &err), CM_ECONFIG);
    cr_assert(strstr(err.msg, ":2: train: longer than 1023 bytes") != NULL, "%s", err.msg);

    /* a line longer than the parser takes is never silently cut */
    char huge[10000];
    memset(huge, 'h', sizeof huge - 1);
    huge[sizeof huge - 1] = '\0';
    snprintf(text, sizeof text, "dim = 3\n\ntest = %s\n", huge);
    path = s_write("long3.ini", text);
    cr_assert_eq(cm_job_load_file(&j, path, &err), CM_ECONFIG);
    cr_assert(strstr(err.msg, ":3: line longer than") != NULL, "%s", err.msg);
}

Test(config, file_colon_and_empty_values, .init = s_setup, .fini = s_cleanup)
{
    cm_job j = cm_job_default();
    strcpy(j.test, "old");
    cm_error err = {0};
    const char *path = s_write("c.ini", "dim: 9\ntest =\nseed = 5 ; inline\nepochs = 3;x\n");
    /* "3;x": a ';' without a blank before it is part of the value */
    cr_assert_eq(cm_job_load_file(&j, path, &err), CM_ECONFIG);
    cr_assert(strstr(err.msg, ":4: epochs: expected an integer in [1, 100000], got '3;x'") != NULL,
              "%s", err.msg);
    path = s_write("c2.ini", "dim: 9\ntest =\nseed = 5 ; inline\n");
    cr_assert_eq(cm_job_load_file(&j, path, &err), 0, "%s", err.msg);
    cr_assert_eq(j.dim, 9);
    cr_assert_str_eq(j.test, "");
    cr_assert_eq(j.seed, 5);
}

Test(config, file_empty_and_crlf, .init = s_setup, .fini = s_cleanup)
{
    cm_job j = cm_job_default();
    cm_error err = {0};
    cr_assert_eq(cm_job_load_file(&j, s_write("empty.ini", ""), &err), 0, "%s", err.msg);
    cr_assert_eq(cm_job_load_file(&j, s_write("crlf.ini", "dim = 12\r\nlr = 0.5\r\n"), &err), 0,
                 "%s", err.msg);
    cr_assert_eq(j.dim, 12);
    cr_assert_eq(j.lr, 0.5);
}

/* -------------------------------------------------------------------------
 * Command line
 * ------------------------------------------------------------------------- */

Test(config, args_file_then_flags_win, .init = s_setup, .fini = s_cleanup)
{
    const char *path = s_write("job.ini", "train = a.csv\nlr = 0.1\ndim = 8\nlocal = 0\n");
    cm_job j = cm_job_default();
    cm_error err = {0};
    int help = -1;
    /* flags before and after the file both win over it */
    const char *argv[] = {"train", "--lr", "0.2", path, "--dim=16", NULL};
    cr_assert_eq(s_args(&j, &help, &err, argv), 0, "%s", err.msg);
    cr_assert_eq(help, 0);
    cr_assert_str_eq(j.train, "a.csv");
    cr_assert_eq(j.lr, 0.2);
    cr_assert_eq(j.dim, 16);
    cr_assert_eq(j.local, 0);
}

Test(config, args_later_flag_wins_and_dashes)
{
    cm_job j = cm_job_default();
    cm_error err = {0};
    const char *argv[] = {"train", "--max-bad-lines", "5", "--init-std=0.3", "--epochs", "3",
                          "--epochs=4", "--max_bad_lines=6", "--log-level", "debug", NULL};
    cr_assert_eq(s_args(&j, NULL, &err, argv), 0, "%s", err.msg);
    cr_assert_eq(j.max_bad_lines, 6);
    cr_assert_eq(j.init_std, 0.3);
    cr_assert_eq(j.epochs, 4);
    cr_assert_eq(j.log_level, 0);
}

Test(config, args_local_flag, .init = s_setup, .fini = s_cleanup)
{
    const char *path = s_write("job.ini", "train = t.csv\n");
    cm_job j = cm_job_default();
    cm_error err = {0};
    /* a bare --local does not swallow the job file after it */
    const char *a1[] = {"train", "--local", path, NULL};
    cr_assert_eq(s_args(&j, NULL, &err, a1), 0, "%s", err.msg);
    cr_assert_eq(j.local, 1);
    cr_assert_str_eq(j.train, "t.csv");
    const char *a2[] = {"train", "--local=0", NULL};
    cr_assert_eq(s_args(&j, NULL, &err, a2), 0, "%s", err.msg);
    cr_assert_eq(j.local, 0);
    const char *a3[] = {"train", "--local=maybe", NULL};
    cr_assert_eq(s_args(&j, NULL, &err, a3), CM_ECONFIG);
    cr_assert(strncmp(err.msg, "--local: expected a boolean", 27) == 0, "%s", err.msg);
}

/* A boolean key takes a following boolean word as its value. */
Test(config, bool_key_takes_the_next_boolean_word)
{
    cm_job j = cm_job_default();
    cm_error err = {0};
    const char *a[] = {"train", "--refit", "0", "--local", "off", "--fm_term", "no", NULL};
    cr_assert_eq(cm_job_parse_args(&j, 7, (char **)a, NULL, &err), 0, "%s", err.msg);
    cr_expect_eq(j.refit, 0);
    cr_expect_eq(j.local, 0);
    cr_expect_eq(j.fm_term, 0);
    const char *b[] = {"train", "--refit", "--local", "yes", NULL};
    cr_assert_eq(cm_job_parse_args(&j, 4, (char **)b, NULL, &err), 0, "%s", err.msg);
    cr_expect_eq(j.refit, 1);
    cr_expect_eq(j.local, 1);
}

Test(config, args_negative_and_empty_values)
{
    cm_job j = cm_job_default();
    cm_error err = {0};
    /* a value may start with a single dash (and be rejected on its merits) */
    const char *a1[] = {"train", "--l2", "-1", NULL};
    cr_assert_eq(s_args(&j, NULL, &err, a1), CM_ECONFIG);
    cr_assert_str_eq(err.msg, "--l2: expected a number in [0, 100], got '-1'");
    const char *a2[] = {"train", "--test=", "--train", "x.csv", NULL};
    strcpy(j.test, "old");
    cr_assert_eq(s_args(&j, NULL, &err, a2), 0, "%s", err.msg);
    cr_assert_str_eq(j.test, "");
    cr_assert_str_eq(j.train, "x.csv");
}

Test(config, args_help)
{
    const char *forms[] = {"--help", "-h"};
    for (int i = 0; i < 2; i++) {
        cm_job j = cm_job_default(), before = j;
        cm_error err = {0};
        int help = 0;
        /* help wins even over mistakes elsewhere on the line */
        const char *argv[] = {"train", "--lrr", "3", forms[i], "missing.ini", NULL};
        cr_assert_eq(s_args(&j, &help, &err, argv), 0, "%s", err.msg);
        cr_assert_eq(help, 1);
        cr_assert(memcmp(&j, &before, sizeof j) == 0);
    }
    /* after "--" it is a file name */
    cm_job j = cm_job_default();
    cm_error err = {0};
    int help = 0;
    const char *argv[] = {"train", "--", "--help", NULL};
    cr_assert_eq(s_args(&j, &help, &err, argv), CM_EIO);
    cr_assert_eq(help, 0);
}

Test(config, args_unknown_flag)
{
    cm_job j = cm_job_default();
    cm_error err = {0};
    const char *a1[] = {"train", "--lrr", "0.1", NULL};
    cr_assert_eq(s_args(&j, NULL, &err, a1), CM_ECONFIG);
    cr_assert_str_eq(err.msg, "--lrr: unknown option (did you mean --lr?)");
    const char *a2[] = {"train", "--max-bad-line=3", NULL};
    cr_assert_eq(s_args(&j, NULL, &err, a2), CM_ECONFIG);
    cr_assert_str_eq(err.msg, "--max-bad-line: unknown option (did you mean --max-bad-lines?)");
    const char *a3[] = {"train", "--frobnicate", NULL};
    cr_assert_eq(s_args(&j, NULL, &err, a3), CM_ECONFIG);
    cr_assert_str_eq(err.msg, "--frobnicate: unknown option");
    const char *a4[] = {"train", "-x", NULL};
    cr_assert_eq(s_args(&j, NULL, &err, a4), CM_ECONFIG);
    cr_assert(strncmp(err.msg, "-x: unknown option", 18) == 0, "%s", err.msg);
}

Test(config, args_missing_value)
{
    cm_job j = cm_job_default(), before = j;
    cm_error err = {0};
    const char *a1[] = {"train", "--dim", NULL};
    cr_assert_eq(s_args(&j, NULL, &err, a1), CM_ECONFIG);
    cr_assert(strncmp(err.msg, "--dim: missing value", 20) == 0, "%s", err.msg);
    const char *a2[] = {"train", "--dim", "--lr", "0.1", NULL};
    cr_assert_eq(s_args(&j, NULL, &err, a2), CM_ECONFIG);
    cr_assert(strncmp(err.msg, "--dim: missing value", 20) == 0, "%s", err.msg);
    cr_assert(memcmp(&j, &before, sizeof j) == 0);
}

Test(config, args_two_job_files)
{
    cm_job j = cm_job_default();
    cm_error err = {0};
    const char *argv[] = {"train", "a.ini", "b.ini", NULL};
    cr_assert_eq(s_args(&j, NULL, &err, argv), CM_ECONFIG);
    cr_assert(strstr(err.msg, "b.ini") != NULL && strstr(err.msg, "a.ini") != NULL, "%s",
              err.msg);
}

Test(config, args_bad_file_and_no_file, .init = s_setup, .fini = s_cleanup)
{
    const char *path = s_write("job.ini", "dim = 5000\n");
    cm_job j = cm_job_default();
    cm_error err = {0};
    const char *a1[] = {"train", path, "--dim", "4", NULL};
    /* the file is still checked even though --dim would override it */
    cr_assert_eq(s_args(&j, NULL, &err, a1), CM_ECONFIG);
    cr_assert(strstr(err.msg, ":1: dim: expected an integer") != NULL, "%s", err.msg);
    cr_assert_eq(j.dim, 32);
    /* no file at all is fine: everything from flags */
    const char *a2[] = {"train", "--train", "r.csv", NULL};
    cr_assert_eq(s_args(&j, NULL, &err, a2), 0, "%s", err.msg);
    cr_assert_str_eq(j.train, "r.csv");
    const char *a3[] = {"train", NULL};
    cr_assert_eq(s_args(&j, NULL, &err, a3), 0, "%s", err.msg);
}

/* -------------------------------------------------------------------------
 * Validation, help, print
 * ------------------------------------------------------------------------- */

Test(config, validate_cross_checks)
{
    cm_job j = cm_job_default();
    strcpy(j.train, "t.csv");
    cm_error err = {0};
    j.servers = 8;
    j.slots = 4;
    cr_assert_eq(cm_job_validate(&j, &err), CM_ECONFIG);
    cr_assert(strstr(err.msg, "slots") != NULL, "%s", err.msg);

    /* fields filled in by code are range-checked too */
    j = cm_job_default();
    strcpy(j.train, "t.csv");
    j.dim = 0;
    cr_assert_eq(cm_job_validate(&j, &err), CM_ECONFIG);
    cr_assert(strncmp(err.msg, "dim:", 4) == 0, "%s", err.msg);
    j = cm_job_default();
    strcpy(j.train, "t.csv");
    j.lr = NAN;
    cr_assert_eq(cm_job_validate(&j, &err), CM_ECONFIG);
    j = cm_job_default();
    strcpy(j.train, "t.csv");
    strcpy(j.model, "gbdt");
    cr_assert_eq(cm_job_validate(&j, &err), CM_ECONFIG);
    cr_assert(strncmp(err.msg, "model:", 6) == 0, "%s", err.msg);
    j = cm_job_default();
    strcpy(j.train, "t.csv");
    j.optimizer = 7;
    cr_assert_eq(cm_job_validate(&j, &err), CM_ECONFIG);
    j = cm_job_default();
    strcpy(j.train, "t.csv");
    j.progress = 2;
    cr_assert_eq(cm_job_validate(&j, &err), CM_ECONFIG);
    cr_assert_eq(cm_job_validate(NULL, &err), CM_EINVAL);
}

static char *s_capture(void (*fn)(FILE *, int), int arg, size_t *len)
{
    char *buf = NULL;
    FILE *f = open_memstream(&buf, len);
    cr_assert_not_null(f);
    fn(f, arg);
    fclose(f);
    return buf;
}

Test(config, help_lists_every_key)
{
    for (int md = 0; md <= 1; md++) {
        size_t len;
        char *text = s_capture(cm_job_print_help, md, &len);
        for (size_t i = 0; i < N_KEYS; i++) {
            char want[64];
            snprintf(want, sizeof want, md ? "| `%s` |" : "\n--%s ", s_all_keys[i]);
            cr_assert(strstr(text, want) != NULL, "help (markdown=%d) lacks %s:\n%s", md,
                      s_all_keys[i], text);
        }
        cr_assert(strstr(text, "[1, 1024]") != NULL);
        cr_assert(strstr(text, "adagrad") != NULL);
        if (md) {
            cr_assert(strstr(text, "sgd\\|adagrad") != NULL, "%s", text);
        }
        /* one line per key plus the header (and the rule in markdown) */
        size_t lines = 0;
        for (char *p = text; *p; p++)
            lines += *p == '\n';
        cr_assert_eq(lines, N_KEYS + 1 + (size_t)md);
        free(text);
    }
}

/* The knobs that were environment variables only are keys now (job file,
 * command line, --help); the variables still override them. */
Test(config, env_knobs_are_keys_that_the_variables_override)
{
    unsetenv("PSREC_HOST");
    unsetenv("PSREC_TRANSPORT");
    unsetenv("PSREC_SHARED_ROWS");
    unsetenv("PSREC_ALLOW_SINGLETON");
    cm_job j = cm_job_default();
    cr_expect_str_eq(j.host, "");
    cr_expect_eq(j.transport, 0, "auto");
    cr_expect_eq(j.shared_rows, 0, "auto");
    cr_expect_eq(j.allow_singleton, 0);
    cm_error err = {0};
    int help = 0;
    char *args[] = {"train", "--transport", "tcp", "--shared-rows=off", "--host", "10.1.2.3",
                    "--allow_singleton"};
    cr_assert_eq(cm_job_parse_args(&j, 7, args, &help, &err), 0, "%s", err.msg);
    cr_expect_eq(j.transport, 1);
    cr_expect_eq(j.shared_rows, 1);
    cr_expect_str_eq(j.host, "10.1.2.3");
    cr_expect_eq(j.allow_singleton, 1);

    /* each variable wins over the command line */
    setenv("PSREC_TRANSPORT", "auto", 1);
    setenv("PSREC_SHARED_ROWS", "auto", 1);
    setenv("PSREC_HOST", "10.9.9.9", 1);
    setenv("PSREC_ALLOW_SINGLETON", "0", 1);
    cm_job k = cm_job_default();
    cr_assert_eq(cm_job_parse_args(&k, 7, args, &help, &err), 0, "%s", err.msg);
    cr_expect_eq(k.transport, 0);
    cr_expect_eq(k.shared_rows, 0);
    cr_expect_str_eq(k.host, "10.9.9.9");
    cr_expect_eq(k.allow_singleton, 0);

    /* an empty variable is no override */
    setenv("PSREC_TRANSPORT", "", 1);
    cm_job e = cm_job_default();
    cr_assert_eq(cm_job_parse_args(&e, 7, args, &help, &err), 0, "%s", err.msg);
    cr_expect_eq(e.transport, 1);

    /* a bad value names the variable, and the job is left as it was */
    setenv("PSREC_SHARED_ROWS", "of", 1);
    cm_job b = cm_job_default();
    cr_expect_eq(cm_job_parse_args(&b, 7, args, &help, &err), CM_ECONFIG);
    cr_expect(strstr(err.msg, "PSREC_SHARED_ROWS") && strstr(err.msg, "'of'"), "%s", err.msg);
    cr_expect_eq(b.transport, 0, "nothing applied");
    cr_expect_eq(cm_job_apply_env(&b, &err), CM_ECONFIG);
    unsetenv("PSREC_SHARED_ROWS");
    unsetenv("PSREC_HOST");
    unsetenv("PSREC_ALLOW_SINGLETON");
    cr_expect_eq(cm_job_apply_env(&b, &err), 0, "%s", err.msg);

    /* --help and the docs table list them */
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    cr_assert_not_null(f);
    cm_job_print_help(f, 0);
    fclose(f);
    const char *want[] = {"host", "transport", "shared_rows", "allow_singleton",
                          "PSREC_SHARED_ROWS", "PSREC_TRANSPORT", "PSREC_HOST",
                          "PSREC_ALLOW_SINGLETON"};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        cr_expect(strstr(text, want[i]) != NULL, "--help lacks %s", want[i]);
    free(text);
}

static void s_print_default(FILE *f, int unused)
{
    (void)unused;
    cm_job j = cm_job_default();
    cm_job_print(f, &j);
}

Test(config, print_lists_every_key)
{
    size_t len;
    char *text = s_capture(s_print_default, 0, &len);
    for (size_t i = 0; i < N_KEYS; i++) {
        char want[64];
        snprintf(want, sizeof want, "%s = ", s_all_keys[i]);
        cr_assert(strstr(text, want) != NULL, "%s missing:\n%s", s_all_keys[i], text);
    }
    cr_assert(strstr(text, "lr = 0.07\n") != NULL, "%s", text);
    cr_assert(strstr(text, "progress = auto\n") != NULL, "%s", text);
    cr_assert(strstr(text, "optimizer = adagrad\n") != NULL, "%s", text);
    free(text);
}

Test(config, print_load_round_trip, .init = s_setup, .fini = s_cleanup)
{
    cm_job a = cm_job_default();
    strcpy(a.train, "/data/x y/train.csv");
    strcpy(a.metrics, "m.jsonl");
    a.dim = 17;
    a.optimizer = CM_OPT_SGD;
    a.lr = 0.1 + 0.2; /* needs 17 digits */
    a.l2 = 1.0 / 3.0;
    a.seed = UINT64_MAX;
    a.max_bad_lines = 123456789012L;
    a.progress = 1;
    a.log_level = 4;
    a.local = 1;
    a.timeout = 2.5;

    char path[CM_PATH_MAX];
    snprintf(path, sizeof path, "%s/print.ini", s_dir);
    snprintf(s_files[s_nfiles++], CM_PATH_MAX, "%s", path);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    cm_job_print(f, &a);
    fclose(f);

    cm_job b = cm_job_default();
    cm_error err = {0};
    cr_assert_eq(cm_job_load_file(&b, path, &err), 0, "%s", err.msg);
    cr_assert_str_eq(b.train, a.train);
    cr_assert_str_eq(b.metrics, a.metrics);
    cr_assert_str_eq(b.test, "");
    cr_assert_eq(b.dim, 17);
    cr_assert_eq(b.optimizer, CM_OPT_SGD);
    cr_assert_eq(b.lr, a.lr);
    cr_assert_eq(b.l2, a.l2);
    cr_assert_eq(b.seed, UINT64_MAX);
    cr_assert_eq(b.max_bad_lines, 123456789012L);
    cr_assert_eq(b.progress, 1);
    cr_assert_eq(b.log_level, 4);
    cr_assert_eq(b.local, 1);
    cr_assert_eq(b.timeout, 2.5);
}

Test(config, optimizer_name)
{
    cr_assert_str_eq(cm_optimizer_name(CM_OPT_SGD), "sgd");
    cr_assert_str_eq(cm_optimizer_name(CM_OPT_ADAGRAD), "adagrad");
    cr_assert_str_eq(cm_optimizer_name(CM_OPT_ROWWISE), "rowwise_adagrad");
    cr_assert_str_eq(cm_optimizer_name(CM_OPT_ADAM), "adam");
    cr_assert_str_eq(cm_optimizer_name(CM_OPT_FTRL), "ftrl");
    cr_assert_str_eq(cm_optimizer_name(5), "?");
    cr_assert_str_eq(cm_optimizer_name(-1), "?");
}

/* `PSREC_PRINT_CONFIG_HELP=1 ./test_config` prints the markdown key table
 * that docs/config.md carries, and exits before the tests run. */
__attribute__((constructor)) static void s_print_docs_table(void)
{
    if (!getenv("PSREC_PRINT_CONFIG_HELP"))
        return;
    cm_job_print_help(stdout, 1);
    fflush(stdout);
    _exit(0);
}

/* Every model the key accepts is in the model table, with its family;
 * the rest of psrec asks the table, never the name. */
Test(config, every_model_is_declared_once_with_its_family)
{
    const struct {
        const char *name;
        int family, quadratic, fields, mlp;
    } want[] = {{"mf", CM_FAMILY_RATINGS, 1, 0, 0},
                {"fm", CM_FAMILY_SPARSE, 1, 0, 0},
                {"ffm", CM_FAMILY_SPARSE, 0, 1, 0},
                {"deep", CM_FAMILY_SPARSE, 0, 1, 1},
                {"implicit", CM_FAMILY_IMPLICIT, 0, 0, 0}};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        cm_job j = cm_job_default();
        cm_error err = {0};
        cr_assert_eq(cm_job_set(&j, "model", want[i].name, "test", &err), 0, "%s", err.msg);
        const cm_model *m = cm_model_of(want[i].name);
        cr_assert_not_null(m, "%s", want[i].name);
        cr_assert_eq(cm_job_model(&j), m);
        cr_assert_str_eq(m->name, want[i].name);
        cr_assert_eq(m->family, want[i].family, "%s", want[i].name);
        cr_assert(m->quadratic == want[i].quadratic && m->fields == want[i].fields &&
                  m->mlp == want[i].mlp, "%s", want[i].name);
        cr_assert_eq(cm_job_is_sparse(&j), want[i].family == CM_FAMILY_SPARSE);
    }
    cr_assert_null(cm_model_of("gbdt"));
    cm_job j = cm_job_default();
    strcpy(j.model, "gbdt");
    cr_assert_str_eq(cm_job_model(&j)->name, "mf", "an unknown name reads as mf's");
}

Test(config, model_defaults_fill_only_unset_keys)
{
    cm_job j = cm_job_default();
    cm_error err = {0};
    cr_assert_eq(cm_job_set(&j, "model", "fm", "--model", &err), 0, "%s", err.msg);
    cm_job_model_defaults(&j);
    cr_expect_float_eq(j.l2, 0.01, 1e-12, "fm gets its own l2 default");
    cm_job k = cm_job_default();
    cr_assert_eq(cm_job_set(&k, "model", "fm", "--model", &err), 0);
    cr_assert_eq(cm_job_set(&k, "l2", "0.3", "--l2", &err), 0);
    cm_job_model_defaults(&k);
    cr_expect_float_eq(k.l2, 0.3, 1e-12, "a value the user gave is kept");
    cm_job m = cm_job_default();
    cm_job_model_defaults(&m);
    cr_expect_float_eq(m.l2, 0.12, 1e-12, "mf keeps the table default");
    cr_expect_eq(j.dim, 64, "fm's dim");
    cr_expect_float_eq(j.lr, 0.07, 1e-12, "binary or auto task: the table's lr");
    cm_job f = cm_job_default();
    cr_assert_eq(cm_job_set(&f, "model", "ffm", "--model", &err), 0);
    cr_assert_eq(cm_job_set(&f, "task", "regression", "--task", &err), 0);
    cm_job_model_defaults(&f);
    cr_expect_eq(f.dim, 32, "ffm keeps dim 32 (rows hold a vector per field)");
    cr_expect_float_eq(f.l2, 0.01, 1e-12);
    cr_expect_float_eq(f.lr, 0.04, 1e-12, "squared loss on sparse features: smaller steps");
    cm_job r = cm_job_default();
    cr_assert_eq(cm_job_set(&r, "model", "deep", "--model", &err), 0);
    cr_assert_eq(cm_job_set(&r, "task", "regression", "--task", &err), 0);
    cr_assert_eq(cm_job_set(&r, "lr", "0.2", "--lr", &err), 0);
    cm_job_model_defaults(&r);
    cr_expect_float_eq(r.lr, 0.2, 1e-12, "an lr the user gave is kept");
    cr_expect_eq(r.dim, 64, "deep's dim");
}

/* One row of docs/config.md's table of per-model defaults: the models it
 * names, an optional condition (`task = regression`, `method = mcmc`) and
 * its `key value` pairs. */
typedef struct {
    char models[64];
    char cond_key[16], cond_value[16];
    char keys[8][32], values[8][32];
    int n;
} s_doc_default;

/* Reads that table (the rows after "| model | defaults that differ") into
 * rows; returns how many. */
static int s_doc_defaults(s_doc_default *rows, int cap)
{
    char path[CM_PATH_MAX];
    snprintf(path, sizeof path, "%s/docs/config.md", PSREC_SOURCE_DIR);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "%s", path);
    char line[512];
    int in = 0, n = 0;
    while (fgets(line, sizeof line, f)) {
        const char *p = line + strspn(line, " ");
        if (!in) {
            in = strncmp(p, "| model | defaults that differ", 30) == 0;
            continue;
        }
        if (*p != '|')
            break;
        if (strncmp(p, "|---", 4) == 0)
            continue;
        cr_assert_lt(n, cap);
        s_doc_default *r = &rows[n++];
        memset(r, 0, sizeof *r);
        const char *cells = strchr(p + 1, '|');
        cr_assert_not_null(cells, "%s", line);
        snprintf(r->models, sizeof r->models, "%.*s", (int)(cells - p - 1), p + 1);
        char *with = strstr(r->models, " with `");
        if (with) {
            cr_assert_eq(sscanf(with, " with `%15s = %15[^`]`", r->cond_key, r->cond_value), 2,
                         "%s", line);
            *with = '\0';
        }
        /* every `key value` of the second cell */
        for (const char *q = strchr(cells, '`'); q; q = strchr(q, '`')) {
            const char *end = strchr(q + 1, '`');
            cr_assert_not_null(end, "%s", line);
            cr_assert_lt(r->n, 8);
            cr_assert_eq(sscanf(q + 1, "%31s %31[^`]", r->keys[r->n], r->values[r->n]), 2, "%s",
                         line);
            r->n++;
            q = end + 1;
        }
        cr_assert_gt(r->n, 0, "%s", line);
    }
    fclose(f);
    return n;
}

/* 1 when `name` is one of the comma-separated models of the row. */
static int s_names_model(const char *models, const char *name)
{
    char copy[sizeof ((s_doc_default *)0)->models];
    memcpy(copy, models, sizeof copy);
    char *save = NULL;
    for (char *t = strtok_r(copy, ", ", &save); t; t = strtok_r(NULL, ", ", &save))
        if (strcmp(t, name) == 0)
            return 1;
    return 0;
}

/* The job as its printed key = value lines (malloc'd). */
static char *s_job_text(const cm_job *job)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    cr_assert_not_null(f);
    cm_job_print(f, job);
    fclose(f);
    return text;
}

/* The defaults every model, task and method gets are the ones
 * docs/config.md lists (a later row winning), and no others: a default
 * that moves in the model table or in the docs alone fails here. */
Test(config, model_defaults_are_the_documented_ones)
{
    s_doc_default rows[16];
    const int nrows = s_doc_defaults(rows, 16);
    cr_assert_geq(nrows, 5, "docs/config.md's table of model defaults");
    const char *const models[] = {"mf", "fm", "ffm", "deep", "implicit"};
    const char *const tasks[] = {"auto", "regression", "binary"};
    const char *const methods[] = {"auto", "sgd", "mcmc"};
    int checked = 0, applied = 0;
    for (size_t mi = 0; mi < sizeof models / sizeof models[0]; mi++)
        for (size_t ti = 0; ti < sizeof tasks / sizeof tasks[0]; ti++)
            for (size_t hi = 0; hi < sizeof methods / sizeof methods[0]; hi++) {
                cm_error err = {0};
                cm_job base = cm_job_default();
                snprintf(base.train, sizeof base.train, "x");
                cr_assert_eq(cm_job_set(&base, "model", models[mi], "test", &err), 0);
                cr_assert_eq(cm_job_set(&base, "task", tasks[ti], "test", &err), 0);
                cr_assert_eq(cm_job_set(&base, "method", methods[hi], "test", &err), 0);
                cm_job got = base;
                cm_job_model_defaults(&got);
                if (cm_job_validate(&got, &err) != 0)
                    continue; /* a combination psrec refuses */
                cm_job want = base;
                for (int r = 0; r < nrows; r++) {
                    const char *cond = !rows[r].cond_key[0]                       ? NULL
                                       : strcmp(rows[r].cond_key, "task") == 0   ? tasks[ti]
                                       : strcmp(rows[r].cond_key, "method") == 0 ? methods[hi]
                                                                                  : "?";
                    if (!s_names_model(rows[r].models, models[mi]) ||
                        (cond && strcmp(cond, rows[r].cond_value) != 0))
                        continue;
                    for (int k = 0; k < rows[r].n; k++) {
                        cr_assert_eq(cm_job_set(&want, rows[r].keys[k], rows[r].values[k],
                                                "docs/config.md", &err),
                                     0, "%s", err.msg);
                        applied++;
                    }
                }
                char *g = s_job_text(&got), *w = s_job_text(&want);
                cr_expect_str_eq(g, w, "model %s, task %s, method %s", models[mi], tasks[ti],
                                 methods[hi]);
                free(g);
                free(w);
                checked++;
            }
    cr_expect_geq(checked, 10, "the combinations psrec accepts");
    cr_expect_geq(applied, 20, "the documented defaults applied");
}

/* method mcmc: its own defaults (sweeps, dim, init) unless given, and only
 * for fm and mf. */
Test(config, method_mcmc_defaults_and_models)
{
    cm_error err = {0};
    cm_job j = cm_job_default();
    cr_assert_eq(cm_job_set(&j, "model", "fm", "--model", &err), 0, "%s", err.msg);
    cr_assert_eq(cm_job_set(&j, "method", "mcmc", "--method", &err), 0, "%s", err.msg);
    cr_assert_eq(cm_job_set(&j, "dim", "12", "--dim", &err), 0, "%s", err.msg);
    cm_job_model_defaults(&j);
    cr_expect_eq(j.method, CM_METHOD_MCMC);
    cr_expect_eq(j.epochs, 100);
    cr_expect_eq(j.dim, 12, "a dim the user gave is kept");
    cr_expect_float_eq(j.init_std, 0.1, 1e-12);
    snprintf(j.train, sizeof j.train, "x");
    cr_expect_eq(cm_job_validate(&j, &err), 0, "%s", err.msg);
    cm_job s = cm_job_default();
    cr_assert_eq(cm_job_set(&s, "model", "fm", "--model", &err), 0);
    cm_job_model_defaults(&s);
    cr_expect_eq(s.method, CM_METHOD_AUTO, "auto unless asked (the train command settles it)");
    cr_expect_eq(s.dim, 64, "sgd's defaults until auto is settled");
    cr_expect(cm_job_is_explicit(&j, "dim"));
    cr_expect_eq(cm_job_is_explicit(&s, "dim"), 0);
    cr_expect_eq(cm_job_is_explicit(&j, "no_such_key"), 0);
    cr_assert_eq(cm_job_set(&j, "model", "ffm", "--model", &err), 0);
    cr_expect_eq(cm_job_validate(&j, &err), CM_ECONFIG);
    cr_expect(strstr(err.msg, "models fm and mf") != NULL, "%s", err.msg);
}

Test(config, validation_keys)
{
    cm_job j = cm_job_default();
    cm_error err = {0};
    cr_expect_float_eq(j.validation_fraction, 0.05, 1e-12, "validation is on by default");
    cr_expect_eq(j.patience, 3);
    cr_expect_str_eq(j.validation, "");
    cr_assert_eq(cm_job_set(&j, "validation_fraction", "0", "--validation_fraction", &err), 0);
    cr_expect_float_eq(j.validation_fraction, 0, 1e-12, "0 turns it off");
    cr_expect_neq(cm_job_set(&j, "validation_fraction", "0.9", "--validation_fraction", &err), 0,
                  "most of the data cannot be held out");
    cr_expect(strstr(err.msg, "validation_fraction") != NULL, "%s", err.msg);
    cr_expect_neq(cm_job_set(&j, "patience", "-1", "--patience", &err), 0);
    cr_assert_eq(cm_job_set(&j, "validation", "v.txt", "--validation", &err), 0);
    cr_expect_str_eq(j.validation, "v.txt");
}

/* -------------------------------------------------------------------------
 * Keys that apply to some models only
 * ------------------------------------------------------------------------- */

/* Parses argv, then validates: 0 or the first error (message in err). */
static int s_args_validate(const char **argv, cm_error *err)
{
    cm_job j = cm_job_default();
    int help = 0;
    int rc = s_args(&j, &help, err, argv);
    if (rc == 0)
        rc = cm_job_validate(&j, err);
    return rc;
}

Test(config, key_for_another_model_on_the_command_line_is_an_error)
{
    cm_error err = {0};
    const char *mf_hidden[] = {"train", "--train", "r.tsv", "--model", "mf", "--hidden", "64",
                               NULL};
    cr_assert_eq(s_args_validate(mf_hidden, &err), CM_ECONFIG);
    cr_expect(strstr(err.msg, "--hidden 64") && strstr(err.msg, "deep") &&
                  strstr(err.msg, "not mf"),
              "names the key, the models it is for and the job's: %s", err.msg);
    /* on the command line even the default value is a mistake worth stopping */
    const char *fm_neg[] = {"train", "--train", "r.tsv", "--model", "fm", "--negatives", "4",
                            NULL};
    cr_assert_eq(s_args_validate(fm_neg, &err), CM_ECONFIG);
    cr_expect(strstr(err.msg, "negatives") && strstr(err.msg, "implicit"), "%s", err.msg);
    const char *fm_sched[] = {"train", "--train", "r.tsv", "--model", "fm", "--schedule",
                              "minibatch", NULL};
    cr_assert_eq(s_args_validate(fm_sched, &err), CM_ECONFIG);
    cr_expect(strstr(err.msg, "schedule") && strstr(err.msg, "applies to model mf"), "%s",
              err.msg);
    const char *mf_task[] = {"train", "--train", "r.tsv", "--task", "binary", NULL};
    cr_assert_eq(s_args_validate(mf_task, &err), CM_ECONFIG, "mf is the default model");
    cr_expect(strstr(err.msg, "fm, ffm, deep") != NULL, "%s", err.msg);
}

Test(config, key_for_its_own_model_passes)
{
    cm_error err = {0};
    const char *ok[][12] = {
        {"train", "--train", "r.tsv", "--model", "implicit", "--negatives", "8", "--loss",
         "logistic", NULL},
        {"train", "--train", "r.tsv", "--model", "deep", "--hidden", "16", "--fields", "2",
         "--task", "regression", NULL},
        {"train", "--train", "r.tsv", "--model", "ffm", "--fields", "3", NULL},
        {"train", "--train", "r.tsv", "--schedule", "minibatch", "--blocks_per_worker", "2",
         NULL},
        /* keys for every model */
        {"train", "--train", "r.tsv", "--model", "fm", "--dim", "8", "--lr", "0.1",
         "--consistency", "ssp", NULL},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
        cr_expect_eq(s_args_validate(ok[i], &err), 0, "case %zu: %s", i, err.msg);
}

Test(config, job_file_keys_at_default_pass_for_any_model, .init = s_setup, .fini = s_cleanup)
{
    /* a file listing every key, as cm_job_print writes it (and as the
     * checkpoints keep the job), loads and validates for every model */
    static const char *const models[] = {"mf", "fm", "ffm", "deep", "implicit"};
    char path[CM_PATH_MAX];
    snprintf(path, sizeof path, "%s/all.ini", s_dir);
    snprintf(s_files[s_nfiles++], CM_PATH_MAX, "%s", path);
    for (size_t m = 0; m < sizeof models / sizeof models[0]; m++) {
        cm_job a = cm_job_default();
        snprintf(a.train, sizeof a.train, "r.tsv");
        snprintf(a.model, sizeof a.model, "%s", models[m]);
        FILE *f = fopen(path, "w");
        cr_assert_not_null(f);
        cm_job_print(f, &a);
        fclose(f);
        cm_job b = cm_job_default();
        cm_error err = {0};
        cr_assert_eq(cm_job_load_file(&b, path, &err), 0, "%s", err.msg);
        cr_expect_eq(cm_job_validate(&b, &err), 0, "%s: %s", models[m], err.msg);
    }
    /* a value other than the default, in a file, is named */
    const char *bad = s_write("bad.ini", "train = r.tsv\nmodel = mf\nhidden = 8\n");
    cm_job c = cm_job_default();
    cm_error err = {0};
    cr_assert_eq(cm_job_load_file(&c, bad, &err), 0, "%s", err.msg);
    cr_assert_eq(cm_job_validate(&c, &err), CM_ECONFIG);
    cr_expect(strstr(err.msg, "hidden = 8") && strstr(err.msg, "deep"), "%s", err.msg);
    /* and a flag for another model over a file passes once the file's model
     * is one it applies to */
    const char *deep = s_write("deep.ini", "train = r.tsv\nmodel = deep\n");
    const char *argv[] = {"train", deep, "--hidden", "8", NULL};
    cr_expect_eq(s_args_validate(argv, &err), 0, "%s", err.msg);
}

Test(config, programmatic_jobs_are_not_second_guessed)
{
    /* a job built in code (tests, embedders) sets fields directly: only
     * keys set through cm_job_set / the parser are checked */
    cm_job j = cm_job_default();
    snprintf(j.train, sizeof j.train, "r.tsv");
    snprintf(j.hidden, sizeof j.hidden, "8");
    cm_error err = {0};
    cr_expect_eq(cm_job_validate(&j, &err), 0, "%s", err.msg);
}

Test(config, ratings_input_of_mf)
{
    cm_error err = {0};
    const char *svm[] = {"train", "--train", "r.txt", "--format", "libsvm", NULL};
    cr_assert_eq(s_args_validate(svm, &err), CM_ECONFIG);
    cr_expect(strstr(err.msg, "format = libsvm") && strstr(err.msg, "rating_column"), "%s",
              err.msg);
    const char *csv[] = {"train", "--train", "r.csv", "--format", "csv", "--label_column", "y",
                         "--user_column", "u", NULL};
    cr_expect_eq(s_args_validate(csv, &err), 0, "%s", err.msg);
    const char *both[] = {"train", "--train", "r.csv", "--label_column", "y",
                          "--rating_column", "z", NULL};
    cr_assert_eq(s_args_validate(both, &err), CM_ECONFIG);
    cr_expect(strstr(err.msg, "label_column") && strstr(err.msg, "rating_column"), "%s",
              err.msg);
}

/* 1 when the line of text that starts with `start` contains `word`. */
__attribute__((noinline)) static int s_line_has(const char *text, const char *start, const char *word)
{
    const char *p = strstr(text, start);
    if (!p)
        return 0;
    size_t n = strcspn(p, "\n");
    const char *w = strstr(p, word);
    return w && (size_t)(w - p) < n;
}

static void s_print_text_help(FILE *f, int unused)
{
    (void)unused;
    cm_job_print_help(f, 0);
}

Test(config, help_shows_the_models_of_each_key)
{
    size_t len;
    char *text = s_capture(s_print_text_help, 0, &len);
    cr_assert(strstr(text, "models") != NULL, "%s", text);
    cr_expect(s_line_has(text, "--hidden ", " deep "), "--hidden's line names deep");
    cr_expect(s_line_has(text, "--lr ", " all "), "--lr applies to all models");
    free(text);
}

Test(config, docs_table_shows_the_models_of_each_key)
{
    size_t len;
    char *md = s_capture(cm_job_print_help, 1, &len);
    cr_expect(strstr(md, "| models |") != NULL, "%s", md);
    cr_expect(strstr(md, "| `negatives` |") && strstr(md, "| implicit |"), "%s", md);
    free(md);
}

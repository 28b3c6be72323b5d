/* gen_ctr: options of `psrec gen --ctr` to cm_synth_ctr_write, and the
 * summary line a benchmark reads (the Bayes AUC beside the files). */
#include "cluster/gen_ctr.h"

#include <stdio.h>
#include <string.h>

#include "common/opts.h"
#include "common/synth_ctr.h"

int cl_gen_is_ctr(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--ctr") == 0)
            return 1;
    return 0;
}

#define S_MAX_ARGS 256

int cl_gen_ctr_main(int argc, char **argv)
{
    cm_synth_ctr_params p = cm_synth_ctr_params_default();
    const char *out = "ctr", *formats = "all";
    const cm_opt opts[] = {
        {"out", 0, CM_OPT_STR, &out, "output prefix: PREFIX.{train,test}.{libsvm,ffm,csv} and "
                             "PREFIX.info (default ctr)"},
        {"lines", 0, CM_OPT_U64, &p.n_lines, "lines in all, train + test (default 100000)"},
        {"fields", 0, CM_OPT_INT, &p.n_fields, "fields per line (default 39)"},
        {"numeric", 0, CM_OPT_INT, &p.n_numeric,
         "how many of the fields are numeric, the first ones (default 0)"},
        {"features", 0, CM_OPT_U64, &p.features,
         "categorical vocabulary over all fields (default 1000000)"},
        {"vocab-min", 0, CM_OPT_U64, &p.vocab_min, "smallest field's vocabulary (default 4)"},
        {"zipf", 0, CM_OPT_DBL, &p.zipf, "popularity exponent within a field (default 1.1)"},
        {"rank", 0, CM_OPT_INT, &p.rank, "rank of the planted factors (default 8)"},
        {"signal", 0, CM_OPT_DBL, &p.signal,
         "sd of the planted logit around its bias (default 1.5; 0: labels are noise)"},
        {"pair-share", 0, CM_OPT_DBL, &p.pair_share,
         "share of that variance from pairwise terms (default 0.5)"},
        {"ctr", 0, CM_OPT_DBL, &p.ctr, "target click rate (default 0.2)"},
        {"test-fraction", 0, CM_OPT_DBL, &p.test_fraction,
         "share of lines held out (default 0.1)"},
        {"seed", 0, CM_OPT_U64, &p.seed, "random seed (default 42)"},
        {"formats", 0, CM_OPT_STR, &formats,
         "comma-separated: libsvm, ffm, csv or all (default all)"},
    };
    const size_t n_opts = sizeof opts / sizeof opts[0];
    /* --ctr itself is not an option of the table: drop it. */
    char *args[S_MAX_ARGS];
    int n = 0;
    for (int i = 0; i < argc && n < S_MAX_ARGS; i++)
        if (i == 0 || strcmp(argv[i], "--ctr") != 0)
            args[n++] = argv[i];
    const char *pos[1];
    int n_pos = 0;
    cm_error err = {0};
    if (argc > S_MAX_ARGS) {
        fprintf(stderr, "psrec gen: too many arguments\n");
        return 2;
    }
    int rc = cm_opts_parse_cmd(stderr, n, args, opts, n_opts, pos, 0, &n_pos);
    if (rc > 0)
        return rc;
    if (rc < 0) {
        printf("usage: psrec gen --ctr [options]\n\n"
               "Writes synthetic click data: one categorical feature per field (Zipf-like\n"
               "popularity), optionally numeric fields first, labels drawn from a planted\n"
               "logistic factorization machine. Prints the click rates and the Bayes AUC:\n"
               "the AUC of the planted probabilities on the test lines, the best any model\n"
               "can reach.\n\n");
        cm_opts_print(stdout, opts, n_opts);
        return 0;
    }
    if (cm_synth_ctr_formats(formats, &p.formats, &err) != 0) {
        fprintf(stderr, "psrec gen: %s\n", err.msg);
        return 2;
    }
    cm_synth_ctr_report rep;
    if (cm_synth_ctr_write(&p, out, &rep, &err) != 0) {
        fprintf(stderr, "psrec gen: %s\n", err.msg);
        return err.code == CM_EINVAL ? 2 : 1;
    }
    for (int f = 0; f < 3; f++)
        if (rep.train_path[f][0])
            printf("wrote %s (%llu lines) and %s (%llu lines)\n", rep.train_path[f],
                   (unsigned long long)rep.n_train, rep.test_path[f],
                   (unsigned long long)rep.n_test);
    printf("%llu features; click rate train %.4f test %.4f\n"
           "bayes_auc %.4f  bayes_logloss %.4f (the planted probabilities on the %s lines; "
           "see %s)\n",
           (unsigned long long)rep.n_features,
           rep.n_train ? (double)rep.clicks_train / (double)rep.n_train : 0.0,
           rep.n_test ? (double)rep.clicks_test / (double)rep.n_test : 0.0, rep.bayes_auc,
           rep.bayes_logloss, rep.n_test ? "test" : "train", rep.info_path);
    return 0;
}

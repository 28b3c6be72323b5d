#include <math.h>
#include <string.h>

#include "common/features.h"
#include "worker/models/model.h"

static const wk_model_ops *const s_models[] = {&wk_model_mf, &wk_model_fm, &wk_model_ffm,
                                              &wk_model_deep,
                                              &wk_model_implicit};

const wk_model_ops *wk_model_find(const char *name)
{
    for (size_t i = 0; i < sizeof s_models / sizeof s_models[0]; i++)
        if (strcmp(s_models[i]->name, name) == 0)
            return s_models[i];
    return NULL;
}

double wk_model_loss(int task, float y, float t, float *g)
{
    if (task == CM_TASK_BINARY) {
        /* stable log(1 + e^-m) with margin m = y for t = 1, -y for t = 0 */
        const double mg = t > 0.5f ? y : -(double)y;
        *g = y >= 0.f ? 1.f / (1.f + expf(-y)) - t : expf(y) / (1.f + expf(y)) - t;
        return mg > 0 ? log1p(exp(-mg)) : -mg + log1p(exp(mg));
    }
    *g = y - t;
    return 0.5 * (double)(y - t) * (y - t);
}

void wk_model_table_user_item(const cm_job *job, size_t t, cm_table_spec *out)
{
    memset(out, 0, sizeof *out);
    out->dim = job->dim + 1;
    out->zero_prefix = 1;
    out->init_std = (float)job->init_std;
    out->seed = job->seed * 2 + t + 1;
    wk_model_table_common(job, out);
}

void wk_model_table_common(const cm_job *job, cm_table_spec *out)
{
    out->optim = cm_optim_default(job->optimizer, (float)job->lr);
    out->optim.beta1 = (float)job->adam_beta1;
    out->optim.beta2 = (float)job->adam_beta2;
    out->optim.l1 = (float)job->ftrl_l1;
    out->optim.beta = (float)job->ftrl_beta;
    out->optim.init_accum = (float)job->adagrad_init;
    out->min_count = (uint32_t)job->min_count;
    out->ttl = (uint32_t)job->ttl;
    out->max_rows = (size_t)job->max_rows;
}

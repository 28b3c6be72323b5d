#include "worker/trainer.h"

#include <stdlib.h>

wk_trainer *wk_trainer_alloc(size_t size, const wk_trainer_ops *ops, const wk_trainer_env *env,
                             cm_error *err)
{
    wk_trainer *t = calloc(1, size);
    if (!t) {
        cm_error_set(err, CM_ENOMEM, "worker: out of memory");
        return NULL;
    }
    t->ops = ops;
    t->env = *env;
    return t;
}

void wk_trainer_destroy(wk_trainer **pt)
{
    if (!pt || !*pt)
        return;
    (*pt)->ops->destroy(*pt);
    *pt = NULL;
}

#include <string.h>

#include "worker/models/model.h"

static const wk_model_ops *const s_models[] = {&wk_model_mf};

const wk_model_ops *wk_model_find(const char *name)
{
    for (size_t i = 0; i < sizeof s_models / sizeof s_models[0]; i++)
        if (strcmp(s_models[i]->name, name) == 0)
            return s_models[i];
    return NULL;
}

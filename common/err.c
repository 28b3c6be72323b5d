#include "common/err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static const char *s_text[CM_ERRI_COUNT_] = {
    [CM_ERRI_OK_] = "success",
#define CM_X_(name, text) [CM_ERRI_##name] = text,
    CM_ERRNO_MAP(CM_X_)
#undef CM_X_
};

static const char *s_name[CM_ERRI_COUNT_] = {
    [CM_ERRI_OK_] = "CM_OK",
#define CM_X_(name, text) [CM_ERRI_##name] = "CM_" #name,
    CM_ERRNO_MAP(CM_X_)
#undef CM_X_
};

const char *cm_strerror(int code)
{
    int i = -code;
    if (i < 0 || i >= CM_ERRI_COUNT_)
        return "unknown error";
    return s_text[i];
}

const char *cm_errname(int code)
{
    int i = -code;
    if (i < 0 || i >= CM_ERRI_COUNT_)
        return "CM_EUNKNOWN";
    return s_name[i];
}

int cm_error_set(cm_error *e, int code, const char *fmt, ...)
{
    if (!e)
        return code;
    e->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    return code;
}

int cm_error_prefix(cm_error *e, const char *fmt, ...)
{
    if (!e)
        return 0;
    char prefix[CM_ERROR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    size_t pl = strlen(prefix), ml = strlen(e->msg);
    if (pl + 2 >= sizeof e->msg)
        pl = sizeof e->msg - 3;
    if (pl + 2 + ml >= sizeof e->msg)
        ml = sizeof e->msg - pl - 3;
    memmove(e->msg + pl + 2, e->msg, ml);
    memcpy(e->msg, prefix, pl);
    e->msg[pl] = ':';
    e->msg[pl + 1] = ' ';
    e->msg[pl + 2 + ml] = '\0';
    return e->code;
}

void cm_error_clear(cm_error *e)
{
    if (!e)
        return;
    e->code = 0;
    e->msg[0] = '\0';
}

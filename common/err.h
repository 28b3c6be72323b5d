/* err: psrec's error codes and the error record that carries a message.
 *
 * Every fallible function returns int: 0 on success, a negative CM_E* code
 * on failure. Functions that face the outside (files, config, network) also
 * fill a cm_error with a message saying what and where, for example
 * "ratings.csv:1042: expected 3 fields, got 2". */
#ifndef PSREC_COMMON_ERR_H
#define PSREC_COMMON_ERR_H

#include <stddef.h>

/* One table makes the enum, cm_strerror() and cm_errname(). */
#define CM_ERRNO_MAP(X)                                   \
    X(EINVAL, "invalid argument")                         \
    X(ENOMEM, "out of memory")                            \
    X(EIO, "input/output error")                          \
    X(EPARSE, "malformed input")                          \
    X(ECONFIG, "bad configuration")                       \
    X(EPROTO, "malformed message")                        \
    X(ECHECKSUM, "checksum mismatch")                     \
    X(ETOOMANY, "too many bad lines")                     \
    X(ETIMEDOUT, "timed out")                             \
    X(ECLOSED, "closed")                                  \
    X(ENOTFOUND, "not found")                             \
    X(ERANGE, "value out of range")                       \
    X(ESTATE, "operation not valid in this state")        \
    X(EREMOTE, "the peer reported an error")              \
    X(EMPI, "MPI error")                                  \
    X(ENOTSUP, "not supported here")                      \
    X(EPERM, "not permitted for this peer")

enum cm_err_index_ {
    CM_ERRI_OK_ = 0,
#define CM_X_(name, text) CM_ERRI_##name,
    CM_ERRNO_MAP(CM_X_)
#undef CM_X_
    CM_ERRI_COUNT_
};

typedef enum {
    CM_OK = 0,
#define CM_X_(name, text) CM_##name = -CM_ERRI_##name,
    CM_ERRNO_MAP(CM_X_)
#undef CM_X_
} cm_errcode;

/* Human text for a code ("malformed message"); never NULL. */
const char *cm_strerror(int code);

/* The code's name ("CM_EPROTO"); never NULL. */
const char *cm_errname(int code);

#define CM_ERROR_MSG_MAX 512

/* Where a failing function leaves its code and message. A NULL cm_error *
 * is accepted everywhere and means "caller does not want the text". */
typedef struct {
    int code;                     /* 0 or a CM_E* code */
    char msg[CM_ERROR_MSG_MAX];   /* what and where; "" when code is 0 */
} cm_error;

/* Fills *e (if not NULL) and returns code, so callers can write
 * `return cm_error_set(e, CM_EPARSE, "%s:%zu: ...", path, line);`. */
int cm_error_set(cm_error *e, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prefixes e->msg with "prefix: " (keeps code). Returns e->code. */
int cm_error_prefix(cm_error *e, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Resets to success. */
void cm_error_clear(cm_error *e);

#endif

/* van_impl: what a van implementation fills in (private to common/van*.c
 * and common/msg.c; nothing outside common/ includes it).
 *
 * A cm_van is an ops table plus the implementation's state; a cm_sock is
 * the generic part every implementation shares (type, last error text)
 * plus its state. van.c dispatches through the table and checks
 * arguments, so an implementation may assume non-NULL, valid arguments. */
#ifndef PSREC_COMMON_VAN_IMPL_H
#define PSREC_COMMON_VAN_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "common/van.h"

typedef struct cm_van_ops {
    const char *name;                                  /* "zmq", "fault" */
    /* Frees the implementation's state (the cm_van itself too). */
    void (*destroy)(cm_van *v);
    /* Makes blocking calls on every socket of the van return CM_ECLOSED. */
    void (*shutdown)(cm_van *v);
    /* Fills s->impl (and s->inner for a wrapper); s->van and s->type are
     * set already. 0 or a CM_E* code with the reason in *err. */
    int (*sock_open)(cm_van *v, cm_sock *s, cm_error *err);
    /* Releases s->impl (not s itself). */
    void (*sock_close)(cm_sock *s);
    int (*bind)(cm_sock *s, const char *endpoint, char *actual);
    int (*connect)(cm_sock *s, const char *endpoint);
    int (*set_identity)(cm_sock *s, const void *id, size_t size);
    int (*send)(cm_sock *s, const cm_iov *frames, size_t n);
    /* cm_sock_send_owned; NULL: send, then free the buffer. */
    int (*send_owned)(cm_sock *s, const cm_iov *frames, size_t n, void *owned);
    int (*recv)(cm_sock *s, cm_frames **out, int timeout_ms);
    /* socks are base sockets (inner == NULL) of this implementation. */
    int (*poll)(cm_sock **socks, size_t n, int timeout_ms, uint64_t *ready);
    /* cm_van_secure / cm_van_is_secure / cm_van_refused; NULL secure:
     * CM_ENOTSUP. */
    int (*secure)(cm_van *v, const cm_van_keys *k, cm_error *err);
    int (*is_secure)(const cm_van *v);
    uint64_t (*refused)(const cm_van *v);
} cm_van_ops;

struct cm_van {
    const cm_van_ops *ops;
    void *impl;                          /* the implementation's state */
};

struct cm_sock {
    cm_van *van;                         /* the van that made it */
    cm_sock_type type;
    cm_sock *inner;                      /* the wrapped socket, or NULL */
    void *impl;                          /* the implementation's state */
    char *bound_file;                    /* a unix socket this one bound: its
                                            file, removed on close; or NULL */
    char errmsg[CM_ERROR_MSG_MAX];       /* last error text, "" if none */
};

/* Received frames. iov[i] stays valid until release(f) runs; release
 * frees f too. */
struct cm_frames {
    size_t n;
    cm_iov *iov;
    void (*release)(cm_frames *f);
    int peer;                            /* cm_frames_peer */
};

/* Allocates a cm_van with the given ops and state; NULL when out of memory. */
cm_van *cm_van_alloc_(const cm_van_ops *ops, void *impl);

/* Sets s->errmsg (printf-style) and returns code. */
int cm_sock_seterr_(cm_sock *s, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The ZeroMQ van (van_zmq.c). */
cm_van *cm_van_zmq_new_(cm_error *err);

#endif

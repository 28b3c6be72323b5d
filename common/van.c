/* van: the generic half of the transport. Checks arguments, keeps each
 * socket's last error text and dispatches through the van's ops table
 * (van_zmq.c is the real transport, van_fault.c wraps one for tests). */
#include "common/van.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/van_impl.h"

/* ---------------------------------------------------------------- van -- */

cm_van *cm_van_alloc_(const cm_van_ops *ops, void *impl)
{
    cm_van *v = calloc(1, sizeof *v);
    if (!v)
        return NULL;
    v->ops = ops;
    v->impl = impl;
    return v;
}

cm_van *cm_van_new(cm_error *err)
{
    return cm_van_zmq_new_(err);
}

int cm_van_secure(cm_van *van, const cm_van_keys *k, cm_error *err)
{
    if (!van || !k)
        return cm_error_set(err, CM_EINVAL, "van: secure needs a van and keys");
    if (k->n_admit && !k->admit)
        return cm_error_set(err, CM_EINVAL, "van: %zu admitted keys but no list", k->n_admit);
    if (!van->ops->secure)
        return cm_error_set(err, CM_ENOTSUP, "van: the %s transport cannot be secured",
                            van->ops->name);
    return van->ops->secure(van, k, err);
}

int cm_van_is_secure(const cm_van *van)
{
    return van && van->ops->is_secure && van->ops->is_secure(van);
}

uint64_t cm_van_refused(const cm_van *van)
{
    return van && van->ops->refused ? van->ops->refused(van) : 0;
}

void cm_van_destroy(cm_van **pv)
{
    if (!pv || !*pv)
        return;
    cm_van *v = *pv;
    *pv = NULL;
    v->ops->destroy(v);
}

void cm_van_shutdown(cm_van *van)
{
    if (van)
        van->ops->shutdown(van);
}

/* --------------------------------------------------------------- sock -- */

int cm_sock_seterr_(cm_sock *s, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->errmsg, sizeof s->errmsg, fmt, ap);
    va_end(ap);
    return code;
}

cm_sock *cm_sock_new(cm_van *van, cm_sock_type type, cm_error *err)
{
    if (!van) {
        cm_error_set(err, CM_EINVAL, "cm_sock_new: no van");
        return NULL;
    }
    if (type != CM_SOCK_ROUTER && type != CM_SOCK_DEALER) {
        cm_error_set(err, CM_EINVAL, "cm_sock_new: unknown socket type %d", (int)type);
        return NULL;
    }
    cm_sock *s = calloc(1, sizeof *s);
    if (!s) {
        cm_error_set(err, CM_ENOMEM, "cm_sock_new: out of memory");
        return NULL;
    }
    s->van = van;
    s->type = type;
    if (van->ops->sock_open(van, s, err) < 0) {
        free(s);
        return NULL;
    }
    return s;
}

void cm_sock_destroy(cm_sock **ps)
{
    if (!ps || !*ps)
        return;
    cm_sock *s = *ps;
    *ps = NULL;
    s->van->ops->sock_close(s);
    free(s);
}

cm_sock_type cm_sock_type_of(const cm_sock *s)
{
    return s->type;
}

int cm_sock_bind(cm_sock *s, const char *endpoint, char *actual)
{
    if (!s)
        return CM_EINVAL;
    if (actual)
        actual[0] = '\0';
    if (!endpoint || !*endpoint)
        return cm_sock_seterr_(s, CM_EINVAL, "bind: empty endpoint");
    if (strlen(endpoint) >= CM_ENDPOINT_MAX)
        return cm_sock_seterr_(s, CM_EINVAL, "bind: endpoint longer than %d bytes",
                               CM_ENDPOINT_MAX - 1);
    return s->van->ops->bind(s, endpoint, actual);
}

int cm_sock_connect(cm_sock *s, const char *endpoint)
{
    if (!s)
        return CM_EINVAL;
    if (!endpoint || !*endpoint)
        return cm_sock_seterr_(s, CM_EINVAL, "connect: empty endpoint");
    if (strlen(endpoint) >= CM_ENDPOINT_MAX)
        return cm_sock_seterr_(s, CM_EINVAL, "connect: endpoint longer than %d bytes",
                               CM_ENDPOINT_MAX - 1);
    return s->van->ops->connect(s, endpoint);
}

int cm_sock_set_identity(cm_sock *s, const void *id, size_t size)
{
    if (!s)
        return CM_EINVAL;
    if (!id || size == 0 || size > 255)
        return cm_sock_seterr_(s, CM_EINVAL, "identity must be 1..255 bytes, got %zu", size);
    if (((const unsigned char *)id)[0] == 0)
        return cm_sock_seterr_(s, CM_EINVAL, "identity must not start with a zero byte");
    return s->van->ops->set_identity(s, id, size);
}

int cm_sock_send(cm_sock *s, const cm_iov *frames, size_t n)
{
    if (!s)
        return CM_EINVAL;
    if (!frames || n == 0)
        return cm_sock_seterr_(s, CM_EINVAL, "send: a message needs at least one frame");
    for (size_t i = 0; i < n; i++)
        if (!frames[i].data && frames[i].size)
            return cm_sock_seterr_(s, CM_EINVAL, "send: frame %zu has %zu bytes but no data",
                                   i, frames[i].size);
    return s->van->ops->send(s, frames, n);
}

int cm_sock_send_owned(cm_sock *s, const cm_iov *frames, size_t n, void *owned)
{
    if (!s || !frames || n == 0 || frames[n - 1].data != owned) {
        free(owned);
        if (!s)
            return CM_EINVAL;
        return cm_sock_seterr_(s, CM_EINVAL, "send: the owned buffer is not the last frame");
    }
    if (!s->van->ops->send_owned) {
        int rc = cm_sock_send(s, frames, n);
        free(owned);
        return rc;
    }
    for (size_t i = 0; i + 1 < n; i++)
        if (!frames[i].data && frames[i].size) {
            free(owned);
            return cm_sock_seterr_(s, CM_EINVAL, "send: frame %zu has %zu bytes but no data",
                                   i, frames[i].size);
        }
    return s->van->ops->send_owned(s, frames, n, owned);
}

int cm_sock_recv(cm_sock *s, cm_frames **out, int timeout_ms)
{
    if (!out)
        return CM_EINVAL;
    *out = NULL;
    if (!s)
        return CM_EINVAL;
    return s->van->ops->recv(s, out, timeout_ms);
}

int cm_sock_poll(cm_sock **socks, size_t n, int timeout_ms, uint64_t *ready)
{
    if (!ready)
        return CM_EINVAL;
    *ready = 0;
    if (!socks || n == 0 || n > 64)
        return CM_EINVAL;
    /* Wrapping vans pass recv through to their inner socket, so polling the
     * innermost sockets is polling the wrappers. */
    cm_sock *base[64];
    for (size_t i = 0; i < n; i++) {
        if (!socks[i])
            return CM_EINVAL;
        cm_sock *b = socks[i];
        while (b->inner)
            b = b->inner;
        if (i > 0 && b->van->ops != base[0]->van->ops)
            return cm_sock_seterr_(socks[i], CM_EINVAL,
                                   "poll: sockets of different transports");
        base[i] = b;
    }
    int rc = base[0]->van->ops->poll(base, n, timeout_ms, ready);
    if (rc < 0)
        snprintf(socks[0]->errmsg, sizeof socks[0]->errmsg, "%s", base[0]->errmsg);
    return rc;
}

const char *cm_sock_errmsg(const cm_sock *s)
{
    return s ? s->errmsg : "no socket";
}

/* ------------------------------------------------------------- frames -- */

size_t cm_frames_count(const cm_frames *f)
{
    return f ? f->n : 0;
}

const void *cm_frames_data(const cm_frames *f, size_t i)
{
    return f && i < f->n ? f->iov[i].data : NULL;
}

size_t cm_frames_size(const cm_frames *f, size_t i)
{
    return f && i < f->n ? f->iov[i].size : 0;
}

int cm_frames_peer(const cm_frames *f)
{
    return f ? f->peer : CM_PEER_ANY;
}

void cm_frames_destroy(cm_frames **pf)
{
    if (!pf || !*pf)
        return;
    cm_frames *f = *pf;
    *pf = NULL;
    f->release(f);
}

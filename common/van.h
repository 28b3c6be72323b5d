/* van: the transport under every psrec message (frames over ZeroMQ).
 *
 * A cm_van is a transport context, shared by all threads of a process (an
 * inproc:// endpoint is only reachable inside the same van). A cm_sock is
 * one socket, used by one thread only. Behind the functions is a small ops
 * table; van_zmq.c is the only file that includes zmq.h, and a
 * fault-injecting van wraps any van for tests (drops, delays or duplicates
 * whole messages). */
#ifndef PSREC_COMMON_VAN_H
#define PSREC_COMMON_VAN_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

typedef struct cm_van cm_van;
typedef struct cm_sock cm_sock;
typedef struct cm_frames cm_frames;

typedef enum { CM_SOCK_ROUTER = 0, CM_SOCK_DEALER = 1 } cm_sock_type;

#define CM_ENDPOINT_MAX 256

/* One frame to send: bytes the caller keeps alive until the send returns
 * (sends copy small frames; the van may avoid copies for large ones only
 * when it owns the buffer, see cm_sock_send_owned). */
typedef struct {
    const void *data;
    size_t size;
} cm_iov;

/* New ZeroMQ van. NULL on failure with the reason in *err. */
cm_van *cm_van_new(cm_error *err);

typedef struct {
    double drop;      /* probability a sent message is silently dropped */
    double dup;       /* probability it is sent twice */
    int delay_ms;     /* each send sleeps this long first */
    uint64_t seed;
} cm_fault_params;

/* Wraps `inner` (not owned; destroy it after this one) so that sends are
 * dropped, duplicated or delayed as the params say. For tests only. */
cm_van *cm_van_fault_new(cm_van *inner, const cm_fault_params *p, cm_error *err);

/* ------------------------------------------------------------ security --
 * A van may be secured with CURVE keys (docs/security.md). Then every
 * ROUTER it makes is a CURVE server and every DEALER a CURVE client, on
 * every transport that has a handshake (tcp, ipc; inproc stays inside the
 * process and has none). A handler answers ZeroMQ's authentication
 * requests for the van: it admits only the listed client keys and names
 * each admitted connection by the index of its key (the rank), which
 * cm_frames_peer then gives for every message that came over it. A peer
 * without the keys fails its handshake and never gets a byte back; such
 * refusals are counted and logged at most once per peer and minute. */

#define CM_KEY_BYTES 32     /* a CURVE public or secret key */
#define CM_PEER_ANY (-1)    /* cm_frames_peer: no authenticated peer */

typedef struct {
    uint8_t server_public[CM_KEY_BYTES]; /* the job's server pair: every ROUTER */
    uint8_t server_secret[CM_KEY_BYTES];
    uint8_t public_key[CM_KEY_BYTES];    /* this process's client pair: every DEALER */
    uint8_t secret_key[CM_KEY_BYTES];
    const uint8_t *admit;                /* n_admit client public keys, CM_KEY_BYTES each;
                                          * key i authenticates as peer i. NULL: any client
                                          * that knows server_public (peer CM_PEER_ANY) */
    size_t n_admit;
} cm_van_keys;

/* 1 when this build of the transport can secure a van. */
int cm_van_can_secure(void);

/* A fresh random CURVE key pair. */
int cm_van_keypair(uint8_t public_key[CM_KEY_BYTES], uint8_t secret_key[CM_KEY_BYTES],
                   cm_error *err);

/* The public key of a CURVE secret key. CM_ENOTSUP when the transport
 * has no CURVE. */
int cm_van_public_of(uint8_t public_key[CM_KEY_BYTES], const uint8_t secret_key[CM_KEY_BYTES],
                     cm_error *err);

/* A key as text (40 Z85 characters and a NUL, as key files and clients
 * hold it), and back: CM_EINVAL for text that is not a key. */
void cm_van_key_text(char text[41], const uint8_t key[CM_KEY_BYTES]);
int cm_van_key_parse(uint8_t key[CM_KEY_BYTES], const char *text);

/* Secures the van with k (copied; admit too). Call once, before the van
 * makes any socket; CM_ESTATE after, CM_ENOTSUP when the transport cannot.
 * For a fault van this secures the inner one. */
int cm_van_secure(cm_van *van, const cm_van_keys *k, cm_error *err);

/* 1 when cm_van_secure succeeded on this van. */
int cm_van_is_secure(const cm_van *van);

/* Handshakes this van refused so far (unknown keys, no keys, garbage). */
uint64_t cm_van_refused(const cm_van *van);

/* Frees the van and NULLs *pv; all its sockets must be destroyed first. */
void cm_van_destroy(cm_van **pv);

/* Wakes every thread blocked in a recv/poll/send on this van's sockets and
 * makes those calls, and all later ones, return CM_ECLOSED. The sockets
 * must still be destroyed (by their threads), then the van. Any thread.
 * For a fault van this shuts the inner van down. */
void cm_van_shutdown(cm_van *van);

/* New socket of the given type. NULL on failure. */
cm_sock *cm_sock_new(cm_van *van, cm_sock_type type, cm_error *err);

void cm_sock_destroy(cm_sock **ps);

cm_sock_type cm_sock_type_of(const cm_sock *s);

/* Binds; `actual` (may be NULL, else CM_ENDPOINT_MAX bytes) receives the
 * resolved endpoint, so a "tcp://0.0.0.0:*" bind becomes "tcp://0.0.0.0:45123". */
int cm_sock_bind(cm_sock *s, const char *endpoint, char *actual);

int cm_sock_connect(cm_sock *s, const char *endpoint);

/* Sets the identity a DEALER presents to the ROUTERs it connects to (the
 * route they receive), 1..255 bytes, first byte not 0. Call before
 * connect; without it ZeroMQ makes one up. */
int cm_sock_set_identity(cm_sock *s, const void *id, size_t size);

/* ---- a socket facing clients outside the job (psrec serve) ----
 * Limits on what a peer can make this socket hold; call before bind. */
typedef struct {
    int64_t max_msg_bytes; /* a larger incoming message drops its connection
                              before it is read; 0: no limit */
    int rcv_hwm;           /* messages queued per peer, each way (0: no limit) */
    int snd_hwm;
    int snd_timeout_ms;    /* a send to a peer whose queue is full fails
                              (CM_ETIMEDOUT) after this; 0: at once */
} cm_sock_limits;

int cm_sock_set_limits(cm_sock *s, const cm_sock_limits *l);


/* Sends one multipart message of n frames (copies the bytes). */
int cm_sock_send(cm_sock *s, const cm_iov *frames, size_t n);

/* The same, but the last frame's bytes are `owned`, a malloc'd buffer
 * (frames[n - 1].data == owned) that passes to the van: it is sent
 * without a copy where the van can, and freed once sent, or on any
 * failure before this returns. */
int cm_sock_send_owned(cm_sock *s, const cm_iov *frames, size_t n, void *owned);

/* Receives one multipart message, waiting up to timeout_ms (-1 forever).
 * CM_ETIMEDOUT when nothing came. *out is owned by the caller. */
int cm_sock_recv(cm_sock *s, cm_frames **out, int timeout_ms);

/* Waits until one of socks[0..n) can receive; sets bit i of *ready for each
 * that can. Returns 0 (ready may be 0 on timeout) or a CM_E* code. n <= 64. */
int cm_sock_poll(cm_sock **socks, size_t n, int timeout_ms, uint64_t *ready);

/* The last error text of this socket ("" if none). */
const char *cm_sock_errmsg(const cm_sock *s);

/* Received frames: count, bytes and size of frame i; destroy frees. */
size_t cm_frames_count(const cm_frames *f);
const void *cm_frames_data(const cm_frames *f, size_t i);
size_t cm_frames_size(const cm_frames *f, size_t i);
void cm_frames_destroy(cm_frames **pf);

/* The authenticated peer the frames came from (the index of its key in the
 * van's admit list, a rank), or CM_PEER_ANY when the connection carried no
 * such identity (an unsecured van, inproc, a DEALER's replies). */
int cm_frames_peer(const cm_frames *f);

#endif

/* kv: a worker's client for the sharded parameter servers.
 *
 * Holds one DEALER per server and the slot map; routes each key to the
 * server that owns its slot, keeps several requests in flight, and
 * reassembles replies in key order. A gradient push of exactly the keys
 * of one of the last few pulls names that pull instead of sending its
 * keys, and the server applies it to the rows it kept (kept keys, see
 * s_keep_note in kv.c). Pushes are asynchronous: their acks
 * are collected while later requests wait, and wk_kv_flush waits for the
 * rest. Because each server answers one connection in order, a push sent
 * before a pull is applied before that pull is read. One owning thread. */
#ifndef PSREC_WORKER_KV_H
#define PSREC_WORKER_KV_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "common/van.h"

typedef struct wk_kv wk_kv;

typedef struct {
    uint32_t n_servers;
    const char *const *server_eps;   /* n_servers endpoints to connect */
    uint32_t n_slots;
    const uint32_t *slot_map;        /* slot -> server; copied */
    uint32_t n_tables;
    const int *dims;                 /* per table: weights per row */
    const int *row_floats;           /* per table: weights + optimizer state
                                        (CM_PULL_FULL, deltas); NULL = dims */
    int rank;                        /* this worker's rank (sent as sender) */
    int timeout_ms;                  /* how long to wait for a reply */
    int wire_f16;                    /* 1: gradients and pulled weights travel as
                                        halves (whole rows and deltas stay f32) */
    int plain_keys;                  /* 1: every push sends its keys (kept keys
                                        off; for comparisons) */
    const unsigned char *server_here; /* per server: 1 when it runs on this host
                                        (the MPI runtime's locality), so its rows
                                        may be shared; NULL: the servers at ipc://
                                        and inproc:// endpoints are */
} wk_kv_params;

wk_kv *wk_kv_new(cm_van *van, const wk_kv_params *p, cm_error *err);
void wk_kv_destroy(wk_kv **pkv);

/* One table's part of a pull: keys sorted and unique; out gets n rows of
 * dim floats. */
typedef struct {
    uint32_t table;
    const uint64_t *keys;
    size_t n;
    float *out;
    uint32_t flags;                  /* CM_PULL_NO_CREATE, CM_PULL_FULL (out gets
                                        n*row_floats: whole rows) */
    size_t stride;                   /* floats from one row of out to the next
                                        (at least the row's); 0: back to back */
} wk_pull;

/* Sends every request of reqs[0..n) to the servers, then waits for all
 * replies. CM_EREMOTE with the server's message when one refused;
 * CM_ETIMEDOUT when one did not answer in time. */
int wk_kv_pull(wk_kv *kv, const wk_pull *reqs, size_t n, cm_error *err);

/* wk_kv_pull in two halves, for pipelining: start sends the requests and
 * returns; the replies land in the requests' out arrays by the time wait
 * returns (replies that arrive while the caller pushes or flushes are
 * placed then). reqs, their keys and outs must stay valid until wait. One
 * pull in flight at a time (CM_ESTATE otherwise). Pushes sent after start
 * reach each server after the pull, so the pull does not see them. */
int wk_kv_pull_start(wk_kv *kv, const wk_pull *reqs, size_t n, cm_error *err);
int wk_kv_pull_wait(wk_kv *kv, cm_error *err);

/* Sends the summed gradients of sorted unique keys (n*dim floats) without
 * waiting for the acks. */
int wk_kv_push(wk_kv *kv, uint32_t table, const uint64_t *keys, size_t n,
               const float *grads, cm_error *err);

/* Sends deltas of whole rows (n*row_floats floats) to be added to the
 * servers' rows, without waiting for the acks. */
int wk_kv_push_delta(wk_kv *kv, uint32_t table, const uint64_t *keys, size_t n,
                     const float *deltas, cm_error *err);

/* Sends whole rows (n*row_floats floats) that replace the servers' rows,
 * made if missing, without waiting for the acks: for rows only this worker
 * trains. */
int wk_kv_push_rows(wk_kv *kv, uint32_t table, const uint64_t *keys, size_t n,
                    const float *rows, cm_error *err);

/* The same, but rows is a malloc'd buffer that passes to kv (freed in any
 * case, also on an error): large pushes then go out without a copy. */
int wk_kv_push_rows_owned(wk_kv *kv, uint32_t table, const uint64_t *keys, size_t n,
                          float *rows, cm_error *err);

/* Shared rows. Where every server holding keys[0..n) of `table` runs on
 * this host (its endpoint is ipc:// or inproc://) and keeps the table in a
 * memory file (cm_table_spec.shared), asks each for the places of its
 * keys, maps the files and sets rows[i] to key i's whole row (weights then
 * optimizer state, row_floats floats) inside the server's own memory.
 * create: rows are made when missing; else a missing key's rows[i] is
 * NULL. The pointers stay valid until wk_kv_destroy. The files are mapped
 * so that any two rows, of one server or several, lie a whole number of
 * rows (the tables' stride) apart. A caller may read and write those rows
 * where nobody else touches them meanwhile (the blocks schedule's item
 * rows); the servers see every write at once. Waits for the pushes in flight first; not while a pull
 * is in flight (CM_ESTATE).
 * CM_ENOTSUP (message in err) when the rows cannot be shared: a server
 * elsewhere, a table kept private, a file that cannot be opened or does
 * not carry the server's token, or PSREC_SHARED_ROWS=off in the
 * environment; the caller then moves rows by messages. CM_ECONFIG when
 * PSREC_SHARED_ROWS is set to anything but auto or off. */
int wk_kv_place(wk_kv *kv, uint32_t table, const uint64_t *keys, size_t n, int create,
                float **rows, cm_error *err);

/* Handles the replies that have arrived (acks, parts of the pull in
 * flight) without waiting for more. */
int wk_kv_poll(wk_kv *kv, cm_error *err);

/* Pushes sent and not acknowledged yet. */
size_t wk_kv_pushes_pending(const wk_kv *kv);

/* Waits until every push sent so far was acknowledged. */
int wk_kv_flush(wk_kv *kv, cm_error *err);

/* Totals for reports: requests sent, bytes sent/received, and pushes that
 * named a kept pull's keys instead of sending them. */
typedef struct {
    uint64_t requests, bytes_out, bytes_in, pushes_by_ref;
} wk_kv_counters;
wk_kv_counters wk_kv_get_counters(const wk_kv *kv);

#endif

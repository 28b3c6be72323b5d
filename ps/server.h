/* server: a parameter server's request loop.
 *
 * Binds a ROUTER, then answers PULL (values of the requested rows), PUSH
 * (apply gradients, ack) and STOP (reply with per-table counts, then return)
 * in arrival order, which keeps a single worker's run deterministic.
 * CHECKPOINT writes every table's rows to a checkpoint directory; LOAD
 * reads back the rows of this server's slots from one. Every
 * request is validated: a malformed one, an unknown table or a wrong dim
 * gets an OP_ERROR reply and a log line; the server keeps serving.
 * Requests are confined (docs/security.md): a message must come from the
 * rank its connection authenticated; STOP, EPOCH, CHECKPOINT, LOAD and
 * SLOTS only from the scheduler (rank 0); once the scheduler sent the slot
 * map (SLOTS), PULL and PUSH only for keys of this server's slots. */
#ifndef PSREC_PS_SERVER_H
#define PSREC_PS_SERVER_H

#include <stddef.h>

#include "common/err.h"
#include "common/heartbeat.h"
#include "common/van.h"
#include "ps/table.h"

typedef struct ps_server ps_server;

/* Creates the tables and binds `endpoint` on `van`. */
ps_server *ps_server_new(cm_van *van, const char *endpoint, const cm_table_spec *tables,
                         size_t n_tables, cm_error *err);
void ps_server_destroy(ps_server **ps);

/* Which server of the job this is (0-based; default 0): names its
 * checkpoint files and selects its slots when loading one. */
void ps_server_set_index(ps_server *s, int index);

/* Where CHECKPOINT and LOAD may touch files: a request names a checkpoint
 * (a plain name, no '/' and no "..") inside `root`, the job's
 * checkpoint_dir; a LOAD with an empty name loads `resume`, the job's own
 * resume setting (a directory, or a name under root). Copied; NULL or ""
 * refuses those requests. Without this call both are refused. */
void ps_server_set_checkpoints(ps_server *s, const char *root, const char *resume);

/* Where the request loop records what it does and learns that the job
 * failed (its waits end then); not owned, may be NULL (serve until STOP). */
void ps_server_set_heartbeat(ps_server *s, cm_hb *hb);

/* The endpoint the ROUTER resolved to (for "tcp://0.0.0.0:*", the real port). */
const char *ps_server_endpoint(const ps_server *s);

/* Serves until STOP. The STOP reply's body (cm_table_stats) has each
 * table's rows and bytes. 0, or a CM_E* code if the transport itself
 * failed. */
int ps_server_run(ps_server *s);

/* Access for tests and the STOP reply. */
ps_table *ps_server_table(ps_server *s, size_t i);

/* Bytes a server holds to answer a pull of `floats` values: its reused
 * reply buffer grown by doubling from 4096 floats, or, for a large reply
 * that goes out as floats (f32 on the wire, or whole rows: own != 0), a
 * buffer of exactly that size of its own. For memory plans. */
size_t ps_server_reply_bytes(size_t floats, int own);

#endif

/* bootstrap: who am I, who are the others, and where do they listen.
 *
 * Two implementations behind one interface: MPI (mpirun; the only file that
 * calls MPI) and local (every role a thread of one process, no MPI). Used
 * only at start and end of a job: rank and size, endpoint exchange
 * (allgather of short strings), barriers, and under MPI one all-to-all
 * exchange of input records among the workers as they load their shards.
 * Never on the training path. */
#ifndef PSREC_COMMON_BOOTSTRAP_H
#define PSREC_COMMON_BOOTSTRAP_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "common/van.h"

typedef struct cm_boot cm_boot;
typedef struct cm_boot_group cm_boot_group;

/* Where an MPI job's ranks listen (the job's `host` and `transport` keys,
 * which PSREC_HOST and PSREC_TRANSPORT override: cm_job_apply_env). */
typedef struct {
    const char *host; /* NULL or "": picked (see cm_boot_advertise); else the
                       * address every rank advertises, whatever the rest */
    int tcp;          /* 1: tcp even when every rank is on this host */
} cm_boot_net;

/* MPI: calls MPI_Init (once per process), decides where this rank listens
 * (net may be NULL: picked) and makes a van. NULL on failure. */
cm_boot *cm_boot_mpi_new(int *argc, char ***argv, const cm_boot_net *net, cm_error *err);

/* How the job's ZeroMQ traffic is secured and where it listens
 * (docs/security.md). */
typedef enum {
    CM_ENCRYPT_AUTO = 0, /* on, except when every rank is on this host and
                          * talks over unix sockets (owner-only files) */
    CM_ENCRYPT_ON = 1,
    CM_ENCRYPT_OFF = 2   /* a trusted network: identities are then the
                          * messages' sender fields */
} cm_encrypt;

typedef struct {
    cm_encrypt encrypt;
    const char *interface; /* NULL or "": the address the hostname resolves
                            * to; else an interface name ("eth1") or an
                            * IPv4 network ("10.1.0.0/16") to listen and
                            * advertise on when ranks span hosts */
} cm_boot_wire;

/* MPI: collective, once, after cm_boot_mpi_new and before any socket is
 * made. Picks the listening address (w->interface; cm_boot_net's host
 * still wins), then, unless encryption is off, makes the job's CURVE keys and
 * hands them out over MPI (never to disk): rank 0 makes the server pair
 * every ROUTER uses, each rank its own client pair, whose public halves
 * every rank learns; the van is secured with them, admitting rank r's key
 * as rank r. Locally (inproc, one process) there is nothing to secure: 0.
 * Every rank fails alike when any rank cannot make its keys. */
int cm_boot_secure(cm_boot *b, const cm_boot_wire *w, cm_error *err);

/* Local: a group of `size` ranks living in one process, sharing one van. */
cm_boot_group *cm_boot_group_new(int size, cm_error *err);
void cm_boot_group_destroy(cm_boot_group **pg);

/* The member of group g with the given rank; each thread makes its own. */
cm_boot *cm_boot_local_new(cm_boot_group *g, int rank, cm_error *err);

/* Frees (MPI: finalizes MPI after a last barrier). No-op on NULL. */
void cm_boot_destroy(cm_boot **pb);

int cm_boot_rank(const cm_boot *b);
int cm_boot_size(const cm_boot *b);
int cm_boot_is_mpi(const cm_boot *b);

/* The van every socket of this rank should use (owned by the boot or its
 * group). */
cm_van *cm_boot_van(cm_boot *b);

/* An endpoint this rank can bind for the given purpose ("data", "ctl"):
 * "inproc://psrec-<group>-<rank>-<purpose>" locally; under MPI
 * "tcp://<the advertised address>:*" (0.0.0.0 only when that address is
 * not one of this host's, with a warning), or, when every rank runs on this host (as
 * cm_boot_host_place decides; and cm_boot_net sets neither a host
 * nor tcp), a unix socket
 * "ipc://$TMPDIR/psrec-<pid>-<n>-<purpose>" (TMPDIR default /tmp; tcp when
 * the path would be too long). out has CM_ENDPOINT_MAX bytes. */
void cm_boot_bind_endpoint(const cm_boot *b, const char *purpose, char *out);

/* Turns the endpoint a bind resolved to into one other ranks can connect
 * to: locally unchanged; under MPI "tcp://0.0.0.0:P" becomes
 * "tcp://<this host's address>:P" (cm_boot_net's host overrides the
 * address; 127.0.0.1 when every rank runs on this host). The address is
 * one of this host's own: the hostname's when it resolves to one, else the
 * first up interface's, since hosts that share a name may resolve it to
 * another host's. */
int cm_boot_advertise(const cm_boot *b, const char *bound, char *out, cm_error *err);

/* Gathers one string (< CM_ENDPOINT_MAX bytes) from every rank:
 * all[r * CM_ENDPOINT_MAX] holds rank r's. `all` has size*CM_ENDPOINT_MAX
 * bytes. Collective: every rank must call it. */
int cm_boot_allgather(cm_boot *b, const char *mine, char *all, cm_error *err);

/* This rank's place among the ranks first .. first+count-1 that run on
 * its host: *index, its position among them in rank order (-1 when it is
 * not one of them), and *peers, how many there are. Under MPI a host is
 * what the MPI runtime calls one (a shared-memory domain,
 * MPI_COMM_TYPE_SHARED), narrowed to the ranks that also share the kernel,
 * network namespace and temporary directory; never a hostname. A local
 * group is one host. Not collective. */
void cm_boot_host_place(const cm_boot *b, int first, int count, int *index, int *peers);

/* 1 when rank runs on this rank's host (as cm_boot_host_place decides:
 * the MPI runtime's shared-memory domain; a local group is one host), else
 * 0 (also for a rank out of range). Not collective. */
int cm_boot_same_host(const cm_boot *b, int rank);

/* The hostname of rank's host into out (n bytes), for messages only: two
 * hosts may share a name. Locally (or rank out of range) this host's. */
void cm_boot_hostname(const cm_boot *b, int rank, char *out, size_t n);

/* Collective barrier. */
int cm_boot_barrier(cm_boot *b, cm_error *err);

/* 1 when cm_boot_exchange works (MPI), 0 locally. */
int cm_boot_can_exchange(const cm_boot *b);

/* All-to-all among the `count` ranks first .. first+count-1 (the worker
 * ranks, as they load their input; collective over those ranks only).
 * Member m sends send_counts[d] records of rec_size bytes to member d,
 * `send` holding them grouped by destination in member order; it receives
 * in *recv (malloc'ed with room for at least one record; the caller
 * frees) what every member sent it, in member order, *n_recv records in
 * all. Counts travel as u64; more than 2^31 records to or from one rank is
 * CM_ERANGE. Without MPI: CM_ESTATE. */
int cm_boot_exchange(cm_boot *b, int first, int count, size_t rec_size, const void *send,
                     const uint64_t *send_counts, void **recv, uint64_t *n_recv,
                     cm_error *err);

/* Aborts every rank of the job (MPI_Abort) after a fatal error so peers do
 * not wait forever; locally a no-op returning CM_ESTATE. Only cluster/
 * calls this, from the main thread or from the heartbeat thread that found
 * a stall (Open MPI's abort goes through the runtime, not through the
 * communication state a blocked main thread holds). */
int cm_boot_abort(cm_boot *b, int code);

/* Removes the unix socket files "psrec-<pid>-<n>-<purpose>" in dir (NULL
 * or "": $TMPDIR, else /tmp) that jobs killed before they could close
 * them left behind: only sockets of this user whose process <pid> no
 * longer exists and on which nobody accepts a connection (a pid of
 * another pid namespace sharing the directory may look dead; its
 * listener does not). Best effort; returns how many were removed. Under
 * MPI each process sweeps once, before it binds its first one. */
int cm_boot_sweep_sockets(const char *dir);

#endif

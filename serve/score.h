/* score: top-K recommendation over an exported MF model (a .psm file).
 *
 * For user u the score of item i is the MF prediction
 *     score(u,i) = global_mean + b_u + b_i + <p_u, q_i>
 * computed for every item at once as one matrix-vector product (OpenBLAS
 * sgemv) of the item rows [b_i, q_i] with the query [1, p_u], followed by
 * a partial selection of the K best. Ranking uses b_i + <p_u, q_i> (the
 * constant global_mean + b_u cannot change the order), so an exact
 * inner-product index over item.fvecs with the same query ranks items the
 * same way. Scores are not clipped (clipping would tie the top items).
 * Ties are broken by the smaller item id.
 *
 * Unknown users get the popularity fallback: items ranked by
 * global_mean + b_i, the model's own prediction for a user whose row is
 * all zeros (a new user), flagged with *fallback = 1. */
#ifndef PSREC_SERVE_SCORE_H
#define PSREC_SERVE_SCORE_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

#define SV_MODEL_FILE "model.psm"

typedef struct sv_model sv_model;
typedef struct sv_scorer sv_scorer;

/* One recommended item. */
typedef struct {
    uint64_t item;
    float score;
} sv_hit;

/* Where the model of `path` lives: path itself if it is not a directory,
 * else path/model.psm (an export directory). */
void sv_model_path(const char *path, char *out, size_t n);

/* Loads a model (a .psm file or an export directory) into memory and
 * validates it: checksum, an "mf" model with tables "user" and "item" of
 * the same dim. NULL on failure, err naming the file. The file is read,
 * not mapped, so writes to it later cannot disturb the loaded model. */
sv_model *sv_model_open(const char *path, cm_error *err);

/* The same from an open descriptor (the server opens and stats the file
 * itself so that it knows exactly which version it loaded). */
sv_model *sv_model_open_fd(int fd, const char *name, cm_error *err);

/* Frees and NULLs *pm; no-op on NULL. */
void sv_model_destroy(sv_model **pm);

size_t sv_model_n_users(const sv_model *m);
size_t sv_model_n_items(const sv_model *m);
int sv_model_dim(const sv_model *m);         /* floats per row: bias + factors */
double sv_model_global_mean(const sv_model *m);
int sv_model_has_user(const sv_model *m, uint64_t user);

/* Scratch buffers for one thread's queries (grown as needed). */
sv_scorer *sv_scorer_new(cm_error *err);
void sv_scorer_destroy(sv_scorer **ps);

/* The k best items for user, best first, into out[0..*n_out) (the caller
 * provides k entries; *n_out < k when fewer items remain). Items listed in
 * exclude (any order; ids the model lacks are ignored) are never returned.
 * *fallback (may be NULL) is 1 when user is unknown and the popularity
 * ranking was used. CM_EINVAL for k == 0, CM_ENOMEM. */
int sv_recommend(sv_scorer *sc, const sv_model *m, uint64_t user, size_t k,
                 const uint64_t *exclude, size_t n_exclude, sv_hit *out, size_t *n_out,
                 int *fallback, cm_error *err);

#endif

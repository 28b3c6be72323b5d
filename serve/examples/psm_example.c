/* psm_example: score one (user, item) pair from a .psm model file using
 * only the standalone reader (psm.h + psm.c, C library only).
 *
 *   cc -std=c11 -O2 -I serve serve/examples/psm_example.c serve/psm.c -o psm_example
 *   ./psm_example export/model.psm 196 242
 *
 * For psrec's "mf" model the file's formula reads
 *   score(u,i) = global_mean + user[u][0] + item[i][0] + dot(user[u][1:], item[i][1:])
 * and this program computes exactly that. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "psm.h"

static int s_parse_u64(const char *s, uint64_t *out)
{
    char *end = NULL;
    if (!*s || *s == '-')
        return -1;
    unsigned long long v = strtoull(s, &end, 10);
    if (*end)
        return -1;
    *out = (uint64_t)v;
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s MODEL.psm USER_ID ITEM_ID\n", argv[0]);
        return 2;
    }
    uint64_t user_id, item_id;
    if (s_parse_u64(argv[2], &user_id) != 0 || s_parse_u64(argv[3], &item_id) != 0) {
        fprintf(stderr, "%s: ids are non-negative decimal integers\n", argv[0]);
        return 2;
    }
    char err[PSM_ERR_MAX];
    psm_file *f = psm_open(argv[1], 0, err, sizeof err);
    if (!f) {
        fprintf(stderr, "%s: %s\n", argv[0], err);
        return 1;
    }
    int status = 1;
    psm_table users, items;
    if (psm_table_find(f, "user", &users) != 0 || psm_table_find(f, "item", &items) != 0 ||
        users.dim != items.dim) {
        fprintf(stderr, "%s: %s: not an mf model (tables 'user' and 'item' of one dim)\n",
                argv[0], argv[1]);
        goto out;
    }
    const float *p = psm_row(&users, user_id);
    const float *q = psm_row(&items, item_id);
    if (!p || !q) {
        fprintf(stderr, "%s: %s %llu is not in the model\n", argv[0], p ? "item" : "user",
                (unsigned long long)(p ? item_id : user_id));
        goto out;
    }
    double score = psm_global_mean(f) + p[0] + q[0];
    for (uint32_t j = 1; j < users.dim; j++)
        score += (double)p[j] * q[j];
    double clipped = score < psm_clip_lo(f) ? psm_clip_lo(f)
                     : score > psm_clip_hi(f) ? psm_clip_hi(f)
                                              : score;
    printf("model %s: %s\n", psm_model(f), psm_formula(f));
    printf("user %llu item %llu score %.6f (clipped to [%g, %g]: %.6f)\n",
           (unsigned long long)user_id, (unsigned long long)item_id, score, psm_clip_lo(f),
           psm_clip_hi(f), clipped);
    status = 0;
out:
    psm_close(&f);
    return status;
}

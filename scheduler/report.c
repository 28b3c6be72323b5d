#include "scheduler/report.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"

struct sch_progress {
    int on;              /* draw at all */
    char label[16];      /* name of the running figure */
    double last_draw;    /* monotonic seconds of the last redraw */
    int drawn;           /* a bar is on screen */
};

sch_progress *sch_progress_new(int enabled)
{
    sch_progress *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->on = enabled < 0 ? isatty(STDERR_FILENO) : enabled;
    snprintf(p->label, sizeof p->label, "rmse");
    return p;
}

void sch_progress_destroy(sch_progress **pp)
{
    if (!pp || !*pp)
        return;
    sch_progress_clear(*pp);
    free(*pp);
    *pp = NULL;
}

static void s_human(double v, char *out, size_t n)
{
    if (v >= 1e9)
        snprintf(out, n, "%.2fG", v / 1e9);
    else if (v >= 1e6)
        snprintf(out, n, "%.2fM", v / 1e6);
    else if (v >= 1e3)
        snprintf(out, n, "%.1fk", v / 1e3);
    else
        snprintf(out, n, "%.0f", v);
}

void sch_progress_update(sch_progress *p, int epoch, int epochs, uint64_t done, uint64_t total,
                         double rmse, double seconds)
{
    if (!p || !p->on)
        return;
    double now = cm_now();
    if (now - p->last_draw < 0.1)
        return;
    p->last_draw = now;
    enum { WIDTH = 30 };
    double frac = total ? (double)done / (double)total : 0;
    if (frac > 1)
        frac = 1;
    char bar[WIDTH + 1];
    int fill = (int)(frac * WIDTH);
    for (int i = 0; i < WIDTH; i++)
        bar[i] = i < fill ? '=' : (i == fill ? '>' : ' ');
    bar[WIDTH] = '\0';
    double rate = seconds > 0 ? (double)done / seconds : 0;
    double eta = rate > 0 ? (double)(total - done) / rate : 0;
    char r[32];
    s_human(rate, r, sizeof r);
    fprintf(stderr, "\r\033[Kepoch %d/%d [%s] %3.0f%% %s ex/s ETA %.0fs %s %.4f", epoch,
            epochs, bar, frac * 100, r, eta, p->label, rmse);
    fflush(stderr);
    p->drawn = 1;
}

void sch_progress_clear(sch_progress *p)
{
    if (!p || !p->drawn)
        return;
    fprintf(stderr, "\r\033[K");
    fflush(stderr);
    p->drawn = 0;
}

void sch_progress_set_label(sch_progress *p, const char *label)
{
    if (p && label)
        snprintf(p->label, sizeof p->label, "%s", label);
}

int sch_ranking_text(char *out, size_t n, const sch_ranking *r)
{
    int len = snprintf(out, n, "recall@%d %.4f  ndcg@%d %.4f  hr@%d %.4f", r->k, r->recall,
                       r->k, r->ndcg, r->k, r->hr);
    if (len < 0 || r->pop_recall < 0)
        return len;
    size_t at = (size_t)len < n ? (size_t)len : (n ? n - 1 : 0);
    int more = snprintf(out ? out + at : NULL, n > at ? n - at : 0,
                        "  (popularity %.4f / %.4f / %.4f)", r->pop_recall, r->pop_ndcg,
                        r->pop_hr);
    return more < 0 ? more : len + more;
}

struct sch_metrics {
    FILE *f;
    char path[1024];
    const char *mark; /* each record's first field, "mark": 1; NULL for none */
};

sch_metrics *sch_metrics_open(const char *path, int append, const char *mark, cm_error *err)
{
    sch_metrics *m = calloc(1, sizeof *m);
    if (!m) {
        cm_error_set(err, CM_ENOMEM, "metrics: out of memory");
        return NULL;
    }
    snprintf(m->path, sizeof m->path, "%s", path);
    m->mark = mark;
    m->f = fopen(path, append ? "a" : "w");
    if (!m->f) {
        cm_error_set(err, CM_EIO, "%s: cannot write metrics: %s", path, strerror(errno));
        free(m);
        return NULL;
    }
    return m;
}

void sch_metrics_close(sch_metrics **pm)
{
    if (!pm || !*pm)
        return;
    fclose((*pm)->f);
    free(*pm);
    *pm = NULL;
}

int sch_metrics_write(sch_metrics *m, const sch_field *fields, size_t n, cm_error *err)
{
    fputc('{', m->f);
    if (m->mark)
        fprintf(m->f, "\"%s\": 1%s", m->mark, n ? ", " : "");
    for (size_t i = 0; i < n; i++) {
        double v = fields[i].value;
        fprintf(m->f, "%s\"%s\": ", i ? ", " : "", fields[i].name);
        if (!isfinite(v) || (fields[i].null_if_negative && v < 0))
            fputs("null", m->f);
        else if (v == floor(v) && fabs(v) < 1e15)
            fprintf(m->f, "%.0f", v);
        else
            fprintf(m->f, "%.9g", v);
    }
    fputs("}\n", m->f);
    if (fflush(m->f) != 0 || ferror(m->f))
        return cm_error_set(err, CM_EIO, "%s: write failed: %s", m->path, strerror(errno));
    return 0;
}

#include "common/stop.h"

#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>

/* The first signal that asked to stop (0: none) and how many arrived.
 * Process-wide because signals are; lock-free atomics are safe to touch
 * in a handler. */
static atomic_int s_requested;
static atomic_int s_count;
static cm_stop_fn s_fn;
static void *s_arg;

static void s_on_signal(int sig, siginfo_t *si, void *uc)
{
    (void)uc;
    cm_stop_request(sig);
    int count = atomic_fetch_add(&s_count, 1) + 1;
    if (s_fn)
        s_fn(sig, count, si ? si->si_pid : 0, s_arg);
}

int cm_stop_watch(const int *sigs, size_t n, cm_stop_fn fn, void *arg, cm_error *err)
{
    s_fn = fn;
    s_arg = arg;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = s_on_signal;
    sa.sa_flags = SA_RESTART | SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    /* one handler at a time: a second signal waits for the first's fn */
    for (size_t i = 0; i < n; i++)
        sigaddset(&sa.sa_mask, sigs[i]);
    for (size_t i = 0; i < n; i++)
        if (sigaction(sigs[i], &sa, NULL) != 0)
            return cm_error_set(err, CM_EINVAL, "stop: signal %d cannot be handled: %s",
                                sigs[i], strerror(errno));
    return 0;
}

int cm_stop_requested(void)
{
    return atomic_load(&s_requested);
}

void cm_stop_request(int sig)
{
    int none = 0;
    if (sig > 0)
        atomic_compare_exchange_strong(&s_requested, &none, sig);
}

void cm_stop_reset(void)
{
    atomic_store(&s_requested, 0);
    atomic_store(&s_count, 0);
}

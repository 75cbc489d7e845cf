/*
 * dp_daemon_int.h - the daemon skeleton's state, shared by dp_daemon.c (life cycle, reload)
 * and dp_daemon_ctl.c (control commands, drain). Not for the daemons themselves.
 */
#ifndef DP_DAEMON_INT_H
#define DP_DAEMON_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "dp_ctl.h"
#include "dp_daemon.h"
#include "dp_privs.h"
#include "dp_session.h"

typedef struct hook_ref {
    dp_hook *hook;
    _Atomic int refs;
} hook_ref;

typedef struct generation {
    _Atomic int refs;
    void *conf; /* the daemon's struct; starts with dp_daemon_conf */
    dp_conf_src *src;
    hook_ref *hook;
    dp_cidr *trusted;
    size_t ntrusted;
    struct generation *next_retired;
} generation;

struct dp_daemon {
    const dp_daemon_def *def;
    const dp_conf_table *tables[3];
    const char *config_path;
    generation *gen; /* current; main thread only */
    dp_workers *workers;
    uv_loop_t *loop;
    uv_signal_t sig_term, sig_int, sig_hup;
    uv_async_t retire_async;
    uv_timer_t retire_timer;
    pthread_mutex_t retire_lock;
    generation *retired;   /* released by workers, to free on the main thread */
    hook_ref **dead_hooks; /* hooks waiting for their calls to drain */
    size_t ndead_hooks;
    bool stopping;
    dp_privs privs; /* the user to run as */

    /* control socket and drain (dp_daemon_ctl.c) */
    dp_ctl *ctl;
    uint64_t started_ms;
    _Atomic long sessions; /* live sessions over every worker */
    _Atomic bool draining;
    bool paused;
    uv_async_t ctl_async; /* a fan-out finished, a drain may be done, a kick arrived */
    pthread_mutex_t ctl_lock;
    struct dp_fanout *fanouts_done; /* under ctl_lock */
    char **kick_users;              /* under ctl_lock: users a hook asked to kick */
    size_t nkick_users;
    bool ctl_live; /* under ctl_lock: ctl_async may be signalled (kick requests) */
    struct dp_drain *drain;
};

typedef struct wstate {
    dp_daemon *d;
    generation *gen;
    dp_route_cache *cache;
    dp_session_set sessions;
    void *daemon_data;
} wstate;

static inline dp_daemon_conf *dp_daemon_gconf(const generation *g)
{
    return g->conf;
}

/* dp_daemon.c */
/* Load the configuration file again and swap it in; 0, or -1 with `err` set (the running
 * configuration stays). */
int dp_daemon_reload(dp_daemon *d, char *err, size_t errlen);
/* Stop: workers close every session; the main loop ends. */
void dp_daemon_stop(dp_daemon *d);

/* dp_daemon_ctl.c */
int dp_daemon_ctl_init(dp_daemon *d, char *err, size_t errlen);
/* Start draining (SIGTERM, or `drain` with call != NULL). timeout_ms < 0: the configured
 * deadline; message NULL: the configured one. Returns 0 or -EALREADY. */
int dp_daemon_drain(dp_daemon *d, int timeout_ms, const char *message, dp_ctl_call *call);
/* Route the hook's kick requests (a moved user) to this daemon's sessions. */
void dp_daemon_subscribe_kicks(dp_daemon *d, dp_hook *hook);
/* Main thread, at the end: close the control socket, free the fan-out machinery. */
void dp_daemon_ctl_fini(dp_daemon *d);

#endif

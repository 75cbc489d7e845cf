/*
 * dp_daemon.h - the skeleton both daemons run: command line (-c FILE, -t, -T, -V), the
 * configuration keys they share, hook loading, worker threads with one route cache each,
 * and signals on the main thread's loop (SIGTERM/SIGINT: graceful stop with a deadline;
 * SIGHUP: reload).
 *
 * A daemon describes itself with a dp_daemon_def: its own config table (its struct must
 * start with a dp_daemon_conf) and its worker callbacks.
 */
#ifndef DP_DAEMON_H
#define DP_DAEMON_H

#include <stdbool.h>
#include <stdint.h>

#include "dp_cidr.h"
#include "dp_config.h"
#include "dp_hook.h"
#include "dp_metrics.h"
#include "dp_route_cache.h"
#include "dp_worker.h"

/* Keys every daemon has; documented in docs/configuration.md. */
typedef struct dp_daemon_conf {
    int log_level; /* index into "error", "warn", "info", "debug" */
    int workers;   /* 0 = one per CPU */
    dp_strlist listen;
    int backlog;
    int shutdown_timeout_ms;
    int tcp_keepalive_s;
    /* proxy_protocol.* */
    bool proxy_enabled;
    dp_strlist proxy_trusted;
    int proxy_timeout_ms;
    int proxy_max_header;
    /* hook.* */
    char *hook_path;
    int hook_timeout_ms;
    int hook_threads;
    int cache_ttl_ms;
    int cache_negative_ttl_ms;
    int cache_stale_ms;
    int cache_max_entries;
    dp_conf_params hook_params;
    char *metrics_listen; /* metrics.listen: "ip:port" of /metrics; empty = off */
    /* control.* (docs/operations.md) */
    char *ctl_socket;
    int ctl_max_clients;
    int ctl_timeout_ms;
    int drain_timeout_s;
    char *drain_message;
    /* privileges */
    char *run_user;
    char *run_group;
} dp_daemon_conf;

extern const dp_conf_table dp_daemon_conf_table;

typedef struct dp_daemon dp_daemon;

/* ---- sessions, as the control socket lists and kicks them ---- */

/* One session, described by its daemon. Strings may be NULL or empty ("-" in tables). */
typedef struct dp_session_view {
    const char *id; /* the sid= of the log lines */
    const char *proto;
    const char *user;
    const char *client; /* ip:port */
    const char *backend;
    const char *state; /* e.g. "login", "active", "transfer" */
    int64_t started_unix_ms;
    uint64_t bytes_in, bytes_out; /* client->backend, backend->client */
} dp_session_view;

/* What a `sessions` or `kick` request selects; NULL members match anything. */
typedef struct dp_session_filter {
    const char *id;
    const char *user;
    const char *backend;
} dp_session_filter;

typedef struct dp_session_list dp_session_list;

bool dp_session_match(const dp_session_filter *f, const dp_session_view *v);
/* Record one session (copied); thread-safe. */
void dp_session_list_add(dp_session_list *l, const dp_session_view *v);

typedef struct dp_daemon_def {
    const char *name;           /* "sshproxy" */
    const char *default_config; /* path used without -c */
    const dp_conf_table *table; /* the daemon's own keys (NULL: none) */
    size_t conf_size;           /* sizeof its config struct (>= sizeof(dp_daemon_conf)) */
    /* Cross-key validation after loading. Return 0, or -1 with err set. */
    int (*check)(const void *conf, const dp_conf_src *src, char *err, size_t errlen);
    const dp_worker_ops *ops; /* accept etc.; dp_daemon_worker_cache() is ready in start */
    /* Optional: what the daemon is built on, for -V and the start log line
     * ("libssh=0.12.2 libssh_patches=pty-modes,break"); key=value words. */
    const char *build_info;
    /* Optional: every invalidation any loaded hook issues (user NULL = all), for state the
     * daemon keeps beside the route caches. Called from any thread; must not block. */
    void (*on_invalidate)(const char *user);
} dp_daemon_def;

/* A session begins (a connection was accepted and kept) / ends, and how: the live-session
 * count drain waits on, and the sessions_active / sessions_total{result} metrics. Exactly
 * once each per session; any worker thread. */
void dp_daemon_session_opened(dp_worker *w);
void dp_daemon_session_closed(dp_worker *w, dp_sess_result result);
/* Draining: the daemon accepts nothing new and exits when the last session ended. */
bool dp_daemon_draining(const dp_worker *w);

/* Run the daemon; returns the process exit status (0 ok, 1 config error, 2 usage, 3 runtime). */
int dp_daemon_main(const dp_daemon_def *def, int argc, char **argv);

/* From a worker: the daemon, the config and hook this worker uses now (reload swaps them
 * between callbacks on the worker's loop, so look them up again in each callback instead of
 * keeping the pointers), and the worker's route cache. */
dp_daemon *dp_worker_daemon(const dp_worker *w);
const void *dp_daemon_worker_conf(const dp_worker *w);
dp_hook *dp_daemon_worker_hook(const dp_worker *w);
dp_route_cache *dp_daemon_worker_cache(const dp_worker *w);
const char *dp_daemon_name(const dp_daemon *d);

/* The per-worker data slot the daemon may use (dp_worker_data is taken by dp_daemon). */
void dp_daemon_worker_set_data(dp_worker *w, void *data);
void *dp_daemon_worker_data(const dp_worker *w);
/* The worker's sessions (dp_session.h): listed and kicked by the control socket, kicked when
 * the worker stops. */
typedef struct dp_session_set dp_session_set;
dp_session_set *dp_daemon_worker_sessions(const dp_worker *w);

#endif

/* dp_daemon.c - command line, configuration generations, hook, workers and signals. */
#include "dp_daemon.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dp_ctl_spec.h"
#include "dp_daemon_int.h"
#include "dp_log.h"
#include "dp_metrics.h"
#include "dp_privs.h"
#include "dp_sdnotify.h"
#include "dp_util.h"

#define ERRLEN 4096
/* How often the main thread checks whether a retired hook's calls have drained. */
#define RETIRE_POLL_MS 100

/* ---- the shared configuration table ---- */

static const char *const log_levels[] = {"error", "warn", "info", "debug", NULL};

static int check_listen(const void *value, char *err, size_t errlen)
{
    const dp_strlist *l = value;
    if (l->n == 0) {
        snprintf(err, errlen, "at least one address is needed");
        return -1;
    }
    for (size_t i = 0; i < l->n; i++) {
        struct sockaddr_storage ss;
        socklen_t len;
        if (dp_parse_hostport(l->v[i], &ss, &len) != 0) {
            snprintf(err, errlen, "\"%s\" is not ip:port, [ipv6]:port or *:port", l->v[i]);
            return -1;
        }
    }
    return 0;
}

static int check_cidrs(const void *value, char *err, size_t errlen)
{
    const dp_strlist *l = value;
    for (size_t i = 0; i < l->n; i++) {
        dp_cidr c;
        if (dp_cidr_parse(l->v[i], &c) != 0) {
            snprintf(err, errlen, "\"%s\" is not an address or CIDR (e.g. 10.0.0.0/8)", l->v[i]);
            return -1;
        }
    }
    return 0;
}

/* metrics.listen: empty (off) or one address. */
static int check_metrics_listen(const void *value, char *err, size_t errlen)
{
    const char *const *s = value;
    struct sockaddr_storage ss;
    socklen_t len;
    if (*s == NULL || (*s)[0] == '\0' || dp_parse_hostport(*s, &ss, &len) == 0)
        return 0;
    snprintf(err, errlen, "\"%s\" is not ip:port, [ipv6]:port or *:port", *s);
    return -1;
}

#define OFF(field) offsetof(dp_daemon_conf, field)
#define R DP_CONF_RELOADABLE
static const dp_conf_entry common_entries[] = {
    DP_CONF_ENUM_KEY("log_level", OFF(log_level), "info", log_levels, R,
                     "error, warn, info or debug"),
    DP_CONF_INT_KEY("workers", OFF(workers), "0", 0, 256, 0,
                    "worker threads (event loops); 0 = one per CPU"),
    DP_CONF_LIST_KEY("listen", OFF(listen), 64, DP_CONF_REQUIRED,
                     "addresses to accept on: \"ip:port\", \"[ipv6]:port\", \"*:port\"",
                     .check = check_listen),
    DP_CONF_INT_KEY("backlog", OFF(backlog), "1024", 16, 65535, 0, "listen(2) backlog"),
    DP_CONF_INT_KEY("shutdown_timeout_ms", OFF(shutdown_timeout_ms), "10000", 100, 3600000, R,
                    "graceful stop deadline"),
    DP_CONF_INT_KEY("tcp_keepalive_s", OFF(tcp_keepalive_s), "60", 0, 7200, R,
                    "TCP keepalive idle time on client and backend sockets; 0 = off"),
    DP_CONF_BOOL_KEY("proxy_protocol.enabled", OFF(proxy_enabled), "false", 0,
                     "require a PROXY v1/v2 header from trusted peers"),
    DP_CONF_LIST_KEY("proxy_protocol.trusted", OFF(proxy_trusted), 1024, 0,
                     "load balancer addresses/CIDRs a PROXY header is accepted from",
                     .check = check_cidrs),
    DP_CONF_INT_KEY("proxy_protocol.timeout_ms", OFF(proxy_timeout_ms), "3000", 10, 60000, 0,
                    "deadline for the PROXY header"),
    DP_CONF_INT_KEY("proxy_protocol.max_header", OFF(proxy_max_header), "1024", 107, 4096, 0,
                    "largest PROXY v2 header accepted (TLVs included)"),
    DP_CONF_STRING_KEY("hook.path", OFF(hook_path), "static.so", 0, 4096, R,
                       "routing hook .so (a bare name is looked up in the hook directory)"),
    DP_CONF_INT_KEY("hook.timeout_ms", OFF(hook_timeout_ms), "2000", 10, 60000, R,
                    "deadline of one hook call"),
    DP_CONF_INT_KEY("hook.threads", OFF(hook_threads), "8", 1, 128, 0,
                    "threads running hook calls (libuv threadpool size)"),
    DP_CONF_INT_KEY("hook.cache_ttl_ms", OFF(cache_ttl_ms), "30000", 0, 86400000, R,
                    "how long a route is cached"),
    DP_CONF_INT_KEY("hook.negative_ttl_ms", OFF(cache_negative_ttl_ms), "5000", 0, 86400000, R,
                    "how long an unknown-user answer is cached"),
    DP_CONF_INT_KEY("hook.stale_ms", OFF(cache_stale_ms), "300000", 0, 86400000, R,
                    "how long past its ttl a route is still served when the hook fails"),
    DP_CONF_INT_KEY("hook.cache_max_entries", OFF(cache_max_entries), "100000", 1, 100000000, R,
                    "route cache size per worker"),
    DP_CONF_PARAMS_KEY("hook.config", OFF(hook_params), R,
                       "the hook's own settings (see the hook's documentation)"),
    DP_CONF_STRING_KEY("metrics.listen", OFF(metrics_listen), "", 0, 64, 0,
                       "Prometheus endpoint /metrics: \"ip:port\"; empty = off",
                       .check = check_metrics_listen),
    DP_CONF_STRING_KEY("control.socket", OFF(ctl_socket), "", 0, 107, 0,
                       "Unix socket for proxyctl (mode 0600); empty = none"),
    DP_CONF_INT_KEY("control.max_clients", OFF(ctl_max_clients), "16", 1, 1024, 0,
                    "control connections open at once"),
    DP_CONF_INT_KEY("control.timeout_ms", OFF(ctl_timeout_ms), "30000", 100, 3600000, 0,
                    "a control connection idle this long is closed"),
    DP_CONF_INT_KEY("control.drain_timeout_s", OFF(drain_timeout_s), DP_STR(DP_CTL_DRAIN_DEFAULT_S),
                    0, 86400, R,
                    "drain (SIGTERM, proxyctl drain): sessions left at this deadline are kicked"),
    DP_CONF_STRING_KEY("control.drain_message", OFF(drain_message),
                       "the service is restarting for maintenance; please reconnect", 1, 200, R,
                       "what kicked sessions are told at the drain deadline"),
    DP_CONF_STRING_KEY("user", OFF(run_user), "", 0, 64, 0,
                       "after binding, run as this user (root only; empty = stay)"),
    DP_CONF_STRING_KEY("group", OFF(run_group), "", 0, 64, 0,
                       "with user: run with this group (empty = the user's primary group)"),
};
#undef R
#undef OFF

const dp_conf_table dp_daemon_conf_table = {common_entries,
                                            sizeof common_entries / sizeof common_entries[0]};

/* ---- generations: one loaded config + its hook, shared by workers via refcounts ---- */

static void cache_opts(const dp_daemon_conf *c, dp_route_cache_opts *o)
{
    *o = (dp_route_cache_opts){
        .ttl_ms = c->cache_ttl_ms,
        .negative_ttl_ms = c->cache_negative_ttl_ms,
        .stale_ms = c->cache_stale_ms,
        .timeout_ms = c->hook_timeout_ms,
        .max_entries = (size_t)c->cache_max_entries,
    };
}

static void gen_free(dp_daemon *d, generation *g)
{
    if (g->hook != NULL && atomic_fetch_sub(&g->hook->refs, 1) == 1) {
        hook_ref **nd = realloc(d->dead_hooks, (d->ndead_hooks + 1) * sizeof *nd);
        if (nd != NULL) {
            d->dead_hooks = nd;
            d->dead_hooks[d->ndead_hooks++] = g->hook;
        }
    }
    dp_conf_free(d->tables, g->conf);
    free(g->conf);
    dp_conf_src_free(g->src);
    free(g->trusted);
    free(g);
}

static void reap(dp_daemon *d);

static void retire_timer_cb(uv_timer_t *t)
{
    reap(t->data);
}

/* Free retired generations, and hooks whose in-flight calls have drained. Main thread. */
static void reap(dp_daemon *d)
{
    pthread_mutex_lock(&d->retire_lock);
    generation *g = d->retired;
    d->retired = NULL;
    pthread_mutex_unlock(&d->retire_lock);
    while (g != NULL) {
        generation *next = g->next_retired;
        gen_free(d, g);
        g = next;
    }
    size_t kept = 0;
    for (size_t i = 0; i < d->ndead_hooks; i++) {
        hook_ref *h = d->dead_hooks[i];
        if (dp_hook_calls_in_flight(h->hook) == 0) {
            dp_log_info("hook %s unloaded", dp_hook_name(h->hook));
            dp_hook_free(h->hook);
            free(h);
        } else {
            d->dead_hooks[kept++] = h;
        }
    }
    d->ndead_hooks = kept;
    if (kept > 0 && !uv_is_closing((uv_handle_t *)&d->retire_timer))
        uv_timer_start(&d->retire_timer, retire_timer_cb, RETIRE_POLL_MS, 0);
}

static void retire_async_cb(uv_async_t *a)
{
    reap(a->data);
}

/* Drop one reference; the last one hands the generation to the main thread. Any thread. */
static void gen_release(dp_daemon *d, generation *g)
{
    if (atomic_fetch_sub(&g->refs, 1) != 1)
        return;
    pthread_mutex_lock(&d->retire_lock);
    g->next_retired = d->retired;
    d->retired = g;
    pthread_mutex_unlock(&d->retire_lock);
    uv_async_send(&d->retire_async);
}

/* Say "file:line: key: reason" for a hook load failure. */
static void hook_error(const generation *g, const char *key, const char *why, char *err,
                       size_t errlen)
{
    char where[512], path[300];
    if (key != NULL)
        snprintf(path, sizeof path, "hook.config.%s", key);
    else
        snprintf(path, sizeof path, "hook.path");
    dp_conf_where(g->src, path, where, sizeof where);
    snprintf(err, errlen, "%s: %s: %s", where, path, why);
}

static void forward_invalidate(void *arg, const char *user)
{
    const dp_daemon_def *def = arg;
    def->on_invalidate(user);
}

/* Load and validate a configuration file into a new generation (refs = 1). When `reuse` is a
 * generation whose hook has the same path and settings, its hook is shared instead of being
 * loaded again (a reload that changes nothing in hook.* keeps the hook's connections). */
static int gen_load(dp_daemon *d, const char *path, generation *reuse, generation **out, char *err,
                    size_t errlen)
{
    const dp_daemon_def *def = d->def;
    generation *g = calloc(1, sizeof *g);
    if (g == NULL)
        return -ENOMEM;
    atomic_init(&g->refs, 1);
    g->conf = calloc(1, def->conf_size);
    if (g->conf == NULL) {
        free(g);
        return -ENOMEM;
    }
    int rc = dp_conf_load(path, d->tables, g->conf, &g->src, err, errlen);
    if (rc == 0 && def->check != NULL && def->check(g->conf, g->src, err, errlen) != 0)
        rc = -EINVAL;
    dp_daemon_conf *c = dp_daemon_gconf(g);
    if (rc == 0 && c->proxy_trusted.n > 0) {
        g->trusted = calloc(c->proxy_trusted.n, sizeof *g->trusted);
        if (g->trusted == NULL)
            rc = -ENOMEM;
        for (size_t i = 0; rc == 0 && i < c->proxy_trusted.n; i++)
            dp_cidr_parse(c->proxy_trusted.v[i], &g->trusted[g->ntrusted++]);
    }
    if (rc == 0 && c->proxy_enabled && c->proxy_trusted.n == 0) {
        char where[512];
        snprintf(err, errlen, "%s: proxy_protocol.trusted: required when enabled",
                 dp_conf_where(g->src, "proxy_protocol.enabled", where, sizeof where));
        rc = -EINVAL;
    }
    if (rc == 0 && reuse != NULL && reuse->hook != NULL &&
        strcmp(dp_daemon_gconf(reuse)->hook_path, c->hook_path) == 0 &&
        dp_conf_params_equal(&dp_daemon_gconf(reuse)->hook_params, &c->hook_params)) {
        g->hook = reuse->hook;
        atomic_fetch_add(&g->hook->refs, 1);
        /* Same hook, same settings: let it re-read its own sources (a routes file). */
        int hr = dp_hook_reload(g->hook->hook);
        if (hr != 0 && hr != -ENOTSUP)
            dp_log_warn("hook %s: reload failed (%s); it keeps its current routes",
                        dp_hook_name(g->hook->hook), strerror(-hr));
    } else if (rc == 0) {
        g->hook = calloc(1, sizeof *g->hook);
        if (g->hook == NULL) {
            rc = -ENOMEM;
        } else {
            char why[1024];
            const char *key = NULL;
            rc =
                dp_hook_load(&g->hook->hook, c->hook_path, c->hook_params.v, why, sizeof why, &key);
            if (rc != 0) {
                hook_error(g, key, why, err, errlen);
                free(g->hook);
                g->hook = NULL;
            } else {
                atomic_init(&g->hook->refs, 1);
                if (def->on_invalidate != NULL)
                    dp_hook_subscribe(g->hook->hook, forward_invalidate, (void *)def);
                dp_daemon_subscribe_kicks(d, g->hook->hook);
            }
        }
    }
    if (rc != 0) {
        dp_conf_free(d->tables, g->conf);
        free(g->conf);
        dp_conf_src_free(g->src);
        free(g->trusted);
        free(g);
        return rc;
    }
    *out = g;
    return 0;
}

/* ---- workers ---- */

static void cache_closed(void *arg)
{
    wstate *ws = arg;
    ws->cache = NULL;
}

static int w_start(dp_worker *w)
{
    dp_daemon *d = dp_worker_arg(w);
    wstate *ws = calloc(1, sizeof *ws);
    if (ws == NULL)
        return -ENOMEM;
    ws->d = d;
    /* The main thread took a reference for each worker before starting them. */
    ws->gen = d->gen;
    dp_worker_set_data(w, ws);
    dp_route_cache_opts o;
    cache_opts(dp_daemon_gconf(ws->gen), &o);
    int rc = dp_route_cache_new(&ws->cache, dp_worker_loop(w), ws->gen->hook->hook, &o);
    if (rc != 0)
        return rc;
    rc = d->def->ops->start != NULL ? d->def->ops->start(w) : 0;
    /* last: a failed start is never stopped, so nothing may be left running */
    return rc != 0 ? rc : dp_session_set_start(&ws->sessions, dp_worker_loop(w));
}

static void w_accept(dp_worker *w, const dp_conn_info *ci)
{
    dp_daemon *d = dp_worker_arg(w);
    wstate *ws = dp_worker_data(w);
    dp_sock_tune(ci->fd, dp_daemon_gconf(ws->gen)->tcp_keepalive_s);
    d->def->ops->accept(w, ci);
}

static void w_stop(dp_worker *w)
{
    dp_daemon *d = dp_worker_arg(w);
    wstate *ws = dp_worker_data(w);
    if (ws != NULL)
        dp_session_set_stop(&ws->sessions);
    if (d->def->ops->stop != NULL)
        d->def->ops->stop(w);
    if (ws != NULL && ws->cache != NULL)
        dp_route_cache_close(ws->cache, cache_closed, ws);
}

static void w_fini(dp_worker *w)
{
    dp_daemon *d = dp_worker_arg(w);
    wstate *ws = dp_worker_data(w);
    if (d->def->ops->fini != NULL)
        d->def->ops->fini(w);
    if (ws != NULL) {
        gen_release(d, ws->gen);
        free(ws);
    }
}

static const dp_worker_ops worker_ops = {w_start, w_accept, w_stop, w_fini};

/* Runs on each worker: switch to the new generation (a reference was taken for it). */
static void w_swap_gen(dp_worker *w, void *arg)
{
    generation *g = arg;
    wstate *ws = dp_worker_data(w);
    dp_daemon *d = dp_worker_arg(w);
    if (ws == NULL || ws->cache == NULL) {
        gen_release(d, g);
        return;
    }
    generation *old = ws->gen;
    ws->gen = g;
    dp_route_cache_opts o;
    cache_opts(dp_daemon_gconf(g), &o);
    dp_route_cache_set_hook(ws->cache, g->hook->hook, &o);
    gen_release(d, old);
}

dp_daemon *dp_worker_daemon(const dp_worker *w)
{
    return dp_worker_arg(w);
}

const void *dp_daemon_worker_conf(const dp_worker *w)
{
    const wstate *ws = dp_worker_data(w);
    return ws->gen->conf;
}

dp_hook *dp_daemon_worker_hook(const dp_worker *w)
{
    const wstate *ws = dp_worker_data(w);
    return ws->gen->hook->hook;
}

dp_route_cache *dp_daemon_worker_cache(const dp_worker *w)
{
    const wstate *ws = dp_worker_data(w);
    return ws->cache;
}

const char *dp_daemon_name(const dp_daemon *d)
{
    return d->def->name;
}

dp_session_set *dp_daemon_worker_sessions(const dp_worker *w)
{
    wstate *ws = dp_worker_data(w);
    return &ws->sessions;
}

void dp_daemon_worker_set_data(dp_worker *w, void *data)
{
    wstate *ws = dp_worker_data(w);
    ws->daemon_data = data;
}

void *dp_daemon_worker_data(const dp_worker *w)
{
    const wstate *ws = dp_worker_data(w);
    return ws->daemon_data;
}

/* ---- signals and reload ---- */

int dp_daemon_reload(dp_daemon *d, char *err, size_t errlen)
{
    generation *g;
    dp_sdnotify_reloading();
    int rc = gen_load(d, d->config_path, d->gen, &g, err, errlen);
    if (rc != 0) {
        dp_log_error("reload refused, keeping the running configuration: %s", err);
        dp_sdnotify_ready(NULL);
        return -1;
    }
    const char *changed = dp_conf_nonreloadable_change(d->tables, d->gen->conf, g->conf);
    if (changed != NULL)
        dp_log_warn("reload: %s changed; it takes effect after a restart", changed);
    dp_log_set_level((dp_log_level)dp_daemon_gconf(g)->log_level);
    generation *old = d->gen;
    d->gen = g;
    int n = (int)dp_workers_count(d->workers);
    atomic_fetch_add(&g->refs, n); /* one per worker */
    int queued = dp_workers_each(d->workers, w_swap_gen, g);
    if (queued < n) {
        dp_log_error("reload: %d of %d workers could not be reached", n - queued, n);
        for (int i = queued; i < n; i++)
            gen_release(d, g);
    }
    gen_release(d, old); /* the main thread's own reference */
    dp_log_info("reloaded %s (hook %s)", d->config_path, dp_hook_name(g->hook->hook));
    dp_sdnotify_ready(NULL);
    return 0;
}

void dp_daemon_stop(dp_daemon *d)
{
    if (d->stopping)
        return;
    d->stopping = true;
    dp_log_info("stopping");
    dp_sdnotify_stopping("stopping");
    dp_workers_stop(d->workers);
    uv_signal_stop(&d->sig_hup);
    /* The main loop keeps running (retire handles) until the workers are joined. */
    uv_stop(d->loop);
}

static void on_signal(uv_signal_t *h, int signum)
{
    dp_daemon *d = h->data;
    if (signum == SIGHUP) {
        char err[ERRLEN];
        dp_log_info("SIGHUP: reloading");
        dp_daemon_reload(d, err, sizeof err);
    } else if (signum == SIGTERM) {
        dp_log_info("SIGTERM received: draining");
        if (dp_daemon_drain(d, -1, NULL, NULL) != 0)
            dp_log_info("already draining");
    } else {
        dp_log_info("SIGINT received");
        dp_daemon_stop(d);
    }
}

/* ---- metrics endpoint ---- */

/* metrics.listen, bound like the listeners before privileges are dropped. 0 or -errno. */
static int metrics_start(const dp_daemon_conf *c, char *err, size_t errlen)
{
    if (c->metrics_listen == NULL || c->metrics_listen[0] == '\0')
        return 0;
    char why[512];
    int rc = dp_metrics_http_start(c->metrics_listen, why, sizeof why);
    if (rc != 0)
        snprintf(err, errlen, "metrics.listen: %s", why);
    return rc;
}

/* ---- main ---- */

static void usage(const dp_daemon_def *def, FILE *f)
{
    fprintf(f,
            "usage: %s [-c FILE] [-t] [-T] [-K] [-V]\n"
            "  -c FILE  configuration file (default %s)\n"
            "  -t       check the configuration and the hook, then exit\n"
            "  -T       like -t, and print the effective configuration\n"
            "  -K       list every configuration key (key, type, default, range, reload)\n"
            "  -V       print the version\n",
            def->name, def->default_config);
}

static void close_cb(uv_handle_t *h)
{
    (void)h;
}

int dp_daemon_main(const dp_daemon_def *def, int argc, char **argv)
{
    /* Static: a hook thread that outlives the unload deadline may still call our kick
     * callback after this function returned (it then finds ctl_live false). Once per process. */
    static dp_daemon d;
    d.def = def;
    d.config_path = def->default_config;
    d.tables[0] = &dp_daemon_conf_table;
    d.tables[1] = def->table;
    d.tables[2] = NULL;
    bool test_only = false, dump = false;
    int opt;
    dp_log_init(def->name, 2);
    while ((opt = getopt(argc, argv, "c:tTKVh")) != -1) {
        switch (opt) {
        case 'c':
            d.config_path = optarg;
            break;
        case 't':
            test_only = true;
            break;
        case 'T':
            test_only = dump = true;
            break;
        case 'K':
            dp_conf_keys(d.tables, 1);
            return 0;
        case 'V':
            printf("%s %s (hook ABI %u.%u)%s%s\n", def->name, DP_VERSION, DPH_ABI_MAJOR,
                   DPH_ABI_MINOR, def->build_info != NULL ? " " : "",
                   def->build_info != NULL ? def->build_info : "");
            return 0;
        case 'h':
            usage(def, stdout);
            return 0;
        default:
            usage(def, stderr);
            return 2;
        }
    }
    if (optind != argc) {
        usage(def, stderr);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    pthread_mutex_init(&d.retire_lock, NULL);
    pthread_mutex_init(&d.ctl_lock, NULL); /* a hook may ask for kicks as soon as it loads */

    char err[ERRLEN];
    int rc = gen_load(&d, d.config_path, NULL, &d.gen, err, sizeof err);
    if (rc != 0) {
        fprintf(stderr, "%s: configuration refused:\n%s\n", def->name, err);
        return 1;
    }
    dp_daemon_conf *c = dp_daemon_gconf(d.gen);
    if (test_only) {
        if (dump)
            dp_conf_dump(d.tables, d.gen->conf, 1);
        printf("%s: configuration OK (hook %s)\n", d.config_path, dp_hook_name(d.gen->hook->hook));
        dp_hook_free(d.gen->hook->hook);
        free(d.gen->hook);
        d.gen->hook = NULL;
        gen_free(&d, d.gen);
        return 0;
    }
    dp_log_set_level((dp_log_level)c->log_level);
    dp_metrics_init(def->name);

    /* libuv sizes its threadpool once, from the environment, at first use. */
    char threads[16];
    snprintf(threads, sizeof threads, "%d", c->hook_threads);
    setenv("UV_THREADPOOL_SIZE", threads, 1);

    d.loop = uv_default_loop();
    uv_async_init(d.loop, &d.retire_async, retire_async_cb);
    d.retire_async.data = &d;
    uv_timer_init(d.loop, &d.retire_timer);
    d.retire_timer.data = &d;
    uv_signal_init(d.loop, &d.sig_term);
    uv_signal_init(d.loop, &d.sig_int);
    uv_signal_init(d.loop, &d.sig_hup);
    d.sig_term.data = d.sig_int.data = d.sig_hup.data = &d;
    uv_signal_start(&d.sig_term, on_signal, SIGTERM);
    uv_signal_start(&d.sig_int, on_signal, SIGINT);
    uv_signal_start(&d.sig_hup, on_signal, SIGHUP);

    /* The user to run as is looked up before anything is bound: a typo fails at once. */
    rc = dp_privs_resolve(&d.privs, c->run_user, c->run_group, err, sizeof err);
    if (rc != 0) {
        fprintf(stderr, "%s: cannot start: %s\n", def->name, err);
        dp_log_error("cannot start: %s", err);
        gen_release(&d, d.gen);
        reap(&d);
        return 1;
    }

    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    int nworkers = c->workers > 0 ? c->workers : (ncpu > 0 ? (int)ncpu : 1);
    atomic_fetch_add(&d.gen->refs, nworkers); /* one per worker, released in w_fini */
    dp_workers_opts wo = {
        .nworkers = nworkers,
        .listen = (const char *const *)c->listen.v,
        .nlisten = c->listen.n,
        .backlog = c->backlog,
        .proxy_protocol = c->proxy_enabled,
        .trusted = d.gen->trusted,
        .ntrusted = d.gen->ntrusted,
        .proxy_timeout_ms = c->proxy_timeout_ms,
        .proxy_max_header = (size_t)c->proxy_max_header,
        .ops = &worker_ops,
        .arg = &d,
        /* Nothing is accepted before privileges are dropped (resumed below). */
        .start_paused = true,
    };
    rc = dp_workers_start(&d.workers, &wo, err, sizeof err);
    int status = 0;
    if (rc != 0) {
        fprintf(stderr, "%s: cannot start: %s\n", def->name, err);
        dp_log_error("cannot start: %s", err);
        status = 3;
        if (d.workers == NULL) {
            atomic_fetch_sub(&d.gen->refs, nworkers);
        } else {
            /* Some threads started: they hold their references; the rest never will. */
            atomic_fetch_sub(&d.gen->refs, nworkers - (int)dp_workers_count(d.workers));
            dp_workers_stop(d.workers);
        }
    } else if ((rc = dp_workers_wait_started(d.workers, 30000)) != 0 ||
               (rc = dp_daemon_ctl_init(&d, err, sizeof err)) != 0 ||
               (rc = metrics_start(c, err, sizeof err)) != 0 ||
               (rc = dp_privs_drop(&d.privs, err, sizeof err)) != 0) {
        if (rc == -ETIMEDOUT)
            snprintf(err, sizeof err, "workers did not start within 30 s");
        else if (rc == -ECHILD)
            snprintf(err, sizeof err, "a worker could not start (the log says why)");
        fprintf(stderr, "%s: cannot start: %s\n", def->name, err);
        dp_log_error("cannot start: %s", err);
        status = 3;
        dp_workers_stop(d.workers);
    } else {
        dp_workers_resume(d.workers);
        char addrs[512] = "";
        for (size_t i = 0, pos = 0; i < c->listen.n && pos < sizeof addrs; i++)
            pos += (size_t)snprintf(addrs + pos, sizeof addrs - pos, "%s%s", i ? "," : "",
                                    c->listen.v[i]);
        dp_log_event(DP_LOG_INFO, NULL, "start",
                     "version=%s workers=%d listen=%s hook=%s user=%s%s%s", DP_VERSION, nworkers,
                     addrs, dp_hook_name(d.gen->hook->hook), d.privs.change ? d.privs.user : "-",
                     def->build_info != NULL ? " " : "",
                     def->build_info != NULL ? def->build_info : "");
        dp_sdnotify_ready("accepting");
        dp_sdnotify_status_timer_start(d.loop, 5000);
        uv_run(d.loop, UV_RUN_DEFAULT); /* until stop() */
    }
    if (d.workers != NULL) {
        int deadline = dp_daemon_gconf(d.gen)->shutdown_timeout_ms;
        if (dp_workers_join(d.workers, deadline) != 0) {
            dp_log_error("sessions still open after %d ms; exiting anyway", deadline);
            _exit(3);
        }
        dp_workers_free(d.workers);
    }
    dp_daemon_ctl_fini(&d);
    dp_metrics_http_stop();
    dp_sdnotify_status_timer_stop();
    gen_release(&d, d.gen); /* the main thread's reference */
    /* Free what the workers released, then wait for the hooks' calls to drain. */
    uv_close((uv_handle_t *)&d.sig_term, close_cb);
    uv_close((uv_handle_t *)&d.sig_int, close_cb);
    uv_close((uv_handle_t *)&d.sig_hup, close_cb);
    reap(&d);
    for (int i = 0; i < 50 && d.ndead_hooks > 0; i++) {
        uv_run(d.loop, UV_RUN_NOWAIT);
        usleep(RETIRE_POLL_MS * 1000);
        reap(&d);
    }
    uv_close((uv_handle_t *)&d.retire_async, close_cb);
    uv_close((uv_handle_t *)&d.retire_timer, close_cb);
    uv_run(d.loop, UV_RUN_DEFAULT);
    uv_loop_close(d.loop);
    free(d.dead_hooks);
    pthread_mutex_destroy(&d.retire_lock);
    dp_log_event(DP_LOG_INFO, NULL, "stop", "status=%d", status);
    return status;
}

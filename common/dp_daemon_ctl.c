/*
 * dp_daemon_ctl.c - the control commands both daemons answer (docs/operations.md), the
 * fan-out that asks every worker about its sessions, and drain.
 *
 * The control socket lives on the main thread's loop. Sessions live on the workers' loops,
 * so `sessions`, `kick` and `cache flush` post a job to every worker; the last worker to
 * finish queues the job back to the main loop (ctl_async), which answers. A job's memory
 * belongs to the main thread again once every worker has run it.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dp_daemon_int.h"
#include "dp_log.h"
#include "dp_metrics.h"
#include "dp_sdnotify.h"
#include "dp_util.h"

#define KICK_MESSAGE_MAX 200
/* After the drain deadline kicked what was left: how long the kicked sessions get to close
 * before the workers are stopped outright. */
#define DRAIN_KICK_GRACE_MS 5000
#define MOVED_MESSAGE "your account has moved; please reconnect"

/* ---- session lists ---- */

typedef struct session_row {
    char id[24], proto[8], user[DPH_USER_MAX], client[64], backend[DPH_NAME_MAX], state[24];
    int64_t started_unix_ms;
    uint64_t bytes_in, bytes_out;
} session_row;

struct dp_session_list {
    pthread_mutex_t lock;
    session_row *rows;
    size_t n, cap;
    bool truncated; /* out of memory: some rows are missing */
};

static void copy_str(char *dst, size_t size, const char *src)
{
    snprintf(dst, size, "%s", src != NULL ? src : "");
}

bool dp_session_match(const dp_session_filter *f, const dp_session_view *v)
{
    if (f->id != NULL && (v->id == NULL || strcmp(f->id, v->id) != 0))
        return false;
    if (f->user != NULL && (v->user == NULL || strcmp(f->user, v->user) != 0))
        return false;
    if (f->backend != NULL && (v->backend == NULL || strcmp(f->backend, v->backend) != 0))
        return false;
    return true;
}

void dp_session_list_add(dp_session_list *l, const dp_session_view *v)
{
    pthread_mutex_lock(&l->lock);
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        session_row *r = realloc(l->rows, cap * sizeof *r);
        if (r == NULL) {
            l->truncated = true;
            pthread_mutex_unlock(&l->lock);
            return;
        }
        l->rows = r;
        l->cap = cap;
    }
    session_row *r = &l->rows[l->n++];
    copy_str(r->id, sizeof r->id, v->id);
    copy_str(r->proto, sizeof r->proto, v->proto);
    copy_str(r->user, sizeof r->user, v->user);
    copy_str(r->client, sizeof r->client, v->client);
    copy_str(r->backend, sizeof r->backend, v->backend);
    copy_str(r->state, sizeof r->state, v->state);
    r->started_unix_ms = v->started_unix_ms;
    r->bytes_in = v->bytes_in;
    r->bytes_out = v->bytes_out;
    pthread_mutex_unlock(&l->lock);
}

static int row_cmp(const void *a, const void *b)
{
    const session_row *x = a, *y = b;
    if (x->started_unix_ms != y->started_unix_ms)
        return x->started_unix_ms < y->started_unix_ms ? -1 : 1;
    return strcmp(x->id, y->id);
}

static void sort_rows(dp_session_list *l)
{
    if (l->n > 1) /* rows is NULL when empty, and qsort's pointer must not be */
        qsort(l->rows, l->n, sizeof *l->rows, row_cmp);
}

static void rfc3339(int64_t unix_ms, char *buf, size_t len)
{
    time_t t = (time_t)(unix_ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* The rows as a text table or a JSON document under `key`. */
static void format_rows(dp_ctl_buf *b, const dp_session_list *l, bool json, const char *key)
{
    if (json) {
        dp_ctl_buf_printf(b, "{\"%s\":[", key);
    } else {
        dp_ctl_buf_puts(b,
                        "id\tproto\tuser\tclient\tbackend\tstarted\tbytes_in\tbytes_out\tstate\n");
    }
    for (size_t i = 0; i < l->n; i++) {
        const session_row *r = &l->rows[i];
        char started[32];
        rfc3339(r->started_unix_ms, started, sizeof started);
        if (json) {
            const char *keys[] = {"id", "proto", "user", "client", "backend", "started"};
            const char *vals[] = {r->id, r->proto, r->user, r->client, r->backend, started};
            dp_ctl_buf_puts(b, i ? ",{" : "{");
            for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
                dp_ctl_buf_printf(b, "%s\"%s\":", k ? "," : "", keys[k]);
                dp_ctl_buf_json_str(b, vals[k]);
            }
            dp_ctl_buf_printf(b, ",\"bytes_in\":%llu,\"bytes_out\":%llu,\"state\":",
                              (unsigned long long)r->bytes_in, (unsigned long long)r->bytes_out);
            dp_ctl_buf_json_str(b, r->state);
            dp_ctl_buf_puts(b, "}");
        } else {
            const char *cells[] = {r->id, r->proto, r->user, r->client, r->backend, started};
            for (size_t k = 0; k < sizeof cells / sizeof cells[0]; k++) {
                dp_ctl_buf_cell(b, cells[k]);
                dp_ctl_buf_puts(b, "\t");
            }
            dp_ctl_buf_printf(b, "%llu\t%llu\t", (unsigned long long)r->bytes_in,
                              (unsigned long long)r->bytes_out);
            dp_ctl_buf_cell(b, r->state);
            dp_ctl_buf_puts(b, "\n");
        }
    }
    if (json)
        dp_ctl_buf_puts(b, "]}\n");
}

/* ---- fan-out to the workers ---- */

typedef struct dp_fanout dp_fanout;
struct dp_fanout {
    dp_daemon *d;
    void (*work)(dp_worker *w, dp_fanout *fo); /* on each worker */
    void (*done)(dp_fanout *fo);               /* on the main thread, after the last worker */
    _Atomic int left;
    dp_ctl_call *call;
    dp_session_filter f;
    char *id, *user, *backend, *kick; /* owned copies behind f and the kick text */
    dp_session_list list;
    dp_fanout *next; /* in d->fanouts_done */
};

static void fanout_free(dp_fanout *fo)
{
    free(fo->id);
    free(fo->user);
    free(fo->backend);
    free(fo->kick);
    free(fo->list.rows);
    pthread_mutex_destroy(&fo->list.lock);
    free(fo);
}

static void fanout_worker(dp_worker *w, void *arg)
{
    dp_fanout *fo = arg;
    fo->work(w, fo);
    if (atomic_fetch_sub(&fo->left, 1) != 1)
        return;
    dp_daemon *d = fo->d;
    pthread_mutex_lock(&d->ctl_lock);
    fo->next = d->fanouts_done;
    d->fanouts_done = fo;
    pthread_mutex_unlock(&d->ctl_lock);
    uv_async_send(&d->ctl_async);
}

static dp_fanout *fanout_new(dp_daemon *d, dp_ctl_call *call)
{
    dp_fanout *fo = calloc(1, sizeof *fo);
    if (fo == NULL)
        return NULL;
    fo->d = d;
    fo->call = call;
    pthread_mutex_init(&fo->list.lock, NULL);
    return fo;
}

/* Post fo to every worker. When none can take it (stopping), `done` runs at once. */
static void fanout_run(dp_fanout *fo)
{
    dp_daemon *d = fo->d;
    int n = (int)dp_workers_count(d->workers);
    atomic_init(&fo->left, n + 1); /* +1: ours, so no worker finishes the job before we did */
    int queued = dp_workers_each(d->workers, fanout_worker, fo);
    if (atomic_fetch_sub(&fo->left, 1 + (n - queued)) == 1 + (n - queued)) {
        fo->done(fo);
        fanout_free(fo);
    }
}

static void work_sessions(dp_worker *w, dp_fanout *fo)
{
    dp_session_set_list(dp_daemon_worker_sessions(w), &fo->f, fo->kick, &fo->list);
}

static int set_filter(dp_fanout *fo, const char *id, const char *user, const char *backend)
{
    if ((id != NULL && (fo->id = strdup(id)) == NULL) ||
        (user != NULL && (fo->user = strdup(user)) == NULL) ||
        (backend != NULL && (fo->backend = strdup(backend)) == NULL))
        return -ENOMEM;
    fo->f = (dp_session_filter){fo->id, fo->user, fo->backend};
    return 0;
}

/* ---- replies ---- */

static void reply_buf(dp_ctl_call *call, int code, const char *text, dp_ctl_buf *b)
{
    if (b->failed)
        dp_ctl_reply(call, 500, "out of memory", NULL, 0);
    else
        dp_ctl_reply(call, code, text, b->data, b->len);
    dp_ctl_buf_free(b);
}

/* A status/stats style body: key/value rows, or one JSON object. */
typedef struct kv_body {
    dp_ctl_buf b;
    bool json, first;
} kv_body;

static void kv_start(kv_body *kv, bool json)
{
    *kv = (kv_body){.json = json, .first = true};
    dp_ctl_buf_puts(&kv->b, json ? "{" : "key\tvalue\n");
}

static void kv_str(kv_body *kv, const char *key, const char *value)
{
    if (kv->json) {
        dp_ctl_buf_printf(&kv->b, "%s\"%s\":", kv->first ? "" : ",", key);
        dp_ctl_buf_json_str(&kv->b, value);
    } else {
        dp_ctl_buf_printf(&kv->b, "%s\t", key);
        dp_ctl_buf_cell(&kv->b, value);
        dp_ctl_buf_puts(&kv->b, "\n");
    }
    kv->first = false;
}

static void kv_num(kv_body *kv, const char *key, long long value)
{
    if (kv->json)
        dp_ctl_buf_printf(&kv->b, "%s\"%s\":%lld", kv->first ? "" : ",", key, value);
    else
        dp_ctl_buf_printf(&kv->b, "%s\t%lld\n", key, value);
    kv->first = false;
}

static void kv_end(kv_body *kv)
{
    if (kv->json)
        dp_ctl_buf_puts(&kv->b, "}\n");
}

/* ---- commands ---- */

static const char *state_name(const dp_daemon *d)
{
    if (atomic_load(&d->draining))
        return "draining";
    return d->paused ? "paused" : "accepting";
}

static void cmd_status(dp_ctl_call *call, const dp_ctl_request *req, void *arg)
{
    dp_daemon *d = arg;
    const dp_daemon_conf *c = dp_daemon_gconf(d->gen);
    kv_body kv;
    kv_start(&kv, req->json);
    kv_str(&kv, "daemon", d->def->name);
    kv_str(&kv, "version", DP_VERSION);
    kv_num(&kv, "pid", (long long)getpid());
    kv_num(&kv, "uptime_s", (long long)((dp_now_ms() - d->started_ms) / 1000));
    kv_num(&kv, "workers", (long long)dp_workers_count(d->workers));
    kv_str(&kv, "state", state_name(d));
    kv_num(&kv, "sessions_active", atomic_load(&d->sessions));
    kv_str(&kv, "config", d->config_path);
    kv_str(&kv, "hook", dp_hook_name(d->gen->hook->hook));
    kv_str(&kv, "hook_path", c->hook_path);
    kv_str(&kv, "user", d->privs.change ? d->privs.user : "-");
    kv_end(&kv);
    reply_buf(call, 200, state_name(d), &kv.b);
}

static void sessions_done(dp_fanout *fo)
{
    sort_rows(&fo->list);
    if (fo->f.id != NULL && fo->list.n == 0) {
        dp_ctl_reply(fo->call, 404, "no session with that id", NULL, 0);
        return;
    }
    dp_ctl_buf b = {0};
    format_rows(&b, &fo->list, dp_ctl_call_json(fo->call), "sessions");
    char text[64];
    snprintf(text, sizeof text, "%zu session%s%s", fo->list.n, fo->list.n == 1 ? "" : "s",
             fo->list.truncated ? " (list truncated: out of memory)" : "");
    reply_buf(fo->call, 200, text, &b);
}

static void kick_done(dp_fanout *fo)
{
    sort_rows(&fo->list);
    if (fo->list.n == 0) {
        dp_ctl_reply(fo->call, 404, "no session matched", NULL, 0);
        return;
    }
    dp_log_event(DP_LOG_INFO, NULL, "kick", "sessions=%zu id=%s user=%s backend=%s", fo->list.n,
                 fo->id ? fo->id : "-", fo->user ? fo->user : "-", fo->backend ? fo->backend : "-");
    dp_ctl_buf b = {0};
    format_rows(&b, &fo->list, dp_ctl_call_json(fo->call), "kicked");
    char text[64];
    snprintf(text, sizeof text, "kicked %zu session%s", fo->list.n, fo->list.n == 1 ? "" : "s");
    reply_buf(fo->call, 200, text, &b);
}

static void start_sessions_fanout(dp_daemon *d, dp_ctl_call *call, const dp_ctl_request *req,
                                  const char *kick, void (*done)(dp_fanout *))
{
    static const char *const keys[] = {"id", "user", "backend"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        const char *v = dp_ctl_arg_get(req, keys[i]);
        if (v != NULL && v[0] == '\0') {
            /* An empty value would match every session not logged in yet. */
            dp_ctl_reply(call, 400, "id=, user= and backend= need a value", NULL, 0);
            return;
        }
    }
    dp_fanout *fo = fanout_new(d, call);
    if (fo == NULL ||
        set_filter(fo, dp_ctl_arg_get(req, "id"), dp_ctl_arg_get(req, "user"),
                   dp_ctl_arg_get(req, "backend")) != 0 ||
        (kick != NULL && (fo->kick = strdup(kick)) == NULL)) {
        if (fo != NULL)
            fanout_free(fo);
        dp_ctl_reply(call, 500, "out of memory", NULL, 0);
        return;
    }
    fo->work = work_sessions;
    fo->done = done;
    fanout_run(fo);
}

static void cmd_sessions(dp_ctl_call *call, const dp_ctl_request *req, void *arg)
{
    start_sessions_fanout(arg, call, req, NULL, sessions_done);
}

/* A message shown to clients: printable, bounded. */
static bool message_ok(const char *m)
{
    size_t n = strlen(m);
    return n > 0 && n <= KICK_MESSAGE_MAX;
}

static void cmd_kick(dp_ctl_call *call, const dp_ctl_request *req, void *arg)
{
    dp_daemon *d = arg;
    if (dp_ctl_arg_get(req, "id") == NULL && dp_ctl_arg_get(req, "user") == NULL &&
        dp_ctl_arg_get(req, "backend") == NULL) {
        dp_ctl_reply(call, 400, "kick needs id=, user= or backend= (kicking everyone is drain)",
                     NULL, 0);
        return;
    }
    const char *message = dp_ctl_arg_get(req, "message");
    if (message == NULL)
        message = "your session was ended by the administrator";
    if (!message_ok(message)) {
        dp_ctl_reply(call, 400, "message must be 1 to 200 bytes", NULL, 0);
        return;
    }
    start_sessions_fanout(d, call, req, message, kick_done);
}

/* pause / resume: the listeners stop / start being polled (connections wait in the backlog
 * meanwhile). A drain has closed them for good. */
static void set_paused(dp_daemon *d, dp_ctl_call *call, bool pause)
{
    if (atomic_load(&d->draining)) {
        dp_ctl_reply(call, 409,
                     pause ? "draining: the listeners are closed for good"
                           : "draining: cannot resume",
                     NULL, 0);
        return;
    }
    if (d->paused != pause) {
        d->paused = pause;
        if (pause)
            dp_workers_pause(d->workers);
        else
            dp_workers_resume(d->workers);
        dp_sdnotify_set_state(state_name(d));
        dp_log_event(DP_LOG_INFO, NULL, pause ? "pause" : "resume", "sessions=%ld",
                     atomic_load(&d->sessions));
    }
    dp_ctl_reply(call, 200,
                 pause ? "paused: new connections wait in the listen backlog" : "accepting", NULL,
                 0);
}

static void cmd_pause(dp_ctl_call *call, const dp_ctl_request *req, void *arg)
{
    (void)req;
    set_paused(arg, call, true);
}

static void cmd_resume(dp_ctl_call *call, const dp_ctl_request *req, void *arg)
{
    (void)req;
    set_paused(arg, call, false);
}

static void cmd_reload(dp_ctl_call *call, const dp_ctl_request *req, void *arg)
{
    dp_daemon *d = arg;
    (void)req;
    char err[4096];
    if (dp_daemon_reload(d, err, sizeof err) != 0) {
        dp_ctl_reply(call, 422, err, NULL, 0);
        return;
    }
    char text[256];
    snprintf(text, sizeof text, "reloaded %s (hook %s)", d->config_path,
             dp_hook_name(d->gen->hook->hook));
    dp_ctl_reply(call, 200, text, NULL, 0);
}

static void work_flush(dp_worker *w, dp_fanout *fo)
{
    dp_route_cache *c = dp_daemon_worker_cache(w);
    if (c != NULL)
        dp_route_cache_invalidate(c, fo->user);
}

static void flush_done(dp_fanout *fo)
{
    char text[200];
    snprintf(text, sizeof text, "flushed %s",
             fo->user != NULL ? "one user's routes" : "every route");
    dp_log_event(DP_LOG_INFO, NULL, "cache_flush", "user=%s", fo->user ? fo->user : "*");
    dp_ctl_reply(fo->call, 200, text, NULL, 0);
}

static void cmd_cache_flush(dp_ctl_call *call, const dp_ctl_request *req, void *arg)
{
    dp_fanout *fo = fanout_new(arg, call);
    if (fo == NULL || set_filter(fo, NULL, dp_ctl_arg_get(req, "user"), NULL) != 0) {
        if (fo != NULL)
            fanout_free(fo);
        dp_ctl_reply(call, 500, "out of memory", NULL, 0);
        return;
    }
    fo->work = work_flush;
    fo->done = flush_done;
    fanout_run(fo);
}

static void cmd_stats(dp_ctl_call *call, const dp_ctl_request *req, void *arg)
{
    (void)arg;
    char *out = NULL;
    size_t len = 0;
    int rc = dp_metrics_render(req->json ? DP_METRICS_JSON : DP_METRICS_KV, &out, &len);
    if (rc != 0) {
        dp_ctl_reply(call, 500, strerror(-rc), NULL, 0);
        return;
    }
    dp_ctl_reply(call, 200, "counters since start", out, len);
    free(out);
}

/* ---- drain ---- */

typedef struct dp_drain {
    dp_ctl_call *call; /* the `drain` request to answer at the end, or NULL (SIGTERM) */
    uv_timer_t timer;
    char message[KICK_MESSAGE_MAX + 1];
    long at_start;
    size_t kicked;
    bool kicking, finished;
    bool kick_pending; /* the deadline's kick fan-out has not reported yet */
} dp_drain;

static void drain_finish(dp_daemon *d)
{
    dp_drain *dr = d->drain;
    if (dr->finished)
        return;
    dr->finished = true;
    uv_timer_stop(&dr->timer);
    long left = atomic_load(&d->sessions);
    dp_log_event(DP_LOG_INFO, NULL, "drain_done", "sessions_at_start=%ld kicked=%zu left=%ld",
                 dr->at_start, dr->kicked, left);
    if (dr->call != NULL) {
        char text[128];
        snprintf(text, sizeof text, "drained %ld kicked %zu%s", dr->at_start, dr->kicked,
                 left > 0 ? " (the rest closed now)" : "");
        dp_ctl_reply(dr->call, 200, text, NULL, 0);
        dr->call = NULL;
    }
    dp_daemon_stop(d);
}

static void drain_kicked(dp_fanout *fo)
{
    dp_daemon *d = fo->d;
    d->drain->kicked = fo->list.n;
    d->drain->kick_pending = false;
    dp_log_event(DP_LOG_INFO, NULL, "drain_deadline", "kicked=%zu", fo->list.n);
    if (atomic_load(&d->sessions) == 0)
        drain_finish(d);
}

static void drain_timer_cb(uv_timer_t *t)
{
    dp_daemon *d = t->data;
    dp_drain *dr = d->drain;
    if (dr->kicking) {
        /* The kicked sessions had their grace: stop the workers, which close the rest. */
        drain_finish(d);
        return;
    }
    dr->kicking = true;
    uv_timer_start(&dr->timer, drain_timer_cb, DRAIN_KICK_GRACE_MS, 0);
    dp_fanout *fo = fanout_new(d, NULL);
    if (fo == NULL || (fo->kick = strdup(dr->message)) == NULL) {
        if (fo != NULL)
            fanout_free(fo);
        drain_finish(d);
        return;
    }
    fo->work = work_sessions;
    fo->done = drain_kicked;
    dr->kick_pending = true;
    fanout_run(fo);
}

static void drain_closed(uv_handle_t *h)
{
    free(h->data);
}

int dp_daemon_drain(dp_daemon *d, int timeout_ms, const char *message, dp_ctl_call *call)
{
    if (d->drain != NULL || d->stopping)
        return -EALREADY;
    const dp_daemon_conf *c = dp_daemon_gconf(d->gen);
    dp_drain *dr = calloc(1, sizeof *dr);
    if (dr == NULL)
        return -ENOMEM;
    if (timeout_ms < 0)
        timeout_ms = c->drain_timeout_s * 1000;
    copy_str(dr->message, sizeof dr->message, message != NULL ? message : c->drain_message);
    dr->call = call;
    uv_timer_init(d->loop, &dr->timer);
    dr->timer.data = d;
    d->drain = dr;
    /* draining first: a session closing between the two then sees it and wakes us. */
    atomic_store(&d->draining, true);
    dr->at_start = atomic_load(&d->sessions);
    dp_workers_unlisten(d->workers);
    dp_sdnotify_set_state("draining");
    dp_sdnotify_stopping("draining");
    dp_log_event(DP_LOG_INFO, NULL, "drain", "sessions=%ld timeout_ms=%d", dr->at_start,
                 timeout_ms);
    if (dr->at_start == 0) {
        drain_finish(d);
        return 0;
    }
    uv_timer_start(&dr->timer, drain_timer_cb, (uint64_t)timeout_ms, 0);
    return 0;
}

static void cmd_drain(dp_ctl_call *call, const dp_ctl_request *req, void *arg)
{
    dp_daemon *d = arg;
    const char *t = dp_ctl_arg_get(req, "timeout");
    const char *message = dp_ctl_arg_get(req, "message");
    int timeout_ms = -1;
    if (t != NULL) {
        char *end;
        errno = 0;
        long v = strtol(t, &end, 10);
        if (errno != 0 || end == t || *end != '\0' || v < 0 || v > 86400) {
            dp_ctl_reply(call, 400, "timeout must be 0 to 86400 seconds", NULL, 0);
            return;
        }
        timeout_ms = (int)v * 1000;
    }
    if (message != NULL && !message_ok(message)) {
        dp_ctl_reply(call, 400, "message must be 1 to 200 bytes", NULL, 0);
        return;
    }
    int rc = dp_daemon_drain(d, timeout_ms, message, call);
    if (rc == -EALREADY)
        dp_ctl_reply(call, 409, "already draining or stopping", NULL, 0);
    else if (rc != 0)
        dp_ctl_reply(call, 500, strerror(-rc), NULL, 0);
    /* else: answered by drain_finish */
}

/* ---- sessions counted for drain, kicks asked for by hooks ---- */

void dp_daemon_session_opened(dp_worker *w)
{
    dp_daemon *d = dp_worker_daemon(w);
    dp_metrics_session_opened();
    atomic_fetch_add(&d->sessions, 1);
}

void dp_daemon_session_closed(dp_worker *w, dp_sess_result result)
{
    dp_daemon *d = dp_worker_daemon(w);
    dp_metrics_session_closed(result);
    if (atomic_fetch_sub(&d->sessions, 1) == 1 && atomic_load(&d->draining))
        uv_async_send(&d->ctl_async);
}

bool dp_daemon_draining(const dp_worker *w)
{
    const dp_daemon *d = dp_worker_daemon(w);
    return atomic_load(&d->draining);
}

static void moved_done(dp_fanout *fo)
{
    dp_log_event(DP_LOG_INFO, NULL, "kick", "reason=moved user=%s sessions=%zu", fo->user,
                 fo->list.n);
}

/* From a hook's thread (dp_hook_subscribe_kick): queue the user for the main loop. */
static void on_hook_kick(void *arg, const char *user)
{
    dp_daemon *d = arg;
    char *u = strdup(user);
    if (u == NULL)
        return;
    pthread_mutex_lock(&d->ctl_lock);
    char **v = !d->ctl_live ? NULL : realloc(d->kick_users, (d->nkick_users + 1) * sizeof *v);
    if (v != NULL) {
        d->kick_users = v;
        d->kick_users[d->nkick_users++] = u;
        u = NULL;
    }
    if (u == NULL) /* queued */
        uv_async_send(&d->ctl_async);
    pthread_mutex_unlock(&d->ctl_lock);
    free(u);
}

void dp_daemon_subscribe_kicks(dp_daemon *d, dp_hook *hook)
{
    dp_hook_subscribe_kick(hook, on_hook_kick, d);
}

static void ctl_async_cb(uv_async_t *a)
{
    dp_daemon *d = a->data;
    pthread_mutex_lock(&d->ctl_lock);
    dp_fanout *done = d->fanouts_done;
    d->fanouts_done = NULL;
    char **users = d->kick_users;
    size_t nusers = d->nkick_users;
    d->kick_users = NULL;
    d->nkick_users = 0;
    pthread_mutex_unlock(&d->ctl_lock);
    while (done != NULL) {
        dp_fanout *next = done->next;
        done->done(done);
        fanout_free(done);
        done = next;
    }
    for (size_t i = 0; i < nusers; i++) {
        dp_fanout *fo = fanout_new(d, NULL);
        if (fo != NULL && set_filter(fo, NULL, users[i], NULL) == 0 &&
            (fo->kick = strdup(MOVED_MESSAGE)) != NULL) {
            fo->work = work_sessions;
            fo->done = moved_done;
            if (!d->stopping)
                fanout_run(fo);
            else
                fanout_free(fo);
        } else if (fo != NULL) {
            fanout_free(fo);
        }
        free(users[i]);
    }
    free(users);
    /* During the deadline's kick, drain_kicked finishes (with the count kicked). */
    if (d->drain != NULL && !d->drain->finished && !d->drain->kick_pending &&
        atomic_load(&d->sessions) == 0)
        drain_finish(d);
}

/* ---- the table ---- */

/* A handler for each command of the protocol's table that a daemon answers (all but the
 * built-in help and proxyctl's local move). */
static const dp_ctl_command commands[] = {
    {&dp_ctl_specs[DP_CTL_CMD_STATUS], cmd_status},
    {&dp_ctl_specs[DP_CTL_CMD_SESSIONS], cmd_sessions},
    {&dp_ctl_specs[DP_CTL_CMD_KICK], cmd_kick},
    {&dp_ctl_specs[DP_CTL_CMD_PAUSE], cmd_pause},
    {&dp_ctl_specs[DP_CTL_CMD_RESUME], cmd_resume},
    {&dp_ctl_specs[DP_CTL_CMD_DRAIN], cmd_drain},
    {&dp_ctl_specs[DP_CTL_CMD_RELOAD], cmd_reload},
    {&dp_ctl_specs[DP_CTL_CMD_CACHE_FLUSH], cmd_cache_flush},
    {&dp_ctl_specs[DP_CTL_CMD_STATS], cmd_stats},
};

int dp_daemon_ctl_init(dp_daemon *d, char *err, size_t errlen)
{
    const dp_daemon_conf *c = dp_daemon_gconf(d->gen);
    d->started_ms = dp_now_ms();
    uv_async_init(d->loop, &d->ctl_async, ctl_async_cb);
    d->ctl_async.data = d;
    pthread_mutex_lock(&d->ctl_lock);
    d->ctl_live = true;
    pthread_mutex_unlock(&d->ctl_lock);
    if (c->ctl_socket[0] == '\0')
        return 0;
    /* Every command of the protocol's table that a daemon answers has its handler here. */
    for (size_t i = 0; i < DP_CTL_CMD__COUNT; i++) {
        bool served = (dp_ctl_specs[i].flags & (DP_CTL_LOCAL | DP_CTL_BUILTIN)) != 0;
        for (size_t k = 0; k < sizeof commands / sizeof commands[0] && !served; k++)
            served = commands[k].spec == &dp_ctl_specs[i];
        if (!served) {
            snprintf(err, errlen, "control command \"%s\" has no handler", dp_ctl_specs[i].name);
            return -EINVAL;
        }
    }
    dp_ctl_opts o = {
        .path = c->ctl_socket,
        .allowed_uid = d->privs.uid,
        .owner_uid = d->privs.uid,
        .owner_gid = d->privs.gid,
        .max_clients = c->ctl_max_clients,
        .timeout_ms = c->ctl_timeout_ms,
        .daemon = d->def->name,
        .version = DP_VERSION,
        .commands = commands,
        .ncommands = sizeof commands / sizeof commands[0],
        .arg = d,
        .on_reply = dp_metrics_ctl_command,
    };
    return dp_ctl_start(&d->ctl, d->loop, &o, err, errlen);
}

void dp_daemon_ctl_fini(dp_daemon *d)
{
    if (d->loop == NULL || d->ctl_async.loop == NULL)
        return;
    pthread_mutex_lock(&d->ctl_lock);
    d->ctl_live = false; /* hooks still loaded may ask for kicks: nobody listens now */
    dp_fanout *done = d->fanouts_done;
    d->fanouts_done = NULL;
    pthread_mutex_unlock(&d->ctl_lock);
    /* Answer what is still owed before the socket closes (its writes are then flushed). */
    while (done != NULL) {
        dp_fanout *next = done->next;
        if (done->call != NULL)
            dp_ctl_reply(done->call, 500, "stopping", NULL, 0);
        fanout_free(done);
        done = next;
    }
    if (d->drain != NULL) {
        if (d->drain->call != NULL)
            dp_ctl_reply(d->drain->call, 200, "stopped", NULL, 0);
        uv_timer_stop(&d->drain->timer);
        d->drain->timer.data = d->drain;
        uv_close((uv_handle_t *)&d->drain->timer, drain_closed);
        d->drain = NULL;
    }
    dp_ctl_close(d->ctl);
    d->ctl = NULL;
    uv_close((uv_handle_t *)&d->ctl_async, NULL);
    for (size_t i = 0; i < d->nkick_users; i++)
        free(d->kick_users[i]);
    free(d->kick_users);
    d->kick_users = NULL;
    d->nkick_users = 0;
}

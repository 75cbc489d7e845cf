/* dp_hook.c - load routing hooks and run their calls on the libuv threadpool. */
#include "dp_hook.h"

#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "dp_log.h"
#include "dp_util.h"

#ifndef DP_HOOKDIR
#define DP_HOOKDIR "/usr/local/lib/dynproxy/hooks"
#endif

typedef struct subscriber {
    dp_hook_invalidate_fn fn;
    void *arg;
} subscriber;

struct dp_hook {
    void *dl;
    const dph_ops *ops;
    void *state;
    dph_host host;
    char *path;
    char name[DPH_NAME_MAX];
    char log_prefix[DPH_NAME_MAX + 8];
    _Atomic unsigned in_flight;
    pthread_mutex_t sub_lock;
    subscriber *subs;
    size_t nsubs;
    subscriber *kick_subs; /* fn is a dp_hook_kick_fn; guarded by sub_lock too */
    size_t nkick_subs;
};

/* ---- host services offered to the hook ---- */

static void host_log(void *ctx, dph_log_level level, const char *fmt, ...)
{
    dp_hook *hook = ctx;
    va_list ap;
    va_start(ap, fmt);
    dp_log_vmsg((dp_log_level)level, NULL, hook->log_prefix, fmt, ap);
    va_end(ap);
}

static void host_invalidate(void *ctx, const char *user)
{
    dp_hook_invalidate(ctx, user);
}

static void host_invalidate_all(void *ctx)
{
    dp_hook_invalidate(ctx, NULL);
}

static void host_kick(void *ctx, const char *user)
{
    if (user != NULL && user[0] != '\0')
        dp_hook_kick(ctx, user);
}

void dp_hook_invalidate(dp_hook *hook, const char *user)
{
    pthread_mutex_lock(&hook->sub_lock);
    for (size_t i = 0; i < hook->nsubs; i++)
        hook->subs[i].fn(hook->subs[i].arg, user);
    pthread_mutex_unlock(&hook->sub_lock);
}

void dp_hook_kick(dp_hook *hook, const char *user)
{
    pthread_mutex_lock(&hook->sub_lock);
    for (size_t i = 0; i < hook->nkick_subs; i++)
        hook->kick_subs[i].fn(hook->kick_subs[i].arg, user);
    pthread_mutex_unlock(&hook->sub_lock);
}

/* Add (fn, arg) to a subscriber list; the caller holds sub_lock. */
static int subs_add(subscriber **subs, size_t *n, dp_hook_invalidate_fn fn, void *arg)
{
    subscriber *ns = realloc(*subs, (*n + 1) * sizeof *ns);
    if (ns == NULL)
        return -ENOMEM;
    *subs = ns;
    (*subs)[(*n)++] = (subscriber){fn, arg};
    return 0;
}

static void subs_remove(subscriber *subs, size_t *n, dp_hook_invalidate_fn fn, void *arg)
{
    for (size_t i = 0; i < *n; i++) {
        if (subs[i].fn == fn && subs[i].arg == arg) {
            subs[i] = subs[--*n];
            break;
        }
    }
}

int dp_hook_subscribe(dp_hook *hook, dp_hook_invalidate_fn fn, void *arg)
{
    pthread_mutex_lock(&hook->sub_lock);
    int rc = subs_add(&hook->subs, &hook->nsubs, fn, arg);
    pthread_mutex_unlock(&hook->sub_lock);
    return rc;
}

void dp_hook_unsubscribe(dp_hook *hook, dp_hook_invalidate_fn fn, void *arg)
{
    pthread_mutex_lock(&hook->sub_lock);
    subs_remove(hook->subs, &hook->nsubs, fn, arg);
    pthread_mutex_unlock(&hook->sub_lock);
}

/* dp_hook_kick_fn and dp_hook_invalidate_fn have the same type, so one list type serves both. */
int dp_hook_subscribe_kick(dp_hook *hook, dp_hook_kick_fn fn, void *arg)
{
    pthread_mutex_lock(&hook->sub_lock);
    int rc = subs_add(&hook->kick_subs, &hook->nkick_subs, fn, arg);
    pthread_mutex_unlock(&hook->sub_lock);
    return rc;
}

void dp_hook_unsubscribe_kick(dp_hook *hook, dp_hook_kick_fn fn, void *arg)
{
    pthread_mutex_lock(&hook->sub_lock);
    subs_remove(hook->kick_subs, &hook->nkick_subs, fn, arg);
    pthread_mutex_unlock(&hook->sub_lock);
}

/* ---- loading ---- */

static char *resolve_path(const char *path)
{
    char buf[4096];
    if (strchr(path, '/') != NULL)
        snprintf(buf, sizeof buf, "%s", path);
    else
        snprintf(buf, sizeof buf, "%s/%s", DP_HOOKDIR, path);
    return strdup(buf);
}

static void free_partial(dp_hook *hook)
{
    if (hook->dl != NULL)
        dlclose(hook->dl);
    pthread_mutex_destroy(&hook->sub_lock);
    free(hook->path);
    free(hook);
}

int dp_hook_load(dp_hook **out, const char *path, const dph_param *params, char *err, size_t errlen,
                 const char **err_key)
{
    static const dph_param no_params[] = {{NULL, NULL}};
    if (err_key != NULL)
        *err_key = NULL;
    *out = NULL;
    dp_hook *hook = calloc(1, sizeof *hook);
    if (hook == NULL)
        return -ENOMEM;
    pthread_mutex_init(&hook->sub_lock, NULL);
    hook->path = resolve_path(path);
    if (hook->path == NULL) {
        free_partial(hook);
        return -ENOMEM;
    }

    struct stat st;
    if (stat(hook->path, &st) != 0) {
        int e = errno;
        snprintf(err, errlen, "hook %s: %s", hook->path, strerror(e));
        free_partial(hook);
        return -e;
    }
    hook->dl = dlopen(hook->path, RTLD_NOW | RTLD_LOCAL);
    if (hook->dl == NULL) {
        snprintf(err, errlen, "hook %s: cannot load: %s", hook->path, dlerror());
        free_partial(hook);
        return -ELIBBAD;
    }
    dlerror();
    void *sym = dlsym(hook->dl, DPH_ENTRY_SYMBOL);
    if (sym == NULL) {
        snprintf(err, errlen, "hook %s: does not export %s (not a dynproxy hook?)", hook->path,
                 DPH_ENTRY_SYMBOL);
        free_partial(hook);
        return -ENOSYS;
    }
    dph_entry_fn entry;
    memcpy(&entry, &sym, sizeof entry); /* object pointer -> function pointer, POSIX dlsym */
    const dph_ops *ops = entry(DPH_ABI_VERSION);
    int rc = 0;
    if (ops == NULL) {
        snprintf(err, errlen, "hook %s: refused host ABI %u.%u", hook->path, DPH_ABI_MAJOR,
                 DPH_ABI_MINOR);
        rc = -EPROTO;
    } else if (DPH_ABI_MAJOR_OF(ops->abi_version) != DPH_ABI_MAJOR) {
        snprintf(err, errlen, "hook %s: ABI version %u.%u, this host speaks %u.x", hook->path,
                 DPH_ABI_MAJOR_OF(ops->abi_version), ops->abi_version & 0xffffu, DPH_ABI_MAJOR);
        rc = -EPROTO;
    } else if (ops->struct_size < DPH_OPS_MIN_SIZE_V1) {
        snprintf(err, errlen, "hook %s: ops struct of %u bytes, at least %zu expected", hook->path,
                 ops->struct_size, (size_t)DPH_OPS_MIN_SIZE_V1);
        rc = -EPROTO;
    } else if (ops->init == NULL || ops->fini == NULL || ops->lookup == NULL) {
        snprintf(err, errlen, "hook %s: init, fini and lookup are required", hook->path);
        rc = -EPROTO;
    }
    if (rc != 0) {
        free_partial(hook);
        return rc;
    }
    hook->ops = ops;
    snprintf(hook->name, sizeof hook->name, "%s", ops->name != NULL ? ops->name : "unnamed");
    snprintf(hook->log_prefix, sizeof hook->log_prefix, "hook=%s", hook->name);

    hook->host = (dph_host){
        .abi_version = DPH_ABI_VERSION,
        .struct_size = sizeof(dph_host),
        .ctx = hook,
        .log = host_log,
        .invalidate = host_invalidate,
        .invalidate_all = host_invalidate_all,
        .kick = host_kick,
    };
    dph_error herr = {0};
    rc = ops->init(&hook->state, &hook->host, params != NULL ? params : no_params, &herr);
    if (rc != 0) {
        herr.msg[sizeof herr.msg - 1] = '\0';
        snprintf(err, errlen, "hook %s: %s%s%s", hook->name, herr.key ? herr.key : "",
                 herr.key ? ": " : "", herr.msg[0] ? herr.msg : strerror(rc < 0 ? -rc : rc));
        if (err_key != NULL)
            *err_key = herr.key;
        free_partial(hook);
        return rc < 0 ? rc : -EINVAL;
    }
    *out = hook;
    return 0;
}

void dp_hook_free(dp_hook *hook)
{
    if (hook == NULL)
        return;
    hook->ops->fini(hook->state);
    free(hook->subs);
    free(hook->kick_subs);
    free_partial(hook);
}

const char *dp_hook_name(const dp_hook *hook)
{
    return hook->name;
}

const char *dp_hook_path(const dp_hook *hook)
{
    return hook->path;
}

const dph_ops *dp_hook_ops(const dp_hook *hook)
{
    return hook->ops;
}

void *dp_hook_state(const dp_hook *hook)
{
    return hook->state;
}

unsigned dp_hook_calls_in_flight(const dp_hook *hook)
{
    return atomic_load(&hook->in_flight);
}

/* Optional ops exist only when the hook's struct is large enough to hold them. */
#define HOOK_HAS_OP(ops, field)                                                                    \
    ((ops)->struct_size >= offsetof(dph_ops, field) + sizeof((ops)->field) && (ops)->field != NULL)

int dp_hook_reload(dp_hook *hook)
{
    if (!HOOK_HAS_OP(hook->ops, reload))
        return -ENOTSUP;
    return hook->ops->reload(hook->state);
}

/* ---- asynchronous calls ---- */

typedef enum { CALL_LOOKUP, CALL_KEYS, CALL_SESSION } call_kind;

struct dp_hook_call {
    uv_work_t work;
    uv_timer_t timer;
    dp_hook *hook;
    call_kind kind;
    /* request, copied */
    char user[DPH_USER_MAX];
    struct sockaddr_storage client;
    socklen_t client_len;
    char client_ip[INET6_ADDRSTRLEN];
    dph_proto proto;
    uint64_t deadline_ms; /* uv_hrtime-based */
    /* results */
    int status;
    dph_route route;
    char **keys;
    size_t nkeys, max_keys;
    bool keys_truncated;
    /* session events */
    dph_session session;
    char sid[64], sbackend[DPH_NAME_MAX];
    int is_end;
    char reason[64];
    /* delivery */
    dp_hook_lookup_cb lookup_cb;
    dp_hook_keys_cb keys_cb;
    void *arg;
    bool delivered, work_done, cancelled, has_timer;
};

static void call_free_cb(uv_handle_t *h)
{
    dp_hook_call *c = h->data;
    for (size_t i = 0; i < c->nkeys; i++)
        free(c->keys[i]);
    free(c->keys);
    free(c);
}

static void call_free(dp_hook_call *c)
{
    if (c->has_timer)
        uv_close((uv_handle_t *)&c->timer, call_free_cb);
    else
        call_free_cb((uv_handle_t *)&c->timer);
}

static void call_deliver(dp_hook_call *c, int status)
{
    if (c->delivered)
        return;
    c->delivered = true;
    if (c->has_timer)
        uv_timer_stop(&c->timer);
    if (c->kind == CALL_LOOKUP) {
        if (status != 0) {
            memset(&c->route, 0, sizeof c->route);
            c->route.struct_size = sizeof c->route;
            c->route.status = DPH_ROUTE_TEMPFAIL;
        }
        c->lookup_cb(c->arg, status, &c->route);
    } else if (c->kind == CALL_KEYS) {
        c->keys_cb(c->arg, status, (const char *const *)c->keys, status == 0 ? c->nkeys : 0);
    }
}

static void call_maybe_finish(dp_hook_call *c)
{
    if (c->work_done && c->delivered)
        call_free(c);
}

static void call_timer_cb(uv_timer_t *t)
{
    dp_hook_call *c = t->data;
    if (!c->delivered && !c->cancelled)
        dp_log_warn("hook %s: call for user %s exceeded its deadline", c->hook->name, c->user);
    call_deliver(c, c->cancelled ? -ECANCELED : -ETIMEDOUT);
    call_maybe_finish(c);
}

static int keys_collect(void *ctx, const char *key)
{
    dp_hook_call *c = ctx;
    if (c->nkeys >= c->max_keys) {
        c->keys_truncated = true;
        return 1;
    }
    char **nk = realloc(c->keys, (c->nkeys + 1) * sizeof *nk);
    if (nk == NULL)
        return 1;
    c->keys = nk;
    c->keys[c->nkeys] = strdup(key);
    if (c->keys[c->nkeys] == NULL)
        return 1;
    c->nkeys++;
    return 0;
}

static void call_work_cb(uv_work_t *w)
{
    dp_hook_call *c = w->data;
    const dph_ops *ops = c->hook->ops;
    if (c->kind == CALL_SESSION) {
        if (c->is_end && HOOK_HAS_OP(ops, session_end))
            ops->session_end(c->hook->state, &c->session);
        else if (!c->is_end && HOOK_HAS_OP(ops, session_start))
            ops->session_start(c->hook->state, &c->session);
        return;
    }
    uint64_t now = dp_now_ms();
    if (c->cancelled || now >= c->deadline_ms) {
        /* Sat in the queue past its deadline (threadpool saturated): don't start it. */
        c->status = -ETIMEDOUT;
        return;
    }
    dph_lookup_req req = {
        .struct_size = sizeof req,
        .user = c->user,
        .client = c->client_len ? (const struct sockaddr *)&c->client : NULL,
        .client_len = c->client_len,
        .client_ip = c->client_ip,
        .proto = c->proto,
        .timeout_ms = (int)(c->deadline_ms - now),
    };
    if (c->kind == CALL_LOOKUP) {
        memset(&c->route, 0, sizeof c->route);
        c->route.struct_size = sizeof c->route;
        c->status = ops->lookup(c->hook->state, &req, &c->route);
        if (c->status > 0)
            c->status = -EIO;
        /* Hooks write C strings into fixed buffers; never trust their termination. */
        c->route.backend[sizeof c->route.backend - 1] = '\0';
        c->route.address[sizeof c->route.address - 1] = '\0';
        c->route.backend_user[sizeof c->route.backend_user - 1] = '\0';
        c->route.key_path[sizeof c->route.key_path - 1] = '\0';
        c->route.hostkey_sha256[sizeof c->route.hostkey_sha256 - 1] = '\0';
        c->route.message[sizeof c->route.message - 1] = '\0';
        if (c->status == 0 && (unsigned)c->route.status > DPH_ROUTE_TEMPFAIL)
            c->status = -EPROTO;
    } else {
        c->status = ops->authorized_keys(c->hook->state, &req, keys_collect, c);
        if (c->status > 0)
            c->status = -EIO;
    }
}

static void call_after_cb(uv_work_t *w, int status)
{
    dp_hook_call *c = w->data;
    c->work_done = true;
    atomic_fetch_sub(&c->hook->in_flight, 1);
    if (c->kind == CALL_SESSION) {
        call_free(c);
        return;
    }
    if (status == UV_ECANCELED)
        c->status = -ECANCELED;
    if (c->keys_truncated && c->status == 0)
        dp_log_warn("hook %s: user %s has more than %zu keys; the rest are ignored", c->hook->name,
                    c->user, c->max_keys);
    /* -EAGAIN is the hook failing fast during an outage it has already logged once: one
     * warning per login would flood the log exactly when it matters. */
    if (c->status != 0 && c->status != -ECANCELED && !c->delivered)
        dp_log_msg(c->status == -EAGAIN ? DP_LOG_DEBUG : DP_LOG_WARN, __func__, NULL,
                   "hook %s: %s for user %s failed: %s", c->hook->name,
                   c->kind == CALL_LOOKUP ? "lookup" : "authorized_keys", c->user,
                   strerror(-c->status));
    call_deliver(c, c->status);
    call_maybe_finish(c);
}

static dp_hook_call *call_new(dp_hook *hook, call_kind kind, const dp_hook_req *req)
{
    if (req->user == NULL || req->user[0] == '\0' || strlen(req->user) >= DPH_USER_MAX)
        return NULL;
    dp_hook_call *c = calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    c->hook = hook;
    c->kind = kind;
    c->work.data = c;
    c->timer.data = c;
    snprintf(c->user, sizeof c->user, "%s", req->user);
    if (req->client != NULL) {
        c->client_len = dp_sockaddr_len(req->client);
        memcpy(&c->client, req->client, c->client_len);
        dp_sockaddr_ip(req->client, c->client_ip, sizeof c->client_ip);
    }
    c->proto = req->proto;
    c->deadline_ms = dp_now_ms() + (uint64_t)(req->timeout_ms > 0 ? req->timeout_ms : 1);
    return c;
}

static int call_start(dp_hook_call *c, uv_loop_t *loop, int timeout_ms, dp_hook_call **out)
{
    int rc = uv_timer_init(loop, &c->timer);
    if (rc != 0) {
        free(c);
        return rc;
    }
    c->has_timer = true;
    atomic_fetch_add(&c->hook->in_flight, 1);
    rc = uv_queue_work(loop, &c->work, call_work_cb, call_after_cb);
    if (rc != 0) {
        atomic_fetch_sub(&c->hook->in_flight, 1);
        c->delivered = c->work_done = true;
        call_free(c);
        return rc;
    }
    /* Timers count from the loop's cached clock, which is stale after any blocking stretch
     * (a long callback, a synchronous start-up step): refresh it or the deadline fires early. */
    uv_update_time(loop);
    uv_timer_start(&c->timer, call_timer_cb, (uint64_t)(timeout_ms > 0 ? timeout_ms : 1), 0);
    if (out != NULL)
        *out = c;
    return 0;
}

int dp_hook_lookup_async(dp_hook *hook, uv_loop_t *loop, const dp_hook_req *req,
                         dp_hook_lookup_cb cb, void *arg, dp_hook_call **call)
{
    dp_hook_call *c = call_new(hook, CALL_LOOKUP, req);
    if (c == NULL)
        return req->user == NULL || req->user[0] == '\0' ? -EINVAL : -ENAMETOOLONG;
    c->lookup_cb = cb;
    c->arg = arg;
    return call_start(c, loop, req->timeout_ms, call);
}

int dp_hook_keys_async(dp_hook *hook, uv_loop_t *loop, const dp_hook_req *req, size_t max_keys,
                       dp_hook_keys_cb cb, void *arg, dp_hook_call **call)
{
    if (!HOOK_HAS_OP(hook->ops, authorized_keys))
        return -ENOTSUP;
    dp_hook_call *c = call_new(hook, CALL_KEYS, req);
    if (c == NULL)
        return req->user == NULL || req->user[0] == '\0' ? -EINVAL : -ENAMETOOLONG;
    c->keys_cb = cb;
    c->arg = arg;
    c->max_keys = max_keys;
    return call_start(c, loop, req->timeout_ms, call);
}

void dp_hook_call_cancel(dp_hook_call *c)
{
    if (c == NULL || c->delivered || c->cancelled)
        return;
    c->cancelled = true;
    /* If the work has not started, libuv drops it and after_cb sees UV_ECANCELED. Either way
     * the callback runs from the loop, never from here. */
    uv_cancel((uv_req_t *)&c->work);
    uv_timer_start(&c->timer, call_timer_cb, 0, 0);
}

void dp_hook_session_event(dp_hook *hook, uv_loop_t *loop, const dph_session *s, int is_end)
{
    const dph_ops *ops = hook->ops;
    if (!(is_end ? HOOK_HAS_OP(ops, session_end) : HOOK_HAS_OP(ops, session_start)))
        return;
    dp_hook_req req = {.user = s->user, .proto = s->proto, .timeout_ms = 1};
    dp_hook_call *c = call_new(hook, CALL_SESSION, &req);
    if (c == NULL)
        return;
    c->is_end = is_end;
    snprintf(c->sid, sizeof c->sid, "%s", s->id ? s->id : "");
    snprintf(c->client_ip, sizeof c->client_ip, "%s", s->client_ip ? s->client_ip : "");
    snprintf(c->sbackend, sizeof c->sbackend, "%s", s->backend ? s->backend : "");
    snprintf(c->reason, sizeof c->reason, "%s", s->end_reason ? s->end_reason : "");
    c->session = *s;
    c->session.struct_size = sizeof c->session;
    c->session.id = c->sid;
    c->session.user = c->user;
    c->session.client_ip = c->client_ip;
    c->session.backend = c->sbackend;
    c->session.end_reason = is_end ? c->reason : NULL;
    c->delivered = true;
    atomic_fetch_add(&hook->in_flight, 1);
    if (uv_queue_work(loop, &c->work, call_work_cb, call_after_cb) != 0) {
        atomic_fetch_sub(&hook->in_flight, 1);
        free(c);
    }
}

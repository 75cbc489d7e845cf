/* dp_route_cache.c - per-loop route cache: TTLs, coalescing, stale-if-error, invalidation. */
#include "dp_route_cache.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uthash.h>

#include "dp_log.h"
#include "dp_metrics.h"
#include "dp_util.h"

/* Invalidations queued from other threads beyond this collapse into "invalidate all". */
#define INVALIDATE_QUEUE_MAX 4096
/* An answer invalidated while in flight is asked again at most this many times. */
#define REQUERY_MAX 2

typedef struct dp_cache_entry {
    UT_hash_handle hh;
    char key[DPH_USER_MAX + 4]; /* "<proto>:<user>" */
    char user[DPH_USER_MAX];
    dph_proto proto;
    struct sockaddr_storage client; /* of the lookup that started the call */
    bool has_client;
    /* cached answer */
    bool have_route;
    dph_route route;
    uint64_t expires_ms;     /* fresh until */
    uint64_t stale_until_ms; /* may be served on refresh failure until */
    /* in flight */
    dp_hook_call *call;
    dp_route_lookup *waiters;
    bool dirty; /* invalidated while the call was in flight: ask again */
    int requeries;
    /* LRU, most recent at the tail */
    struct dp_cache_entry *lru_prev, *lru_next;
} dp_cache_entry;

struct dp_route_cache {
    uv_loop_t *loop;
    dp_hook *hook;
    dp_route_cache_opts opts;
    dp_cache_entry *table; /* uthash head */
    dp_cache_entry *lru_head, *lru_tail;
    size_t nentries;
    unsigned calls_in_flight;
    dp_route_lookup *ready; /* answered lookups waiting for their callback, FIFO */
    dp_route_lookup **ready_tail;
    uv_async_t async;
    bool closing;
    void (*close_cb)(void *arg);
    void *close_arg;
    dp_route_cache_stats stats;
    /* invalidations from other threads */
    pthread_mutex_t inv_lock;
    char **inv_users;
    size_t inv_n;
    bool inv_all;
    _Atomic bool inv_pending;
};

static void entry_start_call(dp_route_cache *c, dp_cache_entry *e);

/* ---- entries ---- */

static void make_key(char *key, size_t len, dph_proto proto, const char *user)
{
    snprintf(key, len, "%d:%s", (int)proto, user);
}

static void lru_unlink(dp_route_cache *c, dp_cache_entry *e)
{
    if (e->lru_prev != NULL)
        e->lru_prev->lru_next = e->lru_next;
    else
        c->lru_head = e->lru_next;
    if (e->lru_next != NULL)
        e->lru_next->lru_prev = e->lru_prev;
    else
        c->lru_tail = e->lru_prev;
    e->lru_prev = e->lru_next = NULL;
}

static void lru_append(dp_route_cache *c, dp_cache_entry *e)
{
    e->lru_prev = c->lru_tail;
    e->lru_next = NULL;
    if (c->lru_tail != NULL)
        c->lru_tail->lru_next = e;
    else
        c->lru_head = e;
    c->lru_tail = e;
}

static void entry_remove(dp_route_cache *c, dp_cache_entry *e)
{
    HASH_DEL(c->table, e);
    lru_unlink(c, e);
    c->nentries--;
    free(e);
}

/* Evict least-recently-used idle entries down to the bound. */
static void evict(dp_route_cache *c)
{
    dp_cache_entry *e = c->lru_head;
    while (c->nentries > c->opts.max_entries && e != NULL) {
        dp_cache_entry *next = e->lru_next;
        if (e->call == NULL) {
            entry_remove(c, e);
            c->stats.evictions++;
        }
        e = next;
    }
}

/* ---- delivery ---- */

static void ready_push(dp_route_cache *c, dp_route_lookup *lk, const dph_route *route,
                       dp_cache_result how)
{
    lk->route = *route;
    lk->how = how;
    lk->entry = NULL;
    lk->ready = 1;
    lk->next = NULL;
    *c->ready_tail = lk;
    c->ready_tail = &lk->next;
    /* The async handle holds the loop open only while callbacks are owed. */
    uv_ref((uv_handle_t *)&c->async);
}

/* Run ready callbacks one at a time: a callback may cancel (and free) any other lookup,
 * which unlinks it from this list first, so nothing here holds a pointer across a call. */
static void ready_run(dp_route_cache *c)
{
    while (c->ready != NULL) {
        dp_route_lookup *lk = c->ready;
        c->ready = lk->next;
        if (c->ready == NULL)
            c->ready_tail = &c->ready;
        lk->next = NULL;
        lk->ready = 0;
        lk->cache = NULL;
        lk->cb(lk, &lk->route, lk->how);
    }
    if (!c->closing)
        uv_unref((uv_handle_t *)&c->async);
}

/* Count an answer in the cache's stats and the process-wide metrics (result and the time
 * since the lookup started: a hook call's latency for misses, microseconds for hits). */
static void count(dp_route_cache *c, const dp_route_lookup *lk, dp_cache_result how,
                  const dph_route *route)
{
    dp_lookup_result r = DP_LOOKUP_ERROR;
    switch (how) {
    case DP_CACHE_HIT:
        c->stats.hits++;
        r = DP_LOOKUP_HIT;
        if (route->status == DPH_ROUTE_UNKNOWN_USER) {
            c->stats.negative_hits++;
            r = DP_LOOKUP_NEGATIVE;
        }
        break;
    case DP_CACHE_MISS:
        c->stats.misses++;
        r = DP_LOOKUP_MISS;
        break;
    case DP_CACHE_COALESCED:
        c->stats.coalesced++;
        r = DP_LOOKUP_MISS; /* it waited for a hook call like a miss */
        break;
    case DP_CACHE_STALE:
        c->stats.stale++;
        r = DP_LOOKUP_STALE;
        break;
    case DP_CACHE_FAILED:
        c->stats.failed++;
        r = DP_LOOKUP_ERROR;
        break;
    }
    uint64_t now = uv_hrtime();
    dp_metrics_route_lookup(r, now > lk->started_ns ? now - lk->started_ns : 0);
}

static void deliver_waiters(dp_route_cache *c, dp_cache_entry *e, const dph_route *route,
                            bool failed_or_stale, dp_cache_result override)
{
    dp_route_lookup *lk = e->waiters;
    e->waiters = NULL;
    while (lk != NULL) {
        dp_route_lookup *next = lk->next;
        dp_cache_result how = failed_or_stale ? override : lk->how;
        count(c, lk, how, route);
        ready_push(c, lk, route, how);
        lk = next;
    }
}

static int ttl_for(const dp_route_cache *c, dph_route_status st)
{
    return st == DPH_ROUTE_UNKNOWN_USER ? c->opts.negative_ttl_ms : c->opts.ttl_ms;
}

/* The hook call's context: the entry and its cache (entries do not point at their cache to
 * keep them small; calls are few). */
typedef struct call_ctx {
    dp_route_cache *cache;
    dp_cache_entry *entry;
} call_ctx;

static void call_done(void *arg, int status, const dph_route *route)
{
    call_ctx *cx = arg;
    dp_route_cache *c = cx->cache;
    dp_cache_entry *e = cx->entry;
    free(cx);
    e->call = NULL;
    c->calls_in_flight--;
    uint64_t now = dp_now_ms();

    if (e->dirty && !c->closing && e->requeries < REQUERY_MAX && e->waiters != NULL) {
        /* The route changed while we asked: the answer may predate the change. */
        e->dirty = false;
        e->requeries++;
        c->stats.requeries++;
        entry_start_call(c, e);
        if (e->call != NULL)
            return;
    }
    e->dirty = false;
    e->requeries = 0;

    bool ok = status == 0 && route->status != DPH_ROUTE_TEMPFAIL;
    if (ok) {
        int ttl = ttl_for(c, route->status);
        e->route = *route;
        e->have_route = ttl > 0;
        e->expires_ms = now + (uint64_t)ttl;
        e->stale_until_ms = e->expires_ms + (uint64_t)c->opts.stale_ms;
        deliver_waiters(c, e, route, false, DP_CACHE_MISS);
    } else if (e->have_route && now < e->stale_until_ms && !c->closing) {
        deliver_waiters(c, e, &e->route, true, DP_CACHE_STALE);
    } else {
        dph_route fail;
        if (status == 0) {
            fail = *route; /* the hook's own TEMPFAIL, with its message */
        } else {
            memset(&fail, 0, sizeof fail);
            fail.struct_size = sizeof fail;
            fail.status = DPH_ROUTE_TEMPFAIL;
        }
        deliver_waiters(c, e, &fail, true, DP_CACHE_FAILED);
        e->have_route = false;
    }
    if (!e->have_route)
        entry_remove(c, e);
    else
        evict(c);
    ready_run(c);
    if (c->closing && c->calls_in_flight == 0 && !uv_is_closing((uv_handle_t *)&c->async))
        uv_async_send(&c->async);
}

static void entry_start_call(dp_route_cache *c, dp_cache_entry *e)
{
    call_ctx *cx = malloc(sizeof *cx);
    if (cx == NULL)
        return;
    cx->cache = c;
    cx->entry = e;
    dp_hook_req req = {
        .user = e->user,
        .client = e->has_client ? (const struct sockaddr *)&e->client : NULL,
        .proto = e->proto,
        .timeout_ms = c->opts.timeout_ms,
    };
    int rc = dp_hook_lookup_async(c->hook, c->loop, &req, call_done, cx, &e->call);
    if (rc != 0) {
        free(cx);
        e->call = NULL;
        dp_log_error("cannot queue a lookup for %s: %s", e->user, uv_strerror(rc));
        return;
    }
    c->calls_in_flight++;
}

/* ---- invalidation ---- */

static void invalidate_entry(dp_route_cache *c, dp_cache_entry *e)
{
    c->stats.invalidations++;
    if (e->call != NULL) {
        e->dirty = true;
        e->have_route = false;
    } else {
        entry_remove(c, e);
    }
}

static void invalidate_user_now(dp_route_cache *c, const char *user)
{
    static const dph_proto protos[] = {DPH_PROTO_SSH, DPH_PROTO_FTP};
    for (size_t i = 0; i < sizeof protos / sizeof protos[0]; i++) {
        char key[DPH_USER_MAX + 4];
        make_key(key, sizeof key, protos[i], user);
        dp_cache_entry *e;
        HASH_FIND_STR(c->table, key, e);
        if (e != NULL)
            invalidate_entry(c, e);
    }
}

static void invalidate_all_now(dp_route_cache *c)
{
    dp_cache_entry *e, *tmp;
    HASH_ITER(hh, c->table, e, tmp)
    {
        invalidate_entry(c, e);
    }
}

/* Apply invalidations queued by other threads. Runs on the loop, before every lookup that
 * sees the pending flag, so a lookup never returns a route whose invalidation has arrived. */
static void apply_invalidations(dp_route_cache *c)
{
    if (!atomic_exchange(&c->inv_pending, false))
        return;
    pthread_mutex_lock(&c->inv_lock);
    char **users = c->inv_users;
    size_t n = c->inv_n;
    bool all = c->inv_all;
    c->inv_users = NULL;
    c->inv_n = 0;
    c->inv_all = false;
    pthread_mutex_unlock(&c->inv_lock);
    if (all)
        invalidate_all_now(c);
    for (size_t i = 0; i < n; i++) {
        if (!all)
            invalidate_user_now(c, users[i]);
        free(users[i]);
    }
    free(users);
}

void dp_route_cache_invalidate(dp_route_cache *c, const char *user)
{
    pthread_mutex_lock(&c->inv_lock);
    if (user == NULL || c->inv_all || c->inv_n >= INVALIDATE_QUEUE_MAX) {
        c->inv_all = true;
    } else {
        char **nu = realloc(c->inv_users, (c->inv_n + 1) * sizeof *nu);
        char *dup = strdup(user);
        if (nu != NULL)
            c->inv_users = nu;
        if (nu == NULL || dup == NULL) {
            free(dup);
            c->inv_all = true; /* cannot remember which: forget everything, safely */
        } else {
            c->inv_users[c->inv_n++] = dup;
        }
    }
    atomic_store(&c->inv_pending, true);
    pthread_mutex_unlock(&c->inv_lock);
    uv_async_send(&c->async);
}

static void on_hook_invalidate(void *arg, const char *user)
{
    dp_route_cache_invalidate(arg, user);
}

/* ---- loop plumbing ---- */

static void free_cache(dp_route_cache *c)
{
    dp_cache_entry *e, *tmp;
    HASH_ITER(hh, c->table, e, tmp)
    {
        HASH_DEL(c->table, e);
        free(e);
    }
    for (size_t i = 0; i < c->inv_n; i++)
        free(c->inv_users[i]);
    free(c->inv_users);
    pthread_mutex_destroy(&c->inv_lock);
    free(c);
}

static void async_close_cb(uv_handle_t *h)
{
    dp_route_cache *c = h->data;
    void (*cb)(void *) = c->close_cb;
    void *arg = c->close_arg;
    free_cache(c);
    if (cb != NULL)
        cb(arg);
}

static void async_cb(uv_async_t *a)
{
    dp_route_cache *c = a->data;
    apply_invalidations(c);
    ready_run(c);
    if (c->closing && c->calls_in_flight == 0 && c->ready == NULL &&
        !uv_is_closing((uv_handle_t *)&c->async))
        uv_close((uv_handle_t *)&c->async, async_close_cb);
}

int dp_route_cache_new(dp_route_cache **out, uv_loop_t *loop, dp_hook *hook,
                       const dp_route_cache_opts *opts)
{
    dp_route_cache *c = calloc(1, sizeof *c);
    if (c == NULL)
        return -ENOMEM;
    c->loop = loop;
    c->hook = hook;
    c->opts = *opts;
    if (c->opts.max_entries == 0)
        c->opts.max_entries = 1;
    c->ready_tail = &c->ready;
    pthread_mutex_init(&c->inv_lock, NULL);
    int rc = uv_async_init(loop, &c->async, async_cb);
    if (rc != 0) {
        pthread_mutex_destroy(&c->inv_lock);
        free(c);
        return rc;
    }
    c->async.data = c;
    uv_unref((uv_handle_t *)&c->async);
    rc = dp_hook_subscribe(hook, on_hook_invalidate, c);
    if (rc != 0) {
        c->closing = true;
        uv_close((uv_handle_t *)&c->async, async_close_cb);
        return rc;
    }
    *out = c;
    return 0;
}

int dp_route_cache_lookup(dp_route_cache *c, dp_route_lookup *lk, const char *user,
                          const struct sockaddr *client, dph_proto proto, dp_route_cb cb)
{
    if (c->closing)
        return -ESHUTDOWN;
    if (user == NULL || user[0] == '\0' || strlen(user) >= DPH_USER_MAX)
        return -EINVAL;
    apply_invalidations(c);

    lk->started_ns = uv_hrtime();
    lk->cb = cb;
    lk->cache = c;
    lk->next = NULL;
    lk->ready = 0;
    char key[DPH_USER_MAX + 4];
    make_key(key, sizeof key, proto, user);
    uint64_t now = dp_now_ms();

    dp_cache_entry *e;
    HASH_FIND_STR(c->table, key, e);
    if (e != NULL && e->call == NULL && e->have_route && now < e->expires_ms) {
        lru_unlink(c, e);
        lru_append(c, e);
        count(c, lk, DP_CACHE_HIT, &e->route);
        ready_push(c, lk, &e->route, DP_CACHE_HIT);
        uv_async_send(&c->async); /* callbacks never run inside the call */
        return 0;
    }
    if (e == NULL) {
        e = calloc(1, sizeof *e);
        if (e == NULL)
            return -ENOMEM;
        snprintf(e->key, sizeof e->key, "%s", key);
        snprintf(e->user, sizeof e->user, "%s", user);
        e->proto = proto;
        HASH_ADD_STR(c->table, key, e);
        lru_append(c, e);
        c->nentries++;
    }
    lk->entry = e;
    if (e->call != NULL) {
        lk->how = DP_CACHE_COALESCED;
    } else {
        lk->how = DP_CACHE_MISS;
        if (client != NULL && dp_sockaddr_len(client) > 0) {
            memcpy(&e->client, client, dp_sockaddr_len(client));
            e->has_client = true;
        }
        entry_start_call(c, e);
        if (e->call == NULL) {
            lk->entry = NULL;
            if (!e->have_route)
                entry_remove(c, e);
            return -ENOMEM;
        }
    }
    /* FIFO among waiters of one entry. */
    dp_route_lookup **tail = &e->waiters;
    while (*tail != NULL)
        tail = &(*tail)->next;
    *tail = lk;
    evict(c);
    return 0;
}

static bool unlink_from(dp_route_lookup **head, dp_route_lookup *lk)
{
    for (dp_route_lookup **p = head; *p != NULL; p = &(*p)->next) {
        if (*p == lk) {
            *p = lk->next;
            lk->next = NULL;
            return true;
        }
    }
    return false;
}

void dp_route_cache_cancel(dp_route_lookup *lk)
{
    dp_route_cache *c = lk->cache;
    if (c == NULL)
        return;
    if (lk->ready) {
        unlink_from(&c->ready, lk);
        c->ready_tail = &c->ready;
        while (*c->ready_tail != NULL)
            c->ready_tail = &(*c->ready_tail)->next;
        lk->ready = 0;
    } else if (lk->entry != NULL) {
        /* The hook call goes on: its answer still fills the cache for the next login. */
        unlink_from(&lk->entry->waiters, lk);
        lk->entry = NULL;
    }
    lk->cache = NULL;
}

void dp_route_cache_set_hook(dp_route_cache *c, dp_hook *hook, const dp_route_cache_opts *opts)
{
    if (hook != c->hook) {
        dp_hook_unsubscribe(c->hook, on_hook_invalidate, c);
        c->hook = hook;
        dp_hook_subscribe(hook, on_hook_invalidate, c);
        /* Answers from the old hook must not outlive it: drop the cache, re-ask in-flight. */
        invalidate_all_now(c);
    }
    c->opts = *opts;
    if (c->opts.max_entries == 0)
        c->opts.max_entries = 1;
    evict(c);
}

void dp_route_cache_get_stats(const dp_route_cache *c, dp_route_cache_stats *out)
{
    *out = c->stats;
    out->entries = c->nentries;
}

void dp_route_cache_close(dp_route_cache *c, void (*cb)(void *arg), void *arg)
{
    if (c->closing)
        return;
    c->closing = true;
    c->close_cb = cb;
    c->close_arg = arg;
    dp_hook_unsubscribe(c->hook, on_hook_invalidate, c);
    uv_ref((uv_handle_t *)&c->async); /* until closed */
    dp_cache_entry *e, *tmp;
    HASH_ITER(hh, c->table, e, tmp)
    {
        if (e->call != NULL)
            dp_hook_call_cancel(e->call); /* call_done delivers TEMPFAIL to its waiters */
    }
    uv_async_send(&c->async);
}

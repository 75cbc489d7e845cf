/*
 * dp_route_cache.h - per-loop cache of hook routes in front of dp_hook_lookup_async.
 *
 * One cache per worker loop; all its state is touched only on that loop. It provides:
 *   - TTL for positive answers (ok, maintenance), a separate negative TTL (unknown user),
 *   - coalescing: concurrent lookups of one (user, protocol) share one hook call,
 *   - stale-if-error: an expired entry is still served for `stale_ms` when the refresh fails
 *     with a temporary failure (database down), so logged-in customers keep working,
 *   - invalidation of one user or of everything, callable from any thread (the hook's
 *     NOTIFY listener): applied before the next lookup on the loop, never served stale,
 *   - an LRU bound on entries.
 * The cache holds its loop open only while it owes callbacks (its handle is unref'd).
 * The cache key is (user, protocol); a hook that routes by client address should run with
 * ttl 0.
 */
#ifndef DP_ROUTE_CACHE_H
#define DP_ROUTE_CACHE_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "dp_hook.h"

typedef struct dp_route_cache dp_route_cache;

typedef struct dp_route_cache_opts {
    int ttl_ms;          /* positive answers; 0 = do not cache */
    int negative_ttl_ms; /* unknown-user answers; 0 = do not cache */
    int stale_ms;        /* serve an expired entry this long past expiry if a refresh fails */
    int timeout_ms;      /* deadline of one hook call */
    size_t max_entries;  /* LRU bound (>= 1) */
} dp_route_cache_opts;

typedef enum dp_cache_result {
    DP_CACHE_HIT = 0,   /* answered from a fresh entry */
    DP_CACHE_MISS,      /* this lookup called the hook */
    DP_CACHE_COALESCED, /* joined a hook call already in flight */
    DP_CACHE_STALE,     /* refresh failed; an expired entry was served */
    DP_CACHE_FAILED,    /* hook call failed or timed out: route->status is TEMPFAIL */
} dp_cache_result;

typedef struct dp_route_lookup dp_route_lookup;

/* `route` points at lk->route (valid until the lookup is reused). Called on the cache's loop, never
 * synchronously from dp_route_cache_lookup. route->status is always set (TEMPFAIL on failure). */
typedef void (*dp_route_cb)(dp_route_lookup *lk, const dph_route *route, dp_cache_result how);

/* Caller-owned lookup; must stay valid until its callback ran or it was cancelled. */
struct dp_route_lookup {
    void *data;      /* free for the caller */
    dph_route route; /* the answer; the callback's `route` points here, so it may be kept */
    /* private */
    dp_route_cb cb;
    dp_route_cache *cache;
    struct dp_cache_entry *entry;
    dp_route_lookup *next;
    int ready;
    dp_cache_result how;
    uint64_t started_ns; /* uv_hrtime() at the lookup's start (dynproxy_route_lookup_seconds) */
};

typedef struct dp_route_cache_stats {
    uint64_t hits, misses, coalesced, stale, failed, negative_hits;
    uint64_t invalidations, evictions;
    uint64_t requeries; /* hook calls repeated because the route changed in flight */
    size_t entries;
} dp_route_cache_stats;

/* Returns 0 or a negative errno. Subscribes to the hook's invalidations. */
int dp_route_cache_new(dp_route_cache **out, uv_loop_t *loop, dp_hook *hook,
                       const dp_route_cache_opts *opts);

/* Start a lookup. Returns 0 (callback will run) or a negative errno (-EINVAL for an empty or
 * over-long user, -ESHUTDOWN when closing). */
int dp_route_cache_lookup(dp_route_cache *c, dp_route_lookup *lk, const char *user,
                          const struct sockaddr *client, dph_proto proto, dp_route_cb cb);

/* Withdraw a lookup whose callback has not run; it will not run. No-op otherwise. */
void dp_route_cache_cancel(dp_route_lookup *lk);

/* Drop cached routes of `user` (NULL: all). Thread-safe, non-blocking. */
void dp_route_cache_invalidate(dp_route_cache *c, const char *user);

/* Replace the hook (reload) and options; in-flight calls finish against the old hook, whose
 * answers are then discarded and re-asked. Loop thread only. */
void dp_route_cache_set_hook(dp_route_cache *c, dp_hook *hook, const dp_route_cache_opts *opts);

void dp_route_cache_get_stats(const dp_route_cache *c, dp_route_cache_stats *out);

/* Close: pending lookups get TEMPFAIL, in-flight hook calls are cancelled, then `cb` runs;
 * free nothing before that. The cache frees itself after `cb` returns. */
void dp_route_cache_close(dp_route_cache *c, void (*cb)(void *arg), void *arg);

#endif

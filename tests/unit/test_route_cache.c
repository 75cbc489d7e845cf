/* test_route_cache.c - dp_route_cache: TTL, negative TTL, coalescing, stale-if-error,
 * invalidation (also while in flight and from other threads), deadlines, cancel, LRU, and
 * several worker loops hammered concurrently. */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "dp_route_cache.h"
#include "dp_test_util.h"
#include "dp_util.h"
#include "testhook.h"

#define TESTHOOK DP_TEST_HOOKDIR "/testhook.so"

static testhook_control *ctl;

typedef struct fixture {
    uv_loop_t loop;
    dp_hook *hook;
    dp_route_cache *cache;
} fixture;

static void fx_open(fixture *f, const dp_route_cache_opts *o)
{
    char err[512];
    ck_assert_int_eq(uv_loop_init(&f->loop), 0);
    ck_assert_int_eq(dp_hook_load(&f->hook, TESTHOOK, NULL, err, sizeof err, NULL), 0);
    void *dl = dlopen(TESTHOOK, RTLD_NOW | RTLD_NOLOAD);
    ctl = dlsym(dl, "testhook_control_block");
    dlclose(dl);
    ck_assert_ptr_nonnull(ctl);
    atomic_store(&ctl->lookups, 0);
    atomic_store(&ctl->delay_ms, 0);
    atomic_store(&ctl->fail, 0);
    atomic_store(&ctl->generation, 1);
    ck_assert_int_eq(dp_route_cache_new(&f->cache, &f->loop, f->hook, o), 0);
}

static void closed(void *arg)
{
    *(int *)arg = 1;
}

static void fx_close(fixture *f)
{
    int done = 0;
    dp_route_cache_close(f->cache, closed, &done);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(done, 1);
    ck_assert_int_eq(uv_loop_close(&f->loop), 0);
    dp_hook_free(f->hook);
}

static const dp_route_cache_opts default_opts = {.ttl_ms = 10000,
                                                 .negative_ttl_ms = 10000,
                                                 .stale_ms = 0,
                                                 .timeout_ms = 2000,
                                                 .max_entries = 1000};

typedef struct answer {
    dp_route_lookup lk;
    int calls;
    dph_route route;
    dp_cache_result how;
} answer;

static void on_answer(dp_route_lookup *lk, const dph_route *route, dp_cache_result how)
{
    answer *a = lk->data;
    a->calls++;
    a->route = *route;
    a->how = how;
}

/* Look `user` up and run the loop until the answer came. */
static answer ask(fixture *f, const char *user, dph_proto proto)
{
    answer a = {0};
    a.lk.data = &a;
    ck_assert_int_eq(dp_route_cache_lookup(f->cache, &a.lk, user, NULL, proto, on_answer), 0);
    ck_assert_int_eq(a.calls, 0); /* never synchronously */
    while (a.calls == 0)
        uv_run(&f->loop, UV_RUN_ONCE);
    a.lk.data = NULL;
    return a;
}

START_TEST(miss_then_hit)
{
    fixture f;
    fx_open(&f, &default_opts);
    answer a = ask(&f, "alice", DPH_PROTO_SSH);
    ck_assert_int_eq(a.how, DP_CACHE_MISS);
    ck_assert_int_eq(a.route.status, DPH_ROUTE_OK);
    ck_assert_str_eq(a.route.backend, "gen1");
    a = ask(&f, "alice", DPH_PROTO_SSH);
    ck_assert_int_eq(a.how, DP_CACHE_HIT);
    ck_assert_int_eq(atomic_load(&ctl->lookups), 1);
    /* The protocol is part of the key. */
    a = ask(&f, "alice", DPH_PROTO_FTP);
    ck_assert_int_eq(a.how, DP_CACHE_MISS);
    ck_assert_int_eq(atomic_load(&ctl->lookups), 2);
    dp_route_cache_stats st;
    dp_route_cache_get_stats(f.cache, &st);
    ck_assert_uint_eq(st.hits, 1);
    ck_assert_uint_eq(st.misses, 2);
    ck_assert_uint_eq(st.entries, 2);
    fx_close(&f);
}
END_TEST

START_TEST(ttl_expires)
{
    fixture f;
    dp_route_cache_opts o = default_opts;
    /* a TTL long enough that the second ask is a hit on a slow, busy machine too */
    o.ttl_ms = 1000;
    fx_open(&f, &o);
    ck_assert_int_eq(ask(&f, "alice", DPH_PROTO_SSH).how, DP_CACHE_MISS);
    ck_assert_int_eq(ask(&f, "alice", DPH_PROTO_SSH).how, DP_CACHE_HIT);
    atomic_store(&ctl->generation, 2);
    usleep(1200 * 1000);
    answer a = ask(&f, "alice", DPH_PROTO_SSH);
    ck_assert_int_eq(a.how, DP_CACHE_MISS);
    ck_assert_str_eq(a.route.backend, "gen2");
    fx_close(&f);
}
END_TEST

START_TEST(ttl_zero_never_caches)
{
    fixture f;
    dp_route_cache_opts o = default_opts;
    o.ttl_ms = 0;
    fx_open(&f, &o);
    ck_assert_int_eq(ask(&f, "alice", DPH_PROTO_SSH).how, DP_CACHE_MISS);
    ck_assert_int_eq(ask(&f, "alice", DPH_PROTO_SSH).how, DP_CACHE_MISS);
    ck_assert_int_eq(atomic_load(&ctl->lookups), 2);
    fx_close(&f);
}
END_TEST

START_TEST(negative_ttl)
{
    fixture f;
    dp_route_cache_opts o = default_opts;
    o.negative_ttl_ms = 1000;
    fx_open(&f, &o);
    answer a = ask(&f, "unknown1", DPH_PROTO_SSH);
    ck_assert_int_eq(a.route.status, DPH_ROUTE_UNKNOWN_USER);
    ck_assert_int_eq(a.how, DP_CACHE_MISS);
    a = ask(&f, "unknown1", DPH_PROTO_SSH);
    ck_assert_int_eq(a.how, DP_CACHE_HIT);
    ck_assert_int_eq(a.route.status, DPH_ROUTE_UNKNOWN_USER);
    /* Positive entries keep their own, longer TTL. */
    ck_assert_int_eq(ask(&f, "alice", DPH_PROTO_SSH).how, DP_CACHE_MISS);
    usleep(1200 * 1000);
    ck_assert_int_eq(ask(&f, "unknown1", DPH_PROTO_SSH).how, DP_CACHE_MISS);
    ck_assert_int_eq(ask(&f, "alice", DPH_PROTO_SSH).how, DP_CACHE_HIT);
    dp_route_cache_stats st;
    dp_route_cache_get_stats(f.cache, &st);
    ck_assert_uint_eq(st.negative_hits, 1);
    fx_close(&f);
}
END_TEST

START_TEST(maintenance_is_cached_with_message)
{
    fixture f;
    fx_open(&f, &default_opts);
    answer a = ask(&f, "maint-x", DPH_PROTO_FTP);
    ck_assert_int_eq(a.route.status, DPH_ROUTE_MAINTENANCE);
    ck_assert_int_eq(ask(&f, "maint-x", DPH_PROTO_FTP).how, DP_CACHE_HIT);
    fx_close(&f);
}
END_TEST

START_TEST(hook_tempfail_not_cached)
{
    fixture f;
    fx_open(&f, &default_opts);
    answer a = ask(&f, "tempfail-x", DPH_PROTO_SSH);
    ck_assert_int_eq(a.how, DP_CACHE_FAILED);
    ck_assert_int_eq(a.route.status, DPH_ROUTE_TEMPFAIL);
    ck_assert_str_eq(a.route.message, "try later");
    ck_assert_int_eq(ask(&f, "tempfail-x", DPH_PROTO_SSH).how, DP_CACHE_FAILED);
    ck_assert_int_eq(atomic_load(&ctl->lookups), 2);
    fx_close(&f);
}
END_TEST

START_TEST(coalescing)
{
    fixture f;
    fx_open(&f, &default_opts);
    atomic_store(&ctl->delay_ms, 100);
    enum { N = 20 };
    answer a[N];
    memset(a, 0, sizeof a);
    for (int i = 0; i < N; i++) {
        a[i].lk.data = &a[i];
        ck_assert_int_eq(
            dp_route_cache_lookup(f.cache, &a[i].lk, "alice", NULL, DPH_PROTO_SSH, on_answer), 0);
    }
    uv_run(&f.loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(atomic_load(&ctl->lookups), 1);
    ck_assert_int_eq(a[0].how, DP_CACHE_MISS);
    for (int i = 0; i < N; i++) {
        ck_assert_int_eq(a[i].calls, 1);
        ck_assert_str_eq(a[i].route.backend, "gen1");
        if (i > 0)
            ck_assert_int_eq(a[i].how, DP_CACHE_COALESCED);
    }
    dp_route_cache_stats st;
    dp_route_cache_get_stats(f.cache, &st);
    ck_assert_uint_eq(st.coalesced, N - 1);
    fx_close(&f);
}
END_TEST

START_TEST(invalidate_user_and_all)
{
    fixture f;
    fx_open(&f, &default_opts);
    ask(&f, "alice", DPH_PROTO_SSH);
    ask(&f, "alice", DPH_PROTO_FTP);
    ask(&f, "bob", DPH_PROTO_SSH);
    atomic_store(&ctl->generation, 2);
    dp_route_cache_invalidate(f.cache, "alice");
    /* Applied before the next lookup, even without a loop turn in between. */
    answer a = ask(&f, "alice", DPH_PROTO_SSH);
    ck_assert_int_eq(a.how, DP_CACHE_MISS);
    ck_assert_str_eq(a.route.backend, "gen2");
    ck_assert_int_eq(ask(&f, "alice", DPH_PROTO_FTP).how, DP_CACHE_MISS);
    ck_assert_int_eq(ask(&f, "bob", DPH_PROTO_SSH).how, DP_CACHE_HIT);
    dp_route_cache_invalidate(f.cache, NULL);
    ck_assert_int_eq(ask(&f, "bob", DPH_PROTO_SSH).how, DP_CACHE_MISS);
    fx_close(&f);
}
END_TEST

START_TEST(invalidate_through_hook_host)
{
    fixture f;
    fx_open(&f, &default_opts);
    ask(&f, "alice", DPH_PROTO_SSH);
    const dph_host *host = ctl->host;
    host->invalidate(host->ctx, "alice"); /* what a NOTIFY listener thread does */
    ck_assert_int_eq(ask(&f, "alice", DPH_PROTO_SSH).how, DP_CACHE_MISS);
    host->invalidate_all(host->ctx);
    ck_assert_int_eq(ask(&f, "alice", DPH_PROTO_SSH).how, DP_CACHE_MISS);
    fx_close(&f);
}
END_TEST

static void *invalidate_later(void *arg)
{
    fixture *f = arg;
    /* While the hook is inside the lookup (it counts on entry, then sleeps delay_ms): the
     * change lands mid-flight by construction, not by timing. */
    for (int i = 0; i < 10000 && atomic_load(&ctl->lookups) == 0; i++)
        usleep(1000);
    atomic_store(&ctl->generation, 7);
    dp_route_cache_invalidate(f->cache, "alice");
    return NULL;
}

START_TEST(invalidate_while_in_flight_requeries)
{
    fixture f;
    fx_open(&f, &default_opts);
    atomic_store(&ctl->delay_ms, 500);
    pthread_t t;
    pthread_create(&t, NULL, invalidate_later, &f);
    answer a = ask(&f, "alice", DPH_PROTO_SSH);
    pthread_join(t, NULL);
    /* The first answer (gen1) predates the change: it is asked again, and gen7 delivered. */
    ck_assert_str_eq(a.route.backend, "gen7");
    ck_assert_int_eq(atomic_load(&ctl->lookups), 2);
    atomic_store(&ctl->delay_ms, 0);
    ck_assert_int_eq(ask(&f, "alice", DPH_PROTO_SSH).how, DP_CACHE_HIT);
    fx_close(&f);
}
END_TEST

START_TEST(stale_if_error)
{
    fixture f;
    dp_route_cache_opts o = default_opts;
    o.ttl_ms = 50;
    o.stale_ms = 3000; /* long enough to be inside it on a slow machine, after the TTL */
    fx_open(&f, &o);
    ck_assert_int_eq(ask(&f, "alice", DPH_PROTO_SSH).how, DP_CACHE_MISS);
    atomic_store(&ctl->fail, 1); /* the database goes away */
    usleep(80 * 1000);
    answer a = ask(&f, "alice", DPH_PROTO_SSH);
    ck_assert_int_eq(a.how, DP_CACHE_STALE);
    ck_assert_int_eq(a.route.status, DPH_ROUTE_OK);
    ck_assert_str_eq(a.route.backend, "gen1");
    /* A user never seen gets a clear temporary failure. */
    a = ask(&f, "bob", DPH_PROTO_SSH);
    ck_assert_int_eq(a.how, DP_CACHE_FAILED);
    ck_assert_int_eq(a.route.status, DPH_ROUTE_TEMPFAIL);
    /* Past the stale window, even alice fails. */
    usleep(3100 * 1000);
    a = ask(&f, "alice", DPH_PROTO_SSH);
    ck_assert_int_eq(a.how, DP_CACHE_FAILED);
    /* And an invalidated entry is never served stale. */
    atomic_store(&ctl->fail, 0);
    ask(&f, "carol", DPH_PROTO_SSH);
    atomic_store(&ctl->fail, 1);
    dp_route_cache_invalidate(f.cache, "carol");
    usleep(60 * 1000);
    ck_assert_int_eq(ask(&f, "carol", DPH_PROTO_SSH).how, DP_CACHE_FAILED);
    fx_close(&f);
}
END_TEST

START_TEST(deadline_gives_tempfail)
{
    fixture f;
    dp_route_cache_opts o = default_opts;
    o.timeout_ms = 60;
    fx_open(&f, &o);
    atomic_store(&ctl->delay_ms, 3000);
    uint64_t t0 = dp_now_ms();
    answer a = ask(&f, "alice", DPH_PROTO_SSH);
    uint64_t took = dp_now_ms() - t0;
    ck_assert_int_eq(a.how, DP_CACHE_FAILED);
    ck_assert_int_eq(a.route.status, DPH_ROUTE_TEMPFAIL);
    /* the 60 ms deadline, not the hook's 3 s, ends it (headroom for a slow machine) */
    ck_assert_msg(took >= 55 && took < 2000, "tempfail after %llu ms", (unsigned long long)took);
    atomic_store(&ctl->delay_ms, 0);
    fx_close(&f);
}
END_TEST

START_TEST(cancel_pending_and_ready)
{
    fixture f;
    fx_open(&f, &default_opts);
    atomic_store(&ctl->delay_ms, 50);
    answer a = {0}, b = {0};
    a.lk.data = &a;
    b.lk.data = &b;
    ck_assert_int_eq(dp_route_cache_lookup(f.cache, &a.lk, "alice", NULL, DPH_PROTO_SSH, on_answer),
                     0);
    ck_assert_int_eq(dp_route_cache_lookup(f.cache, &b.lk, "alice", NULL, DPH_PROTO_SSH, on_answer),
                     0);
    dp_route_cache_cancel(&a.lk);
    uv_run(&f.loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(a.calls, 0);
    ck_assert_int_eq(b.calls, 1);
    /* A hit is queued for the next loop turn; cancelling it before then silences it. */
    answer c = {0};
    c.lk.data = &c;
    ck_assert_int_eq(dp_route_cache_lookup(f.cache, &c.lk, "alice", NULL, DPH_PROTO_SSH, on_answer),
                     0);
    dp_route_cache_cancel(&c.lk);
    uv_run(&f.loop, UV_RUN_NOWAIT);
    ck_assert_int_eq(c.calls, 0);
    atomic_store(&ctl->delay_ms, 0);
    fx_close(&f);
}
END_TEST

START_TEST(lru_bound)
{
    fixture f;
    dp_route_cache_opts o = default_opts;
    o.max_entries = 3;
    fx_open(&f, &o);
    ask(&f, "u1", DPH_PROTO_SSH);
    ask(&f, "u2", DPH_PROTO_SSH);
    ask(&f, "u3", DPH_PROTO_SSH);
    ask(&f, "u1", DPH_PROTO_SSH); /* u1 is now the most recent */
    ask(&f, "u4", DPH_PROTO_SSH); /* evicts u2 */
    dp_route_cache_stats st;
    dp_route_cache_get_stats(f.cache, &st);
    ck_assert_uint_eq(st.entries, 3);
    ck_assert_uint_eq(st.evictions, 1);
    ck_assert_int_eq(ask(&f, "u1", DPH_PROTO_SSH).how, DP_CACHE_HIT);
    ck_assert_int_eq(ask(&f, "u2", DPH_PROTO_SSH).how, DP_CACHE_MISS);
    fx_close(&f);
}
END_TEST

START_TEST(bad_user)
{
    fixture f;
    fx_open(&f, &default_opts);
    answer a = {0};
    a.lk.data = &a;
    ck_assert_int_eq(dp_route_cache_lookup(f.cache, &a.lk, "", NULL, DPH_PROTO_SSH, on_answer),
                     -EINVAL);
    fx_close(&f);
}
END_TEST

START_TEST(close_with_pending_lookups)
{
    fixture f;
    fx_open(&f, &default_opts);
    atomic_store(&ctl->delay_ms, 100);
    answer a = {0};
    a.lk.data = &a;
    ck_assert_int_eq(dp_route_cache_lookup(f.cache, &a.lk, "alice", NULL, DPH_PROTO_SSH, on_answer),
                     0);
    fx_close(&f); /* runs the loop until closed */
    ck_assert_int_eq(a.calls, 1);
    ck_assert_int_eq(a.route.status, DPH_ROUTE_TEMPFAIL);
}
END_TEST

/* ---- concurrency: 4 loops on 4 threads share one hook; a 5th thread invalidates ---- */

#define NLOOPS 4
#define PER_LOOP 2000

typedef struct loop_ctx {
    uv_loop_t loop;
    dp_route_cache *cache;
    dp_hook *hook;
    int started, answered, bad;
    answer slots[64];
} loop_ctx;

static void conc_answer(dp_route_lookup *lk, const dph_route *route, dp_cache_result how);

static void conc_ask(loop_ctx *lc, answer *slot)
{
    char user[32];
    snprintf(user, sizeof user, "user%d", lc->started % 50);
    slot->lk.data = lc;
    lc->started++;
    ck_assert_int_eq(
        dp_route_cache_lookup(lc->cache, &slot->lk, user, NULL, DPH_PROTO_SSH, conc_answer), 0);
}

static void conc_answer(dp_route_lookup *lk, const dph_route *route, dp_cache_result how)
{
    loop_ctx *lc = lk->data;
    lc->answered++;
    if (route->status != DPH_ROUTE_OK || strncmp(route->backend, "gen", 3) != 0 ||
        how == DP_CACHE_FAILED)
        lc->bad++;
    if (lc->started < PER_LOOP)
        conc_ask(lc, (answer *)lk); /* reuse the slot: lk is its first member */
}

static void *conc_thread(void *arg)
{
    loop_ctx *lc = arg;
    for (int i = 0; i < 64; i++)
        conc_ask(lc, &lc->slots[i]);
    uv_run(&lc->loop, UV_RUN_DEFAULT);
    return NULL;
}

static _Atomic int stop_invalidator;
static void *invalidator(void *arg)
{
    dp_hook *h = arg;
    for (int i = 0; !atomic_load(&stop_invalidator); i++) {
        char user[32];
        snprintf(user, sizeof user, "user%d", i % 50);
        dp_hook_invalidate(h, i % 97 == 0 ? NULL : user);
        atomic_store(&ctl->generation, i);
        usleep(200);
    }
    return NULL;
}

START_TEST(concurrent_loops_and_invalidations)
{
    char err[512];
    dp_hook *hook;
    ck_assert_int_eq(dp_hook_load(&hook, TESTHOOK, NULL, err, sizeof err, NULL), 0);
    void *dl = dlopen(TESTHOOK, RTLD_NOW | RTLD_NOLOAD);
    ctl = dlsym(dl, "testhook_control_block");
    dlclose(dl);
    atomic_store(&ctl->delay_ms, 0);
    atomic_store(&ctl->fail, 0);
    static loop_ctx lcs[NLOOPS];
    memset(lcs, 0, sizeof lcs);
    dp_route_cache_opts o = default_opts;
    o.ttl_ms = 5;
    for (int i = 0; i < NLOOPS; i++) {
        uv_loop_init(&lcs[i].loop);
        lcs[i].hook = hook;
        ck_assert_int_eq(dp_route_cache_new(&lcs[i].cache, &lcs[i].loop, hook, &o), 0);
    }
    pthread_t inv, th[NLOOPS];
    atomic_store(&stop_invalidator, 0);
    pthread_create(&inv, NULL, invalidator, hook);
    for (int i = 0; i < NLOOPS; i++)
        pthread_create(&th[i], NULL, conc_thread, &lcs[i]);
    /* Each loop returns by itself once its lookups are answered: the cache only holds the
     * loop open while it owes callbacks. */
    for (int i = 0; i < NLOOPS; i++)
        pthread_join(th[i], NULL);
    atomic_store(&stop_invalidator, 1);
    pthread_join(inv, NULL);
    uint64_t total_calls = 0;
    for (int i = 0; i < NLOOPS; i++) {
        int done = 0;
        dp_route_cache_stats st;
        dp_route_cache_get_stats(lcs[i].cache, &st);
        total_calls += st.misses + st.requeries;
        ck_assert_uint_eq(st.hits + st.misses + st.coalesced + st.stale + st.failed,
                          (uint64_t)lcs[i].answered);
        dp_route_cache_close(lcs[i].cache, closed, &done);
        uv_run(&lcs[i].loop, UV_RUN_DEFAULT);
        ck_assert_int_eq(done, 1);
        ck_assert_int_eq(lcs[i].bad, 0);
        ck_assert_int_eq(lcs[i].answered, lcs[i].started);
        ck_assert_int_eq(uv_loop_close(&lcs[i].loop), 0);
    }
    ck_assert_uint_eq(total_calls, (uint64_t)atomic_load(&ctl->lookups));
    dp_hook_free(hook);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("route_cache");
    TCase *tc = tcase_create("cache");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, miss_then_hit);
    tcase_add_test(tc, ttl_expires);
    tcase_add_test(tc, ttl_zero_never_caches);
    tcase_add_test(tc, negative_ttl);
    tcase_add_test(tc, maintenance_is_cached_with_message);
    tcase_add_test(tc, hook_tempfail_not_cached);
    tcase_add_test(tc, coalescing);
    tcase_add_test(tc, invalidate_user_and_all);
    tcase_add_test(tc, invalidate_through_hook_host);
    tcase_add_test(tc, invalidate_while_in_flight_requeries);
    tcase_add_test(tc, stale_if_error);
    tcase_add_test(tc, deadline_gives_tempfail);
    tcase_add_test(tc, cancel_pending_and_ready);
    tcase_add_test(tc, lru_bound);
    tcase_add_test(tc, bad_user);
    tcase_add_test(tc, close_with_pending_lookups);
    tcase_add_test(tc, concurrent_loops_and_invalidations);
    suite_add_tcase(s, tc);
    return dp_test_run_suite(s);
}

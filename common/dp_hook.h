/*
 * dp_hook.h - host side of the routing-hook ABI (hooks/dynproxy_hook.h): load a hook .so,
 * check its ABI, init it with its configuration, and run its calls off the event loop.
 *
 * A dp_hook is shared by every worker of a daemon. Blocking hook calls go through
 * dp_hook_call_* which queue them on the libuv threadpool with a deadline; route caching
 * lives in dp_route_cache.h on top of this.
 */
#ifndef DP_HOOK_H
#define DP_HOOK_H

#include <stddef.h>
#include <uv.h>

#include "dynproxy_hook.h"

typedef struct dp_hook dp_hook;

/* Receives invalidations the hook issues (NOTIFY, file change). `user` NULL = all users.
 * Called from any thread; must not block. */
typedef void (*dp_hook_invalidate_fn)(void *arg, const char *user);

/* Receives the hook's requests to end every session of `user` (host->kick, ABI 1.1; the pgsql
 * hook sends one for a `!kick USER` NOTIFY). Called from any thread (the hook's); must not
 * block: hand the work to the loops. */
typedef void (*dp_hook_kick_fn)(void *arg, const char *user);

/*
 * Load the hook at `path` (absolute, or relative to the hook directory DP_HOOKDIR when it has
 * no '/'), check its ABI and call its init with `params` (NULL-key terminated; may be NULL).
 * On failure returns a negative errno and writes a one-line reason into err:
 *   -ENOENT  the file does not exist                 ("hook /x.so: No such file or directory")
 *   -ELIBBAD dlopen failed (not a shared object, unresolved symbols: dlerror() text)
 *   -ENOSYS  the entry symbol is missing             ("... does not export dynproxy_hook_entry")
 *   -EPROTO  wrong ABI major, struct too small, NULL entry result, or required op missing
 *   other    the hook's init refused: *err_key is set to the offending param key (or NULL)
 */
int dp_hook_load(dp_hook **out, const char *path, const dph_param *params, char *err, size_t errlen,
                 const char **err_key);

/* fini + dlclose. NULL is a no-op. No call may be in flight (callers drain first). */
void dp_hook_free(dp_hook *hook);

const char *dp_hook_name(const dp_hook *hook);
const char *dp_hook_path(const dp_hook *hook);
const dph_ops *dp_hook_ops(const dp_hook *hook);
void *dp_hook_state(const dp_hook *hook);

/* Subscribe to the hook's invalidations (the route caches do). Returns 0 or -ENOMEM.
 * Unsubscribe before the subscriber goes away. */
int dp_hook_subscribe(dp_hook *hook, dp_hook_invalidate_fn fn, void *arg);
void dp_hook_unsubscribe(dp_hook *hook, dp_hook_invalidate_fn fn, void *arg);

/* Subscribe to the hook's kick requests (the daemon does, to end the user's sessions on every
 * worker). Several subscribers may be registered; each gets every request. Returns 0 or
 * -ENOMEM. Unsubscribe before the subscriber goes away. */
int dp_hook_subscribe_kick(dp_hook *hook, dp_hook_kick_fn fn, void *arg);
void dp_hook_unsubscribe_kick(dp_hook *hook, dp_hook_kick_fn fn, void *arg);

/* Forward a kick request to every kick subscriber, as the hook's host->kick does. */
void dp_hook_kick(dp_hook *hook, const char *user);

/* Ask the hook to re-read its sources (its optional reload op). Main thread. Returns 0,
 * -ENOTSUP when the hook has no reload op, or the hook's error. */
int dp_hook_reload(dp_hook *hook);

/* Forward an invalidation to every subscriber, as the hook's host->invalidate does.
 * Used by proxyctl's `cache flush` too. */
void dp_hook_invalidate(dp_hook *hook, const char *user);

/* ---- asynchronous calls (threadpool + deadline) ---- */

typedef struct dp_hook_call dp_hook_call;

/* Result of a lookup: status 0 with *route filled (route->status says what), or a negative
 * errno: -ETIMEDOUT (deadline passed), -ECANCELED, or what the hook returned. */
typedef void (*dp_hook_lookup_cb)(void *arg, int status, const dph_route *route);

/* Result of authorized_keys: status 0 and `keys` (n lines, owned by the callee, valid during
 * the callback), or a negative errno (-ENOTSUP when the hook has no authorized_keys op). */
typedef void (*dp_hook_keys_cb)(void *arg, int status, const char *const *keys, size_t n);

/* Request describing who is looking up; strings are copied. */
typedef struct dp_hook_req {
    const char *user;
    const struct sockaddr *client; /* may be NULL */
    dph_proto proto;
    int timeout_ms;
} dp_hook_req;

/*
 * Queue hook->lookup on the threadpool of `loop`. `cb` runs on `loop` exactly once: with the
 * result, or with -ETIMEDOUT at the deadline (the thread's late answer is then discarded), or
 * with -ECANCELED after dp_hook_call_cancel. Returns 0 (and *call when non-NULL, valid until
 * the callback) or a negative errno (cb not called).
 */
int dp_hook_lookup_async(dp_hook *hook, uv_loop_t *loop, const dp_hook_req *req,
                         dp_hook_lookup_cb cb, void *arg, dp_hook_call **call);

/* Same for authorized_keys; at most `max_keys` keys are kept (more are logged and dropped). */
int dp_hook_keys_async(dp_hook *hook, uv_loop_t *loop, const dp_hook_req *req, size_t max_keys,
                       dp_hook_keys_cb cb, void *arg, dp_hook_call **call);

/* The callback will run promptly with -ECANCELED (never synchronously inside this call). */
void dp_hook_call_cancel(dp_hook_call *call);

/* Number of calls queued or running on threads (for draining before dp_hook_free). */
unsigned dp_hook_calls_in_flight(const dp_hook *hook);

/* Fire-and-forget session notifications, on the threadpool (no-op when the hook has none). */
void dp_hook_session_event(dp_hook *hook, uv_loop_t *loop, const dph_session *s, int is_end);

#endif

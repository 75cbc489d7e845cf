/* dp_session.c - the protocol-independent part of a proxied session (dp_session.h). */
#include "dp_session.h"

#include <malloc.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "dp_log.h"
#include "dp_util.h"

#define HOUSEKEEPING_MS 1000
/* A pass that gave back this much is worth a malloc_trim; the few hundred bytes a quiet
 * interactive session regrows are not. */
#define RELEASED_TRIM_MIN (256u << 10)

/* ---- the worker's set and its memory policy ---- */

/* One malloc_trim at a time in the process. It walks every arena (all workers'), so a second
 * call at the same time has nothing to add; and glibc sets its allocator up in the first call
 * without a lock: under AddressSanitizer nothing else has used glibc's allocator by then, and
 * two workers whose last sessions ended together aborted the daemon (SIGABRT, no report;
 * e2e.sshproxy 17, about one run in eight). */
static pthread_mutex_t trim_lock = PTHREAD_MUTEX_INITIALIZER;

/* Memory was freed: trim now if the last trim is a second old or the worker has no session
 * left (after a burst, at night: RSS goes back to the idle figure at once), else at the next
 * pass. */
static void trim_soon(dp_session_set *set, uint64_t now)
{
    set->trim_due = true;
    if (now - set->last_trim_ms < HOUSEKEEPING_MS && set->n > 0)
        return;
    if (pthread_mutex_trylock(&trim_lock) != 0)
        return; /* another worker is trimming: again at the next pass */
    set->trim_due = false;
    set->last_trim_ms = now;
    malloc_trim(0);
    pthread_mutex_unlock(&trim_lock);
}

static void on_housekeeping(uv_timer_t *t)
{
    dp_session_set *set = t->data;
    uint64_t now = dp_now_ms();
    size_t released = 0;
    for (dp_session *s = set->head; s != NULL; s = s->next)
        if (!s->ended && s->ops->release_idle != NULL)
            released += s->ops->release_idle(s, now);
    if (released >= RELEASED_TRIM_MIN || set->trim_due)
        trim_soon(set, now);
}

int dp_session_set_start(dp_session_set *set, uv_loop_t *loop)
{
    int rc = uv_timer_init(loop, &set->housekeeping);
    if (rc != 0)
        return rc;
    set->housekeeping.data = set;
    uv_unref((uv_handle_t *)&set->housekeeping); /* never keeps a stopping loop alive */
    set->housekeeping_open = true;
    return uv_timer_start(&set->housekeeping, on_housekeeping, HOUSEKEEPING_MS, HOUSEKEEPING_MS);
}

void dp_session_set_stop(dp_session_set *set)
{
    if (set->housekeeping_open) {
        set->housekeeping_open = false;
        uv_close((uv_handle_t *)&set->housekeeping, NULL); /* the set outlives the loop */
    }
    /* Each session says goodbye and closes; its memory goes when its handles have closed,
     * so take `next` first. */
    for (dp_session *s = set->head, *next; s != NULL; s = next) {
        next = s->next;
        if (!s->ended)
            s->ops->kick(s, s->ops->shutdown_message, s->ops->shutdown_message);
    }
}

void dp_session_set_list(dp_session_set *set, const dp_session_filter *f, const char *kick,
                         dp_session_list *out)
{
    for (dp_session *s = set != NULL ? set->head : NULL, *next; s != NULL; s = next) {
        next = s->next; /* a kicked session's memory goes later, but do not rely on it */
        if (s->ended)
            continue;
        dp_session_view v = {
            .id = s->sid,
            .proto = s->ops->proto == DPH_PROTO_SSH ? "ssh" : "ftp",
            .user = s->user,
            .client = s->client_text,
            .backend = s->route_known ? s->route.backend : NULL,
            .state = s->ops->state(s),
            .started_unix_ms = s->started_unix_ms,
        };
        dp_session_bytes(s, &v.bytes_in, &v.bytes_out);
        if (!dp_session_match(f, &v))
            continue;
        dp_session_list_add(out, &v);
        if (kick != NULL) {
            char reason[DP_SESSION_REASON_MAX];
            snprintf(reason, sizeof reason, "kicked: %s", kick);
            s->ops->kick(s, kick, reason);
        }
    }
}

/* ---- one session ---- */

static void update_prefix(dp_session *s)
{
    char user[160], backend[100];
    size_t n = (size_t)snprintf(s->prefix, sizeof s->prefix, "sid=%s", s->sid);
    if (s->user[0] != '\0' && n < sizeof s->prefix)
        n += (size_t)snprintf(s->prefix + n, sizeof s->prefix - n, " user=%s",
                              dp_logq(user, sizeof user, s->user));
    if (n < sizeof s->prefix)
        n += (size_t)snprintf(s->prefix + n, sizeof s->prefix - n, " client=%s", s->client_text);
    if (s->route_known && s->route.backend[0] != '\0' && n < sizeof s->prefix)
        snprintf(s->prefix + n, sizeof s->prefix - n, " backend=%s",
                 dp_logq(backend, sizeof backend, s->route.backend));
}

void dp_session_start(dp_session *s, dp_worker *w, const dp_session_ops *ops,
                      const dp_conn_info *ci)
{
    dp_session_set *set = dp_daemon_worker_sessions(w);
    s->ops = ops;
    s->w = w;
    s->refs = 1; /* the session's own, dropped at the end of dp_session_end */
    snprintf(s->sid, sizeof s->sid, "%02x%06x", dp_worker_index(w) & 0xff,
             ++set->next_id & 0xffffff);
    s->started_ms = dp_now_ms();
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    s->started_unix_ms = (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
    s->client = ci->peer;
    dp_sockaddr_format((const struct sockaddr *)&ci->peer, s->client_text, sizeof s->client_text);
    update_prefix(s);
    s->next = set->head;
    if (set->head != NULL)
        set->head->prev = s;
    set->head = s;
    set->n++;
    dp_daemon_session_opened(w);
}

void dp_session_set_user(dp_session *s, const char *user)
{
    snprintf(s->user, sizeof s->user, "%s", user);
    update_prefix(s);
}

void dp_session_set_route(dp_session *s, const dph_route *route)
{
    s->route = *route;
    s->route_known = true;
    update_prefix(s);
}

void dp_session_set_reason(dp_session *s, const char *fmt, ...)
{
    if (s->reason[0] != '\0')
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->reason, sizeof s->reason, fmt, ap);
    va_end(ap);
}

void dp_session_end_as(dp_session *s, dp_sess_result r)
{
    if (!s->end_result_set) {
        s->end_result = r;
        s->end_result_set = true;
    }
}

dp_sess_result dp_session_result(const dp_session *s)
{
    if (s->end_result_set)
        return s->end_result;
    if (s->logged_in)
        return DP_SESS_OK;
    return s->auth_failures > 0 ? DP_SESS_AUTH_FAILED : DP_SESS_ERROR;
}

void dp_session_bytes(const dp_session *s, uint64_t *in, uint64_t *out)
{
    uint64_t live_in = 0, live_out = 0;
    if (s->ops->live_bytes != NULL)
        s->ops->live_bytes(s, &live_in, &live_out);
    *in = s->bytes_in + live_in;
    *out = s->bytes_out + live_out;
}

uint16_t dp_session_backend_port(const dp_session *s)
{
    if (s->ops->proto == DPH_PROTO_SSH)
        return s->route.ssh_port != 0 ? s->route.ssh_port : 22;
    return s->route.ftp_port != 0 ? s->route.ftp_port : 21;
}

int dp_session_dial(dp_session *s, dp_dial **out, int timeout_ms, dp_dial_cb cb, void *arg)
{
    const dp_daemon_conf *dc = dp_daemon_worker_conf(s->w); /* every daemon's conf starts so */
    dp_dial_opts o = {
        .address = s->route.address,
        .port = dp_session_backend_port(s),
        .timeout_ms = timeout_ms,
        .keepalive_s = dc->tcp_keepalive_s,
    };
    return dp_dial_start(out, dp_worker_loop(s->w), &o, cb, arg);
}

void dp_session_log(const dp_session *s, const char *event, const char *fmt, ...)
{
    char fields[1024] = "";
    if (fmt != NULL) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(fields, sizeof fields, fmt, ap);
        va_end(ap);
    }
    char user[160], backend[100];
    dp_log_event(DP_LOG_INFO, NULL, event, "sid=%s user=%s client=%s backend=%s%s%s", s->sid,
                 dp_logq(user, sizeof user, s->user[0] ? s->user : "-"), s->client_text,
                 dp_logq(backend, sizeof backend,
                         s->route_known && s->route.backend[0] ? s->route.backend : "-"),
                 fields[0] ? " " : "", fields);
}

/* The hook's optional session_start/session_end ops, fire-and-forget on the threadpool. */
static void notify_hook(dp_session *s, bool end)
{
    dph_session hs = {
        .struct_size = sizeof hs,
        .id = s->sid,
        .user = s->user,
        .client_ip = s->client_text,
        .backend = s->route.backend,
        .proto = s->ops->proto,
        .started_unix_ms = s->started_unix_ms,
        .end_reason = end ? s->reason : NULL,
    };
    dp_session_bytes(s, &hs.bytes_in, &hs.bytes_out);
    dp_hook_session_event(dp_daemon_worker_hook(s->w), dp_worker_loop(s->w), &hs, end);
}

void dp_session_logged_in(dp_session *s)
{
    s->logged_in = true;
    notify_hook(s, false);
}

bool dp_session_end(dp_session *s)
{
    if (s->ended)
        return false;
    s->ended = true;
    uint64_t in, out;
    dp_session_bytes(s, &in, &out);
    if (s->ops->log_every_end || s->logged_in || s->user[0] != '\0') {
        char extra[256] = "", reason[200];
        if (s->ops->end_fields != NULL)
            s->ops->end_fields(s, extra, sizeof extra);
        dp_session_log(s, "session_end",
                       "%s%sbytes_in=%llu bytes_out=%llu duration_ms=%llu reason=%s", extra,
                       extra[0] ? " " : "", (unsigned long long)in, (unsigned long long)out,
                       (unsigned long long)(dp_now_ms() - s->started_ms),
                       dp_logq(reason, sizeof reason, s->reason[0] ? s->reason : "closed"));
    }
    if (s->logged_in)
        notify_hook(s, true);
    dp_metrics_bytes(in, out);
    dp_daemon_session_closed(s->w, dp_session_result(s));
    s->ops->teardown(s);
    dp_session_unref(s);
    return true;
}

/* ---- references ---- */

void dp_session_ref(dp_session *s)
{
    s->refs++;
}

void dp_session_unref(dp_session *s)
{
    if (--s->refs > 0)
        return;
    dp_session_set *set = dp_daemon_worker_sessions(s->w);
    if (s->prev != NULL)
        s->prev->next = s->next;
    else
        set->head = s->next;
    if (s->next != NULL)
        s->next->prev = s->prev;
    set->n--;
    s->ops->free(s);
    trim_soon(set, dp_now_ms());
}

void dp_session_own_handle(dp_session *s, uv_handle_t *h, bool *open)
{
    h->data = s;
    *open = true;
    s->refs++;
}

void dp_session_handle_closed(uv_handle_t *h)
{
    dp_session_unref(h->data);
}

void dp_session_close_handle(dp_session *s, uv_handle_t *h, bool *open)
{
    if (!*open)
        return;
    *open = false;
    h->data = s;
    uv_close(h, dp_session_handle_closed);
}

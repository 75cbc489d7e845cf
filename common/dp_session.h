/*
 * dp_session.h - what every proxied session is, whatever its protocol: its id and log prefix,
 * the client (the PROXY header's address when there was one), the user and the route, start
 * time, byte counters, the end reason and result, the one `session_end` line, the hook's
 * session_start/session_end notifications, drain and metrics accounting, membership in its
 * worker's session set (behind `sessions` and `kick`), the ownership rule for the handles it
 * owns, and the memory policy of the worker (dp_session_set).
 *
 * A daemon embeds a dp_session as the FIRST member of its session struct (sshp_conn,
 * ftpp_sess), so the handle data pointers the core sets (h->data = the dp_session) are the
 * daemon's session too, and describes its protocol with a dp_session_ops.
 *
 * Ownership (libuv's rule: memory goes in the last close callback, never earlier):
 * - dp_session_start gives the session one reference: its own, dropped at the end of
 *   dp_session_end, after ops->teardown.
 * - every handle a session owns takes one (dp_session_own_handle) and gives it back in its
 *   close callback (dp_session_close_handle, or a callback of the daemon that ends with
 *   dp_session_unref); so does every request that calls back into the session (a name
 *   lookup, a hook call, work on the threadpool): dp_session_ref when it starts,
 *   dp_session_unref when its callback has run.
 * - at zero the session leaves its set and ops->free releases the memory.
 * Everything here runs on the session's worker loop.
 */
#ifndef DP_SESSION_H
#define DP_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "dp_daemon.h"
#include "dp_dial.h"

typedef struct dp_session dp_session;

/* What the core needs from the protocol; members marked optional may be NULL. */
typedef struct dp_session_ops {
    dph_proto proto; /* the hook's notifications, the proto column of `sessions`, the port */
    /* A session_end line for every connection (FTP), or only for those that named a user
     * (SSH: a connection that fails its key exchange has its own kex_fail line). */
    bool log_every_end;
    /* Sent to each client when the worker stops ("proxy shutting down"). */
    const char *shutdown_message;
    /* The state column of `sessions` ("auth", "active", "transfer"). */
    const char *(*state)(const dp_session *s);
    /* Optional: bytes moved by parts still running (channels, a transfer), added to the
     * session's own counters in `sessions`, the hook and the session_end line. */
    void (*live_bytes)(const dp_session *s, uint64_t *in, uint64_t *out);
    /* End the session, telling the client `message` (SSH: the disconnect message; FTP: a
     * 421); the log says `reason`. Ignored by a session already ending. */
    void (*kick)(dp_session *s, const char *message, const char *reason);
    /* Optional: protocol fields of the session_end line ("auth=publickey client_read=4821"),
     * written after backend=; returns the length written. */
    int (*end_fields)(const dp_session *s, char *buf, size_t len);
    /* After the accounting of dp_session_end: stop everything and close every handle. */
    void (*teardown)(dp_session *s);
    /* Optional, once a second: give back memory a session quiet since `now_ms - 1 s` holds
     * (libssh's buffers); the bytes given back. */
    size_t (*release_idle)(dp_session *s, uint64_t now_ms);
    /* The last reference is gone: free the daemon's session. */
    void (*free)(dp_session *s);
} dp_session_ops;

#define DP_SESSION_PREFIX_MAX 400
#define DP_SESSION_REASON_MAX 160

struct dp_session {
    const dp_session_ops *ops;
    dp_worker *w;
    dp_session *prev, *next; /* the worker's set */
    char sid[16];            /* worker index (2 hex digits) + counter (6) */
    char
        prefix[DP_SESSION_PREFIX_MAX]; /* logfmt fields for dp_slog_*: sid, user, client, backend */
    char client_text[64];              /* ip:port */
    struct sockaddr_storage client;    /* the real client (PROXY protocol aware) */
    uint64_t started_ms;               /* dp_now_ms() */
    int64_t started_unix_ms;
    char user[DPH_USER_MAX];
    dph_route route; /* valid when route_known */
    bool route_known;
    bool logged_in;    /* login completed: the hook was told, the result is ok */
    int auth_failures; /* failed login attempts (the result of a session that never got in) */
    uint64_t bytes_in, bytes_out;       /* client->backend, backend->client, of parts that ended */
    char reason[DP_SESSION_REASON_MAX]; /* why it ends; the first cause recorded wins */
    bool end_result_set;
    dp_sess_result end_result;
    bool ended; /* dp_session_end ran: nothing may start any more */
    int refs;
};

/* ---- the worker's set ---- */

/* The sessions of one worker (dp_daemon keeps one per worker: dp_daemon_worker_sessions) and
 * its memory policy, once a second:
 * - sessions quiet for a second give their idle buffers back (ops->release_idle);
 * - glibc keeps freed heap pages: after sessions ended or buffers came back, RSS would stay at
 *   its high-water mark and creep up with churn, so malloc_trim gives free pages back, at
 *   most once a second (it walks every arena under its lock), and at once when the worker's
 *   last session has gone. */
typedef struct dp_session_set {
    dp_session *head;
    unsigned n;
    uint32_t next_id;
    uv_timer_t housekeeping;
    bool housekeeping_open;
    bool trim_due; /* sessions ended or buffers were given back since the last trim */
    uint64_t last_trim_ms;
} dp_session_set;

/* Start the 1 Hz pass (it never keeps a stopping loop alive). Returns 0 or a negative errno. */
int dp_session_set_start(dp_session_set *set, uv_loop_t *loop);
/* The worker stops: close the timer and kick every session with its shutdown message. */
void dp_session_set_stop(dp_session_set *set);
/* `sessions` / `kick`: add every session matching `f` to `out`; with `kick`, end each of
 * them telling the client `kick` (the log says "kicked: <kick>"). */
void dp_session_set_list(dp_session_set *set, const dp_session_filter *f, const char *kick,
                         dp_session_list *out);

/* ---- one session ---- */

/* A connection was accepted: fill in the core (zeroed by the caller's calloc), join the
 * worker's set and count the session (drain, sessions_active). */
void dp_session_start(dp_session *s, dp_worker *w, const dp_session_ops *ops,
                      const dp_conn_info *ci);

/* The user is known / the route is: the log prefix names them from now on. */
void dp_session_set_user(dp_session *s, const char *user);
void dp_session_set_route(dp_session *s, const dph_route *route);

/* Why the session is ending, for the log (the first reason wins) / for
 * dynproxy_sessions_total (the first cause wins). */
void dp_session_set_reason(dp_session *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void dp_session_end_as(dp_session *s, dp_sess_result r);
/* The result counted at the end: the recorded cause, else logged in = ok, else auth_failed
 * after a failed attempt, else error (the client left before trying). */
dp_sess_result dp_session_result(const dp_session *s);

/* Bytes so far, including parts still running. */
void dp_session_bytes(const dp_session *s, uint64_t *in, uint64_t *out);

/* The backend port of the session's route for its protocol (22 / 21 when the route has none). */
uint16_t dp_session_backend_port(const dp_session *s);

/* Dial the route's backend (core.route.address, dp_session_backend_port) with the worker's
 * keepalive setting; dp_dial_start's contract. */
int dp_session_dial(dp_session *s, dp_dial **out, int timeout_ms, dp_dial_cb cb, void *arg);

/* One info line `event=<event> sid= user= client= backend= <fields>` (fields may be NULL). */
void dp_session_log(const dp_session *s, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Login completed: counted as ok from now on, and the hook's session_start is sent. */
void dp_session_logged_in(dp_session *s);

/* The end, once: the session_end line, the hook's session_end (if it logged in), byte and
 * result metrics, drain's count; then ops->teardown, then the session's own reference goes.
 * Returns false when the session had already ended. */
bool dp_session_end(dp_session *s);

void dp_session_ref(dp_session *s);
void dp_session_unref(dp_session *s);
/* An initialised handle now belongs to the session: h->data = s, *open = true, one reference
 * until its close callback. */
void dp_session_own_handle(dp_session *s, uv_handle_t *h, bool *open);
/* uv_close it (once) with a callback that drops its reference. */
void dp_session_close_handle(dp_session *s, uv_handle_t *h, bool *open);
/* That callback, for handles closed by other means (h->data = the session). */
void dp_session_handle_closed(uv_handle_t *h);

#endif

/* sshp_conn.c - one proxied SSH connection: accept, the pump that drives both libssh sessions
 * from libuv readiness, deadlines, the disconnect message, teardown and the session log line. */
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dp_linger.h"
#include "dp_log.h"
#include "dp_sockstat.h"
#include "dp_util.h"
#include "sshp.h"

/* dopoll reads at most SSHP_LIBSSH_READ_MAX per call: loop while it makes progress, bounded
 * so one busy connection cannot starve the others on the loop (up to 1 MiB per turn).
 * Measured (bench/ssh_bench.py, libssh 0.10, 4 KiB reads): 64 -> 256 calls took a 1 GiB
 * chacha20 stream from 396 to 440 MB/s and aes128-gcm from 729 to 834 MB/s (less pump
 * overhead per byte); 1024 gave no more. */
#define DOPOLL_BUDGET SSHP_READS_FOR(1u << 20)
/* How long a disconnect message may take to flush before the socket is just closed. */
#define CLOSE_FLUSH_MS 2000
/* What a client that keeps sending after our DISCONNECT may make us read and discard (no
 * memory is kept for it) before its connection is reset. */
#define LINGER_MAX_BYTES (16u << 20)
/* ...and how long, when the worker is stopping (within shutdown_timeout_ms). */
#define LINGER_STOPPING_MS 200
#define PUMP_ROUNDS 8
/* Messages handled per session per round: a client that keeps sending must not hold the loop
 * (ssh_message_get reads more whenever its queue is empty). */
#define MESSAGE_BUDGET 64
/* ...and the bytes those message reads may take from the client's socket per turn (each
 * ssh_message_get reads up to SSHP_LIBSSH_READ_MAX when libssh's queue is empty). */
#define MESSAGE_READ_BYTES (256u * 1024)

static void conn_end(sshp_conn *c);

/* A closing connection ends before its DISCONNECT could be written (the flush deadline, or
 * the reads a closing connection gets, ran out): the log says so. */
static void end_unflushed(sshp_conn *c)
{
    snprintf(c->core.reason + strlen(c->core.reason),
             sizeof c->core.reason - strlen(c->core.reason), " (disconnect message not flushed)");
    conn_end(c);
}

/* ---- memory and handles ---- */

/* libssh buffers keep their largest allocation: a session that has streamed holds up to about
 * 2 MiB in its packet, socket and channel buffers (what a slow reader left in the channel's)
 * for as long as it lives. A connection with no data for a second gives the empty ones back
 * (libssh patch 0005), once per quiet spell; the next packet allocates again. The worker's
 * 1 Hz pass calls this (dp_session_set), and trims the heap when enough came back. */
#define IDLE_RELEASE_MS 1000

static size_t release_idle(dp_session *core, uint64_t now)
{
    size_t released = 0;
#ifdef SSHP_HAVE_RELEASE_BUFFERS
    sshp_conn *c = (sshp_conn *)core;
    if (c->state != SSHP_CONN_OPEN || c->buffers_released_at == c->last_activity_ms ||
        now - c->last_activity_ms < IDLE_RELEASE_MS)
        return 0;
    c->buffers_released_at = c->last_activity_ms;
    released = ssh_session_release_buffers(c->client.session) +
               ssh_session_release_buffers(c->backend.session);
#else
    (void)core;
    (void)now;
#endif
    return released;
}

static void conn_free(dp_session *core)
{
    sshp_conn *c = (sshp_conn *)core;
    ssh_key_free(c->auth.route_key); /* loaded after teardown, or never freed by it */
    free(c);
}

static void handle_closed(uv_handle_t *h)
{
    sshp_conn *c = h->data;
    if (h == (uv_handle_t *)&c->client.poll && c->client.poll_fd >= 0) {
        /* after our DISCONNECT, the client's further input must not turn our close into an
         * RST that drops the DISCONNECT unread (dp_linger.h); our dup is the last fd */
        if (c->client.linger)
            dp_linger_close(dp_worker_loop(c->core.w), c->client.poll_fd,
                            dp_worker_stopping(c->core.w) ? LINGER_STOPPING_MS : CLOSE_FLUSH_MS,
                            LINGER_MAX_BYTES);
        else
            close(c->client.poll_fd);
        c->client.poll_fd = -1;
    } else if (h == (uv_handle_t *)&c->backend.poll && c->backend.poll_fd >= 0) {
        close(c->backend.poll_fd);
        c->backend.poll_fd = -1;
    }
    dp_session_unref(&c->core);
}

void sshp_conn_close_handle(sshp_conn *c, uv_handle_t *h, bool *open)
{
    if (*open) {
        *open = false;
        uv_close(h, handle_closed);
    }
}

static void on_timer(uv_timer_t *t);

void sshp_conn_arm_timer(sshp_conn *c, uint64_t ms)
{
    if (c->timer_open) {
        uv_update_time(dp_worker_loop(c->core.w));
        uv_timer_start(&c->timer, on_timer, ms, 0);
    }
}

static void on_chan_timer(uv_timer_t *t)
{
    sshp_conn_pump(t->data);
}

static void on_next_turn(uv_idle_t *h)
{
    uv_idle_stop(h);
    sshp_conn_pump(h->data);
}

void sshp_conn_arm_chan_timer(sshp_conn *c, uint64_t ms)
{
    if (!c->chans.timer_open)
        return;
    if (ms == 0) {
        uv_timer_stop(&c->chans.timer);
        return;
    }
    uv_update_time(dp_worker_loop(c->core.w));
    uv_timer_start(&c->chans.timer, on_chan_timer, ms, 0);
}

/* ---- polls ---- */

static void on_poll(uv_poll_t *p, int status, int events)
{
    sshp_conn *c = p->data;
    if (p == &c->client.poll && (status < 0 || (events & UV_WRITABLE)))
        c->client.writable = true;
    sshp_conn_pump(c);
}

/* Whether the client's socket may be read now (see held_bytes in sshp.h): not while the
 * requests we hold are at their byte bound, not while libssh may still hold parsed messages we
 * have not taken (the next round takes them first), and, once closing, only as a side effect
 * of flushing (a bounded number of times). */
static bool client_readable(const sshp_conn *c)
{
    return c->state != SSHP_CONN_CLOSING && !c->client.backlog && c->held_bytes < SSHP_HELD_MAX;
}

static void arm_poll(sshp_conn *c, uv_poll_t *p, bool *open, ssh_session s)
{
    if (!*open)
        return;
    if (s == NULL || ssh_get_fd(s) == SSH_INVALID_SOCKET) {
        uv_poll_stop(p);
        return;
    }
    if (s == c->client.session && c->state != SSHP_CONN_CLOSING && !client_readable(c)) {
        /* Not even writable: libssh keeps POLLOUT in its flags after input came in the same
         * poll, so a writable socket would fire on every loop turn with nothing to do. The
         * backlog is driven by next_turn; a drop of held_bytes comes with a backend event. */
        uv_poll_stop(p);
        return;
    }
    /* a closing client is only written to (its reads come with the flushes, see pump_once) */
    int ev = s == c->client.session && c->state == SSHP_CONN_CLOSING ? UV_WRITABLE : UV_READABLE;
    if (ssh_get_poll_flags(s) & SSH_WRITE_PENDING)
        ev |= UV_WRITABLE;
    uv_poll_start(p, ev, on_poll);
}

int sshp_poll_open(sshp_conn *c, uv_poll_t *p, bool *open, int *dupfd, int fd)
{
    /* libssh closes its fd on EOF, error or DISCONNECT, inside its own calls; polling a dup
     * means the fd number we watch cannot be reused by the next accept() under us. */
    *dupfd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (*dupfd < 0)
        return -errno;
    int rc = uv_poll_init_socket(dp_worker_loop(c->core.w), p, *dupfd);
    if (rc != 0) {
        close(*dupfd);
        *dupfd = -1;
        return rc;
    }
    dp_session_own_handle(&c->core, (uv_handle_t *)p, open);
    return 0;
}

/* ---- pump ---- */

static bool session_dead(ssh_session s)
{
    return s == NULL || ssh_get_fd(s) == SSH_INVALID_SOCKET ||
           (ssh_get_status(s) & (SSH_CLOSED | SSH_CLOSED_ERROR)) != 0;
}

/* libssh 0.12 drops a data packet larger than the channel's window and only records "Window
 * exceeded" as a fatal error on the session (channels.c, channel_rcv_data): the peer ignores
 * flow control, and would go on sending into the void. End it as one that overfills the
 * staging (HARD_CAP in sshp_channel.c) is ended. */
static void check_window_abuse(sshp_conn *c, ssh_session s)
{
    if (c->abuse == NULL && s != NULL && ssh_get_error_code(s) == SSH_FATAL &&
        strstr(ssh_get_error(s), "Window exceeded") != NULL) {
        c->abuse = "peer ignores the channel window";
        c->pump_again = true;
    }
}

/* Read and process what session s has, up to the budget; the error libssh records is looked
 * at after every call, before a later one can overwrite it. */
static void dopoll(sshp_conn *c, ssh_event ev, ssh_session s)
{
    for (unsigned i = 0; i < DOPOLL_BUDGET; i++) {
        int rc = ssh_event_dopoll(ev, 0);
        check_window_abuse(c, s);
        if (rc != SSH_OK)
            break;
    }
}

static void dispatch_client(sshp_conn *c, ssh_message m)
{
    int type = ssh_message_type(m);
    if (type == SSH_REQUEST_AUTH || type == SSH_REQUEST_SERVICE) {
        sshp_auth_message(c, m);
    } else if (c->state != SSHP_CONN_OPEN) {
        ssh_message_reply_default(m);
        ssh_message_free(m);
    } else if (type == SSH_REQUEST_CHANNEL_OPEN) {
        sshp_channel_open_message(c, m);
    } else if (type == SSH_REQUEST_CHANNEL) {
        sshp_channel_request_message(c, m);
    } else if (type == SSH_REQUEST_GLOBAL) {
        sshp_global_message(c, m);
    } else {
        ssh_message_reply_default(m);
        ssh_message_free(m);
    }
}

static bool live_backend_channel(sshp_conn *c, ssh_channel ch)
{
    for (sshp_pair *p = c->chans.pairs; p != NULL; p = p->next)
        if (p->b.ch == ch && p->state != SSHP_PAIR_DONE)
            return true;
    return false;
}

static void dispatch_backend(sshp_conn *c, ssh_message m)
{
    /* A channel request whose channel libssh may already have freed (the backend closed it
     * in the same poll): replying would read freed memory. */
    if (ssh_message_type(m) == SSH_REQUEST_CHANNEL &&
        !live_backend_channel(c, ssh_message_channel_request_channel(m))) {
        ssh_message_free(m);
        return;
    }
    /* Forwarded-tcpip and agent channel opens go to the channel bridge; anything else (e.g.
     * "eow@openssh.com" channel requests) is answered so nothing piles up in libssh's
     * unbounded queue. */
    if (ssh_message_type(m) == SSH_REQUEST_CHANNEL_OPEN && c->state == SSHP_CONN_OPEN) {
        sshp_channel_backend_open(c, m);
        return;
    }
    ssh_message_reply_default(m);
    ssh_message_free(m);
}

static void pump_once(sshp_conn *c)
{
    if (c->client.session != NULL && !session_dead(c->client.session)) {
        if (client_readable(c)) {
            dopoll(c, c->client.event, c->client.session);
        } else if (c->state == SSHP_CONN_CLOSING && c->client.writable &&
                   c->client.closing_reads < SSHP_CLOSING_READS) {
            /* the socket takes more of our output: flush it (this reads at most
             * SSHP_LIBSSH_READ_MAX too, which nothing will look at). Once a writable poll
             * found nothing left to write, libssh knows the socket is writable
             * (write_wontblock) and ssh_disconnect will write the DISCONNECT at once. */
            c->client.writable = false;
            c->client.closing_reads++;
            bool was_empty = !(ssh_get_status(c->client.session) & SSH_WRITE_PENDING);
            ssh_event_dopoll(c->client.event, 0);
            c->client.closing_writable =
                was_empty && !(ssh_get_status(c->client.session) & SSH_WRITE_PENDING);
        }
    }
    if (c->backend.session != NULL && c->backend.event != NULL && !session_dead(c->backend.session))
        dopoll(c, c->backend.event, c->backend.session);

    if (c->state == SSHP_CONN_KEX) {
        int rc = ssh_handle_key_exchange(c->client.session);
        if (rc == SSH_OK) {
            c->state = SSHP_CONN_AUTH;
        } else if (rc == SSH_ERROR) {
            snprintf(c->core.reason, sizeof c->core.reason, "key exchange failed: %s",
                     ssh_get_error(c->client.session));
            /* Logged although no user is known yet (OpenSSH logs "Unable to negotiate" too):
             * a customer whose old client offers nothing the defaults keep is found here. */
            char reason[300];
            dp_log_event(DP_LOG_INFO, NULL, "kex_fail", "sid=%s client=%s reason=%s", c->core.sid,
                         c->core.client_text, dp_logq(reason, sizeof reason, c->core.reason));
            conn_end(c);
            return;
        }
    }
    if (c->backend.state == SSHP_BE_WANTED && c->state == SSHP_CONN_AUTH)
        sshp_backend_start(c);
    if (c->backend.state == SSHP_BE_HANDSHAKE)
        sshp_backend_step(c);
    if (c->state == SSHP_CONN_DEAD)
        return;

    if (c->state == SSHP_CONN_AUTH || c->state == SSHP_CONN_OPEN) {
        ssh_message m;
        int n = 0;
        uint64_t read_before = c->client.counter.in_bytes;
        /* ssh_message_get reads when libssh's queue is empty: not over the bound, and not more
         * than MESSAGE_READ_BYTES per turn */
        c->client.backlog = false;
        while (c->state != SSHP_CONN_DEAD && c->state != SSHP_CONN_CLOSING &&
               !session_dead(c->client.session) && c->held_bytes < SSHP_HELD_MAX &&
               n < MESSAGE_BUDGET && (m = ssh_message_get(c->client.session)) != NULL) {
            dispatch_client(c, m);
            if (++n == MESSAGE_BUDGET ||
                c->client.counter.in_bytes - read_before >= MESSAGE_READ_BYTES) {
                c->client.backlog = true;
                c->pump_again = true;
                break;
            }
        }
    }
    if (c->backend.session != NULL && c->backend.state >= SSHP_BE_READY &&
        c->backend.state != SSHP_BE_FAILED && c->state != SSHP_CONN_DEAD) {
        ssh_message m;
        int n = 0;
        while (!session_dead(c->backend.session) && n < MESSAGE_BUDGET &&
               (m = ssh_message_get(c->backend.session)) != NULL) {
            dispatch_backend(c, m);
            if (++n == MESSAGE_BUDGET)
                c->pump_again = true;
        }
    }
    if (c->state == SSHP_CONN_AUTH)
        sshp_auth_progress(c);
    bool over = c->held_bytes >= SSHP_HELD_MAX;
    if (c->state == SSHP_CONN_OPEN)
        sshp_channels_progress(c);
    if (over && c->held_bytes < SSHP_HELD_MAX)
        c->pump_again = true; /* libssh may hold messages we stopped taking at the bound */
    if (c->state == SSHP_CONN_DEAD)
        return;
    if (c->abuse != NULL && c->state != SSHP_CONN_CLOSING) {
        dp_slog_warn(c->core.prefix, "ending the connection: %s", c->abuse);
        dp_session_end_as(&c->core, DP_SESS_ERROR);
        sshp_conn_fail(c, c->abuse, "protocol violation");
        return;
    }

    if (c->state == SSHP_CONN_CLOSING) {
        /* ssh_disconnect writes the DISCONNECT at once only if libssh's output buffer is empty
         * and the socket was last seen writable; otherwise the packet stays in a buffer that
         * ssh_disconnect then frees (libssh 0.10 socket.c, write_wontblock). The poll flags
         * alone cannot tell: POLLOUT stays in them when input came in the same poll. */
        bool dead = session_dead(c->client.session);
        bool ready = dead || (!(ssh_get_status(c->client.session) & SSH_WRITE_PENDING) &&
                              (!(ssh_get_poll_flags(c->client.session) & SSH_WRITE_PENDING) ||
                               c->client.closing_writable));
        if (!ready && c->client.closing_reads >= SSHP_CLOSING_READS) {
            end_unflushed(c);
            return;
        }
        if (ready) {
            if (!dead) {
                /* Out of the event first: ssh_disconnect may leave the socket's poll handle
                 * orphaned in an event that still holds the session. */
                ssh_event_remove_session(c->client.event, c->client.session);
                ssh_disconnect(
                    c->client.session); /* writes the message now that the output is idle */
                c->client.linger = true;
            }
            conn_end(c);
        }
        return;
    }
    if (session_dead(c->client.session)) {
        dp_session_set_reason(&c->core, "%s",
                              c->state == SSHP_CONN_OPEN ? "client closed"
                                                         : "client left before login");
        conn_end(c);
        return;
    }
    if (c->state == SSHP_CONN_OPEN && session_dead(c->backend.session)) {
        dp_session_end_as(&c->core, DP_SESS_ERROR);
        sshp_conn_fail(c, "backend closed the connection", "backend closed the connection");
        return;
    }
}

void sshp_conn_pump(sshp_conn *c)
{
    if (c->state == SSHP_CONN_DEAD)
        return;
    if (c->in_pump) {
        c->pump_again = true;
        return;
    }
    c->in_pump = true;
    int rounds = 0;
    do {
        c->pump_again = false;
        pump_once(c);
    } while (c->pump_again && c->state != SSHP_CONN_DEAD && ++rounds < PUMP_ROUNDS);
    c->in_pump = false;
    if (c->state == SSHP_CONN_DEAD)
        return;
    /* Out of rounds with work left (a budget ran out, or the connection began closing): what
     * is left may already sit in libssh's buffers, where no poll event will announce it. */
    if (c->pump_again && c->next_turn_open)
        uv_idle_start(&c->next_turn, on_next_turn);
    arm_poll(c, &c->client.poll, &c->client.poll_open, c->client.session);
    if (c->backend.state >= SSHP_BE_HANDSHAKE)
        arm_poll(c, &c->backend.poll, &c->backend.poll_open, c->backend.session);
}

/* ---- deadlines ---- */

static void on_timer(uv_timer_t *t)
{
    sshp_conn *c = t->data;
    switch (c->state) {
    case SSHP_CONN_KEX:
    case SSHP_CONN_AUTH:
        dp_session_end_as(&c->core, DP_SESS_TIMEOUT);
        sshp_conn_fail(c, "login grace time exceeded", "login grace time exceeded");
        break;
    case SSHP_CONN_OPEN: {
        /* Armed for the full idle time after the last activity; traffic since then only
         * moves the deadline (cheaper than re-arming the timer for every write). */
        uint64_t idle_ms = (uint64_t)sshp_conf_of(c->core.w)->idle_timeout_s * 1000;
        uint64_t since = dp_now_ms() - c->last_activity_ms;
        if (since < idle_ms)
            sshp_conn_arm_timer(c, idle_ms - since);
        else {
            dp_session_end_as(&c->core, DP_SESS_TIMEOUT);
            sshp_conn_fail(c, "idle timeout", "idle timeout");
        }
        break;
    }
    case SSHP_CONN_CLOSING:
        end_unflushed(c);
        break;
    case SSHP_CONN_DEAD:
        break;
    }
}

/* ---- ending ---- */

void sshp_conn_fail(sshp_conn *c, const char *reason, const char *client_msg)
{
    if (c->state == SSHP_CONN_CLOSING || c->state == SSHP_CONN_DEAD)
        return;
    dp_session_set_reason(&c->core, "%s", reason);
    if (client_msg == NULL || session_dead(c->client.session)) {
        conn_end(c);
        return;
    }
    /* A client whose session channel closes exits at once and may never read the DISCONNECT
     * behind it: say why on each session channel's stderr first. */
    sshp_channels_notify(c, client_msg);
    /* ssh_disconnect frees the session's channels itself: our pairs (and their libssh
     * channels) go first, so nothing touches a freed channel later. Their CLOSEs are queued
     * now and flushed with everything else before the DISCONNECT. */
    sshp_channels_free_all(c);
    /* libssh drops the DISCONNECT unless the output side is idle when ssh_disconnect runs:
     * flush first (the pump calls ssh_disconnect when nothing is pending), bounded. */
    ssh_session_set_disconnect_message(c->client.session, client_msg);
    c->client.writable = false; /* only a writable poll from now on counts (closing reads) */
    c->state = SSHP_CONN_CLOSING;
    sshp_conn_arm_timer(c, CLOSE_FLUSH_MS);
    if (!c->in_pump)
        sshp_conn_pump(c);
    else
        c->pump_again = true; /* the CLOSING step must run even if no I/O event ever comes */
}

/* dp_session_ops.kick: `sessions kick`, a moved user, the worker stopping. */
static void kick(dp_session *core, const char *message, const char *reason)
{
    sshp_conn *c = (sshp_conn *)core;
    if (c->state == SSHP_CONN_CLOSING || c->state == SSHP_CONN_DEAD)
        return;
    dp_session_set_reason(&c->core, "%s", reason);
    dp_session_end_as(&c->core, DP_SESS_KICKED);
    sshp_conn_fail(c, c->core.reason, message);
}

static const char *const state_names[] = {
    [SSHP_CONN_KEX] = "kex",         [SSHP_CONN_AUTH] = "auth",   [SSHP_CONN_OPEN] = "open",
    [SSHP_CONN_CLOSING] = "closing", [SSHP_CONN_DEAD] = "closed",
};

static const char *state_name(const dp_session *core)
{
    return state_names[((const sshp_conn *)core)->state];
}

/* Channel data of the pairs still open (closed pairs are in core.bytes_in/out). */
static void live_bytes(const dp_session *core, uint64_t *in, uint64_t *out)
{
    const sshp_conn *c = (const sshp_conn *)core;
    *in = sshp_channels_bytes(c, true);
    *out = sshp_channels_bytes(c, false);
}

/* client_read: raw bytes taken from the client's socket (packets, padding, MACs), the measure
 * of the read bounds in sshp.h; our dup of the fd keeps the socket to ask. */
static int end_fields(const dp_session *core, char *buf, size_t len)
{
    const sshp_conn *c = (const sshp_conn *)core;
    uint64_t taken = 0;
    if (c->client.poll_fd >= 0)
        dp_sock_bytes_read(c->client.poll_fd, &taken);
    return snprintf(buf, len, "auth=%s client_read=%llu", c->auth.method ? c->auth.method : "none",
                    (unsigned long long)taken);
}

/* dp_session_ops.teardown: after the accounting of dp_session_end. */
static void teardown(dp_session *core)
{
    sshp_conn *c = (sshp_conn *)core;
    c->state = SSHP_CONN_DEAD;
    if (c->startup_slot) {
        sshp_startup_release((struct sockaddr *)&c->core.client);
        c->startup_slot = false;
    }
    sshp_auth_cleanup(c);
    sshp_channels_free_all(c);
    sshp_backend_cleanup(c);
    if (c->client.session != NULL) {
        if (c->client.event != NULL)
            ssh_event_remove_session(c->client.event, c->client.session);
        ssh_free(c->client.session); /* closes the client fd */
        c->client.session = NULL;
    }
    if (c->client.event != NULL) {
        ssh_event_free(c->client.event);
        c->client.event = NULL;
    }
    sshp_conn_close_handle(c, (uv_handle_t *)&c->client.poll, &c->client.poll_open);
    sshp_conn_close_handle(c, (uv_handle_t *)&c->timer, &c->timer_open);
    sshp_conn_close_handle(c, (uv_handle_t *)&c->auth.fail_timer, &c->auth.fail_timer_open);
    sshp_conn_close_handle(c, (uv_handle_t *)&c->chans.timer, &c->chans.timer_open);
    sshp_conn_close_handle(c, (uv_handle_t *)&c->next_turn, &c->next_turn_open);
}

static void conn_end(sshp_conn *c)
{
    dp_session_end(&c->core);
}

static const dp_session_ops sshp_session_ops = {
    .proto = DPH_PROTO_SSH,
    .log_every_end = false, /* a failed key exchange has its kex_fail line */
    .shutdown_message = "proxy shutting down",
    .state = state_name,
    .live_bytes = live_bytes,
    .kick = kick,
    .end_fields = end_fields,
    .teardown = teardown,
    .release_idle = release_idle,
    .free = conn_free,
};

/* ---- accept ---- */

void sshp_conn_accept(sshp_worker *sw, const dp_conn_info *ci)
{
    const sshp_conf *cf = sshp_conf_of(sw->w);
    char addr[64];
    dp_sockaddr_format((const struct sockaddr *)&ci->peer, addr, sizeof addr);
    int rc = sshp_startup_acquire((const struct sockaddr *)&ci->peer, cf->max_startups,
                                  cf->max_startups_per_ip);
    if (rc != 0) {
        dp_log_event(DP_LOG_WARN, NULL, "refused", "client=%s reason=%s", addr,
                     rc == -EUSERS ? "max_startups_per_ip" : "max_startups");
        dp_metrics_session_refused();
        close(ci->fd);
        return;
    }
    sshp_conn *c = calloc(1, sizeof *c);
    if (c == NULL) {
        sshp_startup_release((const struct sockaddr *)&ci->peer);
        close(ci->fd);
        return;
    }
    c->sw = sw;
    dp_session_start(&c->core, sw->w, &sshp_session_ops, ci);
    c->startup_slot = true;
    c->client.poll_fd = c->backend.poll_fd = c->backend.fd = -1;

    uv_loop_t *loop = dp_worker_loop(sw->w);
    uv_timer_init(loop, &c->timer);
    dp_session_own_handle(&c->core, (uv_handle_t *)&c->timer, &c->timer_open);
    uv_timer_init(loop, &c->auth.fail_timer);
    dp_session_own_handle(&c->core, (uv_handle_t *)&c->auth.fail_timer, &c->auth.fail_timer_open);
    uv_timer_init(loop, &c->chans.timer);
    dp_session_own_handle(&c->core, (uv_handle_t *)&c->chans.timer, &c->chans.timer_open);
    uv_idle_init(loop, &c->next_turn);
    dp_session_own_handle(&c->core, (uv_handle_t *)&c->next_turn, &c->next_turn_open);

    c->client.session = ssh_new();
    if (c->client.session == NULL) {
        close(ci->fd);
        snprintf(c->core.reason, sizeof c->core.reason, "out of memory");
        conn_end(c);
        return;
    }
    ssh_set_counters(c->client.session, &c->client.counter, NULL);
    if (ssh_bind_accept_fd(sw->bind, c->client.session, ci->fd) != SSH_OK) {
        dp_slog_error(c->core.prefix, "ssh_bind_accept_fd: %s", ssh_get_error(sw->bind));
        if (ssh_get_fd(c->client.session) != ci->fd)
            close(ci->fd); /* not handed over: ours to close */
        snprintf(c->core.reason, sizeof c->core.reason, "accept failed");
        conn_end(c);
        return;
    }
    ssh_options_set(c->client.session, SSH_OPTIONS_COMPRESSION_C_S, "none");
    ssh_options_set(c->client.session, SSH_OPTIONS_COMPRESSION_S_C, "none");
    ssh_set_blocking(c->client.session, 0);
    /* The first call sends our banner and sets up the session's poll context, which
     * ssh_event_add_session needs. */
    rc = ssh_handle_key_exchange(c->client.session);
    c->client.event = ssh_event_new();
    if (rc == SSH_ERROR || c->client.event == NULL ||
        ssh_event_add_session(c->client.event, c->client.session) != SSH_OK ||
        sshp_poll_open(c, &c->client.poll, &c->client.poll_open, &c->client.poll_fd, ci->fd) != 0) {
        snprintf(c->core.reason, sizeof c->core.reason, "session setup failed: %s",
                 ssh_get_error(c->client.session));
        conn_end(c);
        return;
    }
    if (rc == SSH_OK)
        c->state = SSHP_CONN_AUTH;
    sshp_conn_arm_timer(c, (uint64_t)cf->login_grace_ms);
    sshp_conn_pump(c);
}

/*
 * ftpp_backend.c - the backend's control connection: connect, send commands, read replies
 * and route each one to what asked for it.
 *
 * Every command sent pushes an expectation (ftpp_pending: what it was for, and the handler
 * its sender gave for the reply) on a short FIFO; a reply's final line (RFC 959 §4.2: a
 * 2xx-5xx "ddd " line; 1xx are preliminary and keep the command pending) pops it. Every line
 * goes to that handler as it arrives: relayed replies reach the client line by line, so a long
 * multi-line reply (STAT of a directory) never sits whole in the proxy; the login collects its
 * replies' text (ftpp_login.c).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dp_log.h"
#include "dp_util.h"
#include "ftpp.h"

typedef struct breq {
    uv_write_t req;
    ftpp_sess *s;
    size_t len;
    bool secret; /* PASS: wiped before the memory goes back */
    char data[];
} breq;

/* The backend connection failed: an error once logged in, the backend's fault before. */
static void backend_gone(ftpp_sess *s)
{
    dp_session_end_as(&s->core,
                      s->state == FTPP_ST_LOGGED_IN ? DP_SESS_ERROR : DP_SESS_UNAVAILABLE);
}

/* The connection cannot be used any more: its owner (the login, then the session) ends the
 * session with `line` (NULL: nothing more to say) and `reason`. */
static void fail(ftpp_sess *s, const char *line, const char *reason)
{
    if (s->on_backend_fail != NULL)
        s->on_backend_fail(s, line, reason);
}

static void backend_write_done(uv_write_t *req, int status)
{
    breq *br = (breq *)req;
    ftpp_sess *s = br->s;
    if (br->secret)
        explicit_bzero(br->data, br->len);
    free(br);
    if (status < 0 && status != UV_ECANCELED && !s->core.ended && s->state != FTPP_ST_CLOSING) {
        dp_slog_warn(s->core.prefix, "backend write: %s", uv_strerror(status));
        backend_gone(s);
        fail(s, "421 Lost the connection to the server.\r\n", "backend write failed");
    }
}

static void push_expect(ftpp_sess *s, ftpp_expect ex, ftpp_reply_fn on_reply)
{
    if (s->npending < FTPP_PENDING_MAX)
        s->pending[s->npending++] = (ftpp_pending){ex, on_reply};
}

void ftpp_backend_expect(ftpp_sess *s, ftpp_expect ex, ftpp_reply_fn on_reply)
{
    push_expect(s, ex, on_reply);
}

static void pop_expect(ftpp_sess *s)
{
    if (s->npending == 0)
        return;
    memmove(s->pending, s->pending + 1, (size_t)(s->npending - 1) * sizeof s->pending[0]);
    s->npending--;
}

/* Write `line` and CRLF; 0xFF bytes are doubled (RFC 854 IAC IAC: the client's own doubled
 * bytes were undone by the line reader). */
static void send_text(ftpp_sess *s, ftpp_expect ex, ftpp_reply_fn on_reply, const char *line,
                      bool secret)
{
    if (!s->backend_connected || s->core.ended)
        return;
    if (s->npending >= FTPP_PENDING_MAX) {
        dp_slog_error(s->core.prefix, "too many commands pending toward the backend");
        fail(s, "421 Internal error.\r\n", "pending queue full");
        return;
    }
    size_t n = strlen(line), extra = 2;
    for (size_t i = 0; i < n; i++)
        extra += (unsigned char)line[i] == 0xff;
    breq *br = malloc(sizeof *br + n + extra);
    if (br == NULL) {
        fail(s, "421 Out of memory.\r\n", "out of memory");
        return;
    }
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        br->data[o++] = line[i];
        if ((unsigned char)line[i] == 0xff)
            br->data[o++] = line[i];
    }
    br->data[o++] = '\r';
    br->data[o++] = '\n';
    br->s = s;
    br->len = o;
    br->secret = secret;
    uv_buf_t b = uv_buf_init(br->data, (unsigned)o);
    int rc = uv_write(&br->req, (uv_stream_t *)&s->backend, &b, 1, backend_write_done);
    if (rc < 0) {
        if (secret)
            explicit_bzero(br->data, o);
        free(br);
        dp_slog_warn(s->core.prefix, "backend write: %s", uv_strerror(rc));
        backend_gone(s);
        fail(s, "421 Lost the connection to the server.\r\n", "backend write failed");
        return;
    }
    push_expect(s, ex, on_reply);
}

void ftpp_backend_send_line(ftpp_sess *s, ftpp_expect ex, ftpp_reply_fn on_reply, const char *line)
{
    send_text(s, ex, on_reply, line, false);
}

void ftpp_backend_send_secret(ftpp_sess *s, ftpp_expect ex, ftpp_reply_fn on_reply,
                              const char *line)
{
    send_text(s, ex, on_reply, line, true);
}

void ftpp_backend_send(ftpp_sess *s, ftpp_expect ex, ftpp_reply_fn on_reply, const char *fmt, ...)
{
    char line[FTPP_CMD_MAX + 64];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    send_text(s, ex, on_reply, line, false);
}

void ftpp_backend_orphan(ftpp_sess *s, ftpp_expect ex)
{
    for (int i = 0; i < s->npending; i++)
        if (s->pending[i].ex == ex)
            s->pending[i] = (ftpp_pending){FTPP_EX_SWALLOW, NULL};
}

/* ---- replies ---- */

static void unsolicited(ftpp_sess *s, const ftpp_reply_line *rl)
{
    /* RFC 959 §5.4: a server may send 421 at any time before closing. Anything else with
     * nothing pending is a backend bug; pass 421 on, log the rest. */
    if (rl->last && rl->code == 421) {
        dp_slog_warn(s->core.prefix, "backend closing: %s", rl->text);
        backend_gone(s);
        if (s->state == FTPP_ST_LOGGED_IN && s->on_unsolicited != NULL) {
            s->on_unsolicited(s, FTPP_EX_RELAY, rl, true);
            fail(s, NULL, "backend sent 421");
        } else {
            fail(s, "421 Service not available, remote server closed.\r\n", "backend sent 421");
        }
        return;
    }
    if (s->state == FTPP_ST_LOGGED_IN && rl->code != 0 && s->on_unsolicited != NULL)
        s->on_unsolicited(s, FTPP_EX_RELAY, rl, rl->last);
    else
        dp_slog_warn(s->core.prefix, "unexpected backend reply line dropped: code=%d", rl->code);
}

static void on_line(ftpp_sess *s, const ftpp_reply_line *rl)
{
    if (rl->first)
        s->rtext_len = 0; /* the login's collected text is of one reply only */
    if (s->npending == 0) {
        unsolicited(s, rl);
        return;
    }
    ftpp_pending p = s->pending[0];
    /* A final reply: 2xx..5xx on the last line; a line without a code outside any
     * multi-line reply counts as final too, or the session would wait forever. */
    bool final = rl->last && (rl->code >= 200 || rl->code == 0);
    if (rl->code == 0 && rl->first)
        dp_slog_warn(s->core.prefix, "backend reply without a code (expected for %d)", (int)p.ex);
    if (final)
        pop_expect(s);
    if (p.on_reply != NULL)
        p.on_reply(s, p.ex, rl, final);
}

static void backend_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    ftpp_sess *s = h->data;
    (void)suggested;
    /* Replies are parsed inside the read callback, so one buffer per worker serves every
     * session (no idle memory per session). */
    *buf = uv_buf_init(s->fw->rbuf, sizeof s->fw->rbuf);
}

static void backend_lost(ftpp_sess *s, const char *why)
{
    if (s->core.ended || s->state == FTPP_ST_CLOSING)
        return;
    dp_slog_warn(s->core.prefix, "backend control connection: %s", why);
    backend_gone(s);
    char reason[200];
    if (s->state == FTPP_ST_LOGGED_IN)
        snprintf(reason, sizeof reason, "backend closed");
    else
        snprintf(reason, sizeof reason, "backend closed during login: %s", why);
    fail(s, "421 Service not available, remote server closed the connection.\r\n", reason);
}

static void backend_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf)
{
    ftpp_sess *s = st->data;
    if (n == 0 || s->core.ended)
        return;
    if (n < 0) {
        uv_read_stop(st);
        s->backend_reading = false;
        backend_lost(s, n == UV_EOF ? "closed by the backend" : uv_strerror((int)n));
        return;
    }
    size_t off = 0;
    while (off < (size_t)n && !s->core.ended && s->state != FTPP_ST_CLOSING) {
        ftpp_reply_line rl;
        bool got = false;
        off += ftpp_reply_feed(&s->rr, buf->base + off, (size_t)n - off, &rl, &got);
        if (got)
            on_line(s, &rl);
    }
    if (!s->core.ended && s->state != FTPP_ST_CLOSING && s->backend_reading &&
        ftpp_sess_client_congested(s)) {
        uv_read_stop(st);
        s->backend_reading = false;
    }
}

void ftpp_backend_resume(ftpp_sess *s)
{
    if (!s->backend_connected || s->backend_reading || s->core.ended || s->state == FTPP_ST_CLOSING)
        return;
    if (uv_read_start((uv_stream_t *)&s->backend, backend_alloc, backend_read) == 0)
        s->backend_reading = true;
}

/* ---- the connection ---- */

int ftpp_backend_open(ftpp_sess *s, int fd, const struct sockaddr *addr,
                      ftpp_backend_fail_fn on_fail)
{
    s->on_backend_fail = on_fail;
    memcpy(&s->backend_addr, addr, dp_sockaddr_len(addr));
    int rc = uv_tcp_init(dp_worker_loop(s->core.w), &s->backend);
    if (rc != 0) {
        close(fd);
        return rc;
    }
    dp_session_own_handle(&s->core, (uv_handle_t *)&s->backend, &s->backend_open);
    ftpp_reply_init(&s->rr);
    s->npending = 0;
    rc = uv_tcp_open(&s->backend, fd);
    if (rc != 0) {
        close(fd);
        return rc;
    }
    s->backend_connected = true;
    socklen_t ll = sizeof s->backend_local;
    getsockname(fd, (struct sockaddr *)&s->backend_local, &ll);
    ftpp_backend_resume(s);
    return 0;
}

void ftpp_backend_close(ftpp_sess *s)
{
    s->npending = 0;
    s->backend_connected = false;
    s->backend_reading = false;
    if (!s->backend_open)
        return;
    dp_session_close_handle(&s->core, (uv_handle_t *)&s->backend, &s->backend_open);
}

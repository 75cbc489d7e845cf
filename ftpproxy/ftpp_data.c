/*
 * ftpp_data.c - data connections. The client always talks to the proxy, the proxy always
 * talks to the backend, and the proxy relays between the two legs (ftpp_pump.c).
 *
 * Client side (what the client asked for):
 *   PASV/EPSV  a listener from ftp.passive_port_min..max on our control address; the 227/229
 *              names ftp.masquerade_address (or that address). Only a connection from the
 *              control connection's IP is taken; others are closed and logged (RFC 2577 §3,
 *              "port stealing").
 *   PORT/EPRT  only to the control connection's IP and a port >= 1024 (RFC 2577 §3,
 *              bounce attacks); the proxy connects out when the transfer starts.
 * Backend side: EPSV (PASV once the backend refused EPSV), or with ftp.backend_passive off
 * EPRT (PORT once refused) and accept the backend's connection.
 *
 * A transfer command (RETR, STOR, LIST, ...) runs in steps: client leg, backend leg, the
 * command itself, the relay. The backend's final reply is held until the relay has
 * delivered the last byte and closed the destination, so no client ever reads "226"
 * before the end of its data.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "dp_log.h"
#include "dp_util.h"
#include "ftpp.h"

static void data_reply(ftpp_sess *s, ftpp_expect ex, const ftpp_reply_line *rl, bool final);

/* The held final reply of a transfer is small (226 + text); more is cut. */
#define HELD_MAX 4096

static _Atomic unsigned passive_cursor;

static void xfer_step(ftpp_sess *s);
static void xfer_fail_local(ftpp_sess *s, const char *reply);
static void xfer_finish(ftpp_sess *s, int code, bool ready);

/* ---- addresses ---- */

/* IPv4-mapped IPv6 (dual-stack listeners) as plain IPv4, so comparisons and PASV work. */
static void unmap(struct sockaddr_storage *a)
{
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)a;
    if (a->ss_family != AF_INET6 || !IN6_IS_ADDR_V4MAPPED(&a6->sin6_addr))
        return;
    struct sockaddr_in a4 = {.sin_family = AF_INET, .sin_port = a6->sin6_port};
    memcpy(&a4.sin_addr, &a6->sin6_addr.s6_addr[12], 4);
    memset(a, 0, sizeof *a);
    memcpy(a, &a4, sizeof a4);
}

static bool same_ip(const struct sockaddr_storage *x, const struct sockaddr_storage *y)
{
    struct sockaddr_storage a = *x, b = *y;
    unmap(&a);
    unmap(&b);
    if (a.ss_family != b.ss_family)
        return false;
    if (a.ss_family == AF_INET)
        return ((struct sockaddr_in *)&a)->sin_addr.s_addr ==
               ((struct sockaddr_in *)&b)->sin_addr.s_addr;
    if (a.ss_family == AF_INET6)
        return memcmp(&((struct sockaddr_in6 *)&a)->sin6_addr,
                      &((struct sockaddr_in6 *)&b)->sin6_addr, 16) == 0;
    return false;
}

static void set_port(struct sockaddr_storage *a, uint16_t port)
{
    if (a->ss_family == AF_INET)
        ((struct sockaddr_in *)a)->sin_port = htons(port);
    else
        ((struct sockaddr_in6 *)a)->sin6_port = htons(port);
}

/* ---- sockets with a poll handle (listeners, connects) ---- */

typedef void (*sock_cb)(ftpp_sess *s, ftpp_sock *k, int fd, int status);

struct ftpp_sock_priv {
    ftpp_sock k;
    ftpp_sess *s;
    sock_cb cb;
};

static void sock_closed(uv_handle_t *h)
{
    struct ftpp_sock_priv *kp = h->data;
    ftpp_sess *s = kp->s;
    if (kp->k.fd >= 0)
        close(kp->k.fd);
    free(kp);
    dp_session_unref(&s->core);
}

static void sock_close(ftpp_sock **kk)
{
    ftpp_sock *k = *kk;
    if (k == NULL)
        return;
    *kk = NULL;
    k->closing = true; /* sock_event stops accepting on it */
    uv_close((uv_handle_t *)&k->poll, sock_closed);
}

static void sock_event(uv_poll_t *h, int status, int events)
{
    struct ftpp_sock_priv *kp = h->data;
    (void)events;
    if (kp->k.listener) {
        for (int i = 0; i < 16; i++) {
            struct sockaddr_storage peer;
            socklen_t pl = sizeof peer;
            int fd = accept4(kp->k.fd, (struct sockaddr *)&peer, &pl, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd < 0) {
                if (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED)
                    return;
                /* EMFILE and the like: stop watching (the readiness would repeat at
                 * once, a busy loop) and let the owner fail its transfer. */
                int err = -errno;
                uv_poll_stop(h);
                kp->cb(kp->s, &kp->k, -1, err);
                return;
            }
            kp->k.peer = peer;
            kp->cb(kp->s, &kp->k, fd, 0);
            /* The callback closed this listener (it took a connection) or keeps it. */
            if (kp->k.closing)
                return;
        }
        return;
    }
    /* connecting: writable means done, one way or the other */
    int err = dp_sock_connect_result(kp->k.fd, status);
    uv_poll_stop(h);
    int fd = kp->k.fd;
    if (err == 0)
        kp->k.fd = -1; /* handed over */
    kp->cb(kp->s, &kp->k, err == 0 ? fd : -1, err);
}

static int sock_watch(ftpp_sess *s, int fd, bool listener, sock_cb cb, ftpp_sock **out)
{
    struct ftpp_sock_priv *kp = calloc(1, sizeof *kp);
    if (kp == NULL) {
        close(fd);
        return -ENOMEM;
    }
    kp->k.fd = fd;
    kp->k.listener = listener;
    kp->s = s;
    kp->cb = cb;
    int rc = uv_poll_init_socket(dp_worker_loop(s->core.w), &kp->k.poll, fd);
    if (rc != 0) { /* nothing registered: the memory and the fd go now */
        close(fd);
        free(kp);
        return rc;
    }
    kp->k.poll.data = kp;
    dp_session_ref(&s->core); /* until sock_closed */
    *out = &kp->k;
    rc = uv_poll_start(&kp->k.poll, listener ? UV_READABLE : UV_WRITABLE, sock_event);
    if (rc != 0) {
        sock_close(out);
        return rc;
    }
    return 0;
}

/* Listen on `addr`'s IP: a port from [lo, hi] (spread over workers and sessions by a shared
 * cursor, EADDRINUSE skips to the next), or any port when lo == 0. */
static int listen_on(const struct sockaddr_storage *addr, int lo, int hi, uint16_t *port_out)
{
    struct sockaddr_storage a = *addr;
    int fd = socket(a.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    /* A port's last data connection sits in TIME_WAIT for a minute after each transfer;
     * without SO_REUSEADDR a small range would be exhausted by a handful of downloads. */
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    int span = lo == 0 ? 1 : hi - lo + 1;
    unsigned start = lo == 0 ? 0 : passive_cursor++;
    int rc = -EADDRINUSE;
    for (int i = 0; i < span; i++) {
        uint16_t port =
            lo == 0 ? 0 : (uint16_t)(lo + (int)((start + (unsigned)i) % (unsigned)span));
        set_port(&a, port);
        if (bind(fd, (struct sockaddr *)&a, dp_sockaddr_len((struct sockaddr *)&a)) == 0) {
            rc = 0;
            break;
        }
        rc = -errno;
        if (errno != EADDRINUSE)
            break;
    }
    if (rc == 0 && listen(fd, 4) != 0)
        rc = -errno;
    if (rc != 0) {
        close(fd);
        return rc;
    }
    struct sockaddr_storage got;
    socklen_t gl = sizeof got;
    getsockname(fd, (struct sockaddr *)&got, &gl);
    *port_out = dp_sockaddr_port((struct sockaddr *)&got);
    return fd;
}

/* Non-blocking connect to `to`, from `from`'s IP when given. Returns the fd or -errno. */
static int connect_to(const struct sockaddr_storage *to, const struct sockaddr_storage *from)
{
    int fd = socket(to->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (from != NULL && from->ss_family == to->ss_family) {
        struct sockaddr_storage b = *from;
        set_port(&b, 0);
        if (bind(fd, (struct sockaddr *)&b, dp_sockaddr_len((struct sockaddr *)&b)) != 0) {
            int err = -errno;
            close(fd);
            return err;
        }
    }
    if (connect(fd, (const struct sockaddr *)to, dp_sockaddr_len((const struct sockaddr *)to)) !=
            0 &&
        errno != EINPROGRESS) {
        int err = -errno;
        close(fd);
        return err;
    }
    return fd;
}

static void log_refused(ftpp_sess *s, const struct sockaddr_storage *peer, const char *what)
{
    char p[64], e[64];
    dp_sockaddr_format((const struct sockaddr *)peer, p, sizeof p);
    dp_sockaddr_ip((const struct sockaddr *)&s->core.client, e, sizeof e);
    dp_log_event(DP_LOG_WARN, s->core.prefix, "data_refused", "what=%s peer=%s expected=%s", what,
                 p, e);
}

/* ---- the client's passive listener ---- */

static void drop_client_setup(ftpp_sess *s)
{
    sock_close(&s->pasv);
    if (s->pasv_fd >= 0) {
        close(s->pasv_fd);
        s->pasv_fd = -1;
    }
    s->dmode = FTPP_DM_NONE;
}

static void pasv_accepted(ftpp_sess *s, ftpp_sock *k, int fd, int status)
{
    if (status < 0) {
        dp_slog_warn(s->core.prefix, "passive accept: %s", strerror(-status));
        sock_close(&s->pasv);
        if (s->xfer != NULL && s->xfer->state == FTPP_XS_CLIENT_LEG)
            xfer_fail_local(s, "425 Can't open data connection.");
        return;
    }
    struct sockaddr_storage peer = k->peer;
    if (!same_ip(&peer, &s->core.client)) {
        log_refused(s, &peer, "passive");
        close(fd);
        return; /* keep listening for the real client */
    }
    dp_sock_tune(fd, 0);
    sock_close(&s->pasv);
    if (s->xfer != NULL && s->xfer->state == FTPP_XS_CLIENT_LEG) {
        s->xfer->cfd = fd;
        xfer_step(s);
        return;
    }
    if (s->pasv_fd >= 0)
        close(s->pasv_fd);
    s->pasv_fd = fd;
}

void ftpp_data_cmd_pasv(ftpp_sess *s, bool extended, const char *arg)
{
    const ftpp_conf *cf = ftpp_conf_of(s->core.w);
    struct sockaddr_storage local = s->ctl_local;
    unmap(&local);
    if (extended) {
        int which = ftpp_parse_epsv_arg(arg);
        if (which < 0) {
            ftpp_sess_reply(s, "501 Syntax error in EPSV.");
            ftpp_sess_ready(s);
            return;
        }
        if (which == 3) {
            /* RFC 2428 §4: from now on only EPSV; PORT/PASV/EPRT are refused. */
            s->epsv_all = true;
            ftpp_sess_reply(s, "200 EPSV ALL ok.");
            ftpp_sess_ready(s);
            return;
        }
        if ((which == 1 && local.ss_family != AF_INET) ||
            (which == 2 && local.ss_family != AF_INET6)) {
            ftpp_sess_reply(s, "522 Network protocol not supported, use (%d).",
                            local.ss_family == AF_INET ? 1 : 2);
            ftpp_sess_ready(s);
            return;
        }
    } else if (s->epsv_all) {
        ftpp_sess_reply(s, "503 PASV is not allowed after EPSV ALL.");
        ftpp_sess_ready(s);
        return;
    }
    struct sockaddr_storage shown = local;
    if (cf->masquerade_address[0] != '\0') {
        memset(&shown, 0, sizeof shown);
        struct sockaddr_in *m4 = (struct sockaddr_in *)&shown;
        struct sockaddr_in6 *m6 = (struct sockaddr_in6 *)&shown;
        if (inet_pton(AF_INET, cf->masquerade_address, &m4->sin_addr) == 1)
            m4->sin_family = AF_INET;
        else if (inet_pton(AF_INET6, cf->masquerade_address, &m6->sin6_addr) == 1)
            m6->sin6_family = AF_INET6;
    }
    if (!extended && shown.ss_family != AF_INET) {
        ftpp_sess_reply(s, "425 PASV needs IPv4; use EPSV.");
        ftpp_sess_ready(s);
        return;
    }
    drop_client_setup(s);
    uint16_t port = 0;
    int fd = listen_on(&local, cf->passive_port_min, cf->passive_port_max, &port);
    if (fd < 0) {
        dp_slog_error(s->core.prefix, "passive listener in %d-%d: %s", cf->passive_port_min,
                      cf->passive_port_max, strerror(-fd));
        ftpp_sess_reply(s, "425 Can't open passive connection.");
        ftpp_sess_ready(s);
        return;
    }
    if (sock_watch(s, fd, true, pasv_accepted, &s->pasv) != 0) {
        ftpp_sess_reply(s, "425 Can't open passive connection.");
        ftpp_sess_ready(s);
        return;
    }
    s->dmode = FTPP_DM_PASSIVE;
    char line[128];
    int n = extended ? ftpp_format_229(line, sizeof line, port)
                     : ftpp_format_227(line, sizeof line, (struct sockaddr *)&shown, port);
    if (n > 0)
        ftpp_sess_reply_raw(s, line, (size_t)n);
    ftpp_sess_ready(s);
}

void ftpp_data_cmd_port(ftpp_sess *s, bool extended, const char *arg)
{
    if (s->epsv_all) {
        ftpp_sess_reply(s, "503 %s is not allowed after EPSV ALL.", extended ? "EPRT" : "PORT");
        ftpp_sess_ready(s);
        return;
    }
    struct sockaddr_storage a;
    int rc = extended ? ftpp_parse_eprt(arg, &a) : ftpp_parse_port(arg, &a);
    if (rc == -EAFNOSUPPORT) {
        ftpp_sess_reply(s, "522 Network protocol not supported, use (1,2).");
    } else if (rc != 0) {
        ftpp_sess_reply(s, "501 Syntax error in %s.", extended ? "EPRT" : "PORT");
    } else if (!same_ip(&a, &s->core.client) || dp_sockaddr_port((struct sockaddr *)&a) < 1024) {
        /* RFC 2577 §3: only back to the client itself, never to a privileged port. */
        log_refused(s, &a, extended ? "EPRT" : "PORT");
        ftpp_sess_reply(s, "500 Illegal %s command.", extended ? "EPRT" : "PORT");
    } else {
        drop_client_setup(s);
        s->active_addr = a;
        s->dmode = FTPP_DM_ACTIVE;
        ftpp_sess_reply(s, "200 %s command successful.", extended ? "EPRT" : "PORT");
    }
    ftpp_sess_ready(s);
}

/* ---- the transfer ---- */

static const char *dir_name(ftpp_xdir d)
{
    return d == FTPP_XD_DOWN ? "download" : d == FTPP_XD_UP ? "upload" : "list";
}

static void pump_freed(ftpp_pump *p)
{
    ftpp_sess *s = p->data;
    free(p);
    dp_session_unref(&s->core);
}

static void xfer_close_legs(ftpp_xfer *x)
{
    sock_close(&x->csock);
    sock_close(&x->bsock);
    if (x->pump != NULL) {
        x->bytes = x->pump->bytes;
        ftpp_pump_close(x->pump, pump_freed);
        x->pump = NULL;
    }
    if (x->cfd >= 0)
        close(x->cfd);
    if (x->bfd >= 0)
        close(x->bfd);
    x->cfd = x->bfd = -1;
}

static void xfer_log(ftpp_sess *s, ftpp_xfer *x, int code)
{
    char file[300], user[160];
    const char *arg = strchr(x->line, ' ');
    dp_log_event(DP_LOG_INFO, NULL, "transfer",
                 "sid=%s user=%s backend=%s cmd=%s file=%s direction=%s bytes=%llu "
                 "duration_ms=%llu result=%d",
                 s->core.sid, dp_logq(user, sizeof user, s->core.user), s->core.route.backend,
                 x->cmd, dp_logq(file, sizeof file, arg != NULL ? arg + 1 : "-"), dir_name(x->dir),
                 (unsigned long long)x->bytes, (unsigned long long)(dp_now_ms() - x->started_ms),
                 code);
}

static dp_xfer_dir xfer_metric_dir(const ftpp_xfer *x)
{
    return x->dir == FTPP_XD_DOWN ? DP_XFER_DOWNLOAD
           : x->dir == FTPP_XD_UP ? DP_XFER_UPLOAD
                                  : DP_XFER_LIST;
}

/* The transfer is over (its reply went out, or is about to). */
static void xfer_finish(ftpp_sess *s, int code, bool ready)
{
    ftpp_xfer *x = s->xfer;
    if (x == NULL)
        return;
    ftpp_sess_op_timer_stop(s);
    xfer_close_legs(x);
    /* A listener still open belongs to this transfer (a new PASV/PORT would have set
     * dmode): its client never came, so nobody may use it later. */
    if (s->dmode == FTPP_DM_NONE)
        drop_client_setup(s);
    if (x->dir == FTPP_XD_UP)
        s->core.bytes_in += x->bytes;
    else
        s->core.bytes_out += x->bytes;
    xfer_log(s, x, code);
    dp_metrics_ftp_transfer(xfer_metric_dir(x), x->state == FTPP_XS_ABORTED ? DP_XFER_ABORTED
                                                : code / 100 == 2           ? DP_XFER_OK
                                                                            : DP_XFER_FAILED);
    s->xfer = NULL;
    free(x->held);
    free(x->line);
    free(x);
    s->activity_ms = dp_now_ms();
    if (ready)
        ftpp_sess_ready(s);
}

/* A local failure before the backend saw the transfer command. */
static void xfer_fail_local(ftpp_sess *s, const char *reply)
{
    ftpp_backend_orphan(s, FTPP_EX_PASV);
    ftpp_backend_orphan(s, FTPP_EX_PORT);
    ftpp_sess_reply(s, "%s", reply);
    xfer_finish(s, atoi(reply), true);
}

static void release_held(ftpp_sess *s)
{
    ftpp_xfer *x = s->xfer;
    if (x->pump_status != 0) {
        /* The relay failed after the backend said "complete": the client did not get
         * everything, so it must not read success. */
        ftpp_sess_reply(s, "426 Connection closed; transfer aborted.");
        xfer_finish(s, 426, true);
        return;
    }
    ftpp_sess_reply_raw(s, x->held, x->held_len);
    xfer_finish(s, x->final_code, true);
}

static void pump_done(ftpp_pump *p, int status)
{
    ftpp_sess *s = p->data;
    ftpp_xfer *x = s->xfer;
    if (x == NULL || x->pump != p)
        return;
    x->pump_done = true;
    x->pump_status = status;
    x->bytes = p->bytes;
    if (status != 0) {
        char what[120];
        snprintf(what, sizeof what, "%s leg: %s",
                 (p->failed_side == 1) == (x->dir == FTPP_XD_UP) ? "client" : "backend",
                 strerror(-status));
        dp_slog_info(s->core.prefix, "transfer relay ended: %s", what);
    }
    /* Close both legs now: the destination has its EOF, and on failure the other side
     * must learn it too (a backend writing RETR data gets its 426 this way). */
    ftpp_pump_close(p, pump_freed);
    x->pump = NULL;
    if (x->final_seen)
        release_held(s);
}

/* A fixed send buffer instead of autotuning: fewer wake-ups per byte when it is large (see
 * docs/performance.md), more when net.core.wmem_max caps it below what autotuning reaches. */
static void set_sndbuf(ftpp_sess *s, int fd, int bytes)
{
    static atomic_int capped_logged; /* the value last reported: once per value (reloads) */
    int got = 0;
    socklen_t len = sizeof got;
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof bytes) != 0 ||
        getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &got, &len) != 0) {
        dp_slog_warn(s->core.prefix, "ftp.data_sndbuf: %s", strerror(errno));
        return;
    }
    /* The kernel doubles the request (bookkeeping) and caps it at net.core.wmem_max. */
    if (got / 2 < bytes && atomic_exchange(&capped_logged, bytes) != bytes)
        dp_slog_warn(s->core.prefix,
                     "ftp.data_sndbuf %d is capped to %d by net.core.wmem_max; raise the "
                     "sysctl or set the key to 0 (autotuning)",
                     bytes, got / 2);
}

static void start_pump(ftpp_sess *s)
{
    ftpp_xfer *x = s->xfer;
    const ftpp_conf *cf = ftpp_conf_of(s->core.w);
    ftpp_pump *p = calloc(1, sizeof *p);
    if (p == NULL) {
        ftpp_sess_close(s, "421 Out of memory.\r\n", "out of memory");
        return;
    }
    p->data = s;
    p->activity_ms = &s->activity_ms;
    int src = x->dir == FTPP_XD_UP ? x->cfd : x->bfd, dst = x->dir == FTPP_XD_UP ? x->bfd : x->cfd;
    x->cfd = x->bfd = -1;
    if (cf->data_sndbuf > 0)
        set_sndbuf(s, dst, cf->data_sndbuf);
    dp_session_ref(&s->core);
    int rc = ftpp_pump_start(p, dp_worker_loop(s->core.w), src, dst, (size_t)cf->transfer_buffer,
                             pump_done);
    if (rc != 0) {
        ftpp_pump_close(p, pump_freed);
        x->pump_done = true;
        x->pump_status = rc;
        dp_slog_error(s->core.prefix, "transfer relay: %s", strerror(-rc));
        return;
    }
    x->pump = p;
}

static void data_expired(ftpp_sess *s)
{
    ftpp_xfer *x = s->xfer;
    if (x == NULL)
        return;
    dp_slog_warn(s->core.prefix, "data connection not established within ftp.data_timeout_ms (%s)",
                 x->state == FTPP_XS_CLIENT_LEG ? "client" : "backend");
    if (x->state == FTPP_XS_COMMAND) {
        /* The backend has the command; it fails its side on its own (425) once our
         * listener is gone, and that reply goes to the client. */
        xfer_close_legs(x);
        x->pump_done = true;
        x->pump_status = -ETIMEDOUT;
        return;
    }
    xfer_fail_local(s, "425 Can't open data connection.");
}

/* An outgoing data connection finished connecting: the client's (active mode) or the
 * backend's (passive toward it). */
static void leg_connected(ftpp_sess *s, int fd, int status, bool client)
{
    ftpp_xfer *x = s->xfer;
    if (x == NULL) {
        if (fd >= 0)
            close(fd);
        return;
    }
    sock_close(client ? &x->csock : &x->bsock);
    if (status < 0) {
        char a[64];
        if (client)
            dp_slog_info(s->core.prefix, "active data connection to %s: %s",
                         dp_sockaddr_format((struct sockaddr *)&s->active_addr, a, sizeof a),
                         strerror(-status));
        else
            dp_slog_warn(s->core.prefix, "backend data connection: %s", strerror(-status));
        xfer_fail_local(s, "425 Can't open data connection.");
        return;
    }
    dp_sock_tune(fd, 0);
    if (client)
        x->cfd = fd;
    else
        x->bfd = fd;
    xfer_step(s);
}

static void client_connected(ftpp_sess *s, ftpp_sock *k, int fd, int status)
{
    (void)k;
    leg_connected(s, fd, status, true);
}

static void backend_connected(ftpp_sess *s, ftpp_sock *k, int fd, int status)
{
    (void)k;
    leg_connected(s, fd, status, false);
}

static void backend_accepted(ftpp_sess *s, ftpp_sock *k, int fd, int status)
{
    ftpp_xfer *x = s->xfer;
    if (x == NULL) {
        if (fd >= 0)
            close(fd);
        return;
    }
    if (status < 0) {
        dp_slog_warn(s->core.prefix, "accepting the backend's data connection: %s",
                     strerror(-status));
        data_expired(s); /* the same end as a backend that never connects */
        return;
    }
    if (!same_ip(&k->peer, &s->backend_addr)) {
        log_refused(s, &k->peer, "backend-active");
        close(fd);
        return;
    }
    sock_close(&x->bsock);
    dp_sock_tune(fd, 0);
    x->bfd = fd;
    ftpp_sess_op_timer_stop(s);
    start_pump(s);
}

static void send_backend_pasv(ftpp_sess *s)
{
    s->xfer->state = FTPP_XS_BACKEND_PASV;
    if (s->backend_pasv_only)
        ftpp_backend_send_line(s, FTPP_EX_PASV, data_reply, "PASV");
    else
        ftpp_backend_send_line(s, FTPP_EX_PASV, data_reply, "EPSV");
}

static void send_backend_port(ftpp_sess *s)
{
    ftpp_xfer *x = s->xfer;
    struct sockaddr_storage local = s->backend_local;
    unmap(&local);
    uint16_t port = 0;
    int fd = listen_on(&local, 0, 0, &port);
    if (fd < 0 || sock_watch(s, fd, true, backend_accepted, &x->bsock) != 0) {
        xfer_fail_local(s, "425 Can't open data connection.");
        return;
    }
    set_port(&local, port);
    char line[160];
    int n = (s->backend_port_only && local.ss_family == AF_INET)
                ? ftpp_format_port(line, sizeof line, (struct sockaddr *)&local)
                : ftpp_format_eprt(line, sizeof line, (struct sockaddr *)&local);
    if (n < 2) {
        xfer_fail_local(s, "425 Can't open data connection.");
        return;
    }
    line[n - 2] = '\0'; /* the formatters end with CRLF; send_line adds its own */
    x->state = FTPP_XS_BACKEND_PORT;
    ftpp_backend_send_line(s, FTPP_EX_PORT, data_reply, line);
}

/* Advance the transfer as far as it can go now. */
static void xfer_step(ftpp_sess *s)
{
    ftpp_xfer *x = s->xfer;
    const ftpp_conf *cf = ftpp_conf_of(s->core.w);
    if (x == NULL)
        return;
    if (x->state == FTPP_XS_CLIENT_LEG) {
        if (x->cfd < 0)
            return; /* the accept or connect callback comes back here */
        ftpp_sess_op_timer(s, (uint64_t)cf->data_timeout_ms, data_expired);
        if (cf->backend_passive)
            send_backend_pasv(s);
        else
            send_backend_port(s);
        return;
    }
    if (x->state == FTPP_XS_BACKEND_CONN && x->bfd >= 0) {
        ftpp_sess_op_timer_stop(s);
        x->state = FTPP_XS_COMMAND;
        ftpp_backend_send_line(s, FTPP_EX_TRANSFER, data_reply, x->line);
        start_pump(s);
    }
}

void ftpp_data_cmd_transfer(ftpp_sess *s, const char *verb, ftpp_xdir dir, char *line)
{
    const ftpp_conf *cf = ftpp_conf_of(s->core.w);
    if (s->dmode == FTPP_DM_NONE) {
        ftpp_sess_reply(s, "425 Use PORT or PASV first.");
        ftpp_sess_ready(s);
        return;
    }
    ftpp_xfer *x = calloc(1, sizeof *x);
    if (x != NULL)
        x->line = strdup(line);
    if (x == NULL || x->line == NULL) {
        free(x);
        ftpp_sess_close(s, "421 Out of memory.\r\n", "out of memory");
        return;
    }
    x->cfd = x->bfd = -1;
    snprintf(x->cmd, sizeof x->cmd, "%s", verb);
    x->dir = dir;
    x->started_ms = dp_now_ms();
    x->state = FTPP_XS_CLIENT_LEG;
    s->xfer = x;
    /* One data connection per PASV/PORT (RFC 959 §3.2). */
    ftpp_dmode mode = s->dmode;
    s->dmode = FTPP_DM_NONE;
    if (mode == FTPP_DM_PASSIVE) {
        if (s->pasv_fd >= 0) {
            x->cfd = s->pasv_fd;
            s->pasv_fd = -1;
        } else {
            ftpp_sess_op_timer(s, (uint64_t)cf->data_timeout_ms, data_expired);
            return; /* pasv_accepted continues */
        }
    } else {
        struct sockaddr_storage from = s->ctl_local;
        unmap(&from);
        int fd = connect_to(&s->active_addr, &from);
        if (fd < 0 || sock_watch(s, fd, false, client_connected, &x->csock) != 0) {
            xfer_fail_local(s, "425 Can't open data connection.");
            return;
        }
        ftpp_sess_op_timer(s, (uint64_t)cf->data_timeout_ms, data_expired);
        return;
    }
    xfer_step(s);
}

/* ---- backend replies for FTPP_EX_PASV / FTPP_EX_PORT / FTPP_EX_TRANSFER ---- */

static void pasv_reply(ftpp_sess *s, const ftpp_reply_line *rl)
{
    const ftpp_conf *cf = ftpp_conf_of(s->core.w);
    ftpp_xfer *x = s->xfer;
    if (x == NULL || x->state != FTPP_XS_BACKEND_PASV)
        return;
    struct sockaddr_storage to = s->backend_addr;
    unmap(&to);
    const char *text = rl->len > 4 ? rl->text + 4 : "";
    if (rl->code == 229) {
        uint16_t port;
        if (ftpp_parse_229(text, &port) != 0) {
            dp_slog_warn(s->core.prefix, "backend 229 not understood");
            xfer_fail_local(s, "425 Can't open data connection.");
            return;
        }
        set_port(&to, port);
    } else if (rl->code == 227) {
        struct sockaddr_storage adv;
        if (ftpp_parse_227(text, &adv) != 0) {
            dp_slog_warn(s->core.prefix, "backend 227 not understood");
            xfer_fail_local(s, "425 Can't open data connection.");
            return;
        }
        if (cf->backend_ignore_pasv_address || to.ss_family != AF_INET)
            set_port(&to, dp_sockaddr_port((struct sockaddr *)&adv));
        else
            to = adv;
    } else if ((rl->code == 500 || rl->code == 502 || rl->code == 501) && !s->backend_pasv_only &&
               s->backend_addr.ss_family == AF_INET) {
        /* RFC 2428 §3: an older server without EPSV; PASV from now on. */
        s->backend_pasv_only = true;
        send_backend_pasv(s);
        return;
    } else {
        dp_slog_warn(s->core.prefix, "backend refused passive mode: %d", rl->code);
        xfer_fail_local(s, "425 Can't open data connection.");
        return;
    }
    x->state = FTPP_XS_BACKEND_CONN;
    int fd = connect_to(&to, NULL);
    if (fd < 0 || sock_watch(s, fd, false, backend_connected, &x->bsock) != 0) {
        dp_slog_warn(s->core.prefix, "backend data connect: %s", strerror(fd < 0 ? -fd : ENOMEM));
        xfer_fail_local(s, "425 Can't open data connection.");
        return;
    }
    ftpp_sess_op_timer(s, (uint64_t)cf->connect_timeout_ms, data_expired);
}

static void port_reply(ftpp_sess *s, const ftpp_reply_line *rl)
{
    ftpp_xfer *x = s->xfer;
    if (x == NULL || x->state != FTPP_XS_BACKEND_PORT)
        return;
    if (rl->code >= 200 && rl->code < 300) {
        x->state = FTPP_XS_COMMAND;
        ftpp_backend_send_line(s, FTPP_EX_TRANSFER, data_reply, x->line);
        return; /* backend_accepted starts the relay */
    }
    sock_close(&x->bsock);
    if ((rl->code == 500 || rl->code == 502) && !s->backend_port_only &&
        s->backend_local.ss_family == AF_INET) {
        s->backend_port_only = true;
        send_backend_port(s);
        return;
    }
    dp_slog_warn(s->core.prefix, "backend refused active mode: %d", rl->code);
    xfer_fail_local(s, "425 Can't open data connection.");
}

static void hold_line(ftpp_xfer *x, const ftpp_reply_line *rl)
{
    if (x->held_len + rl->len + 2 > HELD_MAX)
        return;
    char *n = realloc(x->held, x->held_len + rl->len + 2);
    if (n == NULL)
        return;
    x->held = n;
    memcpy(x->held + x->held_len, rl->text, rl->len);
    x->held_len += rl->len;
    x->held[x->held_len++] = '\r';
    x->held[x->held_len++] = '\n';
}

static void transfer_reply(ftpp_sess *s, const ftpp_reply_line *rl, bool final)
{
    ftpp_xfer *x = s->xfer;
    if (x == NULL) {
        ftpp_sess_reply_line(s, rl->text, rl->len);
        return;
    }
    if (!final) {
        /* 1xx (RFC 959 §4.2) and the inner lines of a multi-line final reply */
        if (rl->first)
            x->final_code = rl->code;
        if (rl->code >= 100 && rl->code < 200 && x->held_len == 0)
            ftpp_sess_reply_line(s, rl->text, rl->len);
        else
            hold_line(x, rl);
        return;
    }
    x->final_code = rl->code;
    x->final_seen = true;
    if (x->state == FTPP_XS_ABORTED) {
        /* The client's ABOR: this reply (usually 426) answers the transfer, the ABOR's
         * own reply follows and ends the command. */
        if (x->held_len > 0)
            ftpp_sess_reply_raw(s, x->held, x->held_len);
        ftpp_sess_reply_line(s, rl->text, rl->len);
        xfer_finish(s, rl->code, false);
        return;
    }
    if (rl->code >= 200 && rl->code < 300) {
        hold_line(x, rl);
        if (x->pump_done)
            release_held(s);
        return; /* pump_done releases it */
    }
    /* A failure: nothing more will flow; the client learns it now. */
    xfer_close_legs(x);
    if (x->held_len > 0)
        ftpp_sess_reply_raw(s, x->held, x->held_len);
    ftpp_sess_reply_line(s, rl->text, rl->len);
    xfer_finish(s, rl->code, true);
}

/* Reply handler of PASV/EPSV, PORT/EPRT and the transfer commands (final: the reply's last
 * line). */
static void data_reply(ftpp_sess *s, ftpp_expect ex, const ftpp_reply_line *rl, bool final)
{
    if (!final && ex != FTPP_EX_TRANSFER)
        return; /* inner lines of an internal multi-line reply */
    if (ex == FTPP_EX_PASV)
        pasv_reply(s, rl);
    else if (ex == FTPP_EX_PORT)
        port_reply(s, rl);
    else
        transfer_reply(s, rl, final);
}

/* ---- ABOR, STAT ---- */

void ftpp_data_cmd_abor(ftpp_sess *s)
{
    ftpp_xfer *x = s->xfer;
    s->busy = true;
    if (x == NULL) {
        ftpp_backend_send_line(s, FTPP_EX_ABOR, ftpp_sess_relay_reply, "ABOR");
        return;
    }
    if (x->state != FTPP_XS_COMMAND) {
        /* The backend never saw the transfer command: answer both replies here
         * (RFC 959 §4.1.3: 426 for the transfer, then 226 for the ABOR). */
        ftpp_backend_orphan(s, FTPP_EX_PASV);
        ftpp_backend_orphan(s, FTPP_EX_PORT);
        ftpp_sess_reply(s, "426 Connection closed; transfer aborted.");
        ftpp_sess_reply(s, "226 ABOR command successful.");
        x->state = FTPP_XS_ABORTED; /* counted as aborted */
        xfer_finish(s, 426, true);
        return;
    }
    xfer_close_legs(x);
    ftpp_sess_op_timer_stop(s);
    x->state = FTPP_XS_ABORTED;
    if (x->final_seen) {
        /* "226" was held for bytes the client will now never get. */
        free(x->held);
        x->held = NULL;
        x->held_len = 0;
        ftpp_sess_reply(s, "426 Connection closed; transfer aborted.");
        xfer_finish(s, 426, false);
    }
    /* Plain ABOR: the backend's data connection is gone already, which is what makes a
     * synchronous server (vsftpd's default) end the transfer with 426 and then read this. */
    ftpp_backend_send_line(s, FTPP_EX_ABOR, ftpp_sess_relay_reply, "ABOR");
}

void ftpp_data_cmd_stat(ftpp_sess *s)
{
    ftpp_xfer *x = s->xfer;
    uint64_t bytes = x->pump != NULL ? x->pump->bytes : x->bytes;
    const char *arg = strchr(x->line, ' ');
    char file[300];
    snprintf(file, sizeof file, "%s", arg != NULL ? arg + 1 : "");
    for (char *p = file; *p; p++)
        if ((unsigned char)*p < 0x20)
            *p = '?';
    /* RFC 959 §4.1.3: STAT during a transfer reports on it; the proxy knows the count. */
    ftpp_sess_reply(s, "213 Status: %s %s: %llu bytes transferred.", x->cmd, file,
                    (unsigned long long)bytes);
}

bool ftpp_data_busy(const ftpp_sess *s)
{
    return s->xfer != NULL && s->xfer->state != FTPP_XS_ABORTED;
}

void ftpp_data_cleanup(ftpp_sess *s)
{
    drop_client_setup(s);
    if (s->xfer != NULL) {
        ftpp_xfer *x = s->xfer;
        xfer_close_legs(x);
        xfer_log(s, x, 0);
        /* the session ends under it: aborted, and what it moved counts with the session's
         * bytes (dp_session_end counted it already when the end came first: live_bytes) */
        dp_metrics_ftp_transfer(xfer_metric_dir(x), DP_XFER_ABORTED);
        if (x->dir == FTPP_XD_UP)
            s->core.bytes_in += x->bytes;
        else
            s->core.bytes_out += x->bytes;
        s->xfer = NULL;
        free(x->held);
        free(x->line);
        free(x);
    }
}

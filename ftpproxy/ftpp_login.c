/*
 * ftpp_login.c - from USER to a logged-in session: route lookup (cached hook call), backend
 * address (numeric, or resolved on the threadpool), connect, greeting, replay of HOST
 * (RFC 7151) and OPTS UTF8 (RFC 2640), USER with the route's backend user name, PASS.
 *
 * A user's existence never shows (RFC 2577 §5): every USER gets the same 331, an unknown
 * user's PASS gets the same "530 Login incorrect." as a wrong password, after a delay like
 * the one a backend applies to a wrong password. Backend trouble is a 421 (RFC 959: service
 * not available, closing), never a 530, so a customer never believes the password is wrong
 * while a server is down.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dp_log.h"
#include "dp_util.h"
#include "ftpp.h"

/* The backend failed the login: the log says why (the prefix names the user and, once
 * routed, the backend), the client gets `line` (a full reply, or NULL). Also the handler of
 * the backend connection's failures during the login (ftpp_backend_open). */
static void backend_failed(ftpp_sess *s, const char *line, const char *reason)
{
    char q[200];
    dp_log_event(DP_LOG_WARN, s->core.prefix, "backend_fail", "reason=%s",
                 dp_logq(q, sizeof q, reason));
    ftpp_sess_close(s, line, reason);
}

static void fail_421(ftpp_sess *s, const char *client_text, const char *why)
{
    dp_session_end_as(&s->core, DP_SESS_UNAVAILABLE);
    char line[400];
    snprintf(line, sizeof line, "421 %s\r\n", client_text);
    backend_failed(s, line, why);
}

/* Forget the previous attempt's route and backend connection (a new USER). */
static void reset_attempt(ftpp_sess *s)
{
    ftpp_login_cleanup(s);
    ftpp_backend_close(s);
    s->core.route_known = false;
    s->unknown_user = false;
    s->backend_no_pass = false;
    s->host_sent = s->opts_sent = false;
    memset(&s->core.route, 0, sizeof s->core.route);
}

static void reply_331(ftpp_sess *s)
{
    ftpp_sess_op_timer_stop(s);
    s->state = FTPP_ST_NEED_PASS;
    ftpp_sess_login_clock(s, true);
    ftpp_sess_reply(s, "331 %s", ftpp_conf_of(s->core.w)->password_prompt);
    ftpp_sess_ready(s);
}

/* ---- deadlines ----
 * The client's own login clock (ftp.login_timeout_ms) stops while the proxy waits: a slow
 * backend is not a slow client. The backend's wait has deadlines of its own, no shorter than
 * what a client connecting directly would wait: after a mass reconnect (a restart, a move of
 * many users, a failover) a backend's accept queue overflows, its SYNs are retransmitted 1, 3,
 * 7 and 15 s later, and greetings come late; giving up earlier than the customer's client
 * would turns a slow backend into refused customers. */

static void reply_expired(ftpp_sess *s)
{
    static const char *const what[] = {
        [FTPP_ST_GREETING] = "backend greeting timeout",
        [FTPP_ST_USER] = "backend reply timeout (login replay)",
        [FTPP_ST_PASS] = "backend reply timeout (PASS)",
    };
    const char *why = (size_t)s->state < sizeof what / sizeof what[0] && what[s->state] != NULL
                          ? what[s->state]
                          : "backend reply timeout";
    fail_421(s, "Service not available: the server did not answer in time.", why);
}

/* A reply from the backend is due: its deadline runs from now. */
static void await_backend(ftpp_sess *s)
{
    ftpp_sess_op_timer(s, (uint64_t)ftpp_conf_of(s->core.w)->backend_reply_timeout_ms,
                       reply_expired);
}

static void login_line(ftpp_sess *s, ftpp_expect ex, const ftpp_reply_line *rl, bool final);

/* The backend's TCP connection is up: its greeting is due. */
static void backend_connected(ftpp_sess *s)
{
    ftpp_backend_expect(s, FTPP_EX_GREETING, login_line);
    s->state = FTPP_ST_GREETING;
    await_backend(s);
}

/* ---- steps after the greeting ---- */

static void login_next(ftpp_sess *s)
{
    s->state = FTPP_ST_USER;
    await_backend(s);
    if (s->host_arg[0] != '\0' && !s->host_sent) {
        s->host_sent = true;
        ftpp_backend_send(s, FTPP_EX_HOST, login_line, "HOST %s", s->host_arg);
    } else if (s->utf8 && !s->opts_sent) {
        s->opts_sent = true;
        ftpp_backend_send_line(s, FTPP_EX_OPTS, login_line, "OPTS UTF8 ON");
    } else {
        ftpp_backend_send(s, FTPP_EX_USER, login_line, "USER %s",
                          s->core.route.backend_user[0] ? s->core.route.backend_user
                                                        : s->core.user);
    }
}

static void dialed(void *arg, const dp_dial_result *r)
{
    ftpp_sess *s = arg;
    s->dial = NULL;
    s->connect_ns = r->connect_ns; /* dynproxy_backend_connect_seconds: to the 220 greeting */
    if (r->deadline) {
        fail_421(s, "Service not available: the server did not answer in time.",
                 "backend connect timeout");
        return;
    }
    int rc = r->status == 0
                 ? ftpp_backend_open(s, r->fd, (const struct sockaddr *)&r->peer, backend_failed)
                 : 0;
    if (r->status != 0 || rc != 0) {
        char reason[400];
        snprintf(reason, sizeof reason, "backend connect: %s",
                 r->status != 0 ? r->error : uv_strerror(rc));
        fail_421(s, "Service not available: cannot reach the server.", reason);
        return;
    }
    backend_connected(s);
}

/* The route is known: dial the backend (the connect deadline covers a name's resolution). */
static void route_ready(ftpp_sess *s)
{
    s->state = FTPP_ST_CONNECTING;
    int rc =
        dp_session_dial(&s->core, &s->dial, ftpp_conf_of(s->core.w)->connect_timeout_ms, dialed, s);
    if (rc != 0) {
        char reason[200];
        snprintf(reason, sizeof reason, "backend connect: %s", uv_strerror(rc));
        fail_421(s, "Service not available: cannot reach the server.", reason);
    }
}

static void looked_up(dp_route_lookup *lk, const dph_route *route, dp_cache_result how)
{
    ftpp_sess *s = lk->data;
    s->lookup_pending = false;
    if (s->core.ended || s->state == FTPP_ST_CLOSING)
        return;
    char msg[DPH_MESSAGE_MAX + 40];
    switch (route->status) {
    case DPH_ROUTE_OK:
        dp_session_set_route(&s->core, route);
        route_ready(s);
        return;
    case DPH_ROUTE_UNKNOWN_USER:
        s->unknown_user = true;
        reply_331(s);
        return;
    case DPH_ROUTE_MAINTENANCE:
        snprintf(msg, sizeof msg, "%s",
                 route->message[0] ? route->message
                                   : "Service not available: the server is under maintenance.");
        dp_session_set_route(&s->core, route);
        fail_421(s, msg, "backend in maintenance");
        return;
    case DPH_ROUTE_TEMPFAIL:
    default:
        fail_421(s, route->message[0] ? route->message : "Service not available, try again later.",
                 how == DP_CACHE_FAILED ? "route lookup failed" : "route temporarily failed");
        return;
    }
}

void ftpp_login_user(ftpp_sess *s, const char *user)
{
    reset_attempt(s);
    dp_session_set_user(&s->core, user);
    if (strlen(user) >= sizeof s->core.user) {
        s->unknown_user = true; /* no route can have this name */
        reply_331(s);
        return;
    }
    s->state = FTPP_ST_LOOKUP;
    ftpp_sess_login_clock(s, false);
    s->lookup.data = s;
    int rc = dp_route_cache_lookup(dp_daemon_worker_cache(s->core.w), &s->lookup, s->core.user,
                                   (struct sockaddr *)&s->core.client, DPH_PROTO_FTP, looked_up);
    if (rc == -EINVAL) {
        s->unknown_user = true;
        reply_331(s);
        return;
    }
    if (rc != 0) {
        fail_421(s, "Service not available, try again later.", "route lookup refused");
        return;
    }
    s->lookup_pending = true;
}

/* ---- PASS ---- */

static void login_failed(ftpp_sess *s, const char *why)
{
    const ftpp_conf *cf = ftpp_conf_of(s->core.w);
    dp_log_event(DP_LOG_INFO, s->core.prefix, "login_fail", "reason=%s", why);
    dp_metrics_auth_failure(DP_AUTHM_PASSWORD, strcmp(why, "unknown_user") == 0
                                                   ? DP_AUTHR_UNKNOWN_USER
                                                   : DP_AUTHR_WRONG_PASSWORD);
    s->core.auth_failures++;
    reset_attempt(s);
    s->state = FTPP_ST_PRELOGIN;
    ftpp_sess_login_clock(s, true);
    if (s->core.auth_failures >= cf->max_login_attempts) {
        /* 421: the client learns the connection ends, not that this password was wrong
         * (the same for known and unknown users). */
        ftpp_sess_close(s, "421 Too many failed login attempts.\r\n", "too many failed logins");
        return;
    }
    ftpp_sess_reply(s, "530 Login incorrect.");
    ftpp_sess_ready(s);
}

static void unknown_delay_expired(ftpp_sess *s)
{
    login_failed(s, "unknown_user");
}

void ftpp_login_pass(ftpp_sess *s, char *password)
{
    const ftpp_conf *cf = ftpp_conf_of(s->core.w);
    s->state = FTPP_ST_PASS;
    ftpp_sess_login_clock(s, false);
    if (s->unknown_user) {
        /* Delay like a backend's PAM does for a wrong password (+-25 %), so timing does not
         * tell unknown users apart either. */
        uint64_t d = (uint64_t)cf->auth_fail_delay_ms;
        if (d > 0)
            d = d * 3 / 4 + (uint64_t)(random() % (long)(d / 2 + 1));
        ftpp_sess_op_timer(s, d, unknown_delay_expired);
        return;
    }
    if (s->backend_no_pass) {
        ftpp_sess_reply(s, "230 Login successful.");
        ftpp_sess_logged_in(s);
        ftpp_sess_ready(s);
        return;
    }
    char line[FTPP_CMD_MAX + 8];
    int n = snprintf(line, sizeof line, "PASS %s", password);
    await_backend(s);
    ftpp_backend_send_secret(s, FTPP_EX_PASS, login_line, line);
    explicit_bzero(line, (size_t)(n > 0 ? n : 0));
}

/* ---- backend replies during login ---- */

/* Login replies are kept up to this much (banners, multi-line 230s); more is dropped. */
#define INTERNAL_REPLY_MAX 16384

static void collect(ftpp_sess *s, const ftpp_reply_line *rl)
{
    if (s->rtext_len + rl->len + 2 > INTERNAL_REPLY_MAX)
        return;
    if (s->rtext_len + rl->len + 3 > s->rtext_cap) {
        size_t cap = s->rtext_cap ? s->rtext_cap * 2 : 512;
        while (cap < s->rtext_len + rl->len + 3)
            cap *= 2;
        char *n = realloc(s->rtext, cap);
        if (n == NULL)
            return;
        s->rtext = n;
        s->rtext_cap = cap;
    }
    memcpy(s->rtext + s->rtext_len, rl->text, rl->len);
    s->rtext_len += rl->len;
    s->rtext[s->rtext_len++] = '\r';
    s->rtext[s->rtext_len++] = '\n';
    s->rtext[s->rtext_len] = '\0';
}

static void login_reply(ftpp_sess *s, ftpp_expect ex, int code, const char *text);

/* Reply handler of every command the login sends (and of the greeting): the reply's text is
 * collected, then the login goes on from its code. */
static void login_line(ftpp_sess *s, ftpp_expect ex, const ftpp_reply_line *rl, bool final)
{
    collect(s, rl);
    if (final)
        login_reply(s, ex, rl->code, s->rtext ? s->rtext : "");
}

static void login_reply(ftpp_sess *s, ftpp_expect ex, int code, const char *text)
{
    switch (ex) {
    case FTPP_EX_GREETING:
        if (code == 220) {
            dp_metrics_backend_connect(uv_hrtime() - s->connect_ns);
            login_next(s);
        } else {
            char why[120];
            snprintf(why, sizeof why, "backend greeting %d", code);
            fail_421(s, "Service not available: the server refused the connection.", why);
        }
        return;
    case FTPP_EX_HOST:
    case FTPP_EX_OPTS:
        /* Not every server knows HOST (vsftpd answers 500): only a 421 stops the login. */
        if (code == 421) {
            fail_421(s, "Service not available, remote server closed the connection.",
                     "backend 421 during login");
            return;
        }
        login_next(s);
        return;
    case FTPP_EX_USER:
        if (code == 331 || code == 332) {
            reply_331(s);
        } else if (code == 230) {
            s->backend_no_pass = true;
            reply_331(s);
        } else if (code >= 400 && code < 500) {
            char why[120];
            snprintf(why, sizeof why, "backend answered USER with %d", code);
            fail_421(s, "Service not available, try again later.", why);
        } else {
            /* The backend refuses this user (a user list, a disabled account): to the
             * client that is the same as an unknown user. */
            ftpp_backend_close(s);
            s->unknown_user = true;
            reply_331(s);
        }
        return;
    case FTPP_EX_PASS:
        if (code == 230 || code == 202) {
            ftpp_sess_op_timer_stop(s);
            ftpp_sess_reply_raw(s, text, strlen(text));
            ftpp_sess_logged_in(s);
            ftpp_sess_ready(s);
        } else if (code == 421 || (code >= 400 && code < 500)) {
            char why[120];
            snprintf(why, sizeof why, "backend answered PASS with %d", code);
            fail_421(s, "Service not available, try again later.", why);
        } else {
            login_failed(s, "backend");
        }
        return;
    default:
        return;
    }
}

void ftpp_login_cleanup(ftpp_sess *s)
{
    if (s->lookup_pending) {
        dp_route_cache_cancel(&s->lookup);
        s->lookup_pending = false;
    }
    dp_dial_cancel(s->dial); /* an attempt that is over: its answer is not wanted */
    s->dial = NULL;
    ftpp_sess_op_timer_stop(s);
}

/*
 * ftpp_session.c - one client: accept, the control connection (reading command lines,
 * writing replies), command dispatch before and after login, login/idle timeouts, and the
 * end of the session (one logfmt line, the hook's session_end).
 *
 * Commands are served one at a time (RFC 959 §5.4: a client waits for each reply, and
 * servers may rely on that): while one is in progress (`busy`), further lines stay in `cin`
 * and reading stops when it is full, which is the control connection's backpressure. During
 * a transfer ABOR and STAT are served at once (RFC 959 §4.1.3); anything else waits.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "dp_log.h"
#include "dp_slots.h"
#include "dp_util.h"
#include "ftpp.h"

#define CLOSE_FLUSH_MS 2000

static dp_slots sessions_slots = DP_SLOTS_INIT;

static void process_input(ftpp_sess *s);
static void sess_end(ftpp_sess *s);

/* ---- handles ---- */

static void close_handle(ftpp_sess *s, uv_handle_t *h, bool *open)
{
    dp_session_close_handle(&s->core, h, open);
}

/* ---- writing replies ---- */

typedef struct wreq {
    uv_write_t req;
    ftpp_sess *s;
    char data[];
} wreq;

static void client_write_done(uv_write_t *req, int status)
{
    wreq *wr = (wreq *)req;
    ftpp_sess *s = wr->s;
    free(wr);
    if (status < 0 && status != UV_ECANCELED)
        dp_session_set_reason(&s->core, "client write: %s", uv_strerror(status));
    if (s->state == FTPP_ST_CLOSING) {
        if (s->client_open && uv_stream_get_write_queue_size((uv_stream_t *)&s->client) == 0)
            sess_end(s);
        return;
    }
    if (status < 0) {
        sess_end(s);
        return;
    }
    /* Backpressure: resume reading replies once the client caught up. */
    if (s->backend_connected && !s->backend_reading &&
        uv_stream_get_write_queue_size((uv_stream_t *)&s->client) < FTPP_CLIENT_WQ_HIGH / 4)
        ftpp_backend_resume(s);
}

/* Queue `a` then `b` as one write. */
static void write_client(ftpp_sess *s, const char *a, size_t alen, const char *b, size_t blen)
{
    size_t len = alen + blen;
    if (!s->client_open || s->core.ended || len == 0)
        return;
    wreq *wr = malloc(sizeof *wr + len);
    if (wr == NULL) {
        snprintf(s->core.reason, sizeof s->core.reason, "out of memory");
        sess_end(s);
        return;
    }
    wr->s = s;
    memcpy(wr->data, a, alen);
    if (blen > 0)
        memcpy(wr->data + alen, b, blen);
    uv_buf_t buf = uv_buf_init(wr->data, (unsigned)len);
    int rc = uv_write(&wr->req, (uv_stream_t *)&s->client, &buf, 1, client_write_done);
    if (rc < 0) {
        free(wr);
        dp_session_set_reason(&s->core, "client write: %s", uv_strerror(rc));
        sess_end(s);
        return;
    }
    s->core.bytes_out += len;
}

void ftpp_sess_reply_raw(ftpp_sess *s, const char *data, size_t len)
{
    write_client(s, data, len, NULL, 0);
}

void ftpp_sess_reply_line(ftpp_sess *s, const char *text, size_t len)
{
    write_client(s, text, len, "\r\n", 2);
}

void ftpp_sess_reply(ftpp_sess *s, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf - 2, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n > sizeof buf - 3)
        n = (int)(sizeof buf - 3);
    buf[n++] = '\r';
    buf[n++] = '\n';
    ftpp_sess_reply_raw(s, buf, (size_t)n);
}

/* ---- timers ---- */

static void arm_main_timer(ftpp_sess *s, uint64_t ms);

static void main_timer_fired(uv_timer_t *t)
{
    ftpp_sess *s = t->data;
    const ftpp_conf *cf = ftpp_conf_of(s->core.w);
    if (s->state == FTPP_ST_CLOSING)
        return;
    if (s->state != FTPP_ST_LOGGED_IN) {
        dp_session_end_as(&s->core, DP_SESS_TIMEOUT);
        ftpp_sess_close(s, "421 Login timeout.\r\n", "login timeout");
        return;
    }
    uint64_t idle = (uint64_t)cf->idle_timeout_s * 1000u, since = dp_now_ms() - s->activity_ms;
    if (since < idle) {
        arm_main_timer(s, idle - since);
        return;
    }
    dp_session_end_as(&s->core, DP_SESS_TIMEOUT);
    ftpp_sess_close(s, "421 Timeout.\r\n", "idle timeout");
}

static void arm_main_timer(ftpp_sess *s, uint64_t ms)
{
    if (s->timer_open)
        uv_timer_start(&s->timer, main_timer_fired, ms, 0);
}

void ftpp_sess_login_clock(ftpp_sess *s, bool running)
{
    if (!s->timer_open || s->state == FTPP_ST_LOGGED_IN || s->state == FTPP_ST_CLOSING)
        return;
    if (!running && !s->login_clock_stopped) {
        s->login_left_ms = uv_timer_get_due_in(&s->timer);
        uv_timer_stop(&s->timer);
        s->login_clock_stopped = true;
    } else if (running && s->login_clock_stopped) {
        s->login_clock_stopped = false;
        arm_main_timer(s, s->login_left_ms);
    }
}

static void op_timer_fired(uv_timer_t *t)
{
    ftpp_sess *s = t->data;
    void (*fn)(ftpp_sess *) = s->op_expired;
    s->op_expired = NULL;
    if (fn != NULL)
        fn(s);
}

void ftpp_sess_op_timer(ftpp_sess *s, uint64_t ms, void (*expired)(ftpp_sess *s))
{
    if (!s->op_timer_open)
        return;
    s->op_expired = expired;
    uv_timer_start(&s->op_timer, op_timer_fired, ms, 0);
}

void ftpp_sess_op_timer_stop(ftpp_sess *s)
{
    s->op_expired = NULL;
    if (s->op_timer_open)
        uv_timer_stop(&s->op_timer);
}

/* ---- the end ---- */

/* dp_session_ops.teardown: after the accounting of dp_session_end. */
static void teardown(dp_session *core)
{
    ftpp_sess *s = (ftpp_sess *)core;
    s->state = FTPP_ST_CLOSING;
    if (s->slot_held) {
        dp_slots_release(&sessions_slots, (struct sockaddr *)&s->core.client);
        s->slot_held = false;
    }
    ftpp_data_cleanup(s);
    ftpp_login_cleanup(s);
    ftpp_backend_close(s);
    close_handle(s, (uv_handle_t *)&s->client, &s->client_open);
    close_handle(s, (uv_handle_t *)&s->timer, &s->timer_open);
    close_handle(s, (uv_handle_t *)&s->op_timer, &s->op_timer_open);
}

static void sess_free(dp_session *core)
{
    ftpp_sess *s = (ftpp_sess *)core;
    free(s->held_line);
    free(s->rtext);
    free(s);
}

static void sess_end(ftpp_sess *s)
{
    dp_session_end(&s->core);
}

static void close_flush_expired(ftpp_sess *s)
{
    dp_session_set_reason(&s->core, "client did not read the last reply");
    sess_end(s);
}

void ftpp_sess_close(ftpp_sess *s, const char *line, const char *reason)
{
    if (s->core.ended || s->state == FTPP_ST_CLOSING)
        return;
    if (reason != NULL)
        dp_session_set_reason(&s->core, "%s", reason);
    if (line != NULL)
        ftpp_sess_reply_raw(s, line, strlen(line));
    if (s->core.ended)
        return;
    s->state = FTPP_ST_CLOSING;
    ftpp_data_cleanup(s);
    ftpp_login_cleanup(s);
    ftpp_backend_close(s);
    if (s->client_open && s->client_reading) {
        uv_read_stop((uv_stream_t *)&s->client);
        s->client_reading = false;
    }
    if (!s->client_open || uv_stream_get_write_queue_size((uv_stream_t *)&s->client) == 0) {
        sess_end(s);
        return;
    }
    ftpp_sess_op_timer(s, CLOSE_FLUSH_MS, close_flush_expired);
}

void ftpp_sess_kick(ftpp_sess *s, const char *message, const char *reason)
{
    char line[300];
    snprintf(line, sizeof line, "421 %s\r\n", message);
    dp_session_end_as(&s->core, DP_SESS_KICKED);
    ftpp_sess_close(s, line, reason != NULL ? reason : message);
}

static void kick(dp_session *core, const char *message, const char *reason)
{
    ftpp_sess *s = (ftpp_sess *)core;
    if (s->state != FTPP_ST_CLOSING)
        ftpp_sess_kick(s, message, reason);
}

static const char *const state_names[] = {
    [FTPP_ST_PRELOGIN] = "prelogin",
    [FTPP_ST_LOOKUP] = "lookup",
    [FTPP_ST_CONNECTING] = "connecting",
    [FTPP_ST_GREETING] = "greeting",
    [FTPP_ST_USER] = "user",
    [FTPP_ST_NEED_PASS] = "need_pass",
    [FTPP_ST_PASS] = "pass",
    [FTPP_ST_LOGGED_IN] = "active",
    [FTPP_ST_CLOSING] = "closing",
};

static const char *state_name(const dp_session *core)
{
    const ftpp_sess *s = (const ftpp_sess *)core;
    return s->xfer != NULL && s->state == FTPP_ST_LOGGED_IN ? "transfer" : state_names[s->state];
}

/* A transfer's bytes join the session's when it is over (xfer_finish, ftpp_data_cleanup);
 * until then they are its relay's, or, once the relay is done, its own. */
static void live_bytes(const dp_session *core, uint64_t *in, uint64_t *out)
{
    const ftpp_xfer *x = ((const ftpp_sess *)core)->xfer;
    uint64_t moving = x == NULL ? 0 : x->pump != NULL ? x->pump->bytes : x->bytes;
    if (x != NULL && x->dir == FTPP_XD_UP)
        *in = moving;
    else
        *out = moving;
}

static const dp_session_ops ftpp_session_ops = {
    .proto = DPH_PROTO_FTP,
    .log_every_end = true,
    .shutdown_message = "Service shutting down.",
    .state = state_name,
    .live_bytes = live_bytes,
    .kick = kick,
    .teardown = teardown,
    .free = sess_free,
};

/* ---- commands before login ---- */

/* RFC 2389 FEAT before login: the backend is not known yet, so this is what the proxy
 * itself guarantees (the data commands it implements) plus what every backend we front is
 * expected to have. After login FEAT goes to the backend. */
static const char prelogin_feat[] = "211-Features:\r\n"
                                    " EPRT\r\n"
                                    " EPSV\r\n"
                                    " HOST\r\n"
                                    " MDTM\r\n"
                                    " PASV\r\n"
                                    " REST STREAM\r\n"
                                    " SIZE\r\n"
                                    " TVFS\r\n"
                                    " UTF8\r\n"
                                    "211 End\r\n";

static void cmd_opts(ftpp_sess *s, const char *arg)
{
    if (strncasecmp(arg, "UTF8", 4) == 0 && (arg[4] == '\0' || arg[4] == ' ')) {
        const char *v = arg[4] == ' ' ? arg + 5 : "ON";
        if (strcasecmp(v, "ON") == 0) {
            s->utf8 = true;
            ftpp_sess_reply(s, "200 Always in UTF8 mode.");
            return;
        }
        if (strcasecmp(v, "OFF") == 0) {
            s->utf8 = false;
            ftpp_sess_reply(s, "200 UTF8 mode off.");
            return;
        }
    }
    ftpp_sess_reply(s, "501 Option not understood.");
}

static void dispatch_prelogin(ftpp_sess *s, const char *verb, char *arg)
{
    if (strcmp(verb, "USER") == 0 && arg[0] == '\0') {
        ftpp_sess_reply(s, "501 Syntax error: USER needs a name.");
    } else if (strcmp(verb, "USER") == 0) {
        ftpp_login_user(s, arg);
    } else if (strcmp(verb, "PASS") == 0 && s->state != FTPP_ST_NEED_PASS) {
        ftpp_sess_reply(s, "503 Login with USER first.");
    } else if (strcmp(verb, "PASS") == 0) {
        ftpp_login_pass(s, arg);
    } else if (strcmp(verb, "QUIT") == 0) {
        ftpp_sess_close(s, "221 Goodbye.\r\n", "quit");
    } else if (strcmp(verb, "FEAT") == 0) {
        ftpp_sess_reply_raw(s, prelogin_feat, sizeof prelogin_feat - 1);
    } else if (strcmp(verb, "SYST") == 0) {
        ftpp_sess_reply(s, "215 UNIX Type: L8");
    } else if (strcmp(verb, "NOOP") == 0) {
        ftpp_sess_reply(s, "200 NOOP ok.");
    } else if (strcmp(verb, "HOST") == 0) {
        /* RFC 7151 §3: before USER only; remembered and replayed to the backend. */
        if (s->state == FTPP_ST_NEED_PASS)
            ftpp_sess_reply(s, "503 HOST must come before USER.");
        else if (arg[0] == '\0' || strlen(arg) >= sizeof s->host_arg)
            ftpp_sess_reply(s, "501 Syntax error in HOST.");
        else {
            snprintf(s->host_arg, sizeof s->host_arg, "%s", arg);
            ftpp_sess_reply(s, "220 Host accepted.");
        }
    } else if (strcmp(verb, "OPTS") == 0) {
        cmd_opts(s, arg);
    } else if (strcmp(verb, "AUTH") == 0) {
        ftpp_sess_reply(s, "502 TLS is not offered here.");
    } else if (strcmp(verb, "PBSZ") == 0 || strcmp(verb, "PROT") == 0) {
        ftpp_sess_reply(s, "503 No security exchange was done.");
    } else {
        ftpp_sess_reply(s, "530 Please login with USER and PASS.");
    }
    if (s->state != FTPP_ST_LOOKUP && s->state != FTPP_ST_PASS && s->state != FTPP_ST_CLOSING)
        ftpp_sess_ready(s);
}

/* ---- replies relayed from the backend ---- */

static void relay_line(ftpp_sess *s, const ftpp_reply_line *rl)
{
    ftpp_sess_reply_line(s, rl->text, rl->len);
}

/* RFC 2389 feature lines the proxy cannot honour: it offers no TLS (RFC 4217). */
static bool feat_hidden(const ftpp_reply_line *rl)
{
    static const char *const hidden[] = {"AUTH", "PBSZ", "PROT", "CCC", "ADAT"};
    if (rl->first || rl->last || rl->len < 2 || rl->text[0] != ' ')
        return false;
    for (size_t i = 0; i < sizeof hidden / sizeof hidden[0]; i++) {
        size_t n = strlen(hidden[i]);
        if (strncasecmp(rl->text + 1, hidden[i], n) == 0 &&
            (rl->text[1 + n] == '\0' || rl->text[1 + n] == ' '))
            return true;
    }
    return false;
}

void ftpp_sess_relay_reply(ftpp_sess *s, ftpp_expect ex, const ftpp_reply_line *rl, bool final)
{
    (void)ex;
    relay_line(s, rl);
    if (final)
        ftpp_sess_ready(s);
}

void ftpp_sess_feat_reply(ftpp_sess *s, ftpp_expect ex, const ftpp_reply_line *rl, bool final)
{
    (void)ex;
    if (!feat_hidden(rl))
        relay_line(s, rl);
    if (final)
        ftpp_sess_ready(s);
}

void ftpp_sess_quit_reply(ftpp_sess *s, ftpp_expect ex, const ftpp_reply_line *rl, bool final)
{
    (void)ex;
    relay_line(s, rl);
    if (final)
        ftpp_sess_close(s, NULL, "quit");
}

/* A line nothing asked for, once logged in: the client sees it (RFC 959 §5.4: a 421 before
 * the backend closes). */
static void unsolicited_reply(ftpp_sess *s, ftpp_expect ex, const ftpp_reply_line *rl, bool final)
{
    (void)ex;
    (void) final;
    relay_line(s, rl);
}

/* The backend connection failed after login. */
static void backend_failed(ftpp_sess *s, const char *line, const char *reason)
{
    ftpp_sess_close(s, line, reason);
}

/* ---- commands after login ---- */

static void dispatch_loggedin(ftpp_sess *s, const char *verb, char *arg, char *line)
{
    static const struct {
        const char *verb;
        ftpp_xdir dir;
    } transfers[] = {{"RETR", FTPP_XD_DOWN}, {"LIST", FTPP_XD_LIST}, {"NLST", FTPP_XD_LIST},
                     {"MLSD", FTPP_XD_LIST}, {"STOR", FTPP_XD_UP},   {"STOU", FTPP_XD_UP},
                     {"APPE", FTPP_XD_UP}};
    for (size_t i = 0; i < sizeof transfers / sizeof transfers[0]; i++) {
        if (strcmp(verb, transfers[i].verb) == 0) {
            ftpp_data_cmd_transfer(s, verb, transfers[i].dir, line);
            return;
        }
    }
    if (strcmp(verb, "PASV") == 0 || strcmp(verb, "EPSV") == 0) {
        ftpp_data_cmd_pasv(s, verb[0] == 'E', arg);
    } else if (strcmp(verb, "PORT") == 0 || strcmp(verb, "EPRT") == 0) {
        ftpp_data_cmd_port(s, verb[0] == 'E', arg);
    } else if (strcmp(verb, "LPRT") == 0 || strcmp(verb, "LPSV") == 0) {
        ftpp_sess_reply(s, "502 %s is not implemented; use EPRT or EPSV.", verb);
        ftpp_sess_ready(s);
    } else if (strcmp(verb, "ABOR") == 0) {
        ftpp_data_cmd_abor(s);
    } else if (strcmp(verb, "QUIT") == 0) {
        ftpp_backend_send_line(s, FTPP_EX_QUIT, ftpp_sess_quit_reply, line);
    } else if (strcmp(verb, "FEAT") == 0) {
        ftpp_backend_send_line(s, FTPP_EX_FEAT, ftpp_sess_feat_reply, line);
    } else if (strcmp(verb, "USER") == 0) {
        /* The route was chosen for this user; another login would need another backend. */
        ftpp_sess_reply(s, "530 Can't change to another user.");
        ftpp_sess_ready(s);
    } else if (strcmp(verb, "PASS") == 0) {
        ftpp_sess_reply(s, "230 Already logged in.");
        ftpp_sess_ready(s);
    } else if (strcmp(verb, "REIN") == 0) {
        ftpp_sess_reply(s, "502 REIN is not implemented.");
        ftpp_sess_ready(s);
    } else if (strcmp(verb, "HOST") == 0) {
        ftpp_sess_reply(s, "503 Already logged in.");
        ftpp_sess_ready(s);
    } else if (strcmp(verb, "AUTH") == 0 || strcmp(verb, "CCC") == 0 || strcmp(verb, "ADAT") == 0) {
        ftpp_sess_reply(s, "502 TLS is not offered here.");
        ftpp_sess_ready(s);
    } else if (strcmp(verb, "PBSZ") == 0 || strcmp(verb, "PROT") == 0) {
        ftpp_sess_reply(s, "503 No security exchange was done.");
        ftpp_sess_ready(s);
    } else {
        ftpp_backend_send_line(s, FTPP_EX_RELAY, ftpp_sess_relay_reply, line);
    }
}

/* A line that arrived while a transfer runs: ABOR and STAT now, anything else after. */
static bool dispatch_during_transfer(ftpp_sess *s, const char *verb, char *line)
{
    if (strcmp(verb, "ABOR") == 0) {
        ftpp_data_cmd_abor(s);
        return true;
    }
    if (strcmp(verb, "STAT") == 0) {
        ftpp_data_cmd_stat(s);
        return true;
    }
    s->held_line = strdup(line);
    if (s->held_line == NULL) {
        ftpp_sess_close(s, "421 Out of memory.\r\n", "out of memory");
        return true;
    }
    return false;
}

static void dispatch_line(ftpp_sess *s, char *line)
{
    char verb[5];
    char *arg = NULL;
    s->activity_ms = dp_now_ms();
    if (ftpp_cmd_split(line, verb, &arg) != 0) {
        ftpp_sess_reply(s, "500 Unknown command.");
        return;
    }
    bool secret = strcmp(verb, "PASS") == 0;
    dp_slog_debug(s->core.prefix, "command %s%s", verb, secret ? " ****" : "");
    if (ftpp_data_busy(s)) {
        if (!dispatch_during_transfer(s, verb, line))
            s->busy = true;
        return;
    }
    s->busy = true;
    if (s->state == FTPP_ST_LOGGED_IN)
        dispatch_loggedin(s, verb, arg, line);
    else
        dispatch_prelogin(s, verb, arg);
    if (secret)
        explicit_bzero(line, strlen(line)); /* the password is on its way; no copy stays */
}

/* Parse and run lines while no command is in progress. */
static void process_input(ftpp_sess *s)
{
    if (s->in_process)
        return;
    s->in_process = true;
    for (int guard = 0; guard < 1024 && !s->busy && !s->core.ended && s->state != FTPP_ST_CLOSING;
         guard++) {
        if (s->held_line != NULL) {
            char *line = s->held_line;
            s->held_line = NULL;
            dispatch_line(s, line);
            free(line);
            continue;
        }
        if (s->cin_len == 0)
            break;
        ftpp_line_status st;
        size_t used = ftpp_line_feed(&s->lb, s->cin, s->cin_len, &st);
        memmove(s->cin, s->cin + used, s->cin_len - used);
        s->cin_len -= used;
        /* What moved down leaves a copy behind it (maybe a PASS line): clear it. */
        explicit_bzero(s->cin + s->cin_len, used);
        if (st == FTPP_LINE_NONE)
            break;
        if (st == FTPP_LINE_TOO_LONG) {
            ftpp_sess_reply(s, "500 Command line too long.");
            s->activity_ms = dp_now_ms();
        } else if (st == FTPP_LINE_BAD) {
            ftpp_sess_reply(s, "500 Invalid character in command.");
            s->activity_ms = dp_now_ms();
        } else {
            dispatch_line(s, s->lb.line);
        }
    }
    s->in_process = false;
    if (s->client_eof && !s->core.ended && s->state != FTPP_ST_CLOSING && !s->busy) {
        dp_session_set_reason(&s->core, "client closed");
        ftpp_sess_close(s, NULL, NULL);
        return;
    }
    ftpp_sess_resume_client(s);
}

void ftpp_sess_ready(ftpp_sess *s)
{
    s->busy = false;
    if (!s->in_process)
        process_input(s);
}

/* ---- reading the client ---- */

static void client_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    ftpp_sess *s = h->data;
    (void)suggested;
    *buf = uv_buf_init(s->cin + s->cin_len, (unsigned)(sizeof s->cin - s->cin_len));
}

static void client_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf)
{
    ftpp_sess *s = st->data;
    (void)buf;
    if (n == 0 || n == UV_ENOBUFS)
        return;
    if (n < 0) {
        uv_read_stop(st);
        s->client_reading = false;
        if (n == UV_EOF) {
            s->client_eof = true;
            /* Run what is complete (a final QUIT), then end. */
            if (!s->busy || ftpp_data_busy(s))
                process_input(s);
            if (!s->core.ended && s->state != FTPP_ST_CLOSING) {
                dp_session_set_reason(&s->core, "client closed");
                ftpp_sess_close(s, NULL, NULL);
            }
        } else {
            snprintf(s->core.reason, sizeof s->core.reason, "client read: %s", uv_strerror((int)n));
            sess_end(s);
        }
        return;
    }
    s->cin_len += (size_t)n;
    s->core.bytes_in += (uint64_t)n;
    if (s->busy && ftpp_data_busy(s) && s->held_line == NULL) {
        /* A transfer runs: look at the next line now (ABOR, STAT). */
        s->busy = false;
    }
    process_input(s);
}

void ftpp_sess_resume_client(ftpp_sess *s)
{
    if (!s->client_open || s->core.ended || s->state == FTPP_ST_CLOSING || s->client_eof)
        return;
    bool want = s->cin_len < sizeof s->cin;
    if (want && !s->client_reading) {
        if (uv_read_start((uv_stream_t *)&s->client, client_alloc, client_read) == 0)
            s->client_reading = true;
    } else if (!want && s->client_reading) {
        uv_read_stop((uv_stream_t *)&s->client);
        s->client_reading = false;
    }
}

/* ---- login completed ---- */

void ftpp_sess_logged_in(ftpp_sess *s)
{
    const ftpp_conf *cf = ftpp_conf_of(s->core.w);
    s->state = FTPP_ST_LOGGED_IN;
    s->on_backend_fail = backend_failed;
    s->on_unsolicited = unsolicited_reply;
    s->login_clock_stopped = false;
    s->activity_ms = dp_now_ms();
    arm_main_timer(s, (uint64_t)cf->idle_timeout_s * 1000u);
    dp_session_log(&s->core, "login", NULL);
    dp_session_logged_in(&s->core);
}

/* ---- accept ---- */

static void refuse(const dp_conn_info *ci, const char *line, const char *why)
{
    char addr[64];
    dp_sockaddr_format((const struct sockaddr *)&ci->peer, addr, sizeof addr);
    dp_log_event(DP_LOG_WARN, NULL, "refused", "client=%s reason=%s", addr, why);
    /* Best effort, non-blocking: a fresh socket's send buffer is empty. */
    ssize_t w = send(ci->fd, line, strlen(line), MSG_NOSIGNAL | MSG_DONTWAIT);
    (void)w;
    close(ci->fd);
    dp_metrics_session_refused();
}

void ftpp_sess_accept(ftpp_worker *fw, const dp_conn_info *ci)
{
    const ftpp_conf *cf = ftpp_conf_of(fw->w);
    int rc = dp_slots_acquire(&sessions_slots, (const struct sockaddr *)&ci->peer, cf->max_sessions,
                              cf->max_sessions_per_ip);
    if (rc != 0) {
        refuse(ci,
               rc == -EUSERS ? "421 Too many connections from your address.\r\n"
                             : "421 Too many users, try again later.\r\n",
               rc == -EUSERS ? "max_sessions_per_ip" : "max_sessions");
        return;
    }
    ftpp_sess *s = calloc(1, sizeof *s);
    if (s == NULL) {
        dp_slots_release(&sessions_slots, (const struct sockaddr *)&ci->peer);
        refuse(ci, "421 Out of memory.\r\n", "out of memory");
        return;
    }
    s->fw = fw;
    dp_session_start(&s->core, fw->w, &ftpp_session_ops, ci);
    s->slot_held = true;
    s->pasv_fd = -1;
    s->activity_ms = s->core.started_ms;
    socklen_t ll = sizeof s->ctl_local;
    if (getsockname(ci->fd, (struct sockaddr *)&s->ctl_local, &ll) != 0)
        s->ctl_local = ci->local;
    ftpp_line_init(&s->lb);
    ftpp_reply_init(&s->rr);

    uv_loop_t *loop = dp_worker_loop(fw->w);
    uv_timer_init(loop, &s->timer);
    dp_session_own_handle(&s->core, (uv_handle_t *)&s->timer, &s->timer_open);
    uv_timer_init(loop, &s->op_timer);
    dp_session_own_handle(&s->core, (uv_handle_t *)&s->op_timer, &s->op_timer_open);

    /* RFC 959 §4.1.3: ABOR arrives behind Telnet IP + Synch, whose DM byte is sent as
     * urgent data; inline, it stays in the stream where the line reader drops it (Python's
     * ftplib even sends "ABOR\r\n" itself with MSG_OOB, which out-of-line would lose a byte). */
    int one = 1;
    setsockopt(ci->fd, SOL_SOCKET, SO_OOBINLINE, &one, sizeof one);
    dp_sock_tune(ci->fd, cf->common.tcp_keepalive_s);
    uv_tcp_init(loop, &s->client);
    dp_session_own_handle(&s->core, (uv_handle_t *)&s->client, &s->client_open);
    rc = uv_tcp_open(&s->client, ci->fd);
    if (rc != 0) {
        close(ci->fd);
        snprintf(s->core.reason, sizeof s->core.reason, "uv_tcp_open: %s", uv_strerror(rc));
        sess_end(s);
        return;
    }
    dp_log_event(DP_LOG_INFO, NULL, "session_start", "sid=%s client=%s", s->core.sid,
                 s->core.client_text);
    ftpp_sess_reply(s, "220 %s", cf->greeting);
    arm_main_timer(s, (uint64_t)cf->login_timeout_ms);
    ftpp_sess_resume_client(s);
}

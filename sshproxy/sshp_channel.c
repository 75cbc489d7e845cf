/* sshp_channel.c - channel pairs: a client-facing channel bridged to a backend channel.
 *
 * Flow control (libssh 0.10.6, see docs/sshproxy.md): data callbacks copy into a bounded
 * staging buffer per stream and return what they took; libssh keeps the rest and stops
 * re-opening the window, so the sender stalls. The pump writes staging to the other side
 * only while that session's output buffer is empty and its window is open. Bytes left in
 * libssh's buffer are pulled only when the pull leaves < 640000 bytes buffered: every read
 * call re-grants window up to 1.28 MB regardless of what is buffered, so smaller pulls would
 * let memory grow without bound.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dp_log.h"
#include "dp_util.h"
#include "sshp.h"

#define MAX_PAIRS 128
/* Requests wait for their turn so that replies go back in order; a client that queues more
 * than this is not waiting for answers (OpenSSH sends one -R per forward at once, so the
 * global queue is sized for that) and its connection ends. */
#define MAX_REQS 64     /* queued channel requests per channel */
#define MAX_GLOBALS 256 /* queued global requests per connection */
/* A peer that respects the window never offers more than libssh's ~1.9 MB per stream; far
 * more means it ignores flow control (libssh accepts such data anyway). */
#define HARD_CAP (16u << 20)
#define PAIR_CLOSE_WAIT_MS 30000
#define WRITE_CHUNK (256 * 1024)
/* libssh 0.10 re-grants window when local_window + buffered < this (channels.c WINDOWLIMIT). */
#define LIBSSH_WINDOW_LIMIT 640000

enum { SSHP_ST_C2B = 0, SSHP_ST_B2C_OUT = 1, SSHP_ST_B2C_ERR = 2 };

/* ---- staging buffers ---- */

static size_t buf_room(const sshp_buf *b)
{
    return b->cap - b->len;
}

/* Make `n` contiguous bytes writable at the end; returns where, or NULL. */
static uint8_t *buf_reserve(sshp_buf *b, size_t n)
{
    if (n > buf_room(b))
        return NULL;
    if (b->off + b->len + n > b->alloc && b->off > 0) {
        memmove(b->data, b->data + b->off, b->len);
        b->off = 0;
    }
    if (b->off + b->len + n > b->alloc) {
        size_t want = b->alloc ? b->alloc : 16384;
        while (want < b->len + n)
            want *= 2;
        if (want > b->cap)
            want = b->cap;
        uint8_t *nd = realloc(b->data, want);
        if (nd == NULL)
            return NULL;
        b->data = nd;
        b->alloc = want;
    }
    return b->data + b->off + b->len;
}

static size_t buf_put(sshp_buf *b, const void *data, size_t n)
{
    if (n > buf_room(b))
        n = buf_room(b);
    if (n == 0)
        return 0;
    uint8_t *p = buf_reserve(b, n);
    if (p == NULL)
        return 0;
    memcpy(p, data, n);
    b->len += n;
    return n;
}

static void buf_consume(sshp_buf *b, size_t n)
{
    b->off += n;
    b->len -= n;
    if (b->len == 0) {
        /* Drained: give the memory back. Most channels are idle most of the time, and a
         * kept buffer per stream is what idle sessions would pay for. */
        free(b->data);
        b->data = NULL;
        b->alloc = 0;
        b->off = 0;
    }
}

static void buf_free(sshp_buf *b)
{
    free(b->data);
    memset(b, 0, sizeof *b);
}

/* ---- callbacks: record only ---- */

static int take(sshp_pair *p, int stream, const void *data, uint32_t len)
{
    if (len > HARD_CAP) {
        /* Only a peer ignoring the window gets here: end the connection. */
        p->conn->abuse = "peer ignores the channel window";
        p->conn->pump_again = true;
        return (int)len;
    }
    if (p->state >= SSHP_PAIR_CLOSING)
        return (int)len; /* nobody will read it: drop, keep no memory */
    size_t n = buf_put(&p->st[stream], data, len);
    if (n < len)
        p->leftover[stream] = true;
    p->conn->pump_again = true;
    return (int)n;
}

/* Callbacks get the side they were set on (sshp_pair_side); data from the client's channel
 * goes to one stream, the backend's stdout and stderr to their own. */
static int c_data(ssh_session s, ssh_channel ch, void *data, uint32_t len, int is_stderr, void *ud)
{
    (void)s, (void)ch, (void)is_stderr;
    return take(((sshp_pair_side *)ud)->pair, SSHP_ST_C2B, data, len);
}

static int b_data(ssh_session s, ssh_channel ch, void *data, uint32_t len, int is_stderr, void *ud)
{
    (void)s, (void)ch;
    return take(((sshp_pair_side *)ud)->pair, is_stderr ? SSHP_ST_B2C_ERR : SSHP_ST_B2C_OUT, data,
                len);
}

static void on_eof(ssh_session s, ssh_channel ch, void *ud)
{
    sshp_pair_side *side = ud;
    side->eof = true;
    side->pair->conn->pump_again = true;
}

static void on_close(ssh_session s, ssh_channel ch, void *ud)
{
    sshp_pair_side *side = ud;
    side->closed = true;
    side->pair->conn->pump_again = true;
}

static void b_exit_status(ssh_session s, ssh_channel ch, int status, void *ud)
{
    sshp_pair *p = ((sshp_pair_side *)ud)->pair;
    p->exit_status_set = true;
    p->exit_status = status;
}

static void b_exit_signal(ssh_session s, ssh_channel ch, const char *sig, int core,
                          const char *errmsg, const char *lang, void *ud)
{
    sshp_pair *p = ((sshp_pair_side *)ud)->pair;
    if (p->exit_signal_set)
        return;
    p->exit_signal_set = true;
    p->exit_signal = strdup(sig != NULL ? sig : "KILL");
    p->exit_errmsg = strdup(errmsg != NULL ? errmsg : "");
    p->exit_core = core != 0;
}

/* Append r to a list of p's requests (the queue, or the signals waiting to join it). */
static void append(sshp_pair *p, sshp_req ***tail, sshp_req *r)
{
    r->held = (r->a != NULL ? strlen(r->a) : 0) + (r->b != NULL ? strlen(r->b) : 0) + r->modes_len;
    p->conn->held_bytes += r->held;
    p->nreqs++;
    r->next = NULL;
    **tail = r;
    *tail = &r->next;
}

static void enqueue(sshp_pair *p, sshp_req *r)
{
    append(p, &p->reqs_tail, r);
}

/* A new queue entry, or NULL with the connection marked to end (over the cap, or no memory:
 * refusing at once would overtake the replies still due). */
static sshp_req *req_new(sshp_pair *p)
{
    sshp_req *r = p->nreqs < MAX_REQS ? calloc(1, sizeof *r) : NULL;
    if (r == NULL) {
        p->conn->abuse =
            p->nreqs < MAX_REQS ? "out of memory" : "too many pending channel requests";
        p->conn->pump_again = true;
    }
    return r;
}

static void c_signal(ssh_session s, ssh_channel ch, const char *sig, void *ud)
{
    sshp_pair *p = ((sshp_pair_side *)ud)->pair;
    sshp_req *r = req_new(p);
    if (r == NULL)
        return;
    r->kind = SSHP_REQ_SIGNAL;
    r->a = strdup(sig != NULL ? sig : "TERM");
    append(p, &p->signals_tail, r);
    p->conn->pump_again = true;
}

/* Queue the signals that came with the last read behind its messages (see sshp_pair). */
static void take_signals(sshp_pair *p)
{
    if (p->signals == NULL)
        return;
    *p->reqs_tail = p->signals;
    p->reqs_tail = p->signals_tail;
    p->signals = NULL;
    p->signals_tail = &p->signals;
}

static void c_agent_req(ssh_session s, ssh_channel ch, void *ud)
{
    sshp_pair *p = ((sshp_pair_side *)ud)->pair;
    sshp_req *r = req_new(p);
    if (r == NULL)
        return;
    /* libssh has already said yes to the client; the backend is asked in turn, and the
     * agent channels it opens are bridged from now on. */
    p->conn->chans.agent_forwarding = true;
    r->kind = SSHP_REQ_AGENT;
    enqueue(p, r);
    p->conn->pump_again = true;
}

/* ---- opening ---- */

static void set_client_callbacks(sshp_pair *p);
static void set_backend_callbacks(sshp_pair *p);

static sshp_pair *pair_new(sshp_conn *c, ssh_message m, sshp_pair_kind kind)
{
    const sshp_conf *cf = sshp_conf_of(c->core.w);
    sshp_pair *p = calloc(1, sizeof *p);
    if (p == NULL)
        return NULL;
    p->conn = c;
    p->c.pair = p->b.pair = p;
    p->kind = kind;
    p->reverse = kind == SSHP_PK_FORWARDED || kind == SSHP_PK_AGENT;
    p->open_msg = m;
    p->reqs_tail = &p->reqs;
    p->signals_tail = &p->signals;
    for (int i = 0; i < 3; i++)
        p->st[i].cap = (size_t)cf->channel_buffer;
    /* Open our side towards whoever did not ask; the asker's open is answered after. */
    if (p->reverse)
        p->c.ch = ssh_channel_new(c->client.session);
    else
        p->b.ch = ssh_channel_new(c->backend.session);
    if (p->c.ch == NULL && p->b.ch == NULL) {
        free(p);
        return NULL;
    }
    /* Callbacks on our side from the start: DATA/EOF/CLOSE can arrive in the same poll as
     * the open confirmation, before progress_open sees it. */
    if (p->reverse)
        set_client_callbacks(p);
    else
        set_backend_callbacks(p);
    p->next = c->chans.pairs;
    c->chans.pairs = p;
    c->chans.npairs++;
    return p;
}

void sshp_channel_open_message(sshp_conn *c, ssh_message m)
{
    int sub = ssh_message_subtype(m);
    if ((sub != SSH_CHANNEL_SESSION && sub != SSH_CHANNEL_DIRECT_TCPIP) ||
        c->chans.npairs >= MAX_PAIRS ||
        pair_new(c, m, sub == SSH_CHANNEL_DIRECT_TCPIP ? SSHP_PK_DIRECT : SSHP_PK_SESSION) ==
            NULL) {
        ssh_message_reply_default(m);
        ssh_message_free(m);
    }
}

/* The backend opens channels back to the client for remote forwards (-R) and agent
 * forwarding (-A); only what this client asked for is bridged. */
void sshp_channel_backend_open(sshp_conn *c, ssh_message m)
{
    int sub = ssh_message_subtype(m);
    sshp_pair_kind kind;
    bool allowed;
    if (sub == SSH_CHANNEL_FORWARDED_TCPIP) {
        kind = SSHP_PK_FORWARDED;
        /* The backend may open the first forwarded channel in the same poll that brings its
         * reply to tcpip-forward: a forward counts from the moment it was sent. */
        allowed = c->chans.nforwards > 0 ||
                  (c->chans.globals != NULL && c->chans.globals->sent &&
                   ssh_message_subtype(c->chans.globals->msg) == SSH_GLOBAL_REQUEST_TCPIP_FORWARD);
    } else if (sub == SSH_CHANNEL_AUTH_AGENT) {
        kind = SSHP_PK_AGENT;
        allowed = c->chans.agent_forwarding;
    } else {
        kind = SSHP_PK_SESSION;
        allowed = false;
    }
    if (!allowed || c->chans.npairs >= MAX_PAIRS || pair_new(c, m, kind) == NULL) {
        ssh_message_reply_default(m);
        ssh_message_free(m);
    }
}

/* The callbacks common to both sides, then the side's own. */
static void set_side_callbacks(sshp_pair_side *side)
{
    ssh_callbacks_init(&side->cb);
    side->cb.userdata = side;
    side->cb.channel_eof_function = on_eof;
    side->cb.channel_close_function = on_close;
}

static void set_client_callbacks(sshp_pair *p)
{
    set_side_callbacks(&p->c);
    p->c.cb.channel_data_function = c_data;
    p->c.cb.channel_signal_function = c_signal;
    p->c.cb.channel_auth_agent_req_function = c_agent_req;
    ssh_set_channel_callbacks(p->c.ch, &p->c.cb);
}

static void set_backend_callbacks(sshp_pair *p)
{
    set_side_callbacks(&p->b);
    p->b.cb.channel_data_function = b_data;
    p->b.cb.channel_exit_status_function = b_exit_status;
    p->b.cb.channel_exit_signal_function = b_exit_signal;
    ssh_set_channel_callbacks(p->b.ch, &p->b.cb);
}

static void progress_open(sshp_pair *p)
{
    ssh_message m = p->open_msg;
    const char *orig = ssh_message_channel_request_open_originator(m);
    int oport = ssh_message_channel_request_open_originator_port(m);
    int rc;
    switch (p->kind) {
    case SSHP_PK_SESSION:
        rc = ssh_channel_open_session(p->b.ch);
        break;
    case SSHP_PK_DIRECT:
        rc = ssh_channel_open_forward(p->b.ch, ssh_message_channel_request_open_destination(m),
                                      ssh_message_channel_request_open_destination_port(m),
                                      orig != NULL ? orig : "127.0.0.1", oport);
        break;
    case SSHP_PK_FORWARDED:
        rc = ssh_channel_open_reverse_forward(p->c.ch,
                                              ssh_message_channel_request_open_destination(m),
                                              ssh_message_channel_request_open_destination_port(m),
                                              orig != NULL ? orig : "127.0.0.1", oport);
        break;
    default: /* SSHP_PK_AGENT */
        rc = ssh_channel_open_auth_agent(p->c.ch);
        break;
    }
    if (rc == SSH_AGAIN)
        return;
    if (rc != SSH_OK) {
        ssh_message_reply_default(m);
        ssh_message_free(m);
        p->open_msg = NULL;
        p->state = SSHP_PAIR_DONE;
        return;
    }
    ssh_channel accepted = ssh_message_channel_request_open_reply_accept(m);
    ssh_message_free(m);
    p->open_msg = NULL;
    sshp_pair_side *asker = p->reverse ? &p->b : &p->c;
    asker->ch = accepted;
    if (accepted == NULL) {
        asker->closed = asker->close_done = true;
        p->state = SSHP_PAIR_CLOSING;
        return;
    }
    if (p->reverse)
        set_backend_callbacks(p);
    else
        set_client_callbacks(p);
    p->state = SSHP_PAIR_OPEN;
}

/* ---- requests ---- */

static char *dupstr(const char *s)
{
    return strdup(s != NULL ? s : "");
}

static sshp_pair *pair_of_channel(sshp_conn *c, ssh_channel ch)
{
    for (sshp_pair *p = c->chans.pairs; p != NULL; p = p->next)
        if (p->c.ch == ch && p->state != SSHP_PAIR_DONE)
            return p;
    return NULL;
}

void sshp_channel_request_message(sshp_conn *c, ssh_message m)
{
    sshp_pair *p = pair_of_channel(c, ssh_message_channel_request_channel(m));
    if (p == NULL) {
        /* The channel is gone (or going): replying would touch freed libssh state. */
        ssh_message_free(m);
        return;
    }
    if (ssh_message_subtype(m) == SSH_CHANNEL_REQUEST_WINDOW_CHANGE && p->reqs != NULL) {
        /* A terminal dragged to a new size sends a burst; only the last size matters, and
         * window-change wants no reply, so a queued one (never in flight: it is sent in one
         * call) takes the new size. */
        sshp_req *last = p->reqs;
        while (last->next != NULL)
            last = last->next;
        if (last->kind == SSHP_REQ_WINDOW_CHANGE) {
            last->cols = ssh_message_channel_request_pty_width(m);
            last->rows = ssh_message_channel_request_pty_height(m);
            ssh_message_free(m);
            return;
        }
    }
    sshp_req *r = req_new(p);
    if (r == NULL) {
        ssh_message_free(m); /* the connection ends: no reply out of turn */
        return;
    }
    r->msg = m;
    switch (ssh_message_subtype(m)) {
    case SSH_CHANNEL_REQUEST_PTY:
        r->kind = SSHP_REQ_PTY;
        r->a = dupstr(ssh_message_channel_request_pty_term(m));
        r->cols = ssh_message_channel_request_pty_width(m);
        r->rows = ssh_message_channel_request_pty_height(m);
#ifdef SSHP_HAVE_PTY_MODES
        ssh_message_channel_request_pty_modes(m, &r->modes_len);
#endif
        break;
    case SSH_CHANNEL_REQUEST_SHELL:
        r->kind = SSHP_REQ_SHELL;
        break;
    case SSH_CHANNEL_REQUEST_EXEC:
        r->kind = SSHP_REQ_EXEC;
        r->a = dupstr(ssh_message_channel_request_command(m));
        break;
    case SSH_CHANNEL_REQUEST_SUBSYSTEM:
        r->kind = SSHP_REQ_SUBSYSTEM;
        r->a = dupstr(ssh_message_channel_request_subsystem(m));
        break;
    case SSH_CHANNEL_REQUEST_ENV:
        r->kind = SSHP_REQ_ENV;
        r->a = dupstr(ssh_message_channel_request_env_name(m));
        r->b = dupstr(ssh_message_channel_request_env_value(m));
        break;
    case SSH_CHANNEL_REQUEST_WINDOW_CHANGE:
        r->kind = SSHP_REQ_WINDOW_CHANGE;
        r->cols = ssh_message_channel_request_pty_width(m);
        r->rows = ssh_message_channel_request_pty_height(m);
        break;
#ifdef SSHP_HAVE_BREAK
    case SSH_CHANNEL_REQUEST_BREAK:
        r->kind = SSHP_REQ_BREAK;
        r->break_ms = ssh_message_channel_request_break_length(m);
        break;
#endif
    default:
        r->kind = SSHP_REQ_UNSUPPORTED;
        break;
    }
    enqueue(p, r);
}

static void req_free(sshp_conn *c, sshp_req *r, bool reply_failure)
{
    c->held_bytes -= r->held;
    if (r->msg != NULL) {
        if (reply_failure)
            ssh_message_reply_default(r->msg);
        ssh_message_free(r->msg);
    }
    free(r->a);
    free(r->b);
    free(r);
}

/* The client's terminal modes (erase character, iutf8, ...) go to the backend as the client
 * encoded them (RFC 4254 section 8): sshd parses them itself. Without the libssh patch that
 * exposes them (deps/libssh/patches/0001) the backend's pty keeps its defaults. */
static int request_pty(sshp_pair *p, sshp_req *r)
{
#ifdef SSHP_HAVE_PTY_MODES
    size_t len = 0;
    const unsigned char *modes = ssh_message_channel_request_pty_modes(r->msg, &len);
    if (modes != NULL)
        return ssh_channel_request_pty_size_modes(p->b.ch, r->a, r->cols, r->rows, modes, len);
#endif
    return ssh_channel_request_pty_size(p->b.ch, r->a, r->cols, r->rows);
}

/* Issue the head request on the backend channel; libssh allows one at a time and a pending
 * call must be repeated with the same function until it answers. */
static void progress_requests(sshp_pair *p)
{
    while (p->reqs != NULL) {
        sshp_req *r = p->reqs;
        int rc;
        switch (r->kind) {
        case SSHP_REQ_PTY:
            rc = request_pty(p, r);
            break;
        case SSHP_REQ_SHELL:
            rc = ssh_channel_request_shell(p->b.ch);
            break;
        case SSHP_REQ_EXEC:
            rc = ssh_channel_request_exec(p->b.ch, r->a);
            break;
        case SSHP_REQ_SUBSYSTEM:
            rc = ssh_channel_request_subsystem(p->b.ch, r->a);
            break;
        case SSHP_REQ_ENV:
            rc = ssh_channel_request_env(p->b.ch, r->a, r->b);
            break;
        case SSHP_REQ_WINDOW_CHANGE:
            rc = ssh_channel_change_pty_size(p->b.ch, r->cols, r->rows);
            break;
        case SSHP_REQ_SIGNAL:
            rc = ssh_channel_request_send_signal(p->b.ch, r->a);
            break;
        case SSHP_REQ_AGENT:
            rc = ssh_channel_request_auth_agent(p->b.ch);
            break;
        case SSHP_REQ_BREAK:
            /* libssh sends break without want_reply (as OpenSSH's ~B does), so the client's
             * reply, if it wants one, says the break was passed on, not that a tty took it. */
            rc = ssh_channel_request_send_break(p->b.ch, r->break_ms);
            break;
        default:
            rc = SSH_ERROR;
            break;
        }
        if (rc == SSH_AGAIN)
            return;
        p->nreqs--;
        p->reqs = r->next;
        if (p->reqs == NULL)
            p->reqs_tail = &p->reqs;
        if (rc == SSH_OK && r->msg != NULL)
            ssh_message_channel_request_reply_success(r->msg);
        req_free(p->conn, r, rc != SSH_OK);
    }
}

/* ---- data ---- */

static void flush(sshp_pair *p, int stream, ssh_channel dst, ssh_session dsess, bool in)
{
    sshp_buf *b = &p->st[stream];
    while (b->len > 0) {
        /* Gate: libssh encrypts everything the window allows into an unbounded output
         * buffer; write only when the previous write has left the socket. */
        if (ssh_get_status(dsess) & SSH_WRITE_PENDING)
            return;
        uint32_t win = ssh_channel_window_size(dst);
        if (win == 0)
            return;
        size_t n = b->len < WRITE_CHUNK ? b->len : WRITE_CHUNK;
        if (n > win)
            n = win;
        int w = stream == SSHP_ST_B2C_ERR
                    ? ssh_channel_write_stderr(dst, b->data + b->off, (uint32_t)n)
                    : ssh_channel_write(dst, b->data + b->off, (uint32_t)n);
        if (w == SSH_ERROR) {
            /* The destination channel is closing: what is left cannot be delivered. */
            buf_consume(b, b->len);
            return;
        }
        if (w <= 0)
            return;
        buf_consume(b, (size_t)w);
        p->conn->last_activity_ms = dp_now_ms();
        if (in)
            p->bytes_in += (uint64_t)w;
        else
            p->bytes_out += (uint64_t)w;
    }
}

/* Take bytes the data callback had to leave in libssh's buffer (they are re-offered only when
 * the next packet arrives, which a stalled sender never sends). */
static void pull(sshp_pair *p, int stream, ssh_channel src)
{
    if (!p->leftover[stream] || p->st[stream].len > 0)
        return;
    int is_stderr = stream == SSHP_ST_B2C_ERR;
    int avail = ssh_channel_poll(src, is_stderr);
    if (avail <= 0 && stream == SSHP_ST_C2B) {
        /* The client's extended data shares this staging (c_data): its leftovers wait in
         * libssh's other stream. */
        is_stderr = 1;
        avail = ssh_channel_poll(src, is_stderr);
    }
    if (avail <= 0) {
        p->leftover[stream] = false;
        return;
    }
    size_t need = (size_t)avail > LIBSSH_WINDOW_LIMIT ? (size_t)avail - LIBSSH_WINDOW_LIMIT + 1 : 1;
    size_t room = buf_room(&p->st[stream]);
    if (room < need)
        return;
    size_t k = (size_t)avail < room ? (size_t)avail : room;
    uint8_t *dst = buf_reserve(&p->st[stream], k);
    if (dst == NULL)
        return;
    int n = ssh_channel_read_nonblocking(src, dst, (uint32_t)k, is_stderr);
    if (n > 0) {
        p->st[stream].len += (size_t)n;
        p->conn->pump_again = true; /* to flush it: no I/O event may come for these bytes */
    }
    if ((size_t)avail <= k && stream != SSHP_ST_C2B) /* C2B: cleared once both streams are empty */
        p->leftover[stream] = false;
}

static bool b2c_drained(const sshp_pair *p)
{
    return p->st[SSHP_ST_B2C_OUT].len == 0 && p->st[SSHP_ST_B2C_ERR].len == 0 &&
           !p->leftover[SSHP_ST_B2C_OUT] && !p->leftover[SSHP_ST_B2C_ERR];
}

static bool c2b_drained(const sshp_pair *p)
{
    return p->st[SSHP_ST_C2B].len == 0 && !p->leftover[SSHP_ST_C2B];
}

static bool close_channel(ssh_channel ch)
{
    /* Under congestion close needs several calls (EOF, then CLOSE): repeat until done. */
    int rc = ssh_channel_close(ch);
    return rc != SSH_AGAIN;
}

/* Forward the backend's exit status or signal to the client, once (nothing if it sent none). */
static void send_exit(sshp_pair *p)
{
    if (p->exit_sent)
        return;
    p->exit_sent = true;
    int rc = SSH_OK;
    if (p->exit_signal_set)
        rc = ssh_channel_request_send_exit_signal(p->c.ch, p->exit_signal, p->exit_core,
                                                  p->exit_errmsg, "");
    else if (p->exit_status_set)
        rc = ssh_channel_request_send_exit_status(p->c.ch, p->exit_status);
    if (rc != SSH_OK)
        /* The client would report 255 instead of the command's status. */
        dp_slog_warn(p->conn->core.prefix,
                     "exit status not forwarded to the client (libssh rc %d: %s)", rc,
                     ssh_get_error(p->conn->client.session));
}

static void progress_open_pair(sshp_pair *p)
{
    sshp_conn *c = p->conn;
    progress_requests(p);
    pull(p, SSHP_ST_C2B, p->c.ch);
    pull(p, SSHP_ST_B2C_OUT, p->b.ch);
    pull(p, SSHP_ST_B2C_ERR, p->b.ch);
    flush(p, SSHP_ST_C2B, p->b.ch, c->backend.session, true);
    flush(p, SSHP_ST_B2C_OUT, p->c.ch, c->client.session, false);
    flush(p, SSHP_ST_B2C_ERR, p->c.ch, c->client.session, false);
    /* A flush that emptied staging can take the bytes libssh still holds now: the stalled
     * sender will not send the packet that would otherwise bring them up again. */
    pull(p, SSHP_ST_C2B, p->c.ch);
    pull(p, SSHP_ST_B2C_OUT, p->b.ch);
    pull(p, SSHP_ST_B2C_ERR, p->b.ch);

    /* Forward what ended, in order, once the data before it is through. */
    if (p->c.eof && !p->c.eof_sent && c2b_drained(p)) {
        ssh_channel_send_eof(p->b.ch);
        p->c.eof_sent = true;
    }
    if (p->b.eof && !p->b.eof_sent && b2c_drained(p)) {
        ssh_channel_send_eof(p->c.ch);
        p->b.eof_sent = true;
    }
    if ((p->b.closed || p->b.eof) && !p->exit_sent && b2c_drained(p) &&
        (p->exit_status_set || p->exit_signal_set || p->b.closed))
        send_exit(p);
    if ((p->b.closed && b2c_drained(p) && p->exit_sent) || (p->c.closed && c2b_drained(p)))
        p->state = SSHP_PAIR_CLOSING;
}

static void pair_free(sshp_conn *c, sshp_pair *p)
{
    sshp_pair_side *sides[] = {&p->c, &p->b};
    for (size_t i = 0; i < 2; i++) {
        if (sides[i]->ch != NULL) {
            ssh_remove_channel_callbacks(sides[i]->ch, &sides[i]->cb);
            ssh_channel_free(sides[i]->ch);
        }
    }
    if (p->open_msg != NULL) {
        ssh_message_reply_default(p->open_msg);
        ssh_message_free(p->open_msg);
    }
    take_signals(p);
    while (p->reqs != NULL) {
        sshp_req *r = p->reqs;
        p->reqs = r->next;
        req_free(c, r, false);
    }
    for (int i = 0; i < 3; i++)
        buf_free(&p->st[i]);
    c->core.bytes_in += p->bytes_in;
    c->core.bytes_out += p->bytes_out;
    free(p->exit_signal);
    free(p->exit_errmsg);
    free(p);
}

/* ---- global requests: remote forwarding (-R) ---- */

void sshp_global_message(sshp_conn *c, ssh_message m)
{
    int sub = ssh_message_subtype(m);
    if (sub != SSH_GLOBAL_REQUEST_TCPIP_FORWARD && sub != SSH_GLOBAL_REQUEST_CANCEL_TCPIP_FORWARD) {
        /* libssh answers keepalive and unknown requests itself; nothing else is queued. */
        ssh_message_reply_default(m);
        ssh_message_free(m);
        return;
    }
    sshp_global *g = c->chans.nglobals < MAX_GLOBALS ? calloc(1, sizeof *g) : NULL;
    if (g == NULL) {
        c->abuse =
            c->chans.nglobals < MAX_GLOBALS ? "out of memory" : "too many pending global requests";
        ssh_message_free(m); /* the connection ends: no reply out of turn */
        return;
    }
    g->msg = m;
    const char *addr = ssh_message_global_request_address(m);
    g->held = addr != NULL ? strlen(addr) : 0;
    c->held_bytes += g->held;
    c->chans.nglobals++;
    if (c->chans.globals_tail == NULL)
        c->chans.globals_tail = &c->chans.globals;
    *c->chans.globals_tail = g;
    c->chans.globals_tail = &g->next;
}

/* One global request at a time per session (libssh 0.10 keeps one slot; a second call while
 * one is pending is never sent), and replies go back in order. */
static void progress_globals(sshp_conn *c)
{
    while (c->chans.globals != NULL) {
        sshp_global *g = c->chans.globals;
        ssh_message m = g->msg;
        const char *addr = ssh_message_global_request_address(m);
        int port = ssh_message_global_request_port(m);
        int bound = port;
        int rc;
        bool add = ssh_message_subtype(m) == SSH_GLOBAL_REQUEST_TCPIP_FORWARD;
        if (add)
            rc = ssh_channel_listen_forward(c->backend.session, addr, port, &bound);
        else
            rc = ssh_channel_cancel_forward(c->backend.session, addr, port);
        if (rc == SSH_AGAIN) {
            g->sent = true;
            return;
        }
        c->chans.globals = g->next;
        c->chans.nglobals--;
        c->held_bytes -= g->held;
        if (c->chans.globals == NULL)
            c->chans.globals_tail = &c->chans.globals;
        if (rc == SSH_OK) {
            if (add)
                c->chans.nforwards++;
            else if (c->chans.nforwards > 0)
                c->chans.nforwards--;
            ssh_message_global_request_reply_success(m, (uint16_t)(port == 0 ? bound : port));
        } else {
            ssh_message_reply_default(m);
        }
        ssh_message_free(m);
        free(g);
    }
}

/* Close both sides; returns the ms until this pair's next deadline (0: none). */
static uint64_t progress_closing(sshp_pair *p)
{
    sshp_conn *c = p->conn;
    uint64_t now = dp_now_ms();
    if (p->closing_since_ms == 0)
        p->closing_since_ms = now;
    bool late = now - p->closing_since_ms >= PAIR_CLOSE_WAIT_MS;
    if (!p->b.close_done && p->b.ch != NULL)
        p->b.close_done = close_channel(p->b.ch);
    /* A session's exit status arrives just before the backend's CLOSE, which may come well
     * after the client's: an OpenSSH mux master closes as soon as EOF went both ways. sshd
     * holds its own CLOSE until the command has exited and its status is sent; so does the
     * proxy, up to the deadline (the client then sees no status, as if the backend died). */
    bool hold =
        p->kind == SSHP_PK_SESSION && p->b.ch != NULL && !p->b.closed && !p->exit_sent && !late;
    if (!hold && !p->c.close_done && p->c.ch != NULL) {
        if (p->c.close_started_ms == 0)
            p->c.close_started_ms = now;
        if (p->kind == SSHP_PK_SESSION)
            send_exit(p);
        p->c.close_done = close_channel(p->c.ch);
    }
    /* Freed only once each peer has closed too: a channel freed earlier lives on in libssh
     * without our callbacks, buffering whatever the peer keeps sending. A backend that holds
     * its CLOSE past the deadline (a command still running after the client left) is let go:
     * libssh sends our CLOSE if it is still due, frees the channel when the backend's comes,
     * and grants it no window meanwhile. */
    bool c_done = p->c.ch == NULL || (p->c.close_done && p->c.closed);
    bool b_done = p->b.ch == NULL || late || (p->b.close_done && p->b.closed);
    if (c_done && b_done) {
        p->state = SSHP_PAIR_DONE;
        return 0;
    }
    /* What is left waits for I/O, for the deadline above, or for the client's answer. */
    uint64_t due = late ? 0 : p->closing_since_ms + PAIR_CLOSE_WAIT_MS;
    if (p->c.close_started_ms != 0 && !c_done) {
        /* A client that neither takes our CLOSE (zero window) nor answers it keeps buffering
         * in libssh: cut it off. */
        if (now - p->c.close_started_ms >= PAIR_CLOSE_WAIT_MS) {
            c->abuse = "a peer did not close a channel";
            return 0;
        }
        uint64_t answer_due = p->c.close_started_ms + PAIR_CLOSE_WAIT_MS;
        if (due == 0 || answer_due < due)
            due = answer_due;
    }
    return due == 0 ? 0 : due - now;
}

void sshp_channels_progress(sshp_conn *c)
{
    uint64_t next_deadline = 0;
    progress_globals(c);
    for (sshp_pair *p = c->chans.pairs; p != NULL; p = p->next) {
        take_signals(p);
        if (p->state == SSHP_PAIR_OPENING)
            progress_open(p);
        if (p->state == SSHP_PAIR_OPEN)
            progress_open_pair(p);
        if (p->state == SSHP_PAIR_CLOSING) {
            uint64_t wait = progress_closing(p);
            if (wait != 0 && (next_deadline == 0 || wait < next_deadline))
                next_deadline = wait;
        }
    }
    sshp_conn_arm_chan_timer(c, next_deadline);
    /* Free finished pairs here, never inside a libssh callback. */
    for (sshp_pair **pp = &c->chans.pairs; *pp != NULL;) {
        sshp_pair *p = *pp;
        if (p->state == SSHP_PAIR_DONE) {
            *pp = p->next;
            c->chans.npairs--;
            pair_free(c, p);
        } else {
            pp = &p->next;
        }
    }
}

void sshp_channels_notify(sshp_conn *c, const char *text)
{
    char line[DPH_MESSAGE_MAX + 16];
    int n = snprintf(line, sizeof line, "\r\n%s\r\n", text);
    if (n <= 0)
        return;
    for (sshp_pair *p = c->chans.pairs; p != NULL; p = p->next)
        if (p->kind == SSHP_PK_SESSION && p->state == SSHP_PAIR_OPEN && p->c.ch != NULL &&
            ssh_channel_is_open(p->c.ch))
            ssh_channel_write_stderr(p->c.ch, line, (uint32_t)(n < (int)sizeof line ? n : 0));
}

void sshp_channels_free_all(sshp_conn *c)
{
    while (c->chans.globals != NULL) {
        sshp_global *g = c->chans.globals;
        c->chans.globals = g->next;
        c->held_bytes -= g->held;
        ssh_message_free(g->msg);
        free(g);
    }
    c->chans.nglobals = 0;
    c->chans.globals_tail = &c->chans.globals;
    while (c->chans.pairs != NULL) {
        sshp_pair *p = c->chans.pairs;
        c->chans.pairs = p->next;
        pair_free(c, p);
    }
    c->chans.npairs = 0;
}

uint64_t sshp_channels_bytes(const sshp_conn *c, bool in)
{
    uint64_t n = 0;
    for (const sshp_pair *p = c->chans.pairs; p != NULL; p = p->next)
        n += in ? p->bytes_in : p->bytes_out;
    return n;
}

/*
 * ftpp.h - ftpproxy's shared types: configuration, per-worker state, one proxied FTP session
 * (client control connection + backend control connection) and its data transfer.
 *
 * Everything lives on one worker loop. Control connections are uv_tcp_t streams; data
 * connections are raw non-blocking sockets watched with uv_poll, because their bytes move
 * with splice(2) through a pipe and never enter user space.
 *
 * Files (one role each):
 *   ftpp_main.c     configuration table, worker start/stop, main()
 *   ftpp_session.c  accept, the client's control connection, command dispatch, timeouts, end
 *   ftpp_login.c    route lookup, backend connect, greeting, replayed HOST/OPTS, USER/PASS
 *   ftpp_backend.c  the backend control connection: sending commands, reading and routing
 *                   replies to what asked for them
 *   ftpp_data.c     PASV/EPSV/PORT/EPRT, data legs toward client and backend, the transfer
 *   ftpp_pump.c     splice(2) relay between two sockets with a bounded pipe
 *   ftpp_proto.c    wire formats (pure; unit-tested and fuzzed)
 */
#ifndef FTPP_H
#define FTPP_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "dp_daemon.h"
#include "dp_dial.h"
#include "dp_metrics.h"
#include "dp_session.h"
#include "ftpp_proto.h"

/* ---- configuration (ftpp_main.c) ---- */

typedef struct ftpp_conf {
    dp_daemon_conf common; /* first: dp_daemon reads it */
    char *greeting;
    int passive_port_min, passive_port_max;
    char *masquerade_address;
    int login_timeout_ms;
    int idle_timeout_s;
    int data_timeout_ms;
    int connect_timeout_ms;       /* the backend's TCP connect (and name lookup) */
    int backend_reply_timeout_ms; /* each reply the backend owes during login */
    int max_sessions, max_sessions_per_ip;
    int transfer_buffer;
    int data_sndbuf; /* SO_SNDBUF of a transfer's destination socket; 0 = kernel autotuning */
    bool backend_passive;
    bool backend_ignore_pasv_address;
    int auth_fail_delay_ms;
    int max_login_attempts;
    char *password_prompt;
} ftpp_conf;

typedef struct ftpp_sess ftpp_sess;

typedef struct ftpp_worker {
    dp_worker *w;
    char rbuf[65536]; /* backend replies are read here and parsed in the read callback */
} ftpp_worker;

static inline ftpp_worker *ftpp_worker_of(dp_worker *w)
{
    return dp_daemon_worker_data(w);
}

/* The configuration this worker uses now (look it up again in each callback: reload). */
static inline const ftpp_conf *ftpp_conf_of(dp_worker *w)
{
    return dp_daemon_worker_conf(w);
}

/* ---- splice relay between two sockets (ftpp_pump.c) ---- */

typedef struct ftpp_pump ftpp_pump;
/* Called once when the relay ends: status 0 (source EOF, everything written, destination
 * shut down) or a negative errno (which side failed is in pump->failed_side). */
typedef void (*ftpp_pump_cb)(ftpp_pump *p, int status);

struct ftpp_pump {
    void *data;
    uv_poll_t src_poll, dst_poll;
    int src_fd, dst_fd; /* owned: closed when the pump's handles have closed */
    int pipe_fd[2];
    size_t in_pipe, pipe_cap;
    uint64_t bytes; /* delivered to dst */
    bool src_eof, done, closing;
    int failed_side;            /* 0 none, 1 source, 2 destination */
    int src_events, dst_events; /* what each poll handle watches now */
    int open_handles;
    ftpp_pump_cb cb;
    void (*close_cb)(ftpp_pump *p);
    uint64_t *activity_ms; /* updated on every progress (idle timer) */
};

/* Takes ownership of both fds (also on failure). Returns 0 or a negative errno; either way
 * the pump is released with ftpp_pump_close (after a failure its callback never runs). */
int ftpp_pump_start(ftpp_pump *p, uv_loop_t *loop, int src_fd, int dst_fd, size_t cap,
                    ftpp_pump_cb cb);
/* Stop and close both sockets; close_cb runs when the memory may go. Idempotent. */
void ftpp_pump_close(ftpp_pump *p, void (*close_cb)(ftpp_pump *p));

/* ---- one data connection being set up: listener or outgoing connect (ftpp_data.c) ---- */

typedef struct ftpp_sock {
    uv_poll_t poll;
    int fd;
    bool listener; /* accepting (else connecting) */
    bool closing;
    struct sockaddr_storage peer; /* of the connection just accepted */
} ftpp_sock;

/* ---- the session ---- */

typedef enum ftpp_state {
    FTPP_ST_PRELOGIN,   /* greeting sent; waiting for USER */
    FTPP_ST_LOOKUP,     /* route lookup in flight */
    FTPP_ST_CONNECTING, /* resolving / connecting to the backend */
    FTPP_ST_GREETING,   /* waiting for the backend's 220 */
    FTPP_ST_USER,       /* replaying HOST/OPTS and USER */
    FTPP_ST_NEED_PASS,  /* 331 sent to the client */
    FTPP_ST_PASS,       /* PASS sent to the backend, or the unknown-user delay runs */
    FTPP_ST_LOGGED_IN,
    FTPP_ST_CLOSING, /* flushing the last reply, then closing */
} ftpp_state;

/* What a command sent to the backend was for (logs, orphaning); its reply goes to the handler
 * stored with it (ftpp_pending). */
typedef enum ftpp_expect {
    FTPP_EX_GREETING,
    FTPP_EX_HOST,
    FTPP_EX_OPTS,
    FTPP_EX_USER,
    FTPP_EX_PASS,
    FTPP_EX_RELAY,    /* relay the reply as is */
    FTPP_EX_FEAT,     /* relay, minus what the proxy does not offer (TLS) */
    FTPP_EX_QUIT,     /* relay, then close */
    FTPP_EX_PASV,     /* EPSV or PASV for a transfer: internal */
    FTPP_EX_PORT,     /* EPRT or PORT for a transfer: internal */
    FTPP_EX_TRANSFER, /* the transfer command: 1xx relayed, the final reply maybe held */
    FTPP_EX_ABOR,     /* relay */
    FTPP_EX_SWALLOW,  /* an internal command whose answer nobody wants any more */
} ftpp_expect;

/* What to do with each line of the reply to a command sent to the backend (final: its last
 * line). Stored with the command when it is sent, so the reply reader knows nothing of login
 * or data connections; NULL: the reply is read and dropped (an orphaned command). */
typedef void (*ftpp_reply_fn)(ftpp_sess *s, ftpp_expect ex, const ftpp_reply_line *rl, bool final);
/* The backend connection cannot be used any more: end the session, sending `line` (a full
 * reply with CRLF; NULL: nothing more) and logging `reason`. Set by whoever owns the
 * connection's phase: the login, then the logged-in session. */
typedef void (*ftpp_backend_fail_fn)(ftpp_sess *s, const char *line, const char *reason);

typedef struct ftpp_pending {
    ftpp_expect ex;
    ftpp_reply_fn on_reply;
} ftpp_pending;

#define FTPP_PENDING_MAX 8

typedef enum ftpp_dmode {
    FTPP_DM_NONE,
    FTPP_DM_PASSIVE, /* PASV/EPSV: s->pasv listener, or s->pasv_fd already accepted */
    FTPP_DM_ACTIVE,  /* PORT/EPRT: connect to s->active_addr */
} ftpp_dmode;

typedef enum ftpp_xdir {
    FTPP_XD_DOWN, /* backend -> client: RETR */
    FTPP_XD_LIST, /* backend -> client: LIST/NLST/MLSD */
    FTPP_XD_UP,   /* client -> backend: STOR/STOU/APPE */
} ftpp_xdir;

typedef enum ftpp_xstate {
    FTPP_XS_CLIENT_LEG,   /* waiting for the client's data connection (accept / connect) */
    FTPP_XS_BACKEND_PASV, /* EPSV/PASV sent to the backend */
    FTPP_XS_BACKEND_CONN, /* connecting to the backend's data port */
    FTPP_XS_BACKEND_PORT, /* EPRT/PORT sent to the backend (active toward it) */
    FTPP_XS_COMMAND,      /* transfer command sent; relay running once both legs are up */
    FTPP_XS_ABORTED,      /* ABOR: legs closed, waiting for the backend's replies */
} ftpp_xstate;

typedef struct ftpp_xfer {
    ftpp_xstate state;
    ftpp_xdir dir;
    char cmd[5];
    char *line;       /* the client's command line, sent once the backend leg is ready */
    int cfd;          /* client leg, connected (or -1) */
    int bfd;          /* backend leg, connected (or -1) */
    ftpp_sock *bsock; /* backend leg being connected / backend's connection being accepted */
    ftpp_sock *csock; /* client leg being connected (active) */
    ftpp_pump *pump;  /* running relay (freed in its close callback) */
    bool pump_done;   /* relay finished: every byte delivered, destination closed */
    int pump_status;
    bool final_seen; /* the backend's final reply arrived */
    char *held;      /* final reply held until the relay is done (lines with CRLF) */
    size_t held_len;
    int final_code;
    uint64_t started_ms;
    uint64_t bytes;
} ftpp_xfer;

struct ftpp_sess {
    dp_session core; /* first: id, client, user, route, bytes, end, references (dp_session.h) */
    ftpp_worker *fw;
    ftpp_state state;
    bool slot_held;
    uint64_t activity_ms;

    /* client control connection */
    uv_tcp_t client;
    bool client_open, client_reading, client_eof;
    struct sockaddr_storage ctl_local; /* our address on the control connection */
    char cin[FTPP_CMD_MAX + 1024];     /* raw bytes read, not yet parsed */
    size_t cin_len;
    ftpp_linebuf lb;
    char *held_line; /* a command that arrived during a transfer, run after it */
    bool busy;       /* a command is being served: parse no further lines */
    bool in_process; /* inside process_input (ftpp_sess_ready must not recurse) */

    /* timers: login/idle (timer) and the current operation's deadline (op_timer) */
    uv_timer_t timer, op_timer;
    bool timer_open, op_timer_open;
    void (*op_expired)(ftpp_sess *s);
    /* ftp.login_timeout_ms counts the client's time only: while the proxy waits for a
     * lookup or the backend the login clock is stopped with this much left. */
    uint64_t login_left_ms;
    bool login_clock_stopped;

    /* login */
    char host_arg[256]; /* HOST (RFC 7151), replayed to the backend */
    bool utf8;          /* OPTS UTF8 ON, replayed */
    bool host_sent, opts_sent;
    dp_route_lookup lookup;
    bool lookup_pending;
    bool unknown_user;    /* answer PASS with 530 after the delay */
    bool backend_no_pass; /* the backend logged in at USER (230): answer PASS with it */

    /* backend control connection */
    uv_tcp_t backend;
    bool backend_open, backend_connected, backend_reading;
    dp_dial *dial;       /* while the backend is dialled */
    uint64_t connect_ns; /* uv_hrtime() at the connect (dynproxy_backend_connect_seconds) */
    struct sockaddr_storage backend_addr, backend_local;
    ftpp_reply_reader rr;
    ftpp_pending pending[FTPP_PENDING_MAX];
    int npending;
    char *rtext; /* an internal reply being collected (login), CRLF-separated lines */
    size_t rtext_len, rtext_cap;
    ftpp_backend_fail_fn on_backend_fail;
    ftpp_reply_fn on_unsolicited; /* a reply line nothing asked for (logged in: relayed) */
    bool backend_pasv_only;       /* EPSV refused once: use PASV from then on */
    bool backend_port_only;       /* EPRT refused once: use PORT from then on */

    /* data connections */
    ftpp_dmode dmode;
    bool epsv_all;
    ftpp_sock *pasv;                     /* our passive listener for the client */
    int pasv_fd;                         /* the client's data connection, accepted early (or -1) */
    struct sockaddr_storage active_addr; /* PORT/EPRT target */
    ftpp_xfer *xfer;
    /* core.bytes_in/out count control and data, client->backend / backend->client */
};

/* ftpp_session.c */
void ftpp_sess_accept(ftpp_worker *fw, const dp_conn_info *ci);
void ftpp_sess_reply(ftpp_sess *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void ftpp_sess_reply_raw(ftpp_sess *s, const char *data, size_t len);
/* `text` (no CRLF) followed by CRLF. */
void ftpp_sess_reply_line(ftpp_sess *s, const char *text, size_t len);
/* Backend replies stop being read while this much is queued toward a slow client. */
#define FTPP_CLIENT_WQ_HIGH (256u * 1024u)
static inline bool ftpp_sess_client_congested(ftpp_sess *s)
{
    return s->client_open &&
           uv_stream_get_write_queue_size((uv_stream_t *)&s->client) >= FTPP_CLIENT_WQ_HIGH;
}
/* Reply handlers of commands relayed for the client: each line to the client, then the next
 * command (relay), the same without the features the proxy cannot honour (FEAT), or the end
 * of the session (QUIT). */
void ftpp_sess_relay_reply(ftpp_sess *s, ftpp_expect ex, const ftpp_reply_line *rl, bool final);
void ftpp_sess_feat_reply(ftpp_sess *s, ftpp_expect ex, const ftpp_reply_line *rl, bool final);
void ftpp_sess_quit_reply(ftpp_sess *s, ftpp_expect ex, const ftpp_reply_line *rl, bool final);
void ftpp_sess_resume_client(ftpp_sess *s);
/* Send `line` (a full 421/221 reply, CRLF included or NULL) and close once it is written. */
void ftpp_sess_close(ftpp_sess *s, const char *line, const char *reason);
/* The command in progress is done: parse and run the next one. */
void ftpp_sess_ready(ftpp_sess *s);
/* 421 `message`, then close; the log says `reason` (NULL: the message). */
void ftpp_sess_kick(ftpp_sess *s, const char *message, const char *reason);
void ftpp_sess_op_timer(ftpp_sess *s, uint64_t ms, void (*expired)(ftpp_sess *s));
void ftpp_sess_op_timer_stop(ftpp_sess *s);
void ftpp_sess_logged_in(ftpp_sess *s);
/* Stop the client's login clock while the proxy waits (lookup, backend), start it again with
 * the time that was left when the turn is the client's again. */
void ftpp_sess_login_clock(ftpp_sess *s, bool running);

/* ftpp_login.c */
void ftpp_login_user(ftpp_sess *s, const char *user);
void ftpp_login_pass(ftpp_sess *s, char *password);
void ftpp_login_cleanup(ftpp_sess *s);

/* ftpp_backend.c */
/* The backend control connection on `fd` (connected by dp_dial; ours from now on, also on
 * failure). Returns 0 or a negative errno. */
int ftpp_backend_open(ftpp_sess *s, int fd, const struct sockaddr *addr,
                      ftpp_backend_fail_fn on_fail);
/* Send a command; `on_reply` gets each line of its reply. */
void ftpp_backend_send(ftpp_sess *s, ftpp_expect ex, ftpp_reply_fn on_reply, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void ftpp_backend_send_line(ftpp_sess *s, ftpp_expect ex, ftpp_reply_fn on_reply, const char *line);
/* Same, and the copy is wiped once written (PASS). */
void ftpp_backend_send_secret(ftpp_sess *s, ftpp_expect ex, ftpp_reply_fn on_reply,
                              const char *line);
/* A reply that comes without a command (the greeting). */
void ftpp_backend_expect(ftpp_sess *s, ftpp_expect ex, ftpp_reply_fn on_reply);
void ftpp_backend_resume(ftpp_sess *s);
void ftpp_backend_close(ftpp_sess *s);
/* Unsent expectations become FTPP_EX_SWALLOW (their answers are dropped). */
void ftpp_backend_orphan(ftpp_sess *s, ftpp_expect ex);

/* ftpp_data.c */
void ftpp_data_cmd_pasv(ftpp_sess *s, bool extended, const char *arg);
void ftpp_data_cmd_port(ftpp_sess *s, bool extended, const char *arg);
void ftpp_data_cmd_transfer(ftpp_sess *s, const char *verb, ftpp_xdir dir, char *line);
void ftpp_data_cmd_abor(ftpp_sess *s);
void ftpp_data_cmd_stat(ftpp_sess *s);
void ftpp_data_cleanup(ftpp_sess *s);
bool ftpp_data_busy(const ftpp_sess *s);

#endif

/*
 * sshp.h - sshproxy's shared types: configuration, per-worker state, one proxied connection
 * (a libssh server session facing the client + a libssh client session facing the backend)
 * and its channel pairs.
 *
 * Every object here lives on one worker loop. libssh callbacks only record state (copy data
 * into bounded staging buffers, set flags); all libssh calls that can poll happen in
 * sshp_conn_pump(), which runs after each readiness event (libssh 0.10.6 fires callbacks
 * inside any polling call, so doing work in callbacks would re-enter).
 */
#ifndef SSHP_H
#define SSHP_H

#include <libssh/callbacks.h>
#include <libssh/libssh.h>
#include <libssh/server.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "dp_daemon.h"
#include "dp_dial.h"
#include "dp_metrics.h"
#include "dp_session.h"

/* ---- configuration (sshp_main.c) ---- */

typedef struct sshp_conf {
    dp_daemon_conf common; /* first: dp_daemon reads it */
    dp_strlist host_keys;
    char *proxy_key;
    char *known_hosts;
    int login_grace_ms;
    int max_auth_tries;
    int max_startups;
    int max_startups_per_ip;
    int connect_timeout_ms;   /* the backend's TCP connect (and name lookup) */
    int handshake_timeout_ms; /* the SSH handshake with the backend, up to its host key */
    int idle_timeout_s;
    int channel_buffer;
    int auth_fail_delay_ms;
    char *version;
    char *kex_algorithms; /* comma-separated, as OpenSSH writes them (sshp_algos.c) */
    char *ciphers;
    char *macs;
    char *hostkey_algorithms;
} sshp_conf;

/* ---- algorithms (sshp_algos.c) ---- */

/* Client-facing defaults; why these: sshp_algos.c. */
#define SSHP_DEFAULT_KEX                                                                           \
    "mlkem768x25519-sha256,sntrup761x25519-sha512,sntrup761x25519-sha512@openssh.com,"             \
    "curve25519-sha256,curve25519-sha256@libssh.org"
#define SSHP_DEFAULT_HOSTKEY_ALGOS "ssh-ed25519,rsa-sha2-512,rsa-sha2-256"
#define SSHP_DEFAULT_CIPHERS                                                                       \
    "chacha20-poly1305@openssh.com,aes256-gcm@openssh.com,aes128-gcm@openssh.com,aes256-ctr,"      \
    "aes192-ctr,aes128-ctr"
#define SSHP_DEFAULT_MACS "hmac-sha2-256-etm@openssh.com,hmac-sha2-512-etm@openssh.com"
/* Config checks: every name known to the linked libssh, none twice. */
int sshp_check_kex(const void *value, char *err, size_t errlen);
int sshp_check_ciphers(const void *value, char *err, size_t errlen);
int sshp_check_macs(const void *value, char *err, size_t errlen);
int sshp_check_hostkey_algos(const void *value, char *err, size_t errlen);
/* Cross-check: some ssh.hostkey_algorithms entry has a key in ssh.host_keys. */
int sshp_check_hostkeys_cover(const sshp_conf *cf, char *err, size_t errlen);
/* What the proxy offers its backends: post-quantum first, then older exchanges. */
const char *sshp_backend_kex(void);

/* ---- per worker (sshp_main.c starts it, sshp_conn.c keeps its connections) ---- */

typedef struct sshp_conn sshp_conn;

typedef struct sshp_worker {
    dp_worker *w;
    ssh_bind bind;       /* host keys + algorithms for client-facing sessions */
    ssh_key proxy_key;   /* the key the proxy logs in to backends with (may be NULL) */
    ssh_key *known_keys; /* ssh.known_hosts, parsed at start: the fallback when a route */
    char **known_names;  /*   has no pin ("host" or "[host]:port" per key) */
    size_t nknown;
} sshp_worker;

static inline sshp_worker *sshp_worker_of(dp_worker *w)
{
    return dp_daemon_worker_data(w);
}

/* The configuration this worker uses now (look it up again in each callback: reload). */
static inline const sshp_conf *sshp_conf_of(dp_worker *w)
{
    return dp_daemon_worker_conf(w);
}

/* Limits on unauthenticated connections, process-wide (sshp_limits.c). */
int sshp_startup_acquire(const struct sockaddr *client, int max_total, int max_per_ip);
void sshp_startup_release(const struct sockaddr *client);

/* Last known authorized keys, for outages (sshp_keycache.c). Thread-safe. */
void sshp_keycache_store(const char *user, const char *const *keys, size_t n);
int sshp_keycache_get(const char *user, uint64_t max_age_ms, char ***keys, size_t *n);
void sshp_keycache_drop(const char *user);

/* ---- staging buffer: bytes taken from one channel stream, not yet written to the peer ---- */

typedef struct sshp_buf {
    uint8_t *data;
    size_t off, len, cap; /* bytes [off, off+len) are pending; cap is the hard limit */
    size_t alloc;
} sshp_buf;

/* ---- channel pair (sshp_channel.c) ---- */

typedef enum sshp_req_kind {
    SSHP_REQ_PTY,
    SSHP_REQ_SHELL,
    SSHP_REQ_EXEC,
    SSHP_REQ_SUBSYSTEM,
    SSHP_REQ_ENV,
    SSHP_REQ_WINDOW_CHANGE,
    SSHP_REQ_SIGNAL,
    SSHP_REQ_AGENT,
    SSHP_REQ_BREAK,
    SSHP_REQ_UNSUPPORTED,
} sshp_req_kind;

/* A client request waiting for its turn on the backend channel (one at a time: libssh 0.10.6
 * silently drops a request issued while another is pending). Replies go back in order. */
typedef struct sshp_req {
    sshp_req_kind kind;
    ssh_message msg; /* NULL for requests that came through callbacks (signal, agent) */
    char *a, *b;     /* term / command / subsystem / env name / signal name ; env value */
    int cols, rows;
    size_t modes_len;  /* pty: the client's encoded terminal modes, read from msg when sent */
    uint32_t break_ms; /* break: its length (RFC 4335) */
    size_t held;       /* counted in the connection's held_bytes */
    struct sshp_req *next;
} sshp_req;

typedef enum sshp_pair_state {
    SSHP_PAIR_OPENING, /* backend channel being opened; client's open message held */
    SSHP_PAIR_OPEN,
    SSHP_PAIR_CLOSING, /* draining and closing both sides */
    SSHP_PAIR_DONE,    /* both closed: free at the end of the pump */
} sshp_pair_state;

typedef enum sshp_pair_kind {
    SSHP_PK_SESSION,   /* client opened a session channel */
    SSHP_PK_DIRECT,    /* client opened direct-tcpip (ssh -L) */
    SSHP_PK_FORWARDED, /* backend opened forwarded-tcpip (ssh -R) */
    SSHP_PK_AGENT,     /* backend opened auth-agent@openssh.com (ssh -A) */
} sshp_pair_kind;

/* One side of a pair: the channel toward the client (pair.c) or toward the backend (pair.b),
 * and what happened on it; forwarded to the other side once the data before it is drained. */
typedef struct sshp_pair_side {
    struct sshp_pair *pair;
    ssh_channel ch;
    struct ssh_channel_callbacks_struct cb; /* userdata: this side */
    bool eof, closed;                       /* arrived from this side */
    bool eof_sent;                          /* this side's EOF went to the other side */
    bool close_done;                        /* our CLOSE to this side went out */
    uint64_t close_started_ms;              /* first try to send our CLOSE (client side) */
} sshp_pair_side;

typedef struct sshp_pair {
    sshp_conn *conn;
    sshp_pair_state state;
    sshp_pair_kind kind;
    bool reverse;         /* opened by the backend: we open the client side first */
    ssh_message open_msg; /* the peer's open request, answered when our side is open */
    sshp_pair_side c, b;  /* client side, backend side */
    /* staging: [0] client->backend, [1] backend->client stdout, [2] backend->client stderr */
    sshp_buf st[3];
    bool leftover[3]; /* a callback could not take everything: bytes wait in libssh */
    sshp_req *reqs, **reqs_tail;
    /* signals from the callback, queued behind the messages of the same read (an exec and
     * the signal for it can arrive together, and messages are dispatched after callbacks) */
    sshp_req *signals, **signals_tail;
    unsigned nreqs;
    uint64_t closing_since_ms; /* entered SSHP_PAIR_CLOSING */
    /* the backend's exit status or signal, forwarded once the data before it is drained */
    bool exit_status_set, exit_signal_set, exit_sent;
    int exit_status;
    char *exit_signal, *exit_errmsg;
    bool exit_core;
    uint64_t bytes_in, bytes_out;
    struct sshp_pair *next;
} sshp_pair;

/* ---- connection (sshp_conn.c, sshp_auth.c, sshp_backend.c) ---- */

typedef enum sshp_conn_state {
    SSHP_CONN_KEX,     /* client key exchange */
    SSHP_CONN_AUTH,    /* client authentication (lookup, backend dial and login happen here) */
    SSHP_CONN_OPEN,    /* both sides authenticated: channels relay */
    SSHP_CONN_CLOSING, /* flushing a disconnect message, then free */
    SSHP_CONN_DEAD,
} sshp_conn_state;

typedef enum sshp_be_state {
    SSHP_BE_NONE,
    SSHP_BE_WANTED,    /* the login needs it: the pump starts the dial */
    SSHP_BE_DIALING,   /* dp_dial: name resolution and TCP connect */
    SSHP_BE_HANDSHAKE, /* ssh_connect in progress */
    SSHP_BE_READY,     /* host key verified; authentication may start */
    SSHP_BE_AUTHED,
    SSHP_BE_FAILED,
} sshp_be_state;

typedef enum sshp_auth_kind {
    SSHP_AUTH_NONE_YET,
    SSHP_AUTH_PASSWORD,
    SSHP_AUTH_PUBKEY,
    SSHP_AUTH_KBDINT,
} sshp_auth_kind;

/* The client-facing libssh session (read, flushed and closed by sshp_conn.c). */
typedef struct sshp_client {
    ssh_session session;
    ssh_event event;
    uv_poll_t poll; /* on a dup() of the client fd: libssh owns and may close the fd */
    int poll_fd;
    bool poll_open;
    struct ssh_counter_struct counter; /* what libssh read from the client (raw bytes) */
    /* libssh may still hold messages it parsed that we have not taken: read again only once
     * they are (see held_bytes in sshp_conn) */
    bool backlog;
    bool writable;          /* the poll said writable (or failed) since the last read */
    bool closing_writable;  /* a writable poll while closing left nothing to write */
    bool linger;            /* our DISCONNECT went out: close with dp_linger_close */
    unsigned closing_reads; /* reads a closing connection got to flush (SSHP_CLOSING_READS) */
} sshp_client;

/* The proxy's own libssh session to the backend (sshp_backend.c). */
typedef struct sshp_backend {
    sshp_be_state state;
    ssh_session session;
    ssh_event event;
    int fd; /* from dp_dial; libssh's once ssh_connect ran */
    uv_poll_t poll;
    int poll_fd;
    bool poll_open;
    dp_dial *dial;       /* while the backend is dialled */
    bool connect_called; /* ssh_free closes the fd only after ssh_connect ran */
    uv_timer_t timer;    /* handshake deadline */
    bool timer_open;
    uint64_t dial_ns; /* uv_hrtime() at the TCP connect (dynproxy_backend_connect_seconds) */
} sshp_backend;

/* Authentication of the client and, with its credentials, at the backend (sshp_auth.c). */
typedef struct sshp_auth {
    dp_route_lookup *lookup; /* while the route is looked up only (the answer: core.route) */
    bool lookup_pending;
    dp_hook_call *keys_call;
    bool keys_pending, keys_known;
    bool keys_failed; /* no fresh keys and no recent ones: "temporarily unavailable" */
    char **keys;
    size_t nkeys;
    ssh_message held; /* the request waiting for the route / backend */
    sshp_auth_kind kind;
    char *password; /* wiped as soon as the backend has it */
    bool backend_started;
    uv_timer_t fail_timer; /* delays failures so unknown users look like wrong passwords */
    bool fail_timer_open, fail_pending;
    const char *method; /* for the session log lines */
    unsigned requests;  /* every auth request, answered by us or not (flood bound) */
    /* a per-route key file (mapped-key, or proxy-key with key_path), read on the threadpool */
    uv_work_t key_work;
    bool key_loading, key_loaded;
    ssh_key route_key;
} sshp_auth;

/* The channel pairs and the client's global requests (sshp_channel.c). */
typedef struct sshp_channels {
    sshp_pair *pairs;
    unsigned npairs;
    bool agent_forwarding; /* the client asked for it: backend agent channels are bridged */
    unsigned nforwards;    /* remote forwards (-R) the backend holds for this client */
    struct sshp_global *globals, **globals_tail; /* one at a time */
    unsigned nglobals;
    uv_timer_t timer; /* pumps again at the nearest channel close deadline */
    bool timer_open;
} sshp_channels;

struct sshp_conn {
    dp_session core; /* first: id, client, user, route, bytes, end, references (dp_session.h) */
    sshp_worker *sw;
    sshp_conn_state state;
    bool startup_slot;
    sshp_client client;
    sshp_backend backend;
    sshp_auth auth;
    sshp_channels chans;

    uv_timer_t timer; /* login grace / idle / close deadline */
    bool timer_open;
    /* Memory a client can make the proxy hold is bounded by design, not by luck: the bytes
     * of the requests queued in our lists are counted (SSHP_HELD_MAX: above it the client is
     * not read until requests complete), libssh is read again only once it has handed over
     * every message it parsed (client.backlog), and a closing connection is given a fixed
     * number of reads (SSHP_CLOSING_READS) to flush its DISCONNECT. */
    size_t held_bytes;
    const char *abuse;   /* set by a callback: the peer broke the protocol; end the connection */
    uv_idle_t next_turn; /* pumps again on the next loop turn: a pump ran out of rounds with
                          * work left (an idle handle, not a 0 ms timer: libuv < 1.48 runs a
                          * timer re-armed from its callback again before polling) */
    bool next_turn_open;
    bool in_pump, pump_again;
    char disconnect_msg[DPH_MESSAGE_MAX + 64];
    uint64_t last_activity_ms;    /* data through any channel (idle timeout) */
    uint64_t buffers_released_at; /* last_activity_ms when libssh's buffers were given back */
};

/* sshp_conn.c */
void sshp_conn_accept(sshp_worker *sw, const dp_conn_info *ci);
void sshp_conn_pump(sshp_conn *c);
void sshp_conn_fail(sshp_conn *c, const char *reason, const char *client_msg);
void sshp_conn_arm_timer(sshp_conn *c, uint64_t ms);
/* Pump the connection again in `ms` (0: cancel): channel deadlines expire without traffic. */
void sshp_conn_arm_chan_timer(sshp_conn *c, uint64_t ms);
/* uv_close with the connection's close callback: closes a poll's dup of its fd, then drops
 * the handle's reference (dp_session_own_handle took it). */
void sshp_conn_close_handle(sshp_conn *c, uv_handle_t *h, bool *open);
int sshp_poll_open(sshp_conn *c, uv_poll_t *p, bool *open, int *dupfd, int fd);

/* sshp_auth.c */
void sshp_auth_message(sshp_conn *c, ssh_message m);
void sshp_auth_progress(sshp_conn *c);
void sshp_auth_cleanup(sshp_conn *c);

/* sshp_backend.c */
void sshp_backend_start(sshp_conn *c);
void sshp_backend_step(sshp_conn *c);
void sshp_backend_cleanup(sshp_conn *c);

/* A client global request (tcpip-forward, cancel-tcpip-forward) waiting for the backend. */
/* The bound on queued request bytes per connection (env values, commands, forward addresses;
 * a message may carry up to libssh's 256 KiB packet). 64 pending env requests of 64 KiB each
 * (MAX_REQS) stay well inside it. */
#define SSHP_HELD_MAX (8u << 20)
/* What libssh reads from a socket per readable event: its MAX_BUF_SIZE, which our build of it
 * sets (deps/libssh/source) and CMake passes on; 4096 in a stock libssh. */
#ifndef SSHP_LIBSSH_READ_MAX
#define SSHP_LIBSSH_READ_MAX 4096
#endif
#define SSHP_READS_FOR(bytes)                                                                      \
    ((bytes) / SSHP_LIBSSH_READ_MAX > 0 ? (bytes) / SSHP_LIBSSH_READ_MAX : 1)
/* Reads a closing connection gets to flush (256 KiB of input at most). */
#define SSHP_CLOSING_READS SSHP_READS_FOR(256u * 1024)

typedef struct sshp_global {
    ssh_message msg;
    size_t held; /* counted in the connection's held_bytes */
    bool sent;   /* on the wire to the backend (the reply may race with the first channel) */
    struct sshp_global *next;
} sshp_global;

/* sshp_channel.c */
void sshp_channel_open_message(sshp_conn *c, ssh_message m);
void sshp_channel_backend_open(sshp_conn *c, ssh_message m);
void sshp_global_message(sshp_conn *c, ssh_message m);
void sshp_channel_request_message(sshp_conn *c, ssh_message m);
void sshp_channels_progress(sshp_conn *c);
void sshp_channels_free_all(sshp_conn *c);
/* Write `text` to the stderr of every open session channel (before the proxy ends them). */
void sshp_channels_notify(sshp_conn *c, const char *text);
uint64_t sshp_channels_bytes(const sshp_conn *c, bool in);

#endif

/*
 * pgsql_int.h - internals of the PostgreSQL routing hook (pgsql.so), shared by its files:
 *
 *   pgsql_hook.c    the dph_ops: init/fini, lookup (result row -> dph_route), authorized_keys
 *   pgsql_conf.c    the parameter table: parse, validate, defaults, loggable conninfo summary
 *   pgsql_conn.c    one libpq connection: non-blocking dial, setup (statement_timeout, prepared
 *                   statements), running a statement under a deadline with PQcancel on expiry
 *   pgsql_pool.c    the connection pool: take/give back, pool-wide reconnect backoff (one probe),
 *                   "database is down/back" logging
 *   pgsql_listen.c  the LISTEN thread: NOTIFY -> host->invalidate / invalidate_all
 *
 * Everything here has hidden visibility (the module is built with -fvisibility=hidden); the
 * only exported symbol is dynproxy_hook_entry. Names carry the pgh_ prefix all the same.
 */
#ifndef PGSQL_INT_H
#define PGSQL_INT_H

#include <errno.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "dynproxy_hook.h"

/* Names of the prepared statements on every pool connection. */
#define PGH_STMT_LOOKUP "dynproxy_lookup"
#define PGH_STMT_KEYS "dynproxy_keys"

/* After PQcancel, how long we still wait for the cancelled statement's error so the connection
 * can be reused; past that the connection is closed instead. Keeps "a little" in "a call never
 * outlives req->timeout_ms by more than a little". */
#define PGH_CANCEL_GRACE_MS 50

/* Used when the host passes no deadline (timeout_ms <= 0); the host always does, tests may not. */
#define PGH_DEFAULT_CALL_TIMEOUT_MS 5000

/* ---- configuration (pgsql_conf.c) ---- */

typedef struct pgh_conf {
    char *conninfo;        /* pool connections; never logged whole (may hold a password) */
    char *listen_conninfo; /* LISTEN; NULL = conninfo + target_session_attrs=primary */
    char *lookup_query;
    char *keys_query;     /* "" = authorized_keys answers -ENOTSUP */
    char *notify_channel; /* "" = no LISTEN thread */
    int pool_size;
    int connect_timeout_ms;
    int statement_timeout_ms;
    int reconnect_min_ms;
    int reconnect_max_ms;
    char summary[256]; /* "host=... port=... dbname=..." of conninfo, safe to log */
} pgh_conf;

/* Parse and validate `params` (NULL-key terminated, may be NULL). Returns 0, -ENOMEM, or
 * -EINVAL with err->key (pointer into params, or NULL for a missing key) and err->msg set. */
int pgh_conf_parse(pgh_conf *conf, const dph_param *params, dph_error *err);
void pgh_conf_free(pgh_conf *conf);

/* A loggable "host=a,b port=1,2 dbname=x" for a conninfo string (no user, no password). */
void pgh_conninfo_summary(const char *conninfo, char *buf, size_t len);

/* ---- one connection (pgsql_conn.c) ---- */

typedef struct pgh pgh;

/* A pool connection. Its fields belong to the thread that took it (busy), otherwise to
 * whoever holds pool.mu. */
typedef struct pgh_conn {
    PGconn *pg;          /* NULL = not connected */
    int busy;            /* taken by a call */
    int taken_connected; /* pg was non-NULL when taken (read by others under pool.mu) */
    int probing;         /* this connection holds the pool's one probe dial */
    int lookup_nparams;  /* $n the prepared statements use (from PQdescribePrepared) */
    int keys_nparams;
} pgh_conn;

/* The connection broke (server gone, restarted, network): close it, maybe dial again. */
#define PGH_ELOST (-ECONNRESET)

/* Open a connection with libpq's non-blocking API, bounded by `deadline` (monotonic ms) and
 * interrupted by `wake_fd` becoming readable (-1: none). `listener`: use listen_conninfo, or
 * conninfo with target_session_attrs=primary (LISTEN is refused on a hot standby).
 * Returns 0 with *out in non-blocking mode, or -ETIMEDOUT, -ECANCELED (woken), -ECONNREFUSED
 * (libpq gave up: refused, auth failure, no suitable host...), -ENOMEM; err says why. */
int pgh_dial(pgh *h, int listener, int64_t deadline, int wake_fd, PGconn **out, char *err,
             size_t errlen);

/* Prepare a fresh pool connection: SET statement_timeout, PQprepare + PQdescribePrepared of
 * both queries (parameter count, required columns). Returns 0; -EINVAL when the server refused
 * a query or its shape is wrong (*bad_key = "lookup_query" / "keys_query"); other negatives as
 * pgh_wait_result. */
int pgh_conn_setup(pgh *h, pgh_conn *c, int64_t deadline, char *err, size_t errlen,
                   const char **bad_key);

/* Wait for the complete result of a command already sent on `pg` (non-blocking mode).
 * On expiry of `deadline`: PQcancel, then up to PGH_CANCEL_GRACE_MS to drain; *reusable says
 * whether the connection is still in a clean state. Returns 0 with *res (the first result;
 * the caller PQclear()s it; it may be an error result), or -ETIMEDOUT, -ECANCELED (wake_fd),
 * PGH_ELOST, -ENOMEM; err says why. */
int pgh_wait_result(PGconn *pg, int64_t deadline, int wake_fd, PGresult **res, int *reusable,
                    char *err, size_t errlen);

/* Run a command (text, no parameters) and check it returned PGRES_COMMAND_OK: 0, -EIO
 * (refused; err has the server's message) or as pgh_wait_result. */
int pgh_command(PGconn *pg, const char *sql, int64_t deadline, int wake_fd, char *err,
                size_t errlen);

/* Wait for fd (-1: none, just sleep) to be ready for `events`, the deadline, or wake_fd.
 * Returns 1 (ready, *revents when non-NULL), 0 (deadline passed), -ECANCELED (wake_fd
 * readable) or -errno. */
int pgh_wait_fd(int fd, short events, int64_t deadline, int wake_fd, short *revents);

/* libpq's message for `pg` / `res`, flattened to one line ("ERROR: x (SQLSTATE 42P01)"). */
const char *pgh_conn_error(const PGconn *pg, char *buf, size_t len);
const char *pgh_result_error(const PGresult *res, char *buf, size_t len);

/* libpq notice processor: NOTICE/WARNING lines (and a FATAL arriving while idle) go to the
 * host log at debug level instead of libpq's default, stderr. `arg` is the pgh. */
void pgh_notice(void *arg, const char *message);

int64_t pgh_now_ms(void);

/* ---- pool (pgsql_pool.c) ---- */

typedef struct pgh_pool {
    pthread_mutex_t mu;
    pthread_cond_t cv; /* CLOCK_MONOTONIC: a connection was given back */
    pgh_conn *conns;
    int n;
    /* Reconnect backoff, for the pool as a whole: every connection dials the same server, so
     * one failed dial says it for all of them. While `down`, one call at a time may dial (the
     * probe), and only after `retry_at`; the others fail fast with -EAGAIN. */
    int down;
    int probing; /* a probe dial is under way */
    int backoff_ms;
    int64_t retry_at; /* monotonic ms */
    unsigned seed;    /* backoff jitter */
    char down_why[256];
} pgh_pool;

int pgh_pool_init(pgh *h);
void pgh_pool_destroy(pgh *h);

/* Which prepared statement to run. */
typedef enum pgh_stmt {
    PGH_LOOKUP = 0,
    PGH_KEYS = 1,
} pgh_stmt;

/* Take a connection, (re)connect it when needed, run `stmt` with `values` (user, client ip,
 * protocol; as many as the statement uses are sent), give the connection back. Returns 0 with
 * *res (PGRES_TUPLES_OK; the caller PQclear()s it), or: -EAGAIN (the database is down and in
 * reconnect backoff, or another call is probing it), -ETIMEDOUT (deadline: no free connection, dial
 * or statement too slow), -ECONNREFUSED / PGH_ELOST (database unreachable), -EIO (the statement
 * failed). Failures are logged here (database down/up transitions once, statement errors each
 * time). */
int pgh_pool_run(pgh *h, pgh_stmt stmt, const char *const values[3], int64_t deadline,
                 const char *user, PGresult **res);

/* Dial one pool connection at init so a refused query is a config error (-EINVAL, *bad_key,
 * err) and not a runtime surprise. A database that cannot be reached is only a warning (0). */
int pgh_pool_warmup(pgh *h, int64_t deadline, char *err, size_t errlen, const char **bad_key);

/* Next backoff step: min, 2*prev, ..., max. *wait_ms gets it minus up to 1/4 random jitter so a
 * fleet of proxies does not redial in lockstep. Returns the new step. */
int pgh_backoff_next(const pgh_conf *conf, int prev_ms, unsigned *seed, int *wait_ms);

/* ---- LISTEN thread (pgsql_listen.c) ---- */

typedef struct pgh_listener {
    pthread_t thread;
    int running; /* thread was started */
    int wake_fd; /* eventfd: fini writes it to stop the thread at once */
    atomic_int stop;
    atomic_uint connects; /* successful (re)connects, for logs */
} pgh_listener;

int pgh_listen_start(pgh *h);
void pgh_listen_stop(pgh *h);

/* ---- the hook state ---- */

struct pgh {
    const dph_host *host;
    pgh_conf conf;
    char app_name[64]; /* fallback_application_name: dynproxy-<program> */
    pgh_pool pool;
    pgh_listener listener;
};

/* host->log with a NULL check; never pass secrets. */
#define pgh_log(h, lvl, ...)                                                                       \
    do {                                                                                           \
        if ((h)->host != NULL && (h)->host->log != NULL)                                           \
            (h)->host->log((h)->host->ctx, (lvl), __VA_ARGS__);                                    \
    } while (0)
#define pgh_error(h, ...) pgh_log(h, DPH_LOG_ERROR, __VA_ARGS__)
#define pgh_warn(h, ...) pgh_log(h, DPH_LOG_WARN, __VA_ARGS__)
#define pgh_info(h, ...) pgh_log(h, DPH_LOG_INFO, __VA_ARGS__)
#define pgh_debug(h, ...) pgh_log(h, DPH_LOG_DEBUG, __VA_ARGS__)

#endif

/*
 * pgsql_conn.c - one libpq connection under a deadline.
 *
 * Everything is driven through libpq's non-blocking API and poll(2) on PQsocket, so no hook
 * call waits longer than its deadline: PQconnectStart/PQconnectPoll for the dial (libpq
 * enforces connect_timeout only inside its own blocking PQconnectdb loop), PQsend* +
 * PQconsumeInput for statements, and PQcancel when a statement outlives the deadline.
 */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pgsql_int.h"

int64_t pgh_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int pgh_wait_fd(int fd, short events, int64_t deadline, int wake_fd, short *revents)
{
    for (;;) {
        int64_t left = deadline - pgh_now_ms();
        if (left <= 0)
            return 0;
        struct pollfd pfd[2] = {
            {.fd = fd, .events = events},
            {.fd = wake_fd, .events = POLLIN},
        };
        int r = poll(pfd, 2, left > INT_MAX ? INT_MAX : (int)left);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (r == 0)
            continue; /* re-check the deadline: poll's ms rounding may wake a hair early */
        if (pfd[1].revents != 0)
            return -ECANCELED;
        if (pfd[0].revents != 0) {
            if (revents != NULL)
                *revents = pfd[0].revents;
            return 1;
        }
    }
}

/* Copy `msg` into buf on one line: newlines become "; ", runs of spaces collapse, the trailing
 * separator goes. libpq messages are multi-line ("...failed: Connection refused\n\tIs the
 * server running...") and our log lines are one line each. */
static const char *flatten(const char *msg, char *buf, size_t len)
{
    size_t o = 0;
    int space = 0;
    for (const char *p = msg; *p != '\0' && o + 3 < len; p++) {
        if (*p == '\n' || *p == '\r' || *p == '\t' || *p == ' ') {
            space = (*p == '\n' || *p == '\r') ? 2 : (space == 2 ? 2 : 1);
            continue;
        }
        if (space != 0 && o > 0) {
            if (space == 2)
                buf[o++] = ';';
            buf[o++] = ' ';
        }
        space = 0;
        buf[o++] = *p;
    }
    buf[o] = '\0';
    return buf;
}

const char *pgh_conn_error(const PGconn *pg, char *buf, size_t len)
{
    const char *m = pg != NULL ? PQerrorMessage(pg) : NULL;
    return flatten(m != NULL && m[0] != '\0' ? m : "unknown libpq error", buf, len);
}

const char *pgh_result_error(const PGresult *res, char *buf, size_t len)
{
    const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY);
    const char *prim = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    const char *detail = PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL);
    if (prim == NULL) /* made up by libpq itself (connection trouble): no fields */
        return flatten(PQresultErrorMessage(res), buf, len);
    char tmp[1024];
    snprintf(tmp, sizeof tmp, "%s: %s%s%s (SQLSTATE %s)", sev != NULL ? sev : "ERROR", prim,
             detail != NULL ? "; DETAIL: " : "", detail != NULL ? detail : "",
             state != NULL ? state : "?");
    return flatten(tmp, buf, len);
}

void pgh_notice(void *arg, const char *message)
{
    pgh *h = arg;
    char buf[512];
    pgh_debug(h, "server says: %s", flatten(message, buf, sizeof buf));
}

/* Append one keyword/value pair to PQconnectStartParams' arrays. */
static void kv_add(const char **kw, const char **val, int *n, const char *k, const char *v)
{
    kw[*n] = k;
    val[*n] = v;
    (*n)++;
}

int pgh_dial(pgh *h, int listener, int64_t deadline, int wake_fd, PGconn **out, char *err,
             size_t errlen)
{
    const pgh_conf *c = &h->conf;
    char connect_timeout[16], user_timeout[16];
    /* Whole seconds, rounded up. libpq ignores connect_timeout in its non-blocking API (the
     * application bounds the dial, as below); it is set so the session's settings say what we
     * do, e.g. for anything reading PQconninfo. */
    snprintf(connect_timeout, sizeof connect_timeout, "%d", (c->connect_timeout_ms + 999) / 1000);
    /* TCP_USER_TIMEOUT: unacknowledged data for this long kills the socket, so a server that
     * vanished without a RST is noticed. libpq (>= 15) also sets it on the socket of PQcancel,
     * whose connect/send are blocking, which bounds that call against a vanished server. */
    snprintf(user_timeout, sizeof user_timeout, "%d", c->connect_timeout_ms);

    /* Entries before "dbname" (the expanded conninfo) are defaults the operator's conninfo may
     * override; entries after it are forced (libpq processes the arrays in order). */
    const char *kw[12], *val[12];
    int n = 0;
    kv_add(kw, val, &n, "fallback_application_name", h->app_name);
    kv_add(kw, val, &n, "connect_timeout", connect_timeout);
    kv_add(kw, val, &n, "client_encoding", "UTF8");
    kv_add(kw, val, &n, "keepalives", "1");
    kv_add(kw, val, &n, "keepalives_idle", "10");
    kv_add(kw, val, &n, "keepalives_interval", "5");
    kv_add(kw, val, &n, "keepalives_count", "3");
    kv_add(kw, val, &n, "tcp_user_timeout", user_timeout);
    if (listener && c->listen_conninfo != NULL) {
        kv_add(kw, val, &n, "dbname", c->listen_conninfo);
    } else {
        kv_add(kw, val, &n, "dbname", c->conninfo);
        if (listener) /* LISTEN fails during recovery: pick the primary of the host list */
            kv_add(kw, val, &n, "target_session_attrs", "primary");
    }
    kw[n] = NULL;
    val[n] = NULL;

    *out = NULL;
    PGconn *pg = PQconnectStartParams(kw, val, 1);
    if (pg == NULL) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    PQsetNoticeProcessor(pg, pgh_notice, h);

    PostgresPollingStatusType st = PGRES_POLLING_WRITING;
    if (PQstatus(pg) == CONNECTION_BAD)
        st = PGRES_POLLING_FAILED;
    while (st != PGRES_POLLING_OK) {
        if (st == PGRES_POLLING_FAILED) {
            pgh_conn_error(pg, err, errlen);
            PQfinish(pg);
            return -ECONNREFUSED;
        }
        /* PQsocket may change between calls: libpq moves on to the next host of a list. */
        int r = pgh_wait_fd(PQsocket(pg), st == PGRES_POLLING_READING ? POLLIN : POLLOUT, deadline,
                            wake_fd, NULL);
        if (r == 0) {
            const char *host = PQhost(pg), *port = PQport(pg);
            snprintf(err, errlen, "connecting to host=%s port=%s timed out",
                     host != NULL ? host : "?", port != NULL ? port : "?");
            PQfinish(pg);
            return -ETIMEDOUT;
        }
        if (r < 0) {
            snprintf(err, errlen, "%s", r == -ECANCELED ? "shutting down" : strerror(-r));
            PQfinish(pg);
            return r;
        }
        st = PQconnectPoll(pg);
    }
    if (PQsetnonblocking(pg, 1) != 0) {
        pgh_conn_error(pg, err, errlen);
        PQfinish(pg);
        return -ECONNREFUSED;
    }
    *out = pg;
    return 0;
}

static void send_cancel(PGconn *pg)
{
    PGcancel *cc = PQgetCancel(pg);
    if (cc != NULL) {
        char buf[256];
        (void)PQcancel(cc, buf, sizeof buf); /* best effort; we drop the connection otherwise */
        PQfreeCancel(cc);
    }
}

int pgh_wait_result(PGconn *pg, int64_t deadline, int wake_fd, PGresult **res, int *reusable,
                    char *err, size_t errlen)
{
    PGresult *first = NULL;
    int cancelled = 0;
    int64_t dl = deadline;

    *res = NULL;
    *reusable = 1;
    for (;;) {
        int f = PQflush(pg); /* 1: more to send (non-blocking mode), -1: broken */
        if (f < 0)
            goto lost;
        if (f == 0) {
            while (!PQisBusy(pg)) {
                PGresult *r = PQgetResult(pg);
                if (r == NULL)
                    goto done;
                ExecStatusType s = PQresultStatus(r);
                if (s == PGRES_COPY_IN || s == PGRES_COPY_OUT || s == PGRES_COPY_BOTH) {
                    /* Not something a lookup query does; libpq would return it forever. */
                    PQclear(r);
                    PQclear(first);
                    snprintf(err, errlen, "the statement started a COPY");
                    *reusable = 0;
                    return -EIO;
                }
                if (first == NULL)
                    first = r;
                else
                    PQclear(r);
            }
        }
        if (PQsocket(pg) < 0) /* closed under us: poll would just sleep to the deadline */
            goto lost;
        int w =
            pgh_wait_fd(PQsocket(pg), (short)(POLLIN | (f == 1 ? POLLOUT : 0)), dl, wake_fd, NULL);
        if (w == 0) {
            if (!cancelled) {
                /* Ask the server to stop, then give it a moment to say so, which leaves the
                 * connection clean for the next call. */
                send_cancel(pg);
                cancelled = 1;
                dl = pgh_now_ms() + PGH_CANCEL_GRACE_MS;
                continue;
            }
            PQclear(first);
            snprintf(err, errlen, "no answer before the deadline (statement cancelled)");
            *reusable = 0;
            return -ETIMEDOUT;
        }
        if (w < 0) {
            PQclear(first);
            snprintf(err, errlen, "%s", w == -ECANCELED ? "shutting down" : strerror(-w));
            *reusable = 0;
            return w;
        }
        if (PQconsumeInput(pg) == 0)
            goto lost;
    }

done:
    if (cancelled) {
        PQclear(first);
        snprintf(err, errlen, "no answer before the deadline (statement cancelled)");
        return -ETIMEDOUT;
    }
    if (PQstatus(pg) != CONNECTION_OK) {
        if (first != NULL && PQresultErrorField(first, PG_DIAG_MESSAGE_PRIMARY) != NULL)
            pgh_result_error(first, err, errlen); /* e.g. FATAL: terminating connection ... */
        else
            pgh_conn_error(pg, err, errlen);
        PQclear(first);
        *reusable = 0;
        return PGH_ELOST;
    }
    if (first == NULL) {
        snprintf(err, errlen, "no result");
        return -EIO;
    }
    *res = first;
    return 0;

lost:
    PQclear(first);
    pgh_conn_error(pg, err, errlen);
    *reusable = 0;
    return PGH_ELOST;
}

int pgh_command(PGconn *pg, const char *sql, int64_t deadline, int wake_fd, char *err,
                size_t errlen)
{
    if (!PQsendQuery(pg, sql)) {
        pgh_conn_error(pg, err, errlen);
        return PGH_ELOST;
    }
    PGresult *res;
    int reusable;
    int rc = pgh_wait_result(pg, deadline, wake_fd, &res, &reusable, err, errlen);
    if (rc != 0)
        return rc;
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        pgh_result_error(res, err, errlen);
        PQclear(res);
        return -EIO;
    }
    PQclear(res);
    return 0;
}

/* Send a PQsendPrepare/PQsendDescribePrepared and wait; 0 with *res on PGRES_COMMAND_OK,
 * -EINVAL when the server refused (err: its message), else as pgh_wait_result. */
static int await_command(PGconn *pg, int sent, int64_t deadline, PGresult **res, char *err,
                         size_t errlen)
{
    if (!sent) {
        pgh_conn_error(pg, err, errlen);
        return PGH_ELOST;
    }
    int reusable;
    int rc = pgh_wait_result(pg, deadline, -1, res, &reusable, err, errlen);
    if (rc != 0)
        return rc;
    if (PQresultStatus(*res) != PGRES_COMMAND_OK) {
        pgh_result_error(*res, err, errlen);
        PQclear(*res);
        *res = NULL;
        return -EINVAL;
    }
    return 0;
}

/* Prepare `query` as `name`, check it takes at most 3 parameters and returns the `need`ed
 * columns (NULL-terminated; an empty list means "at least one column"). */
static int prepare_one(PGconn *pg, const char *name, const char *query, const char *const *need,
                       int64_t deadline, int *nparams, char *err, size_t errlen)
{
    char why[512];
    PGresult *res;
    int rc =
        await_command(pg, PQsendPrepare(pg, name, query, 0, NULL), deadline, &res, why, sizeof why);
    if (rc == -EINVAL) {
        /* PostgreSQL's reason can be long; its tail may be cut, the head says what. */
        if (snprintf(err, errlen, "was refused by PostgreSQL: %s", why) >= (int)errlen)
            err[errlen - 2] = '.';
        return rc;
    }
    if (rc != 0) {
        snprintf(err, errlen, "%s", why);
        return rc;
    }
    PQclear(res);

    rc = await_command(pg, PQsendDescribePrepared(pg, name), deadline, &res, why, sizeof why);
    if (rc != 0) {
        snprintf(err, errlen, "%s", why);
        return rc == -EINVAL ? -EIO : rc;
    }
    int np = PQnparams(res);
    if (np > 3) {
        snprintf(err, errlen,
                 "uses $%d but only $1 (user), $2 (client address) and $3 (protocol) exist", np);
        PQclear(res);
        return -EINVAL;
    }
    if (PQnfields(res) < 1) {
        snprintf(err, errlen, "returns no columns (it must be a SELECT)");
        PQclear(res);
        return -EINVAL;
    }
    for (const char *const *col = need; *col != NULL; col++) {
        if (PQfnumber(res, *col) < 0) {
            snprintf(err, errlen, "returns no column named \"%s\" (columns are read by name)",
                     *col);
            PQclear(res);
            return -EINVAL;
        }
    }
    *nparams = np;
    PQclear(res);
    return 0;
}

int pgh_conn_setup(pgh *h, pgh_conn *c, int64_t deadline, char *err, size_t errlen,
                   const char **bad_key)
{
    static const char *const lookup_cols[] = {"status", "backend", "address", NULL};
    static const char *const no_cols[] = {NULL};
    char sql[64], why[512];

    *bad_key = NULL;
    /* The server-side bound of every statement: even when our cancel never reaches the server,
     * it stops working on an abandoned lookup. 0 disables it. */
    snprintf(sql, sizeof sql, "SET statement_timeout = %d", h->conf.statement_timeout_ms);
    int rc = pgh_command(c->pg, sql, deadline, -1, why, sizeof why);
    if (rc != 0) {
        snprintf(err, errlen, "SET statement_timeout failed: %s", why);
        return rc == -EIO ? -EINVAL : rc;
    }
    rc = prepare_one(c->pg, PGH_STMT_LOOKUP, h->conf.lookup_query, lookup_cols, deadline,
                     &c->lookup_nparams, why, sizeof why);
    if (rc != 0) {
        if (rc == -EINVAL)
            *bad_key = "lookup_query";
        snprintf(err, errlen, "%s%s", rc == -EINVAL ? "lookup_query " : "", why);
        return rc;
    }
    if (h->conf.keys_query[0] != '\0') {
        rc = prepare_one(c->pg, PGH_STMT_KEYS, h->conf.keys_query, no_cols, deadline,
                         &c->keys_nparams, why, sizeof why);
        if (rc != 0) {
            if (rc == -EINVAL)
                *bad_key = "keys_query";
            snprintf(err, errlen, "%s%s", rc == -EINVAL ? "keys_query " : "", why);
            return rc;
        }
    }
    return 0;
}

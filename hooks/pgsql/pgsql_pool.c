/*
 * pgsql_pool.c - the pool of connections lookup and authorized_keys run on.
 *
 * A call takes a free connection (waiting on a condvar, bounded by its deadline), dials it
 * when needed and gives it back. Reconnect backoff is kept for the pool as a whole (all
 * connections dial the same server): once a dial failed, the database is "down"; from then on
 * one call at a time may dial (the probe), only after the backoff delay (reconnect_min_ms,
 * doubling up to reconnect_max_ms), and every other call that would need a dial fails at once
 * with -EAGAIN instead of dialing a dead server for every login. A per-connection backoff would
 * let each never-used connection dial once more: pool_size stalls of connect_timeout_ms
 * against a black-holed server instead of one. The down/up transitions are logged once.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pgsql_int.h"

int pgh_backoff_next(const pgh_conf *conf, int prev_ms, unsigned *seed, int *wait_ms)
{
    int next = prev_ms <= 0 ? conf->reconnect_min_ms : prev_ms * 2;
    if (next > conf->reconnect_max_ms || next < prev_ms) /* (overflow) */
        next = conf->reconnect_max_ms;
    int jitter = next / 4 > 0 ? rand_r(seed) % (next / 4 + 1) : 0;
    *wait_ms = next - jitter;
    return next;
}

int pgh_pool_init(pgh *h)
{
    pgh_pool *p = &h->pool;
    pthread_condattr_t ca;

    memset(p, 0, sizeof *p);
    p->conns = calloc((size_t)h->conf.pool_size, sizeof *p->conns);
    if (p->conns == NULL)
        return -ENOMEM;
    p->n = h->conf.pool_size;
    p->seed = (unsigned)pgh_now_ms() ^ (unsigned)(uintptr_t)p;
    pthread_mutex_init(&p->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* deadlines are monotonic */
    pthread_cond_init(&p->cv, &ca);
    pthread_condattr_destroy(&ca);
    return 0;
}

void pgh_pool_destroy(pgh *h)
{
    pgh_pool *p = &h->pool;
    if (p->conns == NULL)
        return;
    for (int i = 0; i < p->n; i++) {
        PQfinish(p->conns[i].pg);
        p->conns[i].pg = NULL;
    }
    free(p->conns);
    p->conns = NULL;
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
}

/* ---- database down / back: backoff state and logs, once per transition ---- */

/* May a call dial `c` now? Under pool.mu. While the database is down only one probe at a time,
 * after retry_at. */
static int dial_allowed(pgh_pool *p, pgh_conn *c, int64_t now)
{
    if (!p->down)
        return 1;
    if (p->probing || now < p->retry_at)
        return 0;
    p->probing = 1;
    c->probing = 1;
    return 1;
}

/* A dial failed (or a fresh connection broke at once): back off, log the transition. */
static void note_down(pgh *h, pgh_conn *c, const char *why)
{
    pgh_pool *p = &h->pool;
    int wait_ms;
    pthread_mutex_lock(&p->mu);
    int was_down = p->down, same = was_down && strcmp(p->down_why, why) == 0;
    p->backoff_ms = pgh_backoff_next(&h->conf, p->backoff_ms, &p->seed, &wait_ms);
    p->retry_at = pgh_now_ms() + wait_ms;
    p->down = 1;
    if (c->probing) {
        c->probing = 0;
        p->probing = 0;
    }
    snprintf(p->down_why, sizeof p->down_why, "%s", why);
    pthread_mutex_unlock(&p->mu);
    if (!was_down)
        pgh_warn(h,
                 "PostgreSQL unavailable (%s): %s; routes not in the cache fail until it is back "
                 "(retry in %d ms, backoff up to %d ms)",
                 h->conf.summary, why, wait_ms, h->conf.reconnect_max_ms);
    else if (!same)
        pgh_warn(h, "PostgreSQL still unavailable: %s (retry in %d ms)", why, wait_ms);
    else
        pgh_debug(h, "PostgreSQL still unavailable: %s (retry in %d ms)", why, wait_ms);
}

static void note_up(pgh *h, pgh_conn *c)
{
    pgh_pool *p = &h->pool;
    pthread_mutex_lock(&p->mu);
    int was_down = p->down;
    p->down = 0;
    p->backoff_ms = 0;
    if (c->probing) {
        c->probing = 0;
        p->probing = 0;
    }
    pthread_mutex_unlock(&p->mu);
    const char *host = PQhost(c->pg), *port = PQport(c->pg), *db = PQdb(c->pg);
    if (was_down)
        pgh_info(h, "PostgreSQL reachable again: host=%s port=%s dbname=%s", host, port, db);
    else
        pgh_debug(h, "pool connection %d/%d: connected to host=%s port=%s dbname=%s",
                  (int)(c - p->conns) + 1, p->n, host, port, db);
}

/* ---- taking and giving back ---- */

static int pool_take(pgh *h, int64_t deadline, pgh_conn **out)
{
    pgh_pool *p = &h->pool;
    int rc;

    pthread_mutex_lock(&p->mu);
    for (;;) {
        int64_t now = pgh_now_ms();
        pgh_conn *ready = NULL, *idle = NULL;
        int healthy_busy = 0;
        for (int i = 0; i < p->n; i++) {
            pgh_conn *c = &p->conns[i];
            if (c->busy) {
                healthy_busy |= c->taken_connected;
            } else if (c->pg != NULL) {
                ready = c;
                break;
            } else if (idle == NULL) {
                idle = c;
            }
        }
        pgh_conn *got = ready;
        if (got == NULL && idle != NULL && dial_allowed(p, idle, now))
            got = idle;
        if (got != NULL) {
            got->busy = 1;
            got->taken_connected = got->pg != NULL;
            *out = got;
            rc = 0;
            break;
        }
        /* Only unconnected connections are free and we may not dial: fail fast, unless a
         * healthy connection is busy and will come back. */
        if (idle != NULL && !healthy_busy) {
            rc = -EAGAIN;
            break;
        }
        if (now >= deadline) {
            rc = -ETIMEDOUT;
            break;
        }
        /* Wake when a connection comes back, or when the backoff ends and we may probe. */
        int64_t until = deadline;
        if (idle != NULL && p->down && !p->probing && p->retry_at > now && p->retry_at < until)
            until = p->retry_at;
        struct timespec ts = {.tv_sec = until / 1000, .tv_nsec = (until % 1000) * 1000000};
        pthread_cond_timedwait(&p->cv, &p->mu, &ts);
    }
    pthread_mutex_unlock(&p->mu);
    return rc;
}

static void pool_give(pgh *h, pgh_conn *c)
{
    pgh_pool *p = &h->pool;
    pthread_mutex_lock(&p->mu);
    c->busy = 0;
    if (c->probing) { /* (a probe that never got to dial) */
        c->probing = 0;
        p->probing = 0;
    }
    /* Broadcast: a waiter may now have to fail fast (-EAGAIN) rather than take it. */
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

static void conn_close(pgh_conn *c)
{
    PQfinish(c->pg);
    c->pg = NULL;
}

/* Dial and set up c (c->pg == NULL, dial allowed). Setup failures (a refused query) count as
 * failed dials: backoff, logged once. */
static int conn_open(pgh *h, pgh_conn *c, int64_t deadline, char *err, size_t errlen)
{
    int64_t dl = pgh_now_ms() + h->conf.connect_timeout_ms;
    if (dl > deadline)
        dl = deadline;
    int rc = pgh_dial(h, 0, dl, -1, &c->pg, err, errlen);
    if (rc == 0) {
        const char *bad_key;
        rc = pgh_conn_setup(h, c, deadline, err, errlen, &bad_key);
        if (rc != 0)
            conn_close(c);
        if (rc == -EINVAL)
            rc = -EIO;
    }
    if (rc != 0) {
        note_down(h, c, err);
        return rc;
    }
    note_up(h, c);
    return 0;
}

/* Is an idle connection still there? Reads what the server sent meanwhile (a FATAL
 * "terminating connection" after a restart, EOF) without blocking. */
static int conn_alive(PGconn *pg)
{
    return PQstatus(pg) == CONNECTION_OK && PQconsumeInput(pg) != 0 &&
           PQstatus(pg) == CONNECTION_OK && PQtransactionStatus(pg) == PQTRANS_IDLE;
}

#define ESTALEPLAN (-ESTALE) /* prepared statement gone or plan changed: re-prepare */

static int conn_exec(pgh *h, pgh_conn *c, pgh_stmt stmt, const char *const values[3],
                     int64_t deadline, PGresult **out, char *err, size_t errlen)
{
    const char *name = stmt == PGH_LOOKUP ? PGH_STMT_LOOKUP : PGH_STMT_KEYS;
    int np = stmt == PGH_LOOKUP ? c->lookup_nparams : c->keys_nparams;

    if (!PQsendQueryPrepared(c->pg, name, np, values, NULL, NULL, 0)) {
        pgh_conn_error(c->pg, err, errlen);
        return PGH_ELOST;
    }
    PGresult *res;
    int reusable;
    int rc = pgh_wait_result(c->pg, deadline, -1, &res, &reusable, err, errlen);
    if (rc != 0) {
        if (!reusable)
            conn_close(c); /* slow server, not a dead one: no backoff */
        return rc;
    }
    if (PQresultStatus(res) == PGRES_TUPLES_OK) {
        *out = res;
        return 0;
    }
    pgh_result_error(res, err, errlen);
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    char sqlstate[6] = "";
    if (state != NULL)
        snprintf(sqlstate, sizeof sqlstate, "%s", state);
    PQclear(res);
    if (strcmp(sqlstate, "57014") == 0) /* query_canceled: statement_timeout */
        return -ETIMEDOUT;
    /* 26000: the prepared statement is gone (DISCARD ALL, a pooler); 0A000: "cached plan must
     * not change result type" after the schema changed under it. A fresh connection
     * re-prepares and fixes both. */
    if (strcmp(sqlstate, "26000") == 0 || strcmp(sqlstate, "0A000") == 0)
        return ESTALEPLAN;
    /* 57P0x: admin/crash shutdown, the server is going away. */
    if (strncmp(sqlstate, "57P", 3) == 0)
        return PGH_ELOST;
    return -EIO;
}

int pgh_pool_run(pgh *h, pgh_stmt stmt, const char *const values[3], int64_t deadline,
                 const char *user, PGresult **res)
{
    const char *what = stmt == PGH_LOOKUP ? "lookup" : "authorized_keys";
    char err[512] = "";
    pgh_conn *c;

    *res = NULL;
    int rc = pool_take(h, deadline, &c);
    if (rc != 0) {
        pgh_debug(h, "%s user=%s: %s", what, user,
                  rc == -EAGAIN ? "PostgreSQL is down and in reconnect backoff"
                                : "no pool connection became free before the deadline");
        return rc;
    }

    int retried = 0, fresh = 0;
    for (;;) {
        if (c->pg != NULL && !conn_alive(c->pg)) {
            /* Broke while idle (server restarted): dial again right away, no backoff yet. */
            pgh_debug(h, "pool connection %d: %s; reconnecting", (int)(c - h->pool.conns) + 1,
                      pgh_conn_error(c->pg, err, sizeof err));
            conn_close(c);
        }
        if (c->pg == NULL) {
            pthread_mutex_lock(&h->pool.mu);
            int may = c->probing || dial_allowed(&h->pool, c, pgh_now_ms());
            pthread_mutex_unlock(&h->pool.mu);
            if (!may) {
                pgh_debug(h, "%s user=%s: PostgreSQL is down and in reconnect backoff", what, user);
                rc = -EAGAIN;
                break;
            }
            rc = conn_open(h, c, deadline, err, sizeof err);
            if (rc != 0)
                break;
            fresh = 1;
        }
        rc = conn_exec(h, c, stmt, values, deadline, res, err, sizeof err);
        if (rc == 0)
            break;
        if (rc == PGH_ELOST || rc == ESTALEPLAN) {
            conn_close(c);
            /* A connection that worked last time may just be stale (the server restarted
             * since): one immediate retry on a fresh one. A fresh one that broke: back off. */
            if (!fresh && !retried && pgh_now_ms() < deadline) {
                retried = 1;
                continue;
            }
            if (rc == PGH_ELOST)
                note_down(h, c, err);
            if (rc == ESTALEPLAN) {
                pgh_error(h, "%s user=%s failed: %s", what, user, err);
                rc = -EIO;
            }
            break;
        }
        if (rc == -ETIMEDOUT)
            pgh_warn(h, "%s user=%s: %s", what, user, err[0] != '\0' ? err : "timed out");
        else
            pgh_error(h, "%s user=%s failed: %s", what, user, err);
        break;
    }
    pool_give(h, c);
    return rc;
}

int pgh_pool_warmup(pgh *h, int64_t deadline, char *err, size_t errlen, const char **bad_key)
{
    pgh_conn *c = &h->pool.conns[0]; /* init: no call can run yet */
    *bad_key = NULL;
    int rc = pgh_dial(h, 0, deadline, -1, &c->pg, err, errlen);
    if (rc != 0) {
        /* Not down yet (no backoff): the first lookup dials again at once. */
        pgh_warn(h, "PostgreSQL not reachable at start (%s): %s; lookups will try again on demand",
                 h->conf.summary, err);
        return 0;
    }
    rc = pgh_conn_setup(h, c, deadline, err, errlen, bad_key);
    if (rc != 0) {
        conn_close(c);
        if (rc == -EINVAL)
            return -EINVAL;
        pgh_warn(h, "PostgreSQL connection setup failed at start (%s): %s", h->conf.summary, err);
        return 0;
    }
    note_up(h, c);
    return 0;
}

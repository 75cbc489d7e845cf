/*
 * pgsql_listen.c - the LISTEN thread: turns NOTIFYs on `notify_channel` into cache
 * invalidations, so a route change reaches every proxy within milliseconds.
 *
 * One dedicated connection and thread: LISTEN <channel>, then poll(2) on PQsocket and an
 * eventfd (fini wakes the thread through it, so it stops at once rather than at the next 1 s
 * tick). Payload = a user name -> host->invalidate(user); '*' or empty -> invalidate_all;
 * "!kick USER" (dynproxy.move_user(..., true)) -> host->invalidate(USER), then host->kick(USER)
 * on a host that has it (ABI 1.1), which ends USER's sessions.
 *
 * A notification sent while we are not listening is lost for good (PostgreSQL queues them only
 * for sessions that are listening), so every (re)connect is followed by invalidate_all. The
 * connection loss itself invalidates nothing: during an outage the cached routes are exactly
 * what keeps customers working (stale-if-error in the host's cache).
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "pgsql_int.h"

/* A LISTEN connection that lived this long was healthy: after losing it, dial again at once
 * and restart the backoff from reconnect_min_ms. */
#define LISTEN_STABLE_MS 5000

/* Dial and LISTEN; 0 with *out, or a negative errno with err filled. */
static int listen_connect(pgh *h, PGconn **out, char *err, size_t errlen)
{
    pgh_listener *L = &h->listener;
    const char *chan = h->conf.notify_channel;
    PGconn *pg;

    int rc =
        pgh_dial(h, 1, pgh_now_ms() + h->conf.connect_timeout_ms, L->wake_fd, &pg, err, errlen);
    if (rc != 0)
        return rc;
    char *id = PQescapeIdentifier(pg, chan, strlen(chan));
    if (id == NULL) {
        pgh_conn_error(pg, err, errlen);
        PQfinish(pg);
        return -ENOMEM;
    }
    size_t len = strlen(id) + sizeof "LISTEN ";
    char *sql = malloc(len);
    if (sql == NULL) {
        PQfreemem(id);
        PQfinish(pg);
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    snprintf(sql, len, "LISTEN %s", id);
    PQfreemem(id);
    rc = pgh_command(pg, sql, pgh_now_ms() + h->conf.connect_timeout_ms, L->wake_fd, err, errlen);
    free(sql);
    if (rc != 0) {
        PQfinish(pg);
        return rc;
    }
    *out = pg;
    return 0;
}

#define KICK_PREFIX "!kick "

/* "!kick USER": drop the route (move_user's own invalidation normally came first, but a
 * hand-sent kick must not let the session reconnect to the old backend from the cache), then
 * end the sessions where the host can. */
static void dispatch_kick(pgh *h, const char *chan, const char *user)
{
    const dph_host *host = h->host;
    if (user[0] == '\0') {
        pgh_warn(h, "NOTIFY %s: \"" KICK_PREFIX "\" without a user name ignored", chan);
        return;
    }
    host->invalidate(host->ctx, user);
    if (DPH_HOST_HAS(host, kick)) {
        pgh_info(h, "NOTIFY %s: kick user=%s", chan, user);
        host->kick(host->ctx, user);
    } else {
        pgh_info(h,
                 "NOTIFY %s: kick user=%s: this host cannot end sessions (hook ABI %u.%u); "
                 "route dropped only",
                 chan, user, DPH_ABI_MAJOR_OF(host->abi_version), host->abi_version & 0xffffu);
    }
}

static void dispatch(pgh *h, PGconn *pg)
{
    PGnotify *n;
    while ((n = PQnotifies(pg)) != NULL) {
        const char *user = n->extra != NULL ? n->extra : "";
        if (strncmp(user, KICK_PREFIX, sizeof KICK_PREFIX - 1) == 0) {
            dispatch_kick(h, n->relname, user + sizeof KICK_PREFIX - 1);
        } else if (user[0] == '\0' || strcmp(user, "*") == 0) {
            pgh_debug(h, "NOTIFY %s: every route", n->relname);
            h->host->invalidate_all(h->host->ctx);
        } else {
            pgh_debug(h, "NOTIFY %s: user=%s", n->relname, user);
            h->host->invalidate(h->host->ctx, user);
        }
        PQfreemem(n);
    }
}

static void *listen_main(void *arg)
{
    pgh *h = arg;
    pgh_listener *L = &h->listener;
    const char *chan = h->conf.notify_channel;
    PGconn *pg = NULL;
    int backoff = 0, failures = 0;
    int64_t retry_at = 0, connected_at = 0;
    unsigned seed = (unsigned)pgh_now_ms() ^ 0x9e3779b9u;
    char err[512];

    while (!atomic_load(&L->stop)) {
        if (pg == NULL) {
            if (pgh_now_ms() < retry_at) {
                if (pgh_wait_fd(-1, 0, retry_at, L->wake_fd, NULL) == -ECANCELED)
                    break;
                continue;
            }
            int rc = listen_connect(h, &pg, err, sizeof err);
            if (rc == -ECANCELED)
                break;
            if (rc != 0) {
                int wait_ms;
                backoff = pgh_backoff_next(&h->conf, backoff, &seed, &wait_ms);
                retry_at = pgh_now_ms() + wait_ms;
                if (failures++ == 0)
                    pgh_warn(h, "LISTEN %s: cannot connect: %s; retrying (backoff up to %d ms)",
                             chan, err, h->conf.reconnect_max_ms);
                else
                    pgh_debug(h, "LISTEN %s: still cannot connect: %s (retry in %d ms)", chan, err,
                              wait_ms);
                continue;
            }
            unsigned nth = atomic_fetch_add(&L->connects, 1) + 1;
            pgh_info(h,
                     "LISTEN %s: %s host=%s port=%s; dropped every cached route (changes made "
                     "while not listening were not notified)",
                     chan, nth == 1 ? "listening on" : "listening again on", PQhost(pg),
                     PQport(pg));
            h->host->invalidate_all(h->host->ctx);
            connected_at = pgh_now_ms();
            failures = 0;
        }

        /* The 1 s tick only re-checks `stop`; the eventfd makes fini prompt anyway. */
        short rev = 0;
        int r = PQsocket(pg) < 0
                    ? -EBADF
                    : pgh_wait_fd(PQsocket(pg), POLLIN, pgh_now_ms() + 1000, L->wake_fd, &rev);
        if (r == -ECANCELED)
            break;
        if (r == 0)
            continue;
        int ok = r > 0 && PQconsumeInput(pg) != 0;
        dispatch(h, pg); /* whatever arrived before a loss is still worth applying */
        if (!ok || PQstatus(pg) != CONNECTION_OK) {
            if (r < 0)
                snprintf(err, sizeof err, "poll: %s", strerror(-r));
            else
                pgh_conn_error(pg, err, sizeof err);
            pgh_warn(h,
                     "LISTEN %s: connection lost: %s; reconnecting (cached routes are kept "
                     "until then)",
                     chan, err);
            PQfinish(pg);
            pg = NULL;
            if (pgh_now_ms() - connected_at >= LISTEN_STABLE_MS) {
                backoff = 0;
                retry_at = 0; /* first try at once: a restart is usually quick */
            } else {
                /* Flapping (lost right after connecting): keep backing off, or every cycle
                 * would flush every cache again. */
                int wait_ms;
                backoff = pgh_backoff_next(&h->conf, backoff, &seed, &wait_ms);
                retry_at = pgh_now_ms() + wait_ms;
            }
        }
    }
    PQfinish(pg);
    return NULL;
}

int pgh_listen_start(pgh *h)
{
    pgh_listener *L = &h->listener;
    L->wake_fd = -1;
    if (h->conf.notify_channel[0] == '\0') {
        pgh_info(h, "notify_channel is empty: no LISTEN; cached routes change only when their "
                    "TTL expires");
        return 0;
    }
    L->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (L->wake_fd < 0)
        return -errno;
    atomic_store(&L->stop, 0);

    /* Signals are the daemon's business (its loop handles them): block them all here. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&L->thread, NULL, listen_main, h);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        close(L->wake_fd);
        L->wake_fd = -1;
        return -rc;
    }
    L->running = 1;
    return 0;
}

void pgh_listen_stop(pgh *h)
{
    pgh_listener *L = &h->listener;
    if (L->running) {
        atomic_store(&L->stop, 1);
        uint64_t one = 1;
        ssize_t w = write(L->wake_fd, &one, sizeof one);
        (void)w; /* an eventfd write only fails on overflow; `stop` + the 1 s tick remain */
        pthread_join(L->thread, NULL);
        L->running = 0;
    }
    if (L->wake_fd >= 0) {
        close(L->wake_fd);
        L->wake_fd = -1;
    }
}

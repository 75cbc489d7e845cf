/* dp_worker.c - worker threads: loop, SO_REUSEPORT listeners, accept, PROXY header. */
#include "dp_worker.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dp_log.h"
#include "dp_proxy_reader.h"
#include "dp_util.h"

/* Accepts per readiness event: bounded so one busy listener cannot starve the loop. */
#define ACCEPT_BURST 64
/* Back-off when out of file descriptors, instead of spinning on a readable listener. */
#define EMFILE_PAUSE_MS 100

typedef struct listener {
    uv_poll_t poll;
    int fd;
    dp_worker *w;
    bool active;
} listener;

/* A connection waiting for its PROXY header. */
typedef struct pending {
    dp_proxy_reader reader;
    dp_conn_info ci;
    dp_worker *w;
    struct pending *prev, *next;
} pending;

typedef struct posted {
    void (*fn)(dp_worker *w, void *arg);
    void *arg;
    struct posted *next;
} posted;

struct dp_worker {
    dp_workers *ws;
    int index;
    uv_loop_t loop;
    uv_thread_t thread;
    uv_async_t async;
    uv_timer_t emfile_timer;
    listener *listeners;
    size_t nlisteners;
    pending *pendings;
    void *data;
    bool started, stopping, paused;
    bool async_closed;    /* under lock: no uv_async_send after uv_close */
    pthread_mutex_t lock; /* guards posts */
    posted *posts;
    posted **posts_tail;
};

struct dp_workers {
    dp_workers_opts opts;
    dp_worker *w;
    size_t n;
    pthread_mutex_t join_lock;
    pthread_cond_t join_cond;
    size_t running;
    size_t nstarted; /* workers past their start callback (successful or not) */
    size_t nfailed;  /* of those, the ones whose start failed */
};

int dp_sock_tune(int fd, int keepalive_s)
{
    int one = 1;
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0)
        return -errno;
    if (keepalive_s > 0) {
        int cnt = 3, intvl = keepalive_s / 3 > 0 ? keepalive_s / 3 : 1;
        if (setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one) != 0 ||
            setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &keepalive_s, sizeof keepalive_s) != 0 ||
            setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl) != 0 ||
            setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt) != 0)
            return -errno;
    }
    return 0;
}

/* One SO_REUSEPORT listening socket. "*:port" is [::] with V6ONLY off (both families);
 * an explicit "[::]:port" is IPv6 only, so it can sit next to "0.0.0.0:port". */
static int listen_socket(const char *text, int backlog, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t len;
    if (dp_parse_hostport(text, &ss, &len) != 0) {
        snprintf(err, errlen, "listen %s: not a numeric ip:port, [ipv6]:port or *:port", text);
        return -EINVAL;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        int e = errno;
        snprintf(err, errlen, "listen %s: socket: %s", text, strerror(e));
        return -e;
    }
    int one = 1, v6only = text[0] == '*' ? 0 : 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0 ||
        (ss.ss_family == AF_INET6 &&
         setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof v6only) != 0) ||
        bind(fd, (struct sockaddr *)&ss, len) != 0 || listen(fd, backlog) != 0) {
        int e = errno;
        snprintf(err, errlen, "listen %s: %s", text, strerror(e));
        close(fd);
        return -e;
    }
    return fd;
}

/* ---- posting work to a worker ---- */

static void run_posts(dp_worker *w)
{
    pthread_mutex_lock(&w->lock);
    posted *p = w->posts;
    w->posts = NULL;
    w->posts_tail = &w->posts;
    pthread_mutex_unlock(&w->lock);
    while (p != NULL) {
        posted *next = p->next;
        p->fn(w, p->arg);
        free(p);
        p = next;
    }
}

static int post(dp_worker *w, void (*fn)(dp_worker *, void *), void *arg)
{
    posted *p = malloc(sizeof *p);
    if (p == NULL)
        return -ENOMEM;
    p->fn = fn;
    p->arg = arg;
    p->next = NULL;
    pthread_mutex_lock(&w->lock);
    if (w->async_closed) {
        /* The loop is ending; nothing would run it. */
        pthread_mutex_unlock(&w->lock);
        free(p);
        return -ESHUTDOWN;
    }
    *w->posts_tail = p;
    w->posts_tail = &p->next;
    uv_async_send(&w->async);
    pthread_mutex_unlock(&w->lock);
    return 0;
}

/* ---- accepting ---- */

static void hand_over(dp_worker *w, const dp_conn_info *ci)
{
    if (w->stopping) {
        close(ci->fd);
        return;
    }
    w->ws->opts.ops->accept(w, ci);
}

static void pending_unlink(pending *p)
{
    if (p->prev != NULL)
        p->prev->next = p->next;
    else
        p->w->pendings = p->next;
    if (p->next != NULL)
        p->next->prev = p->prev;
}

static void on_proxy_header(dp_proxy_reader *r, int status, const dp_proxy_info *info)
{
    pending *p = r->data;
    dp_worker *w = p->w;
    pending_unlink(p);
    char peer[64];
    dp_sockaddr_format((struct sockaddr *)&p->ci.sock_peer, peer, sizeof peer);
    if (status != 0) {
        dp_log_warn("PROXY header from %s refused: %s", peer,
                    status == -ETIMEDOUT ? "timed out" : strerror(-status));
        close(p->ci.fd);
        free(p);
        return;
    }
    if (!info->local) {
        memcpy(&p->ci.peer, &info->src, info->src_len);
        memcpy(&p->ci.local, &info->dst, info->dst_len);
        p->ci.proxied = true;
    }
    hand_over(w, &p->ci);
    free(p);
}

static void pending_cancelled(dp_proxy_reader *r)
{
    pending *p = r->data;
    close(p->ci.fd);
    free(p);
}

static void accept_one(dp_worker *w, int fd)
{
    const dp_workers_opts *o = &w->ws->opts;
    dp_conn_info ci = {.fd = fd};
    socklen_t len = sizeof ci.sock_peer;
    if (getpeername(fd, (struct sockaddr *)&ci.sock_peer, &len) != 0) {
        close(fd); /* reset before we looked at it */
        return;
    }
    len = sizeof ci.local;
    getsockname(fd, (struct sockaddr *)&ci.local, &len);
    ci.peer = ci.sock_peer;

    /* A header is required from, and only believed from, trusted peers: anyone else's
     * "PROXY ..." line reaches the protocol as data and fails there. */
    if (!o->proxy_protocol ||
        !dp_cidr_list_match(o->trusted, o->ntrusted, (struct sockaddr *)&ci.sock_peer)) {
        hand_over(w, &ci);
        return;
    }
    pending *p = calloc(1, sizeof *p);
    if (p == NULL) {
        close(fd);
        return;
    }
    p->ci = ci;
    p->w = w;
    p->reader.data = p;
    int rc = dp_proxy_reader_start(&p->reader, &w->loop, fd, o->proxy_max_header,
                                   (uint64_t)o->proxy_timeout_ms, on_proxy_header);
    if (rc != 0) {
        dp_log_error("cannot read PROXY header: %s", uv_strerror(rc));
        close(fd);
        free(p);
        return;
    }
    p->next = w->pendings;
    if (w->pendings != NULL)
        w->pendings->prev = p;
    w->pendings = p;
}

static void listeners_set(dp_worker *w, bool on);

static void emfile_timer_cb(uv_timer_t *t)
{
    dp_worker *w = t->data;
    if (!w->stopping && !w->paused)
        listeners_set(w, true);
}

static void on_listen_ready(uv_poll_t *h, int status, int events)
{
    listener *l = h->data;
    dp_worker *w = l->w;
    if (status < 0) {
        dp_log_error("listener poll: %s", uv_strerror(status));
        return;
    }
    for (int i = 0; i < ACCEPT_BURST && !w->stopping; i++) {
        int fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            accept_one(w, fd);
            continue;
        }
        if (errno == EINTR || errno == ECONNABORTED)
            continue;
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
            dp_log_error("accept: %s; not accepting for %d ms", strerror(errno), EMFILE_PAUSE_MS);
            listeners_set(w, false);
            uv_timer_start(&w->emfile_timer, emfile_timer_cb, EMFILE_PAUSE_MS, 0);
        }
        break; /* EAGAIN or a real error */
    }
}

static void listeners_set(dp_worker *w, bool on)
{
    for (size_t i = 0; i < w->nlisteners; i++) {
        listener *l = &w->listeners[i];
        if (uv_is_closing((uv_handle_t *)&l->poll) || l->active == on)
            continue;
        if (on)
            uv_poll_start(&l->poll, UV_READABLE, on_listen_ready);
        else
            uv_poll_stop(&l->poll);
        l->active = on;
    }
}

static void listener_close_cb(uv_handle_t *h)
{
    listener *l = h->data;
    close(l->fd);
    l->fd = -1;
}

/* ---- lifecycle on the worker thread ---- */

static void noop_close_cb(uv_handle_t *h)
{
    (void)h;
}

static void do_stop(dp_worker *w, void *arg)
{
    (void)arg;
    if (w->stopping)
        return;
    w->stopping = true;
    for (size_t i = 0; i < w->nlisteners; i++)
        if (!uv_is_closing((uv_handle_t *)&w->listeners[i].poll))
            uv_close((uv_handle_t *)&w->listeners[i].poll, listener_close_cb);
    uv_close((uv_handle_t *)&w->emfile_timer, noop_close_cb);
    while (w->pendings != NULL) {
        pending *p = w->pendings;
        pending_unlink(p);
        dp_proxy_reader_cancel(&p->reader, pending_cancelled);
    }
    if (w->started && w->ws->opts.ops->stop != NULL)
        w->ws->opts.ops->stop(w);
    /* The async handle closes last: posts made after this point are refused. */
    pthread_mutex_lock(&w->lock);
    w->async_closed = true;
    pthread_mutex_unlock(&w->lock);
    uv_close((uv_handle_t *)&w->async, noop_close_cb);
}

static void do_pause(dp_worker *w, void *arg)
{
    w->paused = arg != NULL;
    if (!w->stopping)
        listeners_set(w, !w->paused);
}

static void async_cb(uv_async_t *a)
{
    run_posts(a->data);
}

static void worker_main(void *arg)
{
    dp_worker *w = arg;
    dp_workers *ws = w->ws;

    /* Signals go to the main thread's loop only. */
    sigset_t set;
    sigfillset(&set);
    pthread_sigmask(SIG_BLOCK, &set, NULL);

    for (size_t i = 0; i < w->nlisteners; i++) {
        listener *l = &w->listeners[i];
        uv_poll_init_socket(&w->loop, &l->poll, l->fd);
        l->poll.data = l;
        l->w = w;
    }
    w->paused = ws->opts.start_paused;
    int rc = ws->opts.ops->start != NULL ? ws->opts.ops->start(w) : 0;
    if (rc != 0) {
        dp_log_error("worker %d: start failed: %s", w->index, strerror(-rc));
        do_stop(w, NULL);
    } else {
        w->started = true;
        if (!w->stopping && !w->paused)
            listeners_set(w, true);
    }
    pthread_mutex_lock(&ws->join_lock);
    ws->nstarted++;
    if (rc != 0)
        ws->nfailed++;
    pthread_cond_broadcast(&ws->join_cond);
    pthread_mutex_unlock(&ws->join_lock);
    run_posts(w);
    uv_run(&w->loop, UV_RUN_DEFAULT);

    run_posts(w); /* posts queued before the async closed but after its last run */
    if (w->started && ws->opts.ops->fini != NULL)
        ws->opts.ops->fini(w);

    pthread_mutex_lock(&ws->join_lock);
    ws->running--;
    pthread_cond_broadcast(&ws->join_cond);
    pthread_mutex_unlock(&ws->join_lock);
}

/* ---- public API ---- */

static void close_listener_fds(dp_workers *ws)
{
    for (size_t i = 0; i < ws->n; i++)
        for (size_t j = 0; j < ws->w[i].nlisteners; j++)
            if (ws->w[i].listeners[j].fd >= 0)
                close(ws->w[i].listeners[j].fd);
}

static void free_workers(dp_workers *ws)
{
    for (size_t i = 0; i < ws->n; i++) {
        dp_worker *w = &ws->w[i];
        free(w->listeners);
        pthread_mutex_destroy(&w->lock);
    }
    pthread_mutex_destroy(&ws->join_lock);
    pthread_cond_destroy(&ws->join_cond);
    free((void *)ws->opts.trusted);
    free(ws->w);
    free(ws);
}

int dp_workers_start(dp_workers **out, const dp_workers_opts *opts, char *err, size_t errlen)
{
    if (opts->nworkers < 1 || opts->nlisten == 0 || opts->ops == NULL || opts->ops->accept == NULL)
        return -EINVAL;
    dp_workers *ws = calloc(1, sizeof *ws);
    if (ws == NULL)
        return -ENOMEM;
    ws->opts = *opts;
    /* The caller's arrays may go away (a reload frees its configuration): keep our own. */
    ws->opts.listen = NULL;
    ws->opts.trusted = NULL;
    if (opts->ntrusted > 0) {
        dp_cidr *t = malloc(opts->ntrusted * sizeof *t);
        if (t == NULL) {
            free(ws);
            return -ENOMEM;
        }
        memcpy(t, opts->trusted, opts->ntrusted * sizeof *t);
        ws->opts.trusted = t;
    }
    ws->n = (size_t)opts->nworkers;
    ws->w = calloc(ws->n, sizeof *ws->w);
    pthread_mutex_init(&ws->join_lock, NULL);
    /* Deadlines on the monotonic clock: a wall-clock step must not cut a stop short. */
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&ws->join_cond, &ca);
    pthread_condattr_destroy(&ca);
    if (ws->w == NULL) {
        free_workers(ws);
        return -ENOMEM;
    }
    int rc = 0;
    for (size_t i = 0; i < ws->n; i++) {
        dp_worker *w = &ws->w[i];
        w->ws = ws;
        w->index = (int)i;
        pthread_mutex_init(&w->lock, NULL);
        w->posts_tail = &w->posts;
        w->listeners = calloc(opts->nlisten, sizeof *w->listeners);
        if (w->listeners == NULL) {
            rc = -ENOMEM;
            break;
        }
        for (size_t j = 0; j < opts->nlisten; j++)
            w->listeners[j].fd = -1;
        w->nlisteners = opts->nlisten;
        for (size_t j = 0; j < opts->nlisten && rc == 0; j++) {
            int fd = listen_socket(opts->listen[j], opts->backlog, err, errlen);
            if (fd < 0)
                rc = fd;
            else
                w->listeners[j].fd = fd;
        }
        if (rc != 0)
            break;
    }
    for (size_t i = 0; i < ws->n && rc == 0; i++) {
        dp_worker *w = &ws->w[i];
        rc = uv_loop_init(&w->loop);
        if (rc == 0) {
            uv_async_init(&w->loop, &w->async, async_cb);
            w->async.data = w;
            uv_timer_init(&w->loop, &w->emfile_timer);
            w->emfile_timer.data = w;
        } else {
            snprintf(err, errlen, "worker %zu: uv_loop_init: %s", i, uv_strerror(rc));
        }
    }
    if (rc != 0) {
        close_listener_fds(ws);
        free_workers(ws);
        return rc;
    }
    ws->running = ws->n;
    for (size_t i = 0; i < ws->n; i++) {
        rc = uv_thread_create(&ws->w[i].thread, worker_main, &ws->w[i]);
        if (rc != 0) {
            /* Threads already running are stopped and joined by the caller's error path. */
            snprintf(err, errlen, "worker %zu: thread: %s", i, uv_strerror(rc));
            ws->running = i;
            ws->n = i;
            *out = ws;
            return rc;
        }
    }
    *out = ws;
    return 0;
}

void dp_workers_stop(dp_workers *ws)
{
    for (size_t i = 0; i < ws->n; i++)
        post(&ws->w[i], do_stop, NULL);
}

void dp_workers_pause(dp_workers *ws)
{
    for (size_t i = 0; i < ws->n; i++)
        post(&ws->w[i], do_pause, (void *)1);
}

void dp_workers_resume(dp_workers *ws)
{
    for (size_t i = 0; i < ws->n; i++)
        post(&ws->w[i], do_pause, NULL);
}

int dp_workers_each(dp_workers *ws, void (*fn)(dp_worker *w, void *arg), void *arg)
{
    int queued = 0;
    for (size_t i = 0; i < ws->n; i++)
        if (post(&ws->w[i], fn, arg) == 0)
            queued++;
    return queued;
}

static void do_unlisten(dp_worker *w, void *arg)
{
    (void)arg;
    w->paused = true;
    for (size_t i = 0; i < w->nlisteners; i++)
        if (!uv_is_closing((uv_handle_t *)&w->listeners[i].poll))
            uv_close((uv_handle_t *)&w->listeners[i].poll, listener_close_cb);
}

void dp_workers_unlisten(dp_workers *ws)
{
    for (size_t i = 0; i < ws->n; i++)
        post(&ws->w[i], do_unlisten, NULL);
}

/* Now + ms on CLOCK_MONOTONIC, the clock join_cond waits on. */
static struct timespec deadline_in(int ms)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    t.tv_sec += ms / 1000;
    t.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (t.tv_nsec >= 1000000000L) {
        t.tv_sec++;
        t.tv_nsec -= 1000000000L;
    }
    return t;
}

int dp_workers_wait_started(dp_workers *ws, int timeout_ms)
{
    struct timespec deadline = deadline_in(timeout_ms);
    pthread_mutex_lock(&ws->join_lock);
    int rc = 0;
    while (ws->nstarted < ws->n && rc == 0)
        rc = pthread_cond_timedwait(&ws->join_cond, &ws->join_lock, &deadline);
    bool done = ws->nstarted >= ws->n;
    bool failed = ws->nfailed > 0;
    pthread_mutex_unlock(&ws->join_lock);
    return !done ? -ETIMEDOUT : failed ? -ECHILD : 0;
}

int dp_workers_join(dp_workers *ws, int timeout_ms)
{
    struct timespec deadline = deadline_in(timeout_ms >= 0 ? timeout_ms : 0);
    pthread_mutex_lock(&ws->join_lock);
    int rc = 0;
    while (ws->running > 0 && rc == 0) {
        if (timeout_ms < 0)
            pthread_cond_wait(&ws->join_cond, &ws->join_lock);
        else
            rc = pthread_cond_timedwait(&ws->join_cond, &ws->join_lock, &deadline);
    }
    bool done = ws->running == 0;
    pthread_mutex_unlock(&ws->join_lock);
    if (!done)
        return -ETIMEDOUT;
    for (size_t i = 0; i < ws->n; i++) {
        uv_thread_join(&ws->w[i].thread);
        /* Handles are all closed; uv_loop_close reports EBUSY only on a leak. */
        if (uv_loop_close(&ws->w[i].loop) != 0)
            dp_log_warn("worker %zu: loop still had handles at exit", i);
    }
    return 0;
}

void dp_workers_free(dp_workers *ws)
{
    if (ws != NULL)
        free_workers(ws);
}

size_t dp_workers_count(const dp_workers *ws)
{
    return ws->n;
}

dp_worker *dp_workers_get(dp_workers *ws, size_t i)
{
    return i < ws->n ? &ws->w[i] : NULL;
}

uv_loop_t *dp_worker_loop(dp_worker *w)
{
    return &w->loop;
}

int dp_worker_index(const dp_worker *w)
{
    return w->index;
}

void *dp_worker_arg(const dp_worker *w)
{
    return w->ws->opts.arg;
}

void dp_worker_set_data(dp_worker *w, void *data)
{
    w->data = data;
}

void *dp_worker_data(const dp_worker *w)
{
    return w->data;
}

bool dp_worker_stopping(const dp_worker *w)
{
    return w->stopping;
}

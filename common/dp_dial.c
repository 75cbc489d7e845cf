/* dp_dial.c - one backend connection being made (dp_dial.h). */
#include "dp_dial.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dp_util.h"
#include "dp_worker.h"

struct dp_dial {
    uv_loop_t *loop;
    dp_dial_cb cb;
    void *arg;
    char *address;
    uint16_t port;
    int timeout_ms, keepalive_s;
    uv_getaddrinfo_t gai;
    uv_timer_t timer;
    uv_poll_t poll; /* on fd, while the connect is in progress */
    bool gai_pending, timer_open, poll_open;
    bool done; /* the callback ran, or the dial was cancelled: nothing more happens */
    bool deadline_passed;
    int fd;
    struct sockaddr_storage peer;
    uint64_t connect_ns;
};

/* The memory goes when neither a handle nor the resolver can call back any more. */
static void maybe_free(dp_dial *d)
{
    if (d->done && !d->gai_pending && !d->timer_open && !d->poll_open) {
        free(d->address);
        free(d);
    }
}

static void timer_closed(uv_handle_t *h)
{
    dp_dial *d = h->data;
    d->timer_open = false;
    maybe_free(d);
}

static void poll_closed(uv_handle_t *h)
{
    dp_dial *d = h->data;
    d->poll_open = false;
    maybe_free(d);
}

/* Stop watching: the poll is closed at once (libuv unregisters the fd inside uv_close, so the
 * fd may get another watcher right after), the timer too. */
static void release(dp_dial *d)
{
    d->done = true;
    if (d->gai_pending) /* still queued: the threadpool slot is not taken; running: it ends */
        uv_cancel((uv_req_t *)&d->gai);
    if (d->poll_open && !uv_is_closing((uv_handle_t *)&d->poll))
        uv_close((uv_handle_t *)&d->poll, poll_closed);
    if (d->timer_open && !uv_is_closing((uv_handle_t *)&d->timer))
        uv_close((uv_handle_t *)&d->timer, timer_closed);
}

static void finish(dp_dial *d, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void finish(dp_dial *d, int status, const char *fmt, ...)
{
    char error[300] = "";
    if (fmt != NULL) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(error, sizeof error, fmt, ap);
        va_end(ap);
    }
    dp_dial_result r = {.status = status,
                        .deadline = d->deadline_passed,
                        .fd = -1,
                        .peer = d->peer,
                        .connect_ns = d->connect_ns};
    release(d);
    if (status == 0) {
        r.fd = d->fd;
    } else {
        r.error = error;
        if (d->fd >= 0)
            close(d->fd);
    }
    d->fd = -1;
    d->cb(d->arg, &r);
    maybe_free(d);
}

static void fail_connect(dp_dial *d, int err)
{
    char addr[80];
    dp_sockaddr_format((struct sockaddr *)&d->peer, addr, sizeof addr);
    finish(d, -err, "connect %s: %s", addr, strerror(err));
}

/* The TCP connection is up. Here go the steps an outbound connection will take before the
 * protocol starts (a PROXY header to the backend, a TLS handshake): both daemons' dials pass
 * through this one place. */
static void connected(dp_dial *d)
{
    dp_sock_tune(d->fd, d->keepalive_s);
    finish(d, 0, NULL);
}

static void on_writable(uv_poll_t *p, int status, int events)
{
    dp_dial *d = p->data;
    (void)events;
    if (d->done)
        return;
    int rc = dp_sock_connect_result(d->fd, status);
    if (rc != 0)
        fail_connect(d, -rc);
    else
        connected(d);
}

static void start_connect(dp_dial *d)
{
    d->connect_ns = uv_hrtime();
    d->fd = socket(d->peer.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (d->fd < 0) {
        int e = errno;
        finish(d, -e, "socket: %s", strerror(e));
        return;
    }
    if (connect(d->fd, (struct sockaddr *)&d->peer, dp_sockaddr_len((struct sockaddr *)&d->peer)) ==
        0) {
        connected(d);
        return;
    }
    if (errno != EINPROGRESS) {
        fail_connect(d, errno);
        return;
    }
    int rc = uv_poll_init_socket(d->loop, &d->poll, d->fd);
    if (rc != 0) {
        finish(d, rc, "connect: poll setup: %s", uv_strerror(rc));
        return;
    }
    d->poll.data = d;
    d->poll_open = true;
    rc = uv_poll_start(&d->poll, UV_WRITABLE, on_writable);
    if (rc != 0)
        finish(d, rc, "connect: poll start: %s", uv_strerror(rc));
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    dp_dial *d = req->data;
    d->gai_pending = false;
    if (d->done) { /* cancelled, or the deadline passed meanwhile */
        uv_freeaddrinfo(res);
        maybe_free(d);
        return;
    }
    if (status != 0 || res == NULL) {
        uv_freeaddrinfo(res);
        finish(d, status != 0 ? status : -ENOENT, "cannot resolve %s: %s", d->address,
               uv_strerror(status != 0 ? status : UV_ENOENT));
        return;
    }
    memcpy(&d->peer, res->ai_addr, res->ai_addrlen);
    uv_freeaddrinfo(res);
    start_connect(d);
}

static void on_deadline(uv_timer_t *t)
{
    dp_dial *d = t->data;
    if (d->done)
        return;
    d->deadline_passed = true;
    finish(d, -ETIMEDOUT, "connect timed out after %d ms", d->timeout_ms);
}

/* A numeric address goes straight to connect; anything else is a name. */
static bool parse_numeric(dp_dial *d)
{
    struct sockaddr_in *a4 = (struct sockaddr_in *)&d->peer;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&d->peer;
    memset(&d->peer, 0, sizeof d->peer);
    if (inet_pton(AF_INET, d->address, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons(d->port);
        return true;
    }
    if (inet_pton(AF_INET6, d->address, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons(d->port);
        return true;
    }
    return false;
}

int dp_dial_start(dp_dial **out, uv_loop_t *loop, const dp_dial_opts *opts, dp_dial_cb cb,
                  void *arg)
{
    dp_dial *d = calloc(1, sizeof *d);
    if (d == NULL || (d->address = strdup(opts->address)) == NULL) {
        free(d);
        return -ENOMEM;
    }
    d->loop = loop;
    d->cb = cb;
    d->arg = arg;
    d->port = opts->port;
    d->timeout_ms = opts->timeout_ms;
    d->keepalive_s = opts->keepalive_s;
    d->fd = -1;
    int rc = uv_timer_init(loop, &d->timer);
    if (rc != 0) {
        free(d->address);
        free(d);
        return rc;
    }
    d->timer.data = d;
    d->timer_open = true;
    uv_update_time(loop);
    uv_timer_start(&d->timer, on_deadline, (uint64_t)opts->timeout_ms, 0);
    *out = d;
    if (parse_numeric(d)) {
        start_connect(d);
        return 0;
    }
    char service[8];
    snprintf(service, sizeof service, "%u", d->port);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
    d->gai.data = d;
    rc = uv_getaddrinfo(loop, &d->gai, on_resolved, d->address, service, &hints);
    if (rc != 0) {
        finish(d, rc, "cannot resolve %s: %s", d->address, uv_strerror(rc));
        return 0;
    }
    d->gai_pending = true;
    return 0;
}

void dp_dial_cancel(dp_dial *d)
{
    if (d == NULL || d->done)
        return;
    release(d); /* a name lookup's callback still runs (UV_ECANCELED) and frees */
    if (d->fd >= 0) {
        close(d->fd);
        d->fd = -1;
    }
    maybe_free(d);
}

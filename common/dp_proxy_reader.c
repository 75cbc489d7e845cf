/*
 * dp_proxy_reader.c - read a PROXY header off a socket without consuming anything after it.
 *
 * Why peek: an SSH client sends its banner right after the load balancer's header, often in the
 * same segment; a plain read would swallow it and libssh would wait forever. So each round
 * peeks whatever is queued, lets dp_proxy_parse decide, and then reads for real only bytes known
 * to belong to the header: all of them while the header is incomplete (a valid strict prefix
 * means the header goes on past them), or exactly up to its end once it is complete.
 */
#include "dp_proxy_reader.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>

/* pending_closes is also the state: 0 running, > 0 handles closing, < 0 all over. */
#define READER_OVER (-1)

static void on_close(uv_handle_t *h)
{
    dp_proxy_reader *r = h->data;
    if (--r->pending_closes > 0)
        return;
    r->pending_closes = READER_OVER;
    /* Last use of r: the caller may free it from either callback. */
    if (r->cb != NULL) {
        dp_proxy_read_cb cb = r->cb;
        if (r->status != 0)
            memset(&r->info, 0, sizeof r->info);
        cb(r, r->status, &r->info);
    } else if (r->done != NULL) {
        r->done(r);
    }
}

static void finish(dp_proxy_reader *r, int status)
{
    if (r->pending_closes != 0)
        return;
    r->status = status;
    uv_poll_stop(&r->poll);
    uv_timer_stop(&r->timer);
    r->pending_closes = 2;
    uv_close((uv_handle_t *)&r->poll, on_close);
    uv_close((uv_handle_t *)&r->timer, on_close);
}

/* Peek/read window: room for the longest v1 line even when max_len is smaller, so that a short
 * max_len only limits v2 (as dp_proxy_parse documents). */
static size_t window(const dp_proxy_reader *r)
{
    return r->max_len > DP_PROXY_V1_MAX ? r->max_len : DP_PROXY_V1_MAX;
}

static ssize_t recv_retry(int fd, void *buf, size_t len, int flags)
{
    ssize_t n;
    /* MSG_DONTWAIT: never block the loop, even if someone handed us a blocking fd. */
    do
        n = recv(fd, buf, len, flags | MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
    return n;
}

/* Read `want` bytes we have already peeked. Returns 0 when all are in, 1 if the kernel had fewer
 * than peeked just now (we simply wait for the next readable event), or a negative errno. */
static int consume(dp_proxy_reader *r, size_t want)
{
    while (want > 0) {
        ssize_t n = recv_retry(r->fd, r->buf + r->have, want, 0);
        if (n < 0)
            return errno == EAGAIN || errno == EWOULDBLOCK ? 1 : -errno;
        if (n == 0)
            return -ECONNRESET;
        r->have += (size_t)n;
        want -= (size_t)n;
    }
    return 0;
}

static void on_readable(uv_poll_t *h, int status, int events)
{
    dp_proxy_reader *r = h->data;
    if (r->pending_closes != 0)
        return;
    if (status < 0) {
        finish(r, status);
        return;
    }

    size_t room = window(r) - r->have;
    if (room == 0) {
        /* Unreachable: dp_proxy_parse gives a verdict before the window fills. */
        finish(r, -EMSGSIZE);
        return;
    }
    ssize_t n = recv_retry(r->fd, r->buf + r->have, room, MSG_PEEK);
    if (n < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            finish(r, -errno);
        return;
    }
    if (n == 0) {
        finish(r, -ECONNRESET);
        return;
    }

    ssize_t rc = dp_proxy_parse(r->buf, r->have + (size_t)n, r->max_len, &r->info);
    if (rc < 0) {
        finish(r, (int)rc);
        return;
    }
    /* Complete: up to the header's end only. Incomplete: every peeked byte is header. */
    size_t want = rc > 0 ? (size_t)rc - r->have : (size_t)n;
    int err = consume(r, want);
    if (err < 0)
        finish(r, err);
    else if (rc > 0 && r->have == (size_t)rc)
        finish(r, 0);
}

static void on_timeout(uv_timer_t *t)
{
    finish(t->data, -ETIMEDOUT);
}

int dp_proxy_reader_start(dp_proxy_reader *r, uv_loop_t *loop, int fd, size_t max_len,
                          uint64_t timeout_ms, dp_proxy_read_cb cb)
{
    if (r == NULL || loop == NULL || fd < 0 || cb == NULL)
        return -EINVAL;

    void *data = r->data;
    memset(r, 0, sizeof *r);
    r->data = data;
    r->fd = fd;
    r->cb = cb;
    r->max_len = max_len == 0 ? DP_PROXY_DEFAULT_MAX : max_len;
    if (r->max_len > sizeof r->buf)
        r->max_len = sizeof r->buf;

    /* The poll handle first: it is the one that can fail (EEXIST if the fd is already watched
     * on this loop, EBADF...), and until it succeeds nothing is registered with the loop, so a
     * failure can be returned synchronously and the caller may free r at once. */
    int err = uv_poll_init(loop, &r->poll, fd);
    if (err < 0)
        return err;
    r->poll.data = r;
    uv_timer_init(loop, &r->timer);
    r->timer.data = r;

    err = uv_poll_start(&r->poll, UV_READABLE, on_readable);
    if (err == 0)
        err = uv_timer_start(&r->timer, on_timeout, timeout_ms, 0);
    if (err < 0) {
        /* Cannot happen with freshly initialised handles, but they are registered now and can
         * only be released asynchronously, so report through the callback as documented. */
        finish(r, err);
    }
    return 0;
}

void dp_proxy_reader_cancel(dp_proxy_reader *r, void (*done)(dp_proxy_reader *r))
{
    if (r == NULL || r->pending_closes < 0)
        return;
    r->cb = NULL;
    r->done = done;
    /* If the reader had already finished, its handles are closing: on_close will call `done`
     * instead of the callback. */
    finish(r, -ECANCELED);
}

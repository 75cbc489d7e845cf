/*
 * ftpp_pump.c - move a data connection's bytes from one socket to another with splice(2)
 * through a pipe: the bytes never enter user space, and the pipe's size is the cap on what
 * one transfer holds inside the proxy (F_SETPIPE_SZ). Backpressure is the pipe: the source
 * is only polled while the pipe has room, the destination only while it holds bytes.
 *
 * FTP data connections carry one direction each (RFC 959 §3.2), so one pipe per transfer.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "dp_util.h"
#include "ftpp.h"

/* Rounds of splice per readiness event before yielding to other sessions on the loop. */
#define PUMP_BUDGET 16

static void on_poll(uv_poll_t *h, int status, int events);

static void watch(uv_poll_t *h, int *cur, int want)
{
    if (*cur == want)
        return;
    *cur = want;
    if (want != 0)
        uv_poll_start(h, want, on_poll);
    else
        uv_poll_stop(h);
}

static void pump_watch(ftpp_pump *p, int want_src, int want_dst)
{
    if (p->done)
        return;
    watch(&p->src_poll, &p->src_events, want_src);
    watch(&p->dst_poll, &p->dst_events, want_dst);
}

static void finish(ftpp_pump *p, int status, int side)
{
    if (p->done)
        return;
    p->done = true;
    p->failed_side = side;
    uv_poll_stop(&p->src_poll);
    uv_poll_stop(&p->dst_poll);
    if (status == 0)
        shutdown(p->dst_fd, SHUT_WR); /* the peer sees EOF: end of file (RFC 959 §3.4 stream) */
    p->cb(p, status);
}

static void pump_run(ftpp_pump *p)
{
    bool dst_blocked = false, exhausted = true;
    for (int round = 0; round < PUMP_BUDGET && !p->done; round++) {
        bool moved = false;
        if (!p->src_eof && p->in_pipe < p->pipe_cap) {
            ssize_t n = splice(p->src_fd, NULL, p->pipe_fd[1], NULL, p->pipe_cap - p->in_pipe,
                               SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            if (n > 0) {
                p->in_pipe += (size_t)n;
                moved = true;
            } else if (n == 0) {
                p->src_eof = true;
                moved = true;
            } else if (errno != EAGAIN && errno != EINTR) {
                finish(p, -errno, 1);
                return;
            }
        }
        if (p->in_pipe > 0) {
            ssize_t n = splice(p->pipe_fd[0], NULL, p->dst_fd, NULL, p->in_pipe,
                               SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            if (n > 0) {
                p->in_pipe -= (size_t)n;
                p->bytes += (uint64_t)n;
                moved = true;
            } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
                finish(p, -errno, 2);
                return;
            } else {
                dst_blocked = true;
            }
        }
        if (p->src_eof && p->in_pipe == 0) {
            finish(p, 0, 0);
            return;
        }
        if (!moved) {
            exhausted = false;
            break;
        }
        dst_blocked = false;
    }
    if (p->activity_ms != NULL)
        *p->activity_ms = dp_now_ms();
    /* Watch the destination only when it pushed back (or the budget ran out with bytes
     * left): while it keeps up, the source's readiness drives both halves, and every
     * change of interest costs an epoll_ctl. */
    int want_src = !p->src_eof && p->in_pipe < p->pipe_cap ? UV_READABLE : 0;
    int want_dst = p->in_pipe > 0 && (dst_blocked || exhausted) ? UV_WRITABLE : 0;
    pump_watch(p, want_src, want_dst);
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    ftpp_pump *p = h->data;
    (void)events;
    if (p->done)
        return;
    if (status < 0) {
        finish(p, status, h == &p->src_poll ? 1 : 2);
        return;
    }
    pump_run(p);
}

int ftpp_pump_start(ftpp_pump *p, uv_loop_t *loop, int src_fd, int dst_fd, size_t cap,
                    ftpp_pump_cb cb)
{
    p->src_fd = src_fd;
    p->dst_fd = dst_fd;
    p->pipe_fd[0] = p->pipe_fd[1] = -1;
    p->cb = cb;
    if (pipe2(p->pipe_fd, O_NONBLOCK | O_CLOEXEC) != 0) {
        int err = -errno;
        close(src_fd);
        close(dst_fd);
        p->src_fd = p->dst_fd = -1;
        return err;
    }
    /* Best effort: an unprivileged process is bounded by /proc/sys/fs/pipe-max-size. */
    fcntl(p->pipe_fd[1], F_SETPIPE_SZ, (int)cap);
    int got = fcntl(p->pipe_fd[1], F_GETPIPE_SZ);
    p->pipe_cap = got > 0 ? (size_t)got : 65536;
    /* A handle that was initialised must be closed before its memory goes: on failure
     * open_handles says how many, and ftpp_pump_close closes them (and the fds). */
    p->src_poll.data = p->dst_poll.data = p;
    int rc = uv_poll_init_socket(loop, &p->src_poll, src_fd);
    if (rc != 0)
        return rc;
    p->open_handles = 1;
    rc = uv_poll_init_socket(loop, &p->dst_poll, dst_fd);
    if (rc != 0)
        return rc;
    p->open_handles = 2;
    pump_watch(p, UV_READABLE, 0); /* never calls cb from here: splices wait for readiness */
    return 0;
}

static void close_fds(ftpp_pump *p)
{
    int *fds[] = {&p->src_fd, &p->dst_fd, &p->pipe_fd[0], &p->pipe_fd[1]};
    for (size_t i = 0; i < sizeof fds / sizeof fds[0]; i++) {
        if (*fds[i] >= 0)
            close(*fds[i]);
        *fds[i] = -1;
    }
}

static void pump_closed(uv_handle_t *h)
{
    ftpp_pump *p = h->data;
    if (--p->open_handles > 0)
        return;
    close_fds(p);
    p->close_cb(p);
}

void ftpp_pump_close(ftpp_pump *p, void (*close_cb)(ftpp_pump *p))
{
    if (p->closing)
        return;
    p->closing = true;
    p->done = true;
    p->close_cb = close_cb;
    if (p->open_handles == 0) {
        /* never started: only the fds */
        close_fds(p);
        close_cb(p);
        return;
    }
    /* a failed start initialised the source's handle only */
    if (p->open_handles == 2)
        uv_close((uv_handle_t *)&p->dst_poll, pump_closed);
    uv_close((uv_handle_t *)&p->src_poll, pump_closed);
}

/* dp_linger.c - lingering close (see dp_linger.h). */
#include "dp_linger.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#define READS_PER_WAKEUP 16

typedef struct dp_linger {
    uv_poll_t poll;
    uv_timer_t timer;
    int fd;
    size_t left;
    int open_handles;
    bool finishing;
} dp_linger;

static void handle_closed(uv_handle_t *h)
{
    dp_linger *l = h->data;
    if (--l->open_handles == 0) {
        close(l->fd);
        free(l);
    }
}

static void finish(dp_linger *l)
{
    if (l->finishing)
        return;
    l->finishing = true;
    uv_close((uv_handle_t *)&l->poll, handle_closed);
    uv_close((uv_handle_t *)&l->timer, handle_closed);
}

static void on_timer(uv_timer_t *t)
{
    finish(t->data);
}

static void on_readable(uv_poll_t *p, int status, int events)
{
    (void)events;
    dp_linger *l = p->data;
    if (status < 0) {
        finish(l);
        return;
    }
    char discard_buf[16384]; /* never looked at */
    for (int i = 0; i < READS_PER_WAKEUP; i++) {
        size_t want = l->left < sizeof discard_buf ? l->left : sizeof discard_buf;
        ssize_t n = recv(l->fd, discard_buf, want, MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return;
        if (n <= 0 || (size_t)n >= l->left) {
            finish(l); /* the peer closed, failed, or sent more than we will read */
            return;
        }
        l->left -= (size_t)n;
    }
}

void dp_linger_close(uv_loop_t *loop, int fd, uint64_t timeout_ms, size_t max_bytes)
{
    if (shutdown(fd, SHUT_WR) != 0 || max_bytes == 0) {
        close(fd);
        return;
    }
    dp_linger *l = calloc(1, sizeof *l);
    if (l == NULL) {
        close(fd);
        return;
    }
    l->fd = fd;
    l->left = max_bytes;
    if (uv_poll_init_socket(loop, &l->poll, fd) != 0) {
        close(fd);
        free(l);
        return;
    }
    l->poll.data = l;
    l->open_handles = 1;
    uv_timer_init(loop, &l->timer);
    l->timer.data = l;
    l->open_handles++;
    if (uv_poll_start(&l->poll, UV_READABLE, on_readable) != 0 ||
        uv_timer_start(&l->timer, on_timer, timeout_ms, 0) != 0)
        finish(l);
}

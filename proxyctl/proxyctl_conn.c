/* proxyctl_conn.c - non-blocking Unix-socket client: connect, write a request, read lines, all
 * under one deadline (poll(2) with the time left; no wait is unbounded). */
#include "proxyctl_conn.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* A full listen backlog makes a non-blocking AF_UNIX connect fail with EAGAIN: try again this
 * often until the deadline. */
#define CONNECT_RETRY_MS 50

struct ctl_conn {
    int fd;
    char *buf; /* received bytes [start, end) not yet returned */
    size_t start, end, cap;
    int eof;
};

int64_t ctl_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Wait for `events` on fd until the deadline: 0 ready, -ETIMEDOUT, or a poll error. */
static int wait_fd(int fd, short events, int64_t deadline_ms)
{
    for (;;) {
        int64_t left = deadline_ms - ctl_now_ms();
        if (left <= 0)
            return -ETIMEDOUT;
        struct pollfd p = {.fd = fd, .events = events};
        int r = poll(&p, 1, left > 60000 ? 60000 : (int)left);
        if (r > 0)
            return 0; /* readiness or POLLERR/POLLHUP: the next read/write says which */
        if (r < 0 && errno != EINTR)
            return -errno;
    }
}

int ctl_conn_open(ctl_conn **out, const char *path, int64_t deadline_ms)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    *out = NULL;
    if (strlen(path) >= sizeof sa.sun_path)
        return -ENAMETOOLONG;
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    for (;;) {
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0)
            break;
        int e = errno;
        if (e == EINPROGRESS) { /* not for AF_UNIX on Linux, but POSIX allows it */
            int rc = wait_fd(fd, POLLOUT, deadline_ms);
            socklen_t sl = sizeof e;
            if (rc == 0 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &sl) != 0)
                e = errno;
            if (rc != 0 || e != 0) {
                close(fd);
                return rc != 0 ? rc : -e;
            }
            break;
        }
        if (e != EAGAIN && e != EINTR) {
            close(fd);
            return -e;
        }
        int64_t left = deadline_ms - ctl_now_ms();
        if (left <= 0) {
            close(fd);
            return -ETIMEDOUT;
        }
        poll(NULL, 0, left < CONNECT_RETRY_MS ? (int)left : CONNECT_RETRY_MS);
    }
    ctl_conn *c = calloc(1, sizeof *c);
    if (c == NULL) {
        close(fd);
        return -ENOMEM;
    }
    c->fd = fd;
    *out = c;
    return 0;
}

/* Read more bytes into the buffer: 0, -ENODATA at EOF, or an error. */
static int fill(ctl_conn *c, int64_t deadline_ms)
{
    if (c->start > 0 && c->start == c->end)
        c->start = c->end = 0;
    if (c->end == c->cap) {
        if (c->start > 0) { /* slide what is left to the front first */
            memmove(c->buf, c->buf + c->start, c->end - c->start);
            c->end -= c->start;
            c->start = 0;
        } else {
            size_t cap = c->cap ? c->cap * 2 : 8192;
            char *nb = realloc(c->buf, cap);
            if (nb == NULL)
                return -ENOMEM;
            c->buf = nb;
            c->cap = cap;
        }
    }
    for (;;) {
        ssize_t n = read(c->fd, c->buf + c->end, c->cap - c->end);
        if (n > 0) {
            c->end += (size_t)n;
            return 0;
        }
        if (n == 0) {
            c->eof = 1;
            return -ENODATA;
        }
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN)
            return -errno;
        int rc = wait_fd(c->fd, POLLIN, deadline_ms);
        if (rc != 0)
            return rc;
    }
}

int ctl_conn_readline(ctl_conn *c, int64_t deadline_ms, char **line)
{
    size_t scanned = c->start;
    for (;;) {
        char *nl = c->end > scanned ? memchr(c->buf + scanned, '\n', c->end - scanned) : NULL;
        if (nl != NULL) {
            *nl = '\0';
            if (nl > c->buf + c->start && nl[-1] == '\r')
                nl[-1] = '\0';
            *line = c->buf + c->start;
            c->start = (size_t)(nl - c->buf) + 1;
            return 0;
        }
        if (c->eof) {
            if (c->start == c->end)
                return -ENODATA;
            /* A last line without LF: hand it out (room for the NUL is made below). */
            if (c->end == c->cap) {
                char *nb = realloc(c->buf, c->cap + 1);
                if (nb == NULL)
                    return -ENOMEM;
                c->buf = nb;
                c->cap++;
            }
            c->buf[c->end] = '\0';
            *line = c->buf + c->start;
            c->start = c->end;
            return 0;
        }
        scanned = c->end;
        size_t before = c->start;
        int rc = fill(c, deadline_ms);
        if (rc != 0 && rc != -ENODATA)
            return rc;
        /* fill may have moved the unread bytes to the front: keep the scan position relative. */
        scanned = scanned - before + c->start;
    }
}

int ctl_conn_write(ctl_conn *c, const char *buf, size_t len, int64_t deadline_ms)
{
    size_t off = 0;
    while (off < len) {
        ssize_t n = send(c->fd, buf + off, len - off, MSG_NOSIGNAL);
        if (n > 0) {
            off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno != EAGAIN)
            return -errno;
        int rc = wait_fd(c->fd, POLLOUT, deadline_ms);
        if (rc != 0)
            return rc;
    }
    return 0;
}

void ctl_conn_close(ctl_conn *c)
{
    if (c == NULL)
        return;
    close(c->fd);
    free(c->buf);
    free(c);
}

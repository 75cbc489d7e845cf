/*
 * dp_proxy_reader.h - read a PROXY protocol header off a freshly accepted socket on a libuv
 * loop, with a deadline, consuming exactly the header's bytes and nothing after it (it peeks,
 * then reads only bytes known to belong to the header), so the fd can be handed to libssh or
 * uv_tcp_open afterwards with the client's first protocol bytes intact.
 */
#ifndef DP_PROXY_READER_H
#define DP_PROXY_READER_H

#include <uv.h>

#include "dp_proxyproto.h"

typedef struct dp_proxy_reader dp_proxy_reader;

/* status: 0 (info valid), -ETIMEDOUT, -EPROTO, -EMSGSIZE, -ECONNRESET (peer closed or reset
 * before a whole header), or another negative errno from recv. Called exactly once, unless
 * dp_proxy_reader_cancel() ran first. The fd is never closed by the reader. */
typedef void (*dp_proxy_read_cb)(dp_proxy_reader *r, int status, const dp_proxy_info *info);

/* Caller-owned; treat as opaque. */
struct dp_proxy_reader {
    void *data; /* free for the caller */
    /* private */
    uv_poll_t poll;
    uv_timer_t timer;
    int fd;
    int pending_closes;
    int status;
    dp_proxy_read_cb cb;              /* NULL once cancelled */
    void (*done)(dp_proxy_reader *r); /* cancel's completion callback */
    size_t max_len;
    size_t have;
    dp_proxy_info info;
    uint8_t buf[DP_PROXY_DEFAULT_MAX * 4];
};

/* Start reading a header from `fd` (non-blocking). max_len is capped at sizeof(r->buf); 0 means
 * DP_PROXY_DEFAULT_MAX. `r->data` is left as the caller set it.
 * Returns 0 or a negative errno (then the callback will not be called). */
int dp_proxy_reader_start(dp_proxy_reader *r, uv_loop_t *loop, int fd, size_t max_len,
                          uint64_t timeout_ms, dp_proxy_read_cb cb);

/* Stop a reader whose callback has not run yet; the callback will not be called.
 * The reader's memory must stay valid until the callback would have run: the callback is
 * invoked only after the reader's own handles are closed, so freeing `r` inside it is safe.
 * After cancel, `done` (may be NULL) is called once the handles are closed; free `r` there. */
void dp_proxy_reader_cancel(dp_proxy_reader *r, void (*done)(dp_proxy_reader *r));

#endif

/*
 * dp_worker.h - worker threads, each with its own libuv loop and its own SO_REUSEPORT
 * listening sockets (IPv4 and IPv6), accepting connections and reading the PROXY protocol
 * header from trusted load balancers before handing the raw fd to the daemon.
 *
 * Nothing is shared between workers: the kernel spreads connections over the sockets.
 * Sockets are created and bound by dp_workers_start on the calling thread, so address
 * errors are reported at start-up, before any thread runs.
 */
#ifndef DP_WORKER_H
#define DP_WORKER_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>
#include <uv.h>

#include "dp_cidr.h"

typedef struct dp_worker dp_worker;
typedef struct dp_workers dp_workers;

/* One accepted connection, as the daemon receives it. */
typedef struct dp_conn_info {
    int fd;                            /* non-blocking, close-on-exec; owned by the daemon now */
    struct sockaddr_storage peer;      /* the client: from the PROXY header when there was one */
    struct sockaddr_storage local;     /* the address the client connected to */
    struct sockaddr_storage sock_peer; /* the TCP peer (the load balancer when proxied) */
    bool proxied;
} dp_conn_info;

/* Daemon callbacks; each runs on the worker's own loop thread. */
typedef struct dp_worker_ops {
    /* Before the first accept. Return 0, or a negative errno to abort start-up. */
    int (*start)(dp_worker *w);
    /* A new connection; the callee owns ci->fd (close it on refusal). */
    void (*accept)(dp_worker *w, const dp_conn_info *ci);
    /* Graceful stop: listeners are closed; close every session and handle the daemon owns on
     * this loop. The loop (and the thread) ends when nothing is left open. */
    void (*stop)(dp_worker *w);
    /* After the loop ended, on the worker thread. */
    void (*fini)(dp_worker *w);
} dp_worker_ops;

typedef struct dp_workers_opts {
    int nworkers;              /* >= 1 */
    const char *const *listen; /* "ip:port" / "[ip6]:port" / "*:port" (dual stack) */
    size_t nlisten;
    int backlog;
    bool proxy_protocol;    /* read a PROXY header from trusted peers */
    const dp_cidr *trusted; /* peers a PROXY header is required from and accepted from */
    size_t ntrusted;
    int proxy_timeout_ms;
    size_t proxy_max_header;
    const dp_worker_ops *ops;
    void *arg;         /* dp_worker_arg() */
    bool start_paused; /* bind but do not accept until dp_workers_resume */
} dp_workers_opts;

/* Bind every socket, then start the threads. `opts` and its arrays are copied (the caller
 * may free them after this returns). Returns 0 or a negative errno with `err` set
 * ("listen 127.0.0.1:22: Address already in use"). */
int dp_workers_start(dp_workers **out, const dp_workers_opts *opts, char *err, size_t errlen);

/* Ask every worker to stop (thread-safe, idempotent). */
void dp_workers_stop(dp_workers *ws);

/* Wait for every thread to end, at most timeout_ms (< 0: forever). Returns 0, or -ETIMEDOUT
 * when some worker is still running (its sessions did not close in time). */
int dp_workers_join(dp_workers *ws, int timeout_ms);

/* After a successful join. NULL is a no-op. */
void dp_workers_free(dp_workers *ws);

/* Stop / restart accepting on every worker (thread-safe). */
void dp_workers_pause(dp_workers *ws);
void dp_workers_resume(dp_workers *ws);

/* Close every listening socket for good (drain: new connections are refused by the kernel,
 * or go to another instance sharing the port). Thread-safe; pause/resume do nothing after. */
void dp_workers_unlisten(dp_workers *ws);

/* Wait until every worker has run its start callback (e.g. read its keys), at most
 * timeout_ms. Returns 0, -ETIMEDOUT, or -ECHILD when a worker's start failed (it logged why). */
int dp_workers_wait_started(dp_workers *ws, int timeout_ms);

/* Run fn(w, arg) on every worker's loop thread (thread-safe). Returns how many workers will
 * run it (fewer than dp_workers_count when some are stopping or memory ran out). The
 * function runs later; `arg` must stay valid until every one of them has run it. */
int dp_workers_each(dp_workers *ws, void (*fn)(dp_worker *w, void *arg), void *arg);

size_t dp_workers_count(const dp_workers *ws);
dp_worker *dp_workers_get(dp_workers *ws, size_t i);

uv_loop_t *dp_worker_loop(dp_worker *w);
int dp_worker_index(const dp_worker *w);
void *dp_worker_arg(const dp_worker *w);
void dp_worker_set_data(dp_worker *w, void *data);
void *dp_worker_data(const dp_worker *w);
bool dp_worker_stopping(const dp_worker *w);

/* TCP_NODELAY and keepalive (idle seconds; 0 = off) on an accepted or dialled socket. */
int dp_sock_tune(int fd, int keepalive_s);

#endif

/*
 * dp_dial.h - the one backend dialer of both daemons: a numeric address, or a name resolved
 * on the threadpool (getaddrinfo blocks; never on the loop); a non-blocking connect; one
 * deadline over both; cancel at any time; TCP_NODELAY and keepalive on the result; a clear
 * error text for the log.
 *
 * What a backend connection needs between the TCP connect and the protocol (an outbound
 * PROXY header, a TLS handshake) is a step of this dialer, run before the result is handed
 * over (see `connected` in dp_dial.c), so both daemons get it at once.
 */
#ifndef DP_DIAL_H
#define DP_DIAL_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

typedef struct dp_dial dp_dial;

typedef struct dp_dial_opts {
    const char *address; /* numeric IPv4/IPv6, or a name to resolve (copied) */
    uint16_t port;
    int timeout_ms;  /* resolution and connect together */
    int keepalive_s; /* TCP keepalive idle seconds on the connected socket; 0 = off */
} dp_dial_opts;

typedef struct dp_dial_result {
    int status;    /* 0, or a negative errno (libuv's codes for resolver errors) */
    bool deadline; /* the dial's own deadline passed (status -ETIMEDOUT) */
    int fd; /* connected, non-blocking, close-on-exec: the callee's from now on; -1 on error */
    struct sockaddr_storage peer; /* the address connected to (or tried) */
    uint64_t connect_ns;          /* uv_hrtime() at connect(2), after any name resolution */
    const char *error;            /* on failure: "connect 192.0.2.7:22: Connection refused",
                                   * "cannot resolve web1.example: unknown node or service",
                                   * "connect timed out after 30000 ms" */
} dp_dial_result;

/* Runs once on the loop, unless the dial was cancelled first. The dialer is gone after it
 * returns (do not cancel it there). */
typedef void (*dp_dial_cb)(void *arg, const dp_dial_result *r);

/* Start dialling. Returns 0 (cb will run, possibly before this returns when the connect fails
 * at once; *out is set before it does) or a negative errno (cb will not run). */
int dp_dial_start(dp_dial **out, uv_loop_t *loop, const dp_dial_opts *opts, dp_dial_cb cb,
                  void *arg);

/* Stop a dial whose callback has not run: the callback never runs, the socket is closed and
 * the memory goes once libuv is done with it (a name lookup already running on the
 * threadpool finishes first). NULL is a no-op. */
void dp_dial_cancel(dp_dial *d);

#endif

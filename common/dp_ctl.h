/*
 * dp_ctl.h - the control socket server: a Unix stream socket on one libuv loop (the main
 * thread's), peers checked with SO_PEERCRED, request lines dispatched through a command
 * table, replies possibly deferred (drain answers when the last session is gone).
 * Wire format: dp_ctl_proto.h and docs/operations.md.
 */
#ifndef DP_CTL_H
#define DP_CTL_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>
#include <uv.h>

#include "dp_ctl_proto.h"
#include "dp_ctl_spec.h"

typedef struct dp_ctl dp_ctl;
typedef struct dp_ctl_call dp_ctl_call; /* one request being answered */

/* A command this server answers: its entry in the protocol's table and its handler. */
typedef struct dp_ctl_command {
    const dp_ctl_spec *spec; /* name, usage, accepted keys, summary (dp_ctl_spec.h) */
    /* Answer with dp_ctl_reply, now or later on the same loop. */
    void (*run)(dp_ctl_call *call, const dp_ctl_request *req, void *arg);
} dp_ctl_command;

typedef struct dp_ctl_opts {
    const char *path;
    uid_t allowed_uid; /* besides root */
    uid_t owner_uid;   /* the socket file's owner (the user the daemon will run as) */
    gid_t owner_gid;
    int max_clients;
    int timeout_ms; /* idle time allowed between requests */
    const char *daemon;
    const char *version;
    const dp_ctl_command *commands;
    size_t ncommands;
    void *arg; /* handed to every run */
    /* Called after each reply (for metrics); may be NULL. */
    void (*on_reply)(const char *command, int code);
} dp_ctl_opts;

/* Create the socket (a stale one left by a dead process is replaced; a live one is an error)
 * and start listening. `opts` is copied; its strings and table must outlive the server.
 * Returns 0 or a negative errno with `err` set. */
int dp_ctl_start(dp_ctl **out, uv_loop_t *loop, const dp_ctl_opts *opts, char *err, size_t errlen);

/* Stop listening, remove the socket file, let pending replies be written, then close every
 * connection. Calls still pending are answered with nothing (their client is gone). The
 * server is freed once its handles are closed; run the loop afterwards. NULL: no-op. */
void dp_ctl_close(dp_ctl *ctl);

/* Answer `call` (exactly once): code, one-line text, and a body (text or JSON, may be
 * empty). The call is freed. */
void dp_ctl_reply(dp_ctl_call *call, int code, const char *text, const char *body, size_t len);

/* The request asked for format=json. */
bool dp_ctl_call_json(const dp_ctl_call *call);
/* The peer's uid, for logs. */
uid_t dp_ctl_call_uid(const dp_ctl_call *call);

#endif

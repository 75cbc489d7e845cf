/*
 * dp_ctl_spec.h - the control protocol, version 1, as both ends know it (docs/operations.md,
 * "Protocol, version 1"): its constants and the one table of commands (name, arguments, the
 * keys the daemon accepts, a summary and longer help). The daemons dispatch on the table
 * (common/dp_daemon_ctl.c binds a handler to each entry) and answer `help` from it; proxyctl
 * finds commands and prints its help from it. Pure data: no libuv, linked by proxyctl too.
 */
#ifndef DP_CTL_SPEC_H
#define DP_CTL_SPEC_H

#include <stddef.h>

#define DP_CTL_VERSION 1
#define DP_CTL_GREETING_WORD "dynproxy-ctl" /* greeting: "dynproxy-ctl 1 <daemon> <version>" */
#define DP_CTL_LINE_MAX 4096                /* request line, LF included */
#define DP_CTL_DRAIN_DEFAULT_S 300          /* control.drain_timeout_s's default */

typedef enum dp_ctl_cmd_id {
    DP_CTL_CMD_STATUS,
    DP_CTL_CMD_SESSIONS,
    DP_CTL_CMD_KICK,
    DP_CTL_CMD_PAUSE,
    DP_CTL_CMD_RESUME,
    DP_CTL_CMD_DRAIN,
    DP_CTL_CMD_RELOAD,
    DP_CTL_CMD_CACHE_FLUSH,
    DP_CTL_CMD_STATS,
    DP_CTL_CMD_HELP,
    DP_CTL_CMD_MOVE,
    DP_CTL_CMD__COUNT
} dp_ctl_cmd_id;

/* Runs in proxyctl, never sent to a daemon (move: it talks to the database). */
#define DP_CTL_LOCAL 0x1u
/* May be answered only at the command's own deadline (drain: when the last session has
 * ended, at the latest at its timeout): the client waits longer. */
#define DP_CTL_WAITS 0x2u
/* Answered by the protocol layer itself (help), not by a handler. */
#define DP_CTL_BUILTIN 0x4u

typedef struct dp_ctl_spec {
    const char *name;        /* as typed and sent: "status", "cache flush" */
    const char *args;        /* the usage after the name, "" when none */
    const char *const *keys; /* the argument keys the daemon accepts (NULL-terminated; NULL:
                              * none) */
    const char *summary;     /* one line */
    const char *help;        /* more lines for `proxyctl COMMAND --help`, or NULL */
    unsigned flags;
} dp_ctl_spec;

/* Indexed by dp_ctl_cmd_id. */
extern const dp_ctl_spec dp_ctl_specs[DP_CTL_CMD__COUNT];

/* The command whose name is the first one or two of `words` (n of them), or NULL;
 * *nwords = how many words the name took. */
const dp_ctl_spec *dp_ctl_spec_find(size_t n, const char *const *words, size_t *nwords);

#endif

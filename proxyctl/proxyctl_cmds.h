/* proxyctl_cmds.h - proxyctl's command table (name, usage, help) and the entry points of the
 * commands that are more than "send one request" (move). */
#ifndef PROXYCTL_CMDS_H
#define PROXYCTL_CMDS_H

#include <stdio.h>

/* A command that does not talk to a daemon (move). */
#define CTL_CMD_LOCAL 0x1u
/* The reply comes only when the command's own deadline has passed (drain): the default -t is
 * that deadline (timeout= or CTL_DRAIN_DEFAULT_S) plus CTL_DRAIN_SLACK_S. */
#define CTL_CMD_DRAIN 0x2u

#define CTL_DEFAULT_TIMEOUT_S 10.0
#define CTL_DRAIN_DEFAULT_S 300.0 /* the daemon's default control.drain_timeout_s */
#define CTL_DRAIN_SLACK_S 30.0

typedef struct ctl_cmd {
    const char *name;    /* as typed and sent: "status", "cache flush" */
    const char *args;    /* the usage after the name, "" when none */
    const char *summary; /* one line */
    const char *help;    /* more lines for `proxyctl COMMAND --help`, or NULL */
    unsigned flags;
} ctl_cmd;

/* The command named by argv[0] (and argv[1] for two-word commands), or NULL; *nwords = how
 * many argv entries the name took. */
const ctl_cmd *ctl_cmd_find(int argc, char *const *argv, int *nwords);

/* `proxyctl --help`: synopsis, options, the command list. */
void ctl_usage(FILE *f);
/* `proxyctl COMMAND --help`. */
void ctl_cmd_usage(const ctl_cmd *cmd, FILE *f);

/* `proxyctl move USER BACKEND [--kick] [--db CONNINFO]`; argv[0] is "move". timeout_s bounds
 * the wait for the database's answer. Returns proxyctl's exit code. */
int ctl_cmd_move(int argc, char **argv, double timeout_s);

#endif

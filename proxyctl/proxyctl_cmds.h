/* proxyctl_cmds.h - proxyctl's help, printed from the protocol's command table
 * (common/dp_ctl_spec.h), and the entry points of the commands that are more than "send one
 * request" (move). */
#ifndef PROXYCTL_CMDS_H
#define PROXYCTL_CMDS_H

#include <stdio.h>

#include "dp_ctl_spec.h"

#define CTL_DEFAULT_TIMEOUT_S 10.0
/* drain: proxyctl waits for the command's deadline (timeout= or DP_CTL_DRAIN_DEFAULT_S) plus
 * this much (flag DP_CTL_WAITS) */
#define CTL_DRAIN_SLACK_S 30.0

/* The command named by argv[0] (and argv[1] for two-word commands), or NULL; *nwords = how
 * many argv entries the name took. */
const dp_ctl_spec *ctl_cmd_find(int argc, char *const *argv, int *nwords);

/* `proxyctl --help`: synopsis, options, the command list. */
void ctl_usage(FILE *f);
/* `proxyctl COMMAND --help`. */
void ctl_cmd_usage(const dp_ctl_spec *cmd, FILE *f);

/* `proxyctl move USER BACKEND [--kick] [--db CONNINFO]`; argv[0] is "move". timeout_s bounds
 * the wait for the database's answer. Returns proxyctl's exit code. */
int ctl_cmd_move(int argc, char **argv, double timeout_s);

#endif

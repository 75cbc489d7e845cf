/* proxyctl_cmds.c - what `proxyctl --help` lists and what `proxyctl COMMAND --help` explains,
 * from the protocol's command table (common/dp_ctl_spec.c); only `move` runs here. */
#include "proxyctl_cmds.h"

#include <string.h>

const dp_ctl_spec *ctl_cmd_find(int argc, char *const *argv, int *nwords)
{
    size_t n = 0;
    const dp_ctl_spec *cmd =
        dp_ctl_spec_find(argc > 0 ? (size_t)argc : 0, (const char *const *)argv, &n);
    *nwords = (int)n;
    return cmd;
}

void ctl_usage(FILE *f)
{
    fputs("usage: proxyctl [--ssh | --ftp | -s SOCKET] [--json] [-t SECONDS] COMMAND [ARGS...]\n"
          "       proxyctl COMMAND --help\n"
          "       proxyctl move USER BACKEND [--kick] [--db CONNINFO]\n"
          "\n"
          "Talks to the control socket of sshproxy or ftpproxy (docs/operations.md).\n"
          "\n"
          "options:\n"
          "  --ssh        sshproxy's socket: $DYNPROXY_SSH_CTL or /run/dynproxy/sshproxy.sock\n"
          "  --ftp        ftpproxy's socket: $DYNPROXY_FTP_CTL or /run/dynproxy/ftpproxy.sock\n"
          "  -s SOCKET    any control socket (without any of the three: the one of the two\n"
          "               above that exists)\n"
          "  --json       ask for a JSON body and print it as it is\n"
          "  -t SECONDS   wait at most this long for the reply (default 10; drain: its own\n"
          "               deadline plus 30)\n"
          "  -h, --help   this text\n"
          "\n"
          "commands:\n",
          f);
    for (size_t i = 0; i < DP_CTL_CMD__COUNT; i++) {
        const dp_ctl_spec *c = &dp_ctl_specs[i];
        char head[64];
        snprintf(head, sizeof head, "%s%s%s", c->name, c->args[0] ? " " : "", c->args);
        if (strlen(head) <= 20)
            fprintf(f, "  %-20s  %s\n", head, c->summary);
        else
            fprintf(f, "  %s\n  %-20s  %s\n", head, "", c->summary);
    }
    fputs("\nexit status: 0 done, 1 refused or failed, 2 usage, 3 daemon or database not\n"
          "reachable, 4 nothing matched, 5 permission denied.\n",
          f);
}

void ctl_cmd_usage(const dp_ctl_spec *cmd, FILE *f)
{
    if (cmd->flags & DP_CTL_LOCAL)
        fprintf(f, "usage: proxyctl [-t SECONDS] %s%s%s\n", cmd->name, cmd->args[0] ? " " : "",
                cmd->args);
    else
        fprintf(f, "usage: proxyctl [--ssh | --ftp | -s SOCKET] [--json] [-t SECONDS] %s%s%s\n",
                cmd->name, cmd->args[0] ? " " : "", cmd->args);
    fprintf(f, "\n%s.\n", cmd->summary);
    if (cmd->help != NULL)
        fprintf(f, "\n%s", cmd->help);
}

/* proxyctl_cmds.c - the command table: what `proxyctl --help` lists and what `proxyctl COMMAND
 * --help` explains. Arguments are checked by the daemon (it answers 400 with the usage), so a
 * newer daemon's arguments work with an older proxyctl; only `move` runs here. */
#include "proxyctl_cmds.h"

#include <string.h>

static const ctl_cmd cmds[] = {
    {"status", "", "version, pid, uptime, state, config, hook, sessions", NULL, 0},
    {"sessions", "[id=ID] [user=U] [backend=B]", "list sessions, one row each",
     "Columns: id, proto, user, client, backend, started (RFC 3339 UTC), bytes_in,\n"
     "bytes_out, state. Session ids are the sid= of the log lines.\n",
     0},
    {"kick", "id=ID | user=U | backend=B [message=TEXT]", "end the matching sessions",
     "SSH sessions are disconnected with the message, FTP sessions get \"421 TEXT\" and\n"
     "their transfers are closed. Lists what was kicked; exit 4 when nothing matched.\n",
     0},
    {"pause", "", "stop accepting connections (sessions continue)", NULL, 0},
    {"resume", "", "accept connections again (not while draining)", NULL, 0},
    {"drain", "[timeout=SECONDS] [message=TEXT]",
     "stop accepting, wait for every session to end, then exit",
     "At the deadline (default control.drain_timeout_s, 300) the sessions left are kicked\n"
     "with the message. The reply comes when the last session is gone, just before the\n"
     "daemon exits; proxyctl waits for the deadline plus 30 s unless -t says otherwise.\n",
     CTL_CMD_DRAIN},
    {"reload", "", "re-read the configuration and re-load the hook",
     "On an error the running configuration stays (exit 1 with the reason); sessions are\n"
     "never dropped. Same as SIGHUP.\n",
     0},
    {"cache flush", "[user=U]", "drop cached routes (of one user, or all)", NULL, 0},
    {"stats", "", "counters since start (the numbers of /metrics)", NULL, 0},
    {"help", "[COMMAND]", "this list, or one command's usage",
     "Without a socket option this is proxyctl's own help. With --ssh, --ftp or -s the\n"
     "daemon's command list is asked for instead.\n",
     0},
    {"move", "USER BACKEND [--kick] [--db CONNINFO]",
     "move a user to another backend (in PostgreSQL)",
     "Calls dynproxy.move_user(USER, BACKEND, KICK) in the routing database: --db CONNINFO,\n"
     "else $DYNPROXY_DB, else libpq's PG* variables (connect_timeout 5 unless set). Every\n"
     "proxy running the pgsql hook is notified and routes USER's next login to BACKEND.\n"
     "--kick also ends USER's open sessions on every instance (\"your account has moved;\n"
     "please reconnect\"). Exit 1 for an unknown user or backend, 3 when the database\n"
     "cannot be reached.\n",
     CTL_CMD_LOCAL},
};

#define NCMDS (sizeof cmds / sizeof cmds[0])

const ctl_cmd *ctl_cmd_find(int argc, char *const *argv, int *nwords)
{
    for (size_t i = 0; i < NCMDS; i++) {
        const char *name = cmds[i].name;
        const char *sp = strchr(name, ' ');
        if (sp == NULL) {
            if (argc >= 1 && strcmp(argv[0], name) == 0) {
                *nwords = 1;
                return &cmds[i];
            }
        } else if (argc >= 2 && strncmp(argv[0], name, (size_t)(sp - name)) == 0 &&
                   argv[0][sp - name] == '\0' && strcmp(argv[1], sp + 1) == 0) {
            *nwords = 2;
            return &cmds[i];
        }
    }
    return NULL;
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
    for (size_t i = 0; i < NCMDS; i++) {
        char head[64];
        snprintf(head, sizeof head, "%s%s%s", cmds[i].name, cmds[i].args[0] ? " " : "",
                 cmds[i].args);
        if (strlen(head) <= 20)
            fprintf(f, "  %-20s  %s\n", head, cmds[i].summary);
        else
            fprintf(f, "  %s\n  %-20s  %s\n", head, "", cmds[i].summary);
    }
    fputs("\nexit status: 0 done, 1 refused or failed, 2 usage, 3 daemon or database not\n"
          "reachable, 4 nothing matched, 5 permission denied.\n",
          f);
}

void ctl_cmd_usage(const ctl_cmd *cmd, FILE *f)
{
    if (cmd->flags & CTL_CMD_LOCAL)
        fprintf(f, "usage: proxyctl [-t SECONDS] %s%s%s\n", cmd->name, cmd->args[0] ? " " : "",
                cmd->args);
    else
        fprintf(f, "usage: proxyctl [--ssh | --ftp | -s SOCKET] [--json] [-t SECONDS] %s%s%s\n",
                cmd->name, cmd->args[0] ? " " : "", cmd->args);
    fprintf(f, "\n%s.\n", cmd->summary);
    if (cmd->help != NULL)
        fprintf(f, "\n%s", cmd->help);
}

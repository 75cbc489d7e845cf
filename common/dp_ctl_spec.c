/* dp_ctl_spec.c - the table of control commands (dp_ctl_spec.h). Arguments are checked by the
 * daemon (400 with the usage), so a newer daemon's arguments work with an older proxyctl. */
#include "dp_ctl_spec.h"

#include <string.h>

static const char *const keys_filter[] = {"id", "user", "backend", NULL};
static const char *const keys_kick[] = {"id", "user", "backend", "message", NULL};
static const char *const keys_drain[] = {"timeout", "message", NULL};
static const char *const keys_user[] = {"user", NULL};

const dp_ctl_spec dp_ctl_specs[DP_CTL_CMD__COUNT] = {
    [DP_CTL_CMD_STATUS] = {"status", "", NULL,
                           "version, pid, uptime, workers, state, config, hook, sessions", NULL, 0},
    [DP_CTL_CMD_SESSIONS] = {"sessions", "[id=ID] [user=U] [backend=B]", keys_filter,
                             "list sessions, one row each",
                             "Columns: id, proto, user, client, backend, started (RFC 3339 UTC), "
                             "bytes_in,\nbytes_out, state. Session ids are the sid= of the log "
                             "lines.\n",
                             0},
    [DP_CTL_CMD_KICK] = {"kick", "id=ID | user=U | backend=B [message=TEXT]", keys_kick,
                         "end the matching sessions, telling the clients why",
                         "SSH sessions are disconnected with the message, FTP sessions get \"421 "
                         "TEXT\" and\ntheir transfers are closed. Lists what was kicked; exit 4 "
                         "when nothing matched.\n",
                         0},
    [DP_CTL_CMD_PAUSE] = {"pause", "", NULL, "stop accepting connections (sessions continue)", NULL,
                          0},
    [DP_CTL_CMD_RESUME] = {"resume", "", NULL, "accept connections again (not while draining)",
                           NULL, 0},
    [DP_CTL_CMD_DRAIN] = {"drain", "[timeout=SECONDS] [message=TEXT]", keys_drain,
                          "stop accepting, wait for every session to end, then exit",
                          "At the deadline (default control.drain_timeout_s, 300) the sessions "
                          "left are kicked\nwith the message. The reply comes when the last "
                          "session is gone, just before the\ndaemon exits; proxyctl waits for "
                          "the deadline plus 30 s unless -t says otherwise.\n",
                          DP_CTL_WAITS},
    [DP_CTL_CMD_RELOAD] = {"reload", "", NULL, "re-read the configuration and re-load the hook",
                           "On an error the running configuration stays (exit 1 with the "
                           "reason); sessions are\nnever dropped. Same as SIGHUP.\n",
                           0},
    [DP_CTL_CMD_CACHE_FLUSH] = {"cache flush", "[user=U]", keys_user,
                                "drop cached routes (of one user, or all)", NULL, 0},
    [DP_CTL_CMD_STATS] = {"stats", "", NULL, "counters since start (the numbers of /metrics)", NULL,
                          0},
    [DP_CTL_CMD_HELP] = {"help", "[COMMAND]", NULL, "this list, or one command's usage",
                         "Without a socket option this is proxyctl's own help. With --ssh, --ftp "
                         "or -s the\ndaemon's command list is asked for instead.\n",
                         DP_CTL_BUILTIN},
    [DP_CTL_CMD_MOVE] = {"move", "USER BACKEND [--kick] [--db CONNINFO]", NULL,
                         "move a user to another backend (in PostgreSQL)",
                         "Calls dynproxy.move_user(USER, BACKEND, KICK) in the routing database: "
                         "--db CONNINFO,\nelse $DYNPROXY_DB, else libpq's PG* variables "
                         "(connect_timeout 5 unless set). Every\nproxy running the pgsql hook is "
                         "notified and routes USER's next login to BACKEND.\n--kick also ends "
                         "USER's open sessions on every instance (\"your account has moved;\n"
                         "please reconnect\"). Exit 1 for an unknown user or backend, 3 when the "
                         "database\ncannot be reached.\n",
                         DP_CTL_LOCAL},
};

const dp_ctl_spec *dp_ctl_spec_find(size_t n, const char *const *words, size_t *nwords)
{
    for (size_t i = 0; i < DP_CTL_CMD__COUNT; i++) {
        const char *name = dp_ctl_specs[i].name;
        const char *sp = strchr(name, ' ');
        if (sp == NULL) {
            if (n >= 1 && strcmp(words[0], name) == 0) {
                *nwords = 1;
                return &dp_ctl_specs[i];
            }
        } else if (n >= 2 && strncmp(words[0], name, (size_t)(sp - name)) == 0 &&
                   words[0][sp - name] == '\0' && strcmp(words[1], sp + 1) == 0) {
            *nwords = 2;
            return &dp_ctl_specs[i];
        }
    }
    return NULL;
}

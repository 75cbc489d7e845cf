/*
 * proxyctl_main.c - proxyctl: options, which socket, one request/reply exchange with a daemon
 * (docs/operations.md), printing and the exit code. `move` lives in proxyctl_move.c, the
 * command table in proxyctl_cmds.c, the wire format in proxyctl_wire.c.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "proxyctl_cmds.h"
#include "proxyctl_conn.h"
#include "proxyctl_table.h"
#include "proxyctl_wire.h"

#ifndef DP_VERSION
#define DP_VERSION "unknown"
#endif

#define SSH_DEFAULT_SOCKET "/run/dynproxy/sshproxy.sock"
#define FTP_DEFAULT_SOCKET "/run/dynproxy/ftpproxy.sock"
#define TIMEOUT_MAX_S 86400.0

__attribute__((format(printf, 1, 2))) static int usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("proxyctl: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputs(" (proxyctl --help)\n", stderr);
    va_end(ap);
    return CTL_EXIT_USAGE;
}

static const char *daemon_socket(int ftp)
{
    const char *e = getenv(ftp ? "DYNPROXY_FTP_CTL" : "DYNPROXY_SSH_CTL");
    if (e != NULL && e[0] != '\0')
        return e;
    return ftp ? FTP_DEFAULT_SOCKET : SSH_DEFAULT_SOCKET;
}

/* Present, or hidden behind a directory we may not search (connecting then says why). */
static int socket_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 || errno == EACCES;
}

/* No socket option: the one of the two daemons' sockets that exists. NULL after reporting. */
static const char *pick_socket(void)
{
    const char *ssh = daemon_socket(0), *ftp = daemon_socket(1);
    int has_ssh = socket_exists(ssh), has_ftp = socket_exists(ftp);
    if (has_ssh && !has_ftp)
        return ssh;
    if (has_ftp && !has_ssh)
        return ftp;
    if (has_ssh)
        fprintf(stderr, "proxyctl: both %s and %s exist: choose --ssh or --ftp\n", ssh, ftp);
    else
        fprintf(stderr,
                "proxyctl: no control socket found (neither %s nor %s): use --ssh, --ftp or "
                "-s SOCKET\n",
                ssh, ftp);
    return NULL;
}

/* A printable copy of a command-line argument for messages (control bytes as '?'). */
static const char *printable(const char *s)
{
    static char buf[128];
    size_t i = 0;
    for (; s[i] != '\0' && i < sizeof buf - 4; i++)
        buf[i] = (unsigned char)s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i];
    snprintf(buf + i, sizeof buf - i, "%s", s[i] != '\0' ? "..." : "");
    return buf;
}

static const char *errno_text(int rc)
{
    return rc == -ETIMEDOUT ? "timed out"
           : rc == -ENODATA ? "connection closed by the daemon"
                            : strerror(-rc);
}

static int print_reply(const ctl_reply *r, int json)
{
    int ok = r->code >= 200 && r->code <= 299;
    if (!ok)
        fprintf(stderr, "proxyctl: %s\n", r->text[0] ? r->text : "command failed");
    if (json) {
        if (r->body_len > 0)
            fwrite(r->body, 1, r->body_len, stdout);
    } else if (!ok) {
        if (r->body_len > 0)
            fwrite(r->body, 1, r->body_len, stderr); /* e.g. the usage a 400 quotes */
    } else if (r->body_len > 0) {
        char *t = ctl_table_format(r->body, r->body_len);
        fputs(t != NULL ? t : r->body, stdout);
        free(t);
    } else if (r->text[0] != '\0') {
        printf("%s\n", r->text);
    }
    if (fflush(stdout) != 0)
        return CTL_EXIT_FAILED;
    return ctl_exit_for_status(r->code);
}

/* Read reply lines into r until it is complete. `eof_ok`: the daemon may close right after
 * the status line (a 403 in place of the greeting). Returns 0 or a negative errno (reported). */
static int read_reply(ctl_conn *c, const char *path, int64_t deadline, double timeout_s,
                      ctl_reply *r, int eof_ok)
{
    for (;;) {
        char *line;
        int rc = ctl_conn_readline(c, deadline, &line);
        if (rc == -ENODATA && eof_ok && r->have_status)
            return 0;
        if (rc == -ETIMEDOUT) {
            fprintf(stderr, "proxyctl: %s: no complete reply within %g s\n", path, timeout_s);
            return rc;
        }
        if (rc != 0) {
            fprintf(stderr, "proxyctl: %s: reading the reply: %s\n", path, errno_text(rc));
            return rc;
        }
        rc = ctl_reply_feed(r, line);
        if (rc == 1)
            return 0;
        if (rc == -EPROTO) {
            fprintf(stderr, "proxyctl: %s: malformed status line \"%s\"\n", path, printable(line));
            return rc;
        }
        if (rc < 0) {
            fprintf(stderr, "proxyctl: %s\n", strerror(-rc));
            return rc;
        }
    }
}

/* Connect, check the greeting, send `request`, read and print the reply. */
static int exchange(const char *path, const char *request, int json, double timeout_s)
{
    int64_t deadline = ctl_now_ms() + (int64_t)(timeout_s * 1000.0);
    ctl_conn *c;
    int rc = ctl_conn_open(&c, path, deadline);
    if (rc != 0) {
        fprintf(stderr, "proxyctl: cannot connect to %s: %s\n", path, errno_text(rc));
        return ctl_exit_for_errno(rc);
    }
    ctl_reply r;
    ctl_reply_init(&r);
    int status = CTL_EXIT_UNREACHABLE;
    char *line;
    rc = ctl_conn_readline(c, deadline, &line);
    if (rc != 0) {
        fprintf(stderr, "proxyctl: %s: no greeting: %s\n", path, errno_text(rc));
        goto out;
    }
    int proto = 0;
    char daemon[64] = "", version[64] = "";
    rc = ctl_parse_greeting(line, &proto, daemon, sizeof daemon, version, sizeof version);
    if (rc == -EPROTONOSUPPORT) {
        fprintf(stderr,
                "proxyctl: %s (%s %s) speaks control protocol %d; this proxyctl speaks %d\n", path,
                daemon, version, proto, DP_CTL_VERSION);
        goto out;
    }
    if (rc != 0) {
        /* Not served (403 forbidden) is a status line in place of the greeting. */
        if (ctl_reply_feed(&r, line) != 0) {
            fprintf(stderr, "proxyctl: %s is not a dynproxy control socket (it said \"%s\")\n",
                    path, printable(line));
            goto out;
        }
        if (read_reply(c, path, deadline, timeout_s, &r, 1) == 0)
            status = print_reply(&r, 0);
        goto out;
    }
    size_t len = strlen(request);
    char *msg = malloc(len + 2);
    if (msg == NULL) {
        status = CTL_EXIT_FAILED;
        goto out;
    }
    memcpy(msg, request, len);
    memcpy(msg + len, "\n", 2);
    rc = ctl_conn_write(c, msg, len + 1, deadline);
    free(msg);
    if (rc != 0) {
        fprintf(stderr, "proxyctl: %s: sending the request: %s\n", path, errno_text(rc));
        status = ctl_exit_for_errno(rc);
        goto out;
    }
    if (read_reply(c, path, deadline, timeout_s, &r, 0) == 0)
        status = print_reply(&r, json);
out:
    ctl_reply_clear(&r);
    ctl_conn_close(c);
    return status;
}

/* drain's own deadline plus the slack, for the default -t. */
static double drain_timeout(int nargs, char **args)
{
    double t = DP_CTL_DRAIN_DEFAULT_S;
    for (int i = 0; i < nargs; i++) {
        if (strncmp(args[i], "timeout=", 8) == 0) {
            char *end;
            double v = strtod(args[i] + 8, &end);
            if (end != args[i] + 8 && *end == '\0' && v >= 0 && v <= TIMEOUT_MAX_S)
                t = v;
        }
    }
    return t + CTL_DRAIN_SLACK_S;
}

int main(int argc, char **argv)
{
    enum { OPT_SSH = 256, OPT_FTP, OPT_JSON, OPT_VERSION };
    static const struct option lopts[] = {
        {"ssh", no_argument, NULL, OPT_SSH},         {"ftp", no_argument, NULL, OPT_FTP},
        {"socket", required_argument, NULL, 's'},    {"json", no_argument, NULL, OPT_JSON},
        {"timeout", required_argument, NULL, 't'},   {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, OPT_VERSION}, {NULL, 0, NULL, 0},
    };
    const char *path = NULL;
    int nsock = 0, json = 0;
    double timeout_s = -1;
    int opt;
    opterr = 0;
    /* '+': stop at the command, whose arguments are not ours. */
    while ((opt = getopt_long(argc, argv, "+:hs:t:", lopts, NULL)) != -1) {
        switch (opt) {
        case OPT_SSH:
        case OPT_FTP:
            path = daemon_socket(opt == OPT_FTP);
            nsock++;
            break;
        case 's':
            path = optarg;
            nsock++;
            break;
        case OPT_JSON:
            json = 1;
            break;
        case 't': {
            char *end;
            timeout_s = strtod(optarg, &end);
            if (end == optarg || *end != '\0' || !isfinite(timeout_s) || timeout_s <= 0 ||
                timeout_s > TIMEOUT_MAX_S)
                return usage_error("-t wants a number of seconds above 0, not \"%s\"",
                                   printable(optarg));
            break;
        }
        case 'h':
            ctl_usage(stdout);
            return CTL_EXIT_OK;
        case OPT_VERSION:
            printf("proxyctl %s (control protocol %d)\n", DP_VERSION, DP_CTL_VERSION);
            return CTL_EXIT_OK;
        case ':':
            return usage_error("option %s needs an argument", printable(argv[optind - 1]));
        default:
            return usage_error("unknown option %s", printable(argv[optind - 1]));
        }
    }
    if (nsock > 1)
        return usage_error("%s", "--ssh, --ftp and -s exclude each other");
    argc -= optind;
    argv += optind;
    if (argc == 0) {
        ctl_usage(stderr);
        return CTL_EXIT_USAGE;
    }

    int nwords = 0;
    const dp_ctl_spec *cmd = ctl_cmd_find(argc, argv, &nwords);
    if (cmd == NULL)
        return usage_error("unknown command \"%s\"", printable(argv[0]));
    for (int i = nwords; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            ctl_cmd_usage(cmd, stdout);
            return CTL_EXIT_OK;
        }
    }
    if (cmd->flags & DP_CTL_LOCAL) {
        if (nsock > 0 || json)
            return usage_error("%s does not talk to a daemon: --ssh, --ftp, -s and --json do "
                               "not apply",
                               cmd->name);
        return ctl_cmd_move(argc, argv, timeout_s > 0 ? timeout_s : CTL_DEFAULT_TIMEOUT_S);
    }
    if (cmd == &dp_ctl_specs[DP_CTL_CMD_HELP] && nsock == 0) {
        if (argc > 1) {
            int n;
            const dp_ctl_spec *which = ctl_cmd_find(argc - 1, argv + 1, &n);
            if (which == NULL)
                return usage_error("unknown command \"%s\"", printable(argv[1]));
            ctl_cmd_usage(which, stdout);
        } else {
            ctl_usage(stdout);
        }
        return CTL_EXIT_OK;
    }

    char request[DP_CTL_LINE_MAX];
    const char *bad = NULL;
    int rc = ctl_build_request(cmd->name, argv + nwords, argc - nwords, json, request,
                               sizeof request, &bad);
    if (rc == -EINVAL)
        return usage_error("argument \"%s\" cannot be sent: key=VALUE with a key of a-z, 0-9, "
                           "'_', '-', or a word without spaces, quotes and "
                           "backslashes; no control characters",
                           printable(bad));
    if (rc != 0)
        return usage_error("%s: request longer than 4096 bytes", cmd->name);

    if (path == NULL && (path = pick_socket()) == NULL)
        return CTL_EXIT_USAGE;
    if (timeout_s <= 0)
        timeout_s = (cmd->flags & DP_CTL_WAITS) ? drain_timeout(argc - nwords, argv + nwords)
                                                : CTL_DEFAULT_TIMEOUT_S;
    return exchange(path, request, json, timeout_s);
}

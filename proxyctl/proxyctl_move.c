/*
 * proxyctl_move.c - `proxyctl move USER BACKEND [--kick] [--db CONNINFO]`: one call of
 * dynproxy.move_user(user, backend, kick) in the routing database (deploy/sql/schema.sql).
 * The users trigger (and, with --kick, the function's '!kick USER') NOTIFY every proxy
 * instance running the pgsql hook; no daemon is contacted.
 *
 * The values travel as parameters ($1..$3), never spliced into SQL. The conninfo may hold a
 * password: it is never printed, and a password that shows up in a libpq message is masked.
 * Waits are bounded: connect_timeout (5 s unless the conninfo or PGCONNECT_TIMEOUT set one)
 * for the connection, the -t deadline for the answer (then the statement is cancelled).
 */
#include <errno.h>
#include <libpq-fe.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxyctl_cmds.h"
#include "proxyctl_conn.h"
#include "proxyctl_wire.h"

#define MOVE_SQL "SELECT dynproxy.move_user($1, $2, $3)"
#define DEFAULT_CONNECT_TIMEOUT "5"
#define TEXTOID 25
#define BOOLOID 16

typedef struct move_args {
    const char *user;
    const char *backend;
    const char *conninfo;
    const char *conninfo_from; /* "--db", "$DYNPROXY_DB" or NULL (libpq's PG* variables) */
    int kick;
} move_args;

static int move_usage(const char *what)
{
    fprintf(stderr,
            "proxyctl: move: %s\nusage: proxyctl move USER BACKEND [--kick] [--db CONNINFO]\n",
            what);
    return CTL_EXIT_USAGE;
}

static int parse_args(int argc, char **argv, move_args *a)
{
    int npos = 0;
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        if (strcmp(s, "--kick") == 0) {
            a->kick = 1;
        } else if (strcmp(s, "--db") == 0) {
            if (i + 1 >= argc)
                return move_usage("--db needs a connection string");
            a->conninfo = argv[++i];
            a->conninfo_from = "--db";
        } else if (strncmp(s, "--db=", 5) == 0) {
            a->conninfo = s + 5;
            a->conninfo_from = "--db";
        } else if (s[0] == '-' && s[1] != '\0') {
            return move_usage("unknown option (only --kick and --db)");
        } else if (npos == 0) {
            a->user = s;
            npos++;
        } else if (npos == 1) {
            a->backend = s;
            npos++;
        } else {
            return move_usage("too many arguments");
        }
    }
    if (npos < 2 || a->user[0] == '\0' || a->backend[0] == '\0')
        return move_usage("USER and BACKEND are required");
    if (a->conninfo == NULL) {
        const char *e = getenv("DYNPROXY_DB");
        if (e != NULL && e[0] != '\0') {
            a->conninfo = e;
            a->conninfo_from = "$DYNPROXY_DB";
        }
    }
    return 0;
}

/* A malloc'd copy of msg with every occurrence of `secret` replaced by "***". */
static char *masked(const char *msg, const char *secret)
{
    size_t sl = secret != NULL ? strlen(secret) : 0, n = 0;
    if (sl > 0)
        for (const char *p = strstr(msg, secret); p != NULL; p = strstr(p + sl, secret))
            n++;
    char *out = malloc(strlen(msg) + n * 3 + 1);
    if (out == NULL)
        return NULL;
    char *o = out;
    for (const char *p = msg; *p != '\0';) {
        if (sl > 0 && strncmp(p, secret, sl) == 0) {
            memcpy(o, "***", 3);
            o += 3;
            p += sl;
        } else {
            *o++ = *p++;
        }
    }
    *o = '\0';
    return out;
}

/* Print a libpq message, one "proxyctl: " line per line, with `password` masked. */
static void print_pg_message(const char *prefix, const char *msg, const char *password)
{
    char *copy = masked(msg != NULL ? msg : "", password);
    if (copy == NULL)
        return;
    size_t n = strlen(copy);
    while (n > 0 && (copy[n - 1] == '\n' || copy[n - 1] == ' '))
        copy[--n] = '\0';
    int first = 1;
    for (char *save, *line = strtok_r(copy, "\n", &save); line != NULL;
         line = strtok_r(NULL, "\n", &save)) {
        fprintf(stderr, "proxyctl: %s%s\n", first ? prefix : "", line);
        first = 0;
    }
    if (first)
        fprintf(stderr, "proxyctl: %s(no message)\n", prefix);
    free(copy);
}

/* Connect; NULL after reporting (*exit_code set). *password = a copy of the conninfo's
 * password for masking (caller frees). */
static PGconn *db_connect(const move_args *a, char **password, int *exit_code)
{
    int has_timeout = getenv("PGCONNECT_TIMEOUT") != NULL;
    *password = NULL;
    if (a->conninfo != NULL) {
        char *err = NULL;
        PQconninfoOption *opts = PQconninfoParse(a->conninfo, &err);
        if (opts == NULL) {
            /* libpq's message may quote a piece of the string, password included. */
            fprintf(stderr,
                    "proxyctl: move: the connection string in %s is not valid (not shown: it "
                    "may hold a password)\n",
                    a->conninfo_from);
            PQfreemem(err);
            *exit_code = CTL_EXIT_USAGE;
            return NULL;
        }
        for (PQconninfoOption *o = opts; o->keyword != NULL; o++) {
            if (o->val == NULL)
                continue;
            if (strcmp(o->keyword, "connect_timeout") == 0)
                has_timeout = 1;
            else if (strcmp(o->keyword, "password") == 0 && o->val[0] != '\0')
                *password = strdup(o->val);
        }
        PQconninfoFree(opts);
    }
    /* expand_dbname: the first "dbname" is the whole conninfo; later keywords override it. */
    const char *keys[4] = {"dbname", "fallback_application_name", NULL, NULL};
    const char *vals[4] = {a->conninfo != NULL ? a->conninfo : "", "proxyctl", NULL, NULL};
    if (!has_timeout) {
        keys[2] = "connect_timeout";
        vals[2] = DEFAULT_CONNECT_TIMEOUT;
    }
    PGconn *pg = PQconnectdbParams(keys, vals, 1);
    if (pg == NULL) {
        fprintf(stderr, "proxyctl: move: out of memory\n");
        *exit_code = CTL_EXIT_FAILED;
        return NULL;
    }
    if (PQstatus(pg) != CONNECTION_OK) {
        print_pg_message("cannot connect to the database: ", PQerrorMessage(pg), *password);
        PQfinish(pg);
        *exit_code = CTL_EXIT_UNREACHABLE;
        return NULL;
    }
    return pg;
}

/* Wait for the whole result under the deadline; cancels the statement at the deadline.
 * Returns 0 (the results are ready for PQgetResult) or -ETIMEDOUT / -ECONNRESET. */
static int wait_result(PGconn *pg, int64_t deadline)
{
    while (PQisBusy(pg)) {
        int64_t left = deadline - ctl_now_ms();
        if (left <= 0) {
            PGcancel *cn = PQgetCancel(pg);
            char buf[256];
            if (cn != NULL) {
                PQcancel(cn, buf, sizeof buf);
                PQfreeCancel(cn);
            }
            return -ETIMEDOUT;
        }
        struct pollfd p = {.fd = PQsocket(pg), .events = POLLIN};
        if (p.fd < 0)
            return -ECONNRESET;
        int r = poll(&p, 1, left > 60000 ? 60000 : (int)left);
        if (r < 0 && errno != EINTR)
            return -errno;
        if (r > 0 && PQconsumeInput(pg) == 0)
            return -ECONNRESET;
    }
    return 0;
}

/* The exit code for a failed statement. */
static int error_exit(PGconn *pg, const PGresult *res)
{
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    if (PQstatus(pg) != CONNECTION_OK || state == NULL)
        return CTL_EXIT_UNREACHABLE; /* lost the connection (no SQLSTATE: libpq's own error) */
    if (strncmp(state, "08", 2) == 0 || strncmp(state, "57P", 3) == 0)
        return CTL_EXIT_UNREACHABLE; /* connection exception, server shutting down */
    if (strcmp(state, "42501") == 0)
        return CTL_EXIT_DENIED; /* insufficient_privilege */
    return CTL_EXIT_FAILED;     /* move_user's exception (unknown user/backend), or the like */
}

int ctl_cmd_move(int argc, char **argv, double timeout_s)
{
    move_args a = {0};
    int rc = parse_args(argc, argv, &a);
    if (rc != 0)
        return rc;
    char *password = NULL;
    int status = CTL_EXIT_FAILED;
    PGconn *pg = db_connect(&a, &password, &status);
    if (pg == NULL) {
        free(password);
        return status;
    }
    const Oid types[3] = {TEXTOID, TEXTOID, BOOLOID};
    const char *params[3] = {a.user, a.backend, a.kick ? "true" : "false"};
    int64_t deadline = ctl_now_ms() + (int64_t)(timeout_s * 1000.0);
    if (PQsendQueryParams(pg, MOVE_SQL, 3, types, params, NULL, NULL, 0) == 0) {
        print_pg_message("move: ", PQerrorMessage(pg), password);
        status = CTL_EXIT_UNREACHABLE;
        goto out;
    }
    rc = wait_result(pg, deadline);
    if (rc == -ETIMEDOUT) {
        fprintf(stderr, "proxyctl: move: no answer from the database within %g s (cancelled)\n",
                timeout_s);
        status = CTL_EXIT_UNREACHABLE;
        goto out;
    }
    if (rc != 0) {
        print_pg_message("move: lost the database connection: ", PQerrorMessage(pg), password);
        status = CTL_EXIT_UNREACHABLE;
        goto out;
    }
    status = -1;
    PGresult *res;
    while ((res = PQgetResult(pg)) != NULL) {
        if (status == -1) {
            if (PQresultStatus(res) == PGRES_TUPLES_OK) {
                status = CTL_EXIT_OK;
            } else {
                const char *primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
                status = error_exit(pg, res);
                if (primary != NULL)
                    print_pg_message("", primary, password);
                else
                    print_pg_message("move: ", PQerrorMessage(pg), password);
                const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
                if (state != NULL && strcmp(state, "42883") == 0)
                    fprintf(stderr, "proxyctl: (load deploy/sql/schema.sql: it defines "
                                    "dynproxy.move_user(user, backend, kick))\n");
            }
        }
        PQclear(res);
    }
    if (status == CTL_EXIT_OK)
        printf("moved %s to %s%s\n", a.user, a.backend,
               a.kick ? " (sessions kicked on every instance)" : "");
    else if (status == -1)
        status = CTL_EXIT_UNREACHABLE;
out:
    PQfinish(pg);
    free(password);
    return status;
}

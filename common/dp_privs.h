/*
 * dp_privs.h - running as an unprivileged user: look the configured user and group up, and
 * switch to them after the sockets are bound (supplementary groups dropped, setgid, then
 * setuid, then a check that root cannot be regained).
 */
#ifndef DP_PRIVS_H
#define DP_PRIVS_H

#include <stddef.h>
#include <sys/types.h>

typedef struct dp_privs {
    uid_t uid;
    gid_t gid;
    char user[64];
    int change; /* 1: a switch is due (the process is root and a user was configured) */
} dp_privs;

/* Resolve `user` (empty: stay as we are) and `group` (empty: the user's primary group).
 * Without a user, uid/gid are the current ones. Returns 0 or a negative errno with `err`
 * set ("user dynproxy: no such user"). */
int dp_privs_resolve(dp_privs *p, const char *user, const char *group, char *err, size_t errlen);

/* Switch to p's ids if p->change. Process-wide (glibc applies it to every thread). Returns 0
 * or a negative errno with `err` set. */
int dp_privs_drop(const dp_privs *p, char *err, size_t errlen);

#endif

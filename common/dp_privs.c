/* dp_privs.c - dropping root after the listeners are bound. */
#include "dp_privs.h"

#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* getpwnam_r / getgrnam_r with a buffer doubled while they say ERANGE. */
static int lookup_ids(dp_privs *p, const char *user, const char *group, char *err, size_t errlen)
{
    size_t size = 4096;
    for (;;) {
        char *buf = malloc(size);
        if (buf == NULL)
            return -ENOMEM;
        struct passwd pw, *pwp = NULL;
        struct group gr, *grp = NULL;
        int rc = getpwnam_r(user, &pw, buf, size, &pwp);
        if (rc == 0 && pwp != NULL) {
            p->uid = pw.pw_uid;
            p->gid = pw.pw_gid;
            if (group != NULL && group[0] != '\0') {
                rc = getgrnam_r(group, &gr, buf, size, &grp);
                if (rc == 0 && grp != NULL)
                    p->gid = gr.gr_gid;
            }
        }
        free(buf);
        if (rc == ERANGE && size < (1u << 24)) {
            size *= 2;
            continue;
        }
        if (pwp == NULL) {
            snprintf(err, errlen, "user %s: %s", user, rc != 0 ? strerror(rc) : "no such user");
            return rc != 0 ? -rc : -ENOENT;
        }
        if (group != NULL && group[0] != '\0' && grp == NULL) {
            snprintf(err, errlen, "group %s: %s", group, rc != 0 ? strerror(rc) : "no such group");
            return rc != 0 ? -rc : -ENOENT;
        }
        snprintf(p->user, sizeof p->user, "%s", user);
        return 0;
    }
}

int dp_privs_resolve(dp_privs *p, const char *user, const char *group, char *err, size_t errlen)
{
    *p = (dp_privs){.uid = geteuid(), .gid = getegid()};
    if (user == NULL || user[0] == '\0') {
        if (group != NULL && group[0] != '\0') {
            snprintf(err, errlen, "group is set but user is not");
            return -EINVAL;
        }
        return 0;
    }
    /* getpwnam_r may consult NSS (a network directory): this runs at start-up on the main
     * thread, before any event loop serves a client. Big group entries need a big buffer. */
    int rc = lookup_ids(p, user, group, err, errlen);
    if (rc != 0)
        return rc;
    if (p->uid == 0) {
        snprintf(err, errlen, "user %s is root: name an unprivileged user", user);
        return -EINVAL;
    }
    if (geteuid() != 0) {
        if (geteuid() == p->uid)
            return 0; /* already that user (started by systemd with User=) */
        snprintf(err, errlen, "user %s: only root can switch users (running as uid %ld)", user,
                 (long)geteuid());
        return -EPERM;
    }
    p->change = 1;
    return 0;
}

int dp_privs_drop(const dp_privs *p, char *err, size_t errlen)
{
    if (!p->change)
        return 0;
    if (setgroups(0, NULL) != 0 || setgid(p->gid) != 0 || setuid(p->uid) != 0) {
        int e = errno;
        snprintf(err, errlen, "switching to user %s (uid %ld gid %ld): %s", p->user, (long)p->uid,
                 (long)p->gid, strerror(e));
        return -e;
    }
    if (setuid(0) == 0 || geteuid() == 0) {
        snprintf(err, errlen, "switching to user %s: root could be regained", p->user);
        return -EPERM;
    }
    return 0;
}

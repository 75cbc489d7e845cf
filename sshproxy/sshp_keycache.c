/* sshp_keycache.c - last known authorized keys per user, process-wide: used only when a fresh
 * fetch fails (database down), within the same stale window routes get (hook.stale_ms), so a
 * customer who logs in with a key keeps working through an outage like a password user does.
 * Any invalidation of the user (a NOTIFY after a key was removed) drops the entry at once, so a
 * revoked key cannot live on through an outage that starts after its removal. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <uthash.h>

#include "dp_util.h"
#include "sshp.h"

typedef struct kc_entry {
    UT_hash_handle hh;
    char *user;
    char **keys;
    size_t nkeys;
    uint64_t stored_ms;
} kc_entry;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static kc_entry *entries;
static size_t nentries;

/* Bound: one entry per recently active key user; beyond it, the oldest half goes. */
#define KC_MAX 100000

static void entry_free(kc_entry *e)
{
    for (size_t i = 0; i < e->nkeys; i++)
        free(e->keys[i]);
    free(e->keys);
    free(e->user);
    free(e);
}

static char **copy_keys(const char *const *keys, size_t n)
{
    char **v = calloc(n ? n : 1, sizeof *v);
    for (size_t i = 0; v != NULL && i < n; i++) {
        v[i] = strdup(keys[i]);
        if (v[i] == NULL) {
            while (i-- > 0)
                free(v[i]);
            free(v);
            return NULL;
        }
    }
    return v;
}

void sshp_keycache_store(const char *user, const char *const *keys, size_t n)
{
    char **v = copy_keys(keys, n);
    char *u = strdup(user);
    kc_entry *e = calloc(1, sizeof *e);
    if (v == NULL || u == NULL || e == NULL) {
        free(u);
        free(e);
        for (size_t i = 0; v != NULL && i < n; i++)
            free(v[i]);
        free(v);
        return;
    }
    e->user = u;
    e->keys = v;
    e->nkeys = n;
    e->stored_ms = dp_now_ms();
    pthread_mutex_lock(&lock);
    kc_entry *old;
    HASH_FIND_STR(entries, user, old);
    if (old != NULL) {
        HASH_DEL(entries, old);
        entry_free(old);
        nentries--;
    }
    if (nentries >= KC_MAX) {
        /* Insertion order is age order: drop the older half. */
        kc_entry *x, *tmp;
        size_t drop = nentries / 2;
        HASH_ITER(hh, entries, x, tmp)
        {
            if (drop-- == 0)
                break;
            HASH_DEL(entries, x);
            entry_free(x);
            nentries--;
        }
    }
    HASH_ADD_KEYPTR(hh, entries, e->user, strlen(e->user), e);
    nentries++;
    pthread_mutex_unlock(&lock);
}

int sshp_keycache_get(const char *user, uint64_t max_age_ms, char ***keys, size_t *n)
{
    int rc = -ENOENT;
    pthread_mutex_lock(&lock);
    kc_entry *e;
    HASH_FIND_STR(entries, user, e);
    if (e != NULL && dp_now_ms() - e->stored_ms <= max_age_ms) {
        *keys = copy_keys((const char *const *)e->keys, e->nkeys);
        *n = e->nkeys;
        rc = *keys != NULL ? 0 : -ENOMEM;
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

void sshp_keycache_drop(const char *user)
{
    pthread_mutex_lock(&lock);
    kc_entry *e, *tmp;
    if (user == NULL) {
        HASH_ITER(hh, entries, e, tmp)
        {
            HASH_DEL(entries, e);
            entry_free(e);
        }
        nentries = 0;
    } else {
        HASH_FIND_STR(entries, user, e);
        if (e != NULL) {
            HASH_DEL(entries, e);
            entry_free(e);
            nentries--;
        }
    }
    pthread_mutex_unlock(&lock);
}

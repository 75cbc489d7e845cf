/* sshp_limits.c - process-wide caps on unauthenticated connections (OpenSSH's MaxStartups,
 * plus a per-source-address cap), shared by all workers. A connection holds one slot from
 * accept until its authentication succeeds or it ends. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <uthash.h>

#include "dp_util.h"
#include "sshp.h"

typedef struct ip_count {
    UT_hash_handle hh;
    char ip[64];
    int n;
} ip_count;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static ip_count *by_ip;
static int total;

int sshp_startup_acquire(const struct sockaddr *client, int max_total, int max_per_ip)
{
    char ip[64];
    dp_sockaddr_ip(client, ip, sizeof ip);
    pthread_mutex_lock(&lock);
    int rc = 0;
    ip_count *e;
    HASH_FIND_STR(by_ip, ip, e);
    if (total >= max_total) {
        rc = -EMFILE;
    } else if (e != NULL && e->n >= max_per_ip) {
        rc = -EUSERS;
    } else {
        if (e == NULL) {
            e = calloc(1, sizeof *e);
            if (e == NULL) {
                pthread_mutex_unlock(&lock);
                return -ENOMEM;
            }
            strcpy(e->ip, ip);
            HASH_ADD_STR(by_ip, ip, e);
        }
        e->n++;
        total++;
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

void sshp_startup_release(const struct sockaddr *client)
{
    char ip[64];
    dp_sockaddr_ip(client, ip, sizeof ip);
    pthread_mutex_lock(&lock);
    ip_count *e;
    HASH_FIND_STR(by_ip, ip, e);
    if (e != NULL) {
        total--;
        if (--e->n == 0) {
            HASH_DEL(by_ip, e);
            free(e);
        }
    }
    pthread_mutex_unlock(&lock);
}

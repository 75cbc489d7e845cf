/* dp_slots.c - total and per-address slot counts behind one mutex (see dp_slots.h). */
#include "dp_slots.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <uthash.h>

#include "dp_util.h"

typedef struct dp_slot_ip {
    UT_hash_handle hh;
    char ip[64];
    int n;
} dp_slot_ip;

int dp_slots_acquire(dp_slots *s, const struct sockaddr *client, int max_total, int max_per_ip)
{
    char ip[64];
    dp_sockaddr_ip(client, ip, sizeof ip);
    pthread_mutex_lock(&s->lock);
    int rc = 0;
    dp_slot_ip *e;
    HASH_FIND_STR(s->by_ip, ip, e);
    if (s->total >= max_total) {
        rc = -EMFILE;
    } else if (e != NULL && e->n >= max_per_ip) {
        rc = -EUSERS;
    } else {
        if (e == NULL) {
            e = calloc(1, sizeof *e);
            if (e == NULL) {
                pthread_mutex_unlock(&s->lock);
                return -ENOMEM;
            }
            strcpy(e->ip, ip);
            HASH_ADD_STR(s->by_ip, ip, e);
        }
        e->n++;
        s->total++;
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

void dp_slots_release(dp_slots *s, const struct sockaddr *client)
{
    char ip[64];
    dp_sockaddr_ip(client, ip, sizeof ip);
    pthread_mutex_lock(&s->lock);
    dp_slot_ip *e;
    HASH_FIND_STR(s->by_ip, ip, e);
    if (e != NULL) {
        s->total--;
        if (--e->n == 0) {
            HASH_DEL(s->by_ip, e);
            free(e);
        }
    }
    pthread_mutex_unlock(&s->lock);
}

int dp_slots_total(dp_slots *s)
{
    pthread_mutex_lock(&s->lock);
    int n = s->total;
    pthread_mutex_unlock(&s->lock);
    return n;
}

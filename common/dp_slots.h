/*
 * dp_slots.h - a process-wide count of "slots" (connections, sessions) held in total and per
 * client address, with caps checked at acquire time: OpenSSH's MaxStartups and ProFTPD's
 * MaxClientsPerHost in one object. Shared by every worker thread; a slot is taken and given
 * back on the same address.
 *
 *   static dp_slots startups = DP_SLOTS_INIT;
 *   if (dp_slots_acquire(&startups, peer, 1000, 100) == 0) { ...; dp_slots_release(&startups,
 * peer); }
 */
#ifndef DP_SLOTS_H
#define DP_SLOTS_H

#include <pthread.h>
#include <sys/socket.h>

struct dp_slot_ip;

typedef struct dp_slots {
    pthread_mutex_t lock;
    struct dp_slot_ip *by_ip; /* uthash, one entry per address holding >= 1 slot */
    int total;
} dp_slots;

#define DP_SLOTS_INIT                                                                              \
    {                                                                                              \
        PTHREAD_MUTEX_INITIALIZER, NULL, 0                                                         \
    }

/* Take one slot for `client`. Returns 0, -EMFILE (max_total reached), -EUSERS (max_per_ip
 * reached for that address) or -ENOMEM. Thread-safe, never blocks beyond the mutex. */
int dp_slots_acquire(dp_slots *s, const struct sockaddr *client, int max_total, int max_per_ip);

/* Give back a slot taken for `client`. */
void dp_slots_release(dp_slots *s, const struct sockaddr *client);

/* Slots held now, in total. */
int dp_slots_total(dp_slots *s);

#endif

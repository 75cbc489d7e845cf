/* sshp_limits.c - process-wide caps on unauthenticated connections (OpenSSH's MaxStartups,
 * plus a per-source-address cap), shared by all workers. A connection holds one slot from
 * accept until its authentication succeeds or it ends. */
#include "dp_slots.h"
#include "sshp.h"

static dp_slots startups = DP_SLOTS_INIT;

int sshp_startup_acquire(const struct sockaddr *client, int max_total, int max_per_ip)
{
    return dp_slots_acquire(&startups, client, max_total, max_per_ip);
}

void sshp_startup_release(const struct sockaddr *client)
{
    dp_slots_release(&startups, client);
}

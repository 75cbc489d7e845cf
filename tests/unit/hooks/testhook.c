/* testhook.c - a scriptable hook for the unit tests of the hook loader and route cache.
 * Users: "unknown*" -> UNKNOWN_USER, "maint*" -> MAINTENANCE, "tempfail*" -> TEMPFAIL,
 * anything else -> OK on backend "gen<generation>". Params: "refuse" = a key name to refuse
 * (init fails naming it), any other key is accepted. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "dynproxy_hook.h"
#include "testhook.h"

DPH_EXPORT testhook_control testhook_control_block;

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static int th_init(void **state, const dph_host *host, const dph_param *params, dph_error *err)
{
    for (const dph_param *p = params; p->key != NULL; p++) {
        if (strcmp(p->key, "refuse") == 0) {
            for (const dph_param *q = params; q->key != NULL; q++)
                if (strcmp(q->key, p->value) == 0)
                    err->key = q->key;
            snprintf(err->msg, sizeof err->msg, "refused as asked");
            return -EINVAL;
        }
    }
    testhook_control_block.host = host;
    testhook_control_block.host_ctx = host->ctx;
    *state = &testhook_control_block;
    return 0;
}

static void th_fini(void *state)
{
    (void)state;
}

static int th_lookup(void *state, const dph_lookup_req *req, dph_route *r)
{
    testhook_control *c = state;
    atomic_fetch_add(&c->lookups, 1);
    int d = atomic_load(&c->delay_ms);
    if (d > 0)
        sleep_ms(d);
    if (atomic_load(&c->fail))
        return -EIO;
    if (strncmp(req->user, "unknown", 7) == 0) {
        r->status = DPH_ROUTE_UNKNOWN_USER;
        return 0;
    }
    if (strncmp(req->user, "tempfail", 8) == 0) {
        r->status = DPH_ROUTE_TEMPFAIL;
        snprintf(r->message, sizeof r->message, "try later");
        return 0;
    }
    r->status = strncmp(req->user, "maint", 5) == 0 ? DPH_ROUTE_MAINTENANCE : DPH_ROUTE_OK;
    snprintf(r->backend, sizeof r->backend, "gen%d", atomic_load(&c->generation));
    snprintf(r->address, sizeof r->address, "127.0.0.1");
    r->ssh_port = 22;
    snprintf(r->backend_user, sizeof r->backend_user, "%s", req->user);
    return 0;
}

static int th_keys(void *state, const dph_lookup_req *req, dph_key_cb cb, void *ctx)
{
    testhook_control *c = state;
    atomic_fetch_add(&c->keys_calls, 1);
    for (int i = 0; i < 3; i++) {
        char line[128];
        snprintf(line, sizeof line, "ssh-ed25519 AAAAkey%d %s", i, req->user);
        if (cb(ctx, line) != 0)
            break;
    }
    return 0;
}

static const dph_ops ops = {
    .abi_version = DPH_ABI_VERSION,
    .struct_size = sizeof(dph_ops),
    .name = "testhook",
    .description = "scriptable hook for unit tests",
    .init = th_init,
    .fini = th_fini,
    .lookup = th_lookup,
    .authorized_keys = th_keys,
};

DPH_EXPORT const dph_ops *dynproxy_hook_entry(uint32_t host_abi)
{
    (void)host_abi;
    return &ops;
}

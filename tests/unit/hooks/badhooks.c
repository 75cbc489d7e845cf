/* badhooks.c - one broken hook per loader error path, selected by -DBAD_<KIND>. */
#include <stddef.h>

#include "dynproxy_hook.h"

/* Every variant compiles all parts; the ones a variant leaves out are simply unused. */
#define UNUSED __attribute__((unused))
#if !defined(BAD_NOSYM)
UNUSED static int ok_init(void **s, const dph_host *h, const dph_param *p, dph_error *e)
{
    (void)h, (void)p, (void)e;
    *s = NULL;
    return 0;
}
UNUSED static void ok_fini(void *s)
{
    (void)s;
}
UNUSED static int ok_lookup(void *s, const dph_lookup_req *r, dph_route *route)
{
    (void)s, (void)r;
    route->status = DPH_ROUTE_UNKNOWN_USER;
    return 0;
}
#endif

#if defined(BAD_NOSYM)
/* Exports something, but not the entry symbol. */
DPH_EXPORT int not_a_hook(void)
{
    return 0;
}
#else
UNUSED static const dph_ops ops = {
#if defined(BAD_ABI)
    .abi_version = (DPH_ABI_MAJOR + 1) << 16,
#else
    .abi_version = DPH_ABI_VERSION,
#endif
#if defined(BAD_SMALL)
    .struct_size = 8,
#else
    .struct_size = sizeof(dph_ops),
#endif
    .name = "bad",
    .init = ok_init,
    .fini = ok_fini,
#if !defined(BAD_NOLOOKUP)
    .lookup = ok_lookup,
#else
    .lookup = NULL,
#endif
};

DPH_EXPORT const dph_ops *dynproxy_hook_entry(uint32_t host_abi)
{
    (void)host_abi;
#if defined(BAD_NULL)
    return NULL;
#else
    return &ops;
#endif
}
#endif

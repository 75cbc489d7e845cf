/* testhook.h - control block of the unit tests' scriptable hook (testhook.so). The test finds
 * it with dlopen(path, RTLD_NOLOAD) + dlsym("testhook_control"). */
#ifndef TESTHOOK_H
#define TESTHOOK_H

#include <stdatomic.h>

typedef struct testhook_control {
    _Atomic int lookups; /* lookup calls so far */
    _Atomic int keys_calls;
    _Atomic int delay_ms;   /* each lookup sleeps this long */
    _Atomic int fail;       /* lookups return -EIO while set */
    _Atomic int generation; /* written into route.backend as "gen<N>" */
    void *host_ctx;         /* the dph_host, to fire invalidations like a NOTIFY would */
    const void *host;
} testhook_control;

#endif

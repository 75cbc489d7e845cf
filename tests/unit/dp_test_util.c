/* dp_test_util.c - helpers shared by the Check unit tests. */
#include "dp_test_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char dir[256];

static void remove_dir(void)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
}

const char *dp_test_write_file(const char *name, const char *text)
{
    static char path[16][512];
    static int next;
    if (dir[0] == '\0') {
        snprintf(dir, sizeof dir, "/tmp/dp-unit-XXXXXX");
        ck_assert_ptr_nonnull(mkdtemp(dir));
        atexit(remove_dir);
    }
    char *p = path[next++ % 16];
    snprintf(p, 512, "%s/%s", dir, name);
    FILE *f = fopen(p, "w");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(fputs(text, f) >= 0, 1);
    ck_assert_int_eq(fclose(f), 0);
    return p;
}

int dp_test_run_suite(Suite *s)
{
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}

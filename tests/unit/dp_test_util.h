/* dp_test_util.h - small helpers shared by the Check unit tests. */
#ifndef DP_TEST_UTIL_H
#define DP_TEST_UTIL_H

#include <check.h>
#include <stddef.h>

/* Write `text` to a fresh file under a per-process temp dir; returns its path (static storage,
 * valid until the next call with the same `name`). Aborts the test on failure. */
const char *dp_test_write_file(const char *name, const char *text);

/* Run one suite with CK_NORMAL output; returns the process exit status for main(). */
int dp_test_run_suite(Suite *s);

#endif

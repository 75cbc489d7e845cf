/* proxyctl_table.h - align a TAB-separated text body into columns (pure). */
#ifndef PROXYCTL_TABLE_H
#define PROXYCTL_TABLE_H

#include <stddef.h>

/* Space between two columns. */
#define CTL_TABLE_GAP 2

/*
 * `text` (`len` bytes): lines ending in '\n' (the last one may lack it), columns separated by
 * one TAB, the first line being the header. Returns a malloc'd NUL-terminated copy in which
 * every column but a line's last is padded with spaces to the width of that column's widest
 * cell plus CTL_TABLE_GAP (widths count UTF-8 characters, not bytes); no line gets trailing
 * spaces, every line ends in '\n'. Lines with fewer cells are simply shorter. NULL on ENOMEM.
 */
char *ctl_table_format(const char *text, size_t len);

#endif

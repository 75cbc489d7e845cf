/* proxyctl_table.c - column alignment of the text bodies (one header line, TAB-separated). */
#include "proxyctl_table.h"

#include <stdlib.h>
#include <string.h>

/* Characters in s[0..n): every byte that is not a UTF-8 continuation byte. */
static size_t text_width(const char *s, size_t n)
{
    size_t w = 0;
    for (size_t i = 0; i < n; i++)
        if (((unsigned char)s[i] & 0xc0) != 0x80)
            w++;
    return w;
}

/* Calls fn(arg, column, cell, cell_len, is_last_cell) for every cell, and fn(arg, -1, ...) at
 * each line end. */
typedef void (*cell_fn)(void *arg, int col, const char *cell, size_t n, int last);

static void walk(const char *text, size_t len, cell_fn fn, void *arg)
{
    size_t i = 0;
    while (i < len) {
        size_t eol = i;
        while (eol < len && text[eol] != '\n')
            eol++;
        int col = 0;
        size_t start = i;
        for (size_t j = i; j <= eol; j++) {
            if (j == eol || text[j] == '\t') {
                fn(arg, col++, text + start, j - start, j == eol);
                start = j + 1;
            }
        }
        fn(arg, -1, NULL, 0, 1);
        i = eol + 1;
    }
}

typedef struct widths {
    size_t *w;
    int n;
    int failed;
} widths;

static void measure(void *arg, int col, const char *cell, size_t n, int last)
{
    widths *ws = arg;
    if (col < 0 || last || ws->failed) /* a line's last cell is never padded */
        return;
    if (col >= ws->n) {
        size_t *nw = realloc(ws->w, (size_t)(col + 1) * sizeof *nw);
        if (nw == NULL) {
            ws->failed = 1;
            return;
        }
        for (int k = ws->n; k <= col; k++)
            nw[k] = 0;
        ws->w = nw;
        ws->n = col + 1;
    }
    size_t w = text_width(cell, n);
    if (w > ws->w[col])
        ws->w[col] = w;
}

typedef struct out {
    const widths *ws;
    char *buf;
    size_t len;
    size_t content_end; /* end of the line's last cell text: padding after it is cut */
} out;

static void emit(void *arg, int col, const char *cell, size_t n, int last)
{
    out *o = arg;
    if (col < 0) {
        o->len = o->content_end; /* trailing empty cells leave no trailing spaces */
        o->buf[o->len++] = '\n';
        o->content_end = o->len;
        return;
    }
    memcpy(o->buf + o->len, cell, n);
    o->len += n;
    if (n > 0)
        o->content_end = o->len;
    if (!last) {
        size_t pad = o->ws->w[col] - text_width(cell, n) + CTL_TABLE_GAP;
        memset(o->buf + o->len, ' ', pad);
        o->len += pad;
    }
}

char *ctl_table_format(const char *text, size_t len)
{
    widths ws = {0};
    walk(text, len, measure, &ws);
    if (ws.failed) {
        free(ws.w);
        return NULL;
    }
    /* Upper bound: every byte, plus per line and padded column the widest width and the gap,
     * plus a '\n' per line and the NUL. */
    size_t lines = 1, padmax = 0;
    for (size_t i = 0; i < len; i++)
        lines += text[i] == '\n';
    for (int c = 0; c < ws.n; c++)
        padmax += ws.w[c] + CTL_TABLE_GAP;
    char *buf = malloc(len + lines * (padmax + 1) + 1);
    if (buf == NULL) {
        free(ws.w);
        return NULL;
    }
    out o = {&ws, buf, 0, 0};
    walk(text, len, emit, &o);
    buf[o.len] = '\0';
    free(ws.w);
    return buf;
}

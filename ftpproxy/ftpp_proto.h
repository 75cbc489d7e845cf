/*
 * ftpp_proto.h - the FTP wire formats ftpproxy reads and writes, as pure functions: no I/O,
 * no allocation, no logging. Everything here sees hostile bytes (client commands before
 * login, backend replies), so it is unit-tested (tests/unit/test_ftpp_proto.c) and fuzzed
 * (tests/fuzz/fuzz_ftp.c).
 *
 * RFCs: 959 (commands, replies, PORT/PASV), 1123 §4.1.2 (Telnet in the control connection,
 * multi-line replies), 2428 (EPRT/EPSV), 854 (Telnet IAC).
 */
#ifndef FTPP_PROTO_H
#define FTPP_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* Longest client command line kept (without CRLF); longer lines are refused with 500 and
 * dropped up to their end of line. vsftpd's own cap is the same. */
#define FTPP_CMD_MAX 4096
/* Longest backend reply line relayed as one piece (without CRLF); longer ones are cut. */
#define FTPP_REPLY_LINE_MAX 8192

/* ---- client command lines ---- */

typedef enum ftpp_line_status {
    FTPP_LINE_NONE = 0, /* no complete line yet: every byte given was consumed */
    FTPP_LINE_OK,       /* lb->line holds one command line, NUL-terminated, no CR/LF */
    FTPP_LINE_TOO_LONG, /* a line longer than FTPP_CMD_MAX ended; its bytes were dropped */
    FTPP_LINE_BAD,      /* a line with a NUL or another control byte (other than TAB) ended */
} ftpp_line_status;

/* Incremental reader; zero it (or ftpp_line_init) before use. */
typedef struct ftpp_linebuf {
    char line[FTPP_CMD_MAX + 1];
    size_t len;
    bool overflow; /* the current line passed FTPP_CMD_MAX: drop until LF */
    bool bad;      /* the current line holds a NUL/control byte */
    uint8_t iac;   /* Telnet state: 0 data, 1 after IAC, 2 after IAC WILL/WONT/DO/DONT */
    bool done;     /* a line was just returned (line/len stay valid): the next feed starts anew */
} ftpp_linebuf;

void ftpp_line_init(ftpp_linebuf *lb);

/*
 * Feed `len` bytes; stops after the first line that ends. Returns how many bytes were
 * consumed (<= len) and sets *status. Call again with the rest while it returns
 * FTPP_LINE_OK/TOO_LONG/BAD. A line ends at LF; one CR right before the LF is removed.
 * Telnet (RFC 854, RFC 1123 §4.1.2.12): IAC IAC is a literal 0xFF byte; IAC WILL/WONT/DO/
 * DONT <option> and every other IAC <command> (IP, DM, AYT, NOP, ...) are removed from the
 * stream. A line may arrive split at any byte, including inside an IAC sequence or between
 * CR and LF.
 */
size_t ftpp_line_feed(ftpp_linebuf *lb, const char *data, size_t len, ftpp_line_status *status);

/*
 * Split a command line in place into its verb and argument. The verb is 3 or 4 ASCII
 * letters (RFC 959 §5.3.1), upper-cased into `verb` (5 bytes). The argument is what follows
 * one space (the rest of the line, kept as is, "" when none). Returns 0, or -EINVAL when the
 * line does not start with a valid verb followed by end of line or a space.
 */
int ftpp_cmd_split(char *line, char verb[5], char **arg);

/* ---- backend replies ---- */

typedef struct ftpp_reply_reader {
    char line[FTPP_REPLY_LINE_MAX + 1];
    size_t len;
    bool overflow; /* the current line was cut at FTPP_REPLY_LINE_MAX */
    int multi;     /* code of the multi-line reply in progress ("ddd-"), 0 when none */
} ftpp_reply_reader;

typedef struct ftpp_reply_line {
    const char *text; /* the line without CR/LF, NUL-terminated (points into the reader) */
    size_t len;
    int code;   /* the reply's code (100..599), or 0 for a line that has none */
    bool first; /* this line starts a reply */
    bool last;  /* this line ends the reply (single line, or "ddd " closing a multi-line) */
    bool cut;   /* the line was longer than FTPP_REPLY_LINE_MAX and was cut */
} ftpp_reply_line;

void ftpp_reply_init(ftpp_reply_reader *rr);

/*
 * Feed backend bytes; stops after the first line that ends. Returns how many bytes were
 * consumed and sets *got (true when `out` describes one complete line). RFC 959 §4.2: a
 * reply is "ddd text" or "ddd-text" ... "ddd text" with the same code; inside a multi-line
 * reply, lines that do not close it (any text, other codes) are part of it. A line outside
 * a multi-line reply that does not start with three digits has code 0, first and last set
 * (the caller decides: a protocol error from the backend).
 */
size_t ftpp_reply_feed(ftpp_reply_reader *rr, const char *data, size_t len, ftpp_reply_line *out,
                       bool *got);

/* ---- data-connection addresses ---- */

/* PORT h1,h2,h3,h4,p1,p2 (RFC 959): six numbers 0..255, optional spaces around them.
 * Returns 0 with an AF_INET address, or -EINVAL (also for port 0). */
int ftpp_parse_port(const char *arg, struct sockaddr_storage *out);

/* EPRT <d><af><d><addr><d><port><d> (RFC 2428 §2); d is any printable ASCII (33..126) not a
 * digit. af 1 = IPv4, 2 = IPv6 (numeric only). Returns 0, -EINVAL (malformed, port 0 or
 * > 65535) or -EAFNOSUPPORT (af other than 1 or 2). */
int ftpp_parse_eprt(const char *arg, struct sockaddr_storage *out);

/* EPSV argument (RFC 2428 §3): "" -> 0, "1" -> 1, "2" -> 2, "ALL" (any case) -> 3;
 * anything else -EINVAL. */
int ftpp_parse_epsv_arg(const char *arg);

/* The text of a 227 reply (after "227 "): the first six comma-separated numbers 0..255
 * anywhere in it (RFC 1123 §4.1.2.6: do not rely on the parentheses). Returns 0 with an
 * AF_INET address, or -EINVAL (also for port 0). */
int ftpp_parse_227(const char *text, struct sockaddr_storage *out);

/* The text of a 229 reply: "(<d><d><d>port<d>)" with any delimiter d (RFC 2428 §3).
 * Returns 0 with *port set (1..65535), or -EINVAL. */
int ftpp_parse_229(const char *text, uint16_t *port);

/* Reply lines the proxy writes. Each returns the length written (without the NUL), or
 * -ENOSPC / -EAFNOSUPPORT. */
/* "227 Entering Passive Mode (h1,h2,h3,h4,p1,p2).\r\n"; addr must be AF_INET (or v4-mapped). */
int ftpp_format_227(char *buf, size_t len, const struct sockaddr *addr, uint16_t port);
/* "229 Entering Extended Passive Mode (|||port|).\r\n" */
int ftpp_format_229(char *buf, size_t len, uint16_t port);
/* Commands toward the backend, for active mode there: "PORT h1,...,p2\r\n" (AF_INET or
 * v4-mapped) and "EPRT |1|addr|port|\r\n" / "EPRT |2|addr|port|\r\n". */
int ftpp_format_port(char *buf, size_t len, const struct sockaddr *addr);
int ftpp_format_eprt(char *buf, size_t len, const struct sockaddr *addr);

#endif

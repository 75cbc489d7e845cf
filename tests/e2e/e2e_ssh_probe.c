/* e2e_ssh_probe - an SSH client built on the libssh sshproxy links (0.12.x), for the tests
 * that need a client with the post-quantum exchanges Debian 12's OpenSSH 9.2 lacks
 * (mlkem768x25519-sha256). Connects, prints what was negotiated, optionally logs in with a
 * key and runs one command, printing its output and exit status.
 *
 *   e2e_ssh_probe [-k KEX] [-c CIPHERS] [-u USER -i KEYFILE [-e COMMAND]] HOST PORT
 *
 * Output, one key=value per line: kex, hostkey, cipher_in, cipher_out, then (with -e)
 * the command's stdout and "exit=N". Exit status: 0 done, 2 usage, 3 handshake failed
 * (the reason on stderr), 4 authentication failed, 5 the command failed to run. */
#include <libssh/libssh.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int usage(void)
{
    fprintf(stderr, "usage: e2e_ssh_probe [-k KEX] [-c CIPHERS] [-u USER -i KEYFILE [-e COMMAND]]"
                    " HOST PORT\n");
    return 2;
}

static int run_command(ssh_session s, const char *command)
{
    ssh_channel ch = ssh_channel_new(s);
    if (ch == NULL || ssh_channel_open_session(ch) != SSH_OK ||
        ssh_channel_request_exec(ch, command) != SSH_OK) {
        fprintf(stderr, "e2e_ssh_probe: exec: %s\n", ssh_get_error(s));
        return 5;
    }
    char buf[4096];
    int n;
    while ((n = ssh_channel_read_timeout(ch, buf, sizeof buf, 0, 30000)) > 0)
        fwrite(buf, 1, (size_t)n, stdout);
    ssh_channel_send_eof(ch);
    uint32_t status = 255;
    ssh_channel_get_exit_state(ch, &status, NULL, NULL);
    printf("exit=%u\n", status);
    ssh_channel_close(ch);
    ssh_channel_free(ch);
    return n < 0 ? 5 : 0;
}

int main(int argc, char **argv)
{
    const char *kex = NULL, *ciphers = NULL, *user = NULL, *keyfile = NULL, *command = NULL;
    int opt;
    while ((opt = getopt(argc, argv, "k:c:u:i:e:")) != -1) {
        switch (opt) {
        case 'k':
            kex = optarg;
            break;
        case 'c':
            ciphers = optarg;
            break;
        case 'u':
            user = optarg;
            break;
        case 'i':
            keyfile = optarg;
            break;
        case 'e':
            command = optarg;
            break;
        default:
            return usage();
        }
    }
    if (argc - optind != 2 || (command != NULL && (user == NULL || keyfile == NULL)))
        return usage();
    int port = atoi(argv[optind + 1]);
    long timeout = 20;
    bool no = false;
    ssh_init();
    ssh_session s = ssh_new();
    if (s == NULL)
        return 3;
    ssh_options_set(s, SSH_OPTIONS_HOST, argv[optind]);
    ssh_options_set(s, SSH_OPTIONS_PORT, &port);
    ssh_options_set(s, SSH_OPTIONS_TIMEOUT, &timeout);
    ssh_options_set(s, SSH_OPTIONS_PROCESS_CONFIG, &no);
    ssh_options_set(s, SSH_OPTIONS_KNOWNHOSTS, "/dev/null");
    ssh_options_set(s, SSH_OPTIONS_GLOBAL_KNOWNHOSTS, "/dev/null");
    ssh_options_set(s, SSH_OPTIONS_USER, user != NULL ? user : "probe");
    if ((kex != NULL && ssh_options_set(s, SSH_OPTIONS_KEY_EXCHANGE, kex) != SSH_OK) ||
        (ciphers != NULL && (ssh_options_set(s, SSH_OPTIONS_CIPHERS_C_S, ciphers) != SSH_OK ||
                             ssh_options_set(s, SSH_OPTIONS_CIPHERS_S_C, ciphers) != SSH_OK))) {
        fprintf(stderr, "e2e_ssh_probe: options: %s\n", ssh_get_error(s));
        return 2;
    }
    if (ssh_connect(s) != SSH_OK) {
        fprintf(stderr, "e2e_ssh_probe: handshake: %s\n", ssh_get_error(s));
        ssh_free(s);
        return 3;
    }
    /* The host key is not checked: this probe reports, it does not trust. */
    ssh_key hostkey = NULL;
    ssh_get_server_publickey(s, &hostkey);
    printf("kex=%s\nhostkey=%s\ncipher_in=%s\ncipher_out=%s\n", ssh_get_kex_algo(s),
           hostkey != NULL ? ssh_key_type_to_char(ssh_key_type(hostkey)) : "", ssh_get_cipher_in(s),
           ssh_get_cipher_out(s));
    ssh_key_free(hostkey);
    int rc = 0;
    if (user != NULL && keyfile != NULL) {
        ssh_key key = NULL;
        if (ssh_pki_import_privkey_file(keyfile, NULL, NULL, NULL, &key) != SSH_OK ||
            ssh_userauth_publickey(s, NULL, key) != SSH_AUTH_SUCCESS) {
            fprintf(stderr, "e2e_ssh_probe: authentication: %s\n", ssh_get_error(s));
            rc = 4;
        } else {
            printf("auth=ok\n");
            if (command != NULL)
                rc = run_command(s, command);
        }
        ssh_key_free(key);
    }
    fflush(stdout);
    ssh_disconnect(s);
    ssh_free(s);
    ssh_finalize();
    return rc;
}

/* sshp_algos.c - the SSH algorithms sshproxy offers: the client-facing defaults, the check
 * of an operator's lists against what the linked libssh implements, and the backend hop's
 * key exchange list.
 *
 * Client-facing defaults (SSHP_DEFAULT_* in sshp.h; docs/sshproxy.md, "Algorithms"): post-quantum
 * hybrid key exchange first, then curve25519; no NIST curves and no finite-field Diffie-Hellman
 * (ssh-audit fails the first and warns on group14); strict key exchange is added by libssh itself
 * (kex-strict-s-v00@openssh.com). Host keys ed25519 and RSA with SHA-2. AEAD ciphers first;
 * AES-CTR only paired with encrypt-then-MAC, since only EtM MACs are offered. */
#include <stdio.h>
#include <string.h>

#include "sshp.h"

/* The backend hop: the same post-quantum exchanges first, then what older backends speak
 * (OpenSSH before 8.5 has no sntrup761; the NIST curves and group14 stay for appliances).
 * This hop is the proxy's own and is not what a customer's audit sees. No group exchange:
 * libssh would read /etc/ssh/moduli on the loop. */
#define BACKEND_KEX_FALLBACK                                                                       \
    "ecdh-sha2-nistp256,ecdh-sha2-nistp384,ecdh-sha2-nistp521,diffie-hellman-group16-sha512,"      \
    "diffie-hellman-group18-sha512,diffie-hellman-group14-sha256"

const char *sshp_backend_kex(void)
{
    return SSHP_DEFAULT_KEX "," BACKEND_KEX_FALLBACK;
}

/* Is `name` (len bytes) one of the comma-separated names in `list`? */
static bool in_list(const char *list, const char *name, size_t len)
{
    for (const char *p = list; p != NULL && *p != '\0';) {
        const char *end = strchr(p, ',');
        size_t n = end != NULL ? (size_t)(end - p) : strlen(p);
        if (n == len && memcmp(p, name, len) == 0)
            return true;
        p = end != NULL ? end + 1 : NULL;
    }
    return false;
}

/* A configured list: comma-separated, no empty or repeated names, every name implemented by
 * this libssh. libssh itself drops unknown names silently and fails only when none is left,
 * so a typo would quietly narrow what clients can use. */
static int check_list(const char *list, enum ssh_kex_types_e type, char *err, size_t errlen)
{
    const char *supported = ssh_get_supported_methods(type);
    if (list == NULL || list[0] == '\0') {
        snprintf(err, errlen, "empty list");
        return -1;
    }
    for (const char *p = list; p != NULL;) {
        const char *end = strchr(p, ',');
        size_t n = end != NULL ? (size_t)(end - p) : strlen(p);
        if (n == 0) {
            snprintf(err, errlen, "empty name in the list (stray comma)");
            return -1;
        }
        if (supported == NULL || !in_list(supported, p, n)) {
            snprintf(err, errlen, "unknown algorithm \"%.*s\" (this libssh %s offers: %s)", (int)n,
                     p, ssh_version(0), supported != NULL ? supported : "none");
            return -1;
        }
        if (in_list(end != NULL ? end + 1 : NULL, p, n)) {
            snprintf(err, errlen, "\"%.*s\" is listed twice", (int)n, p);
            return -1;
        }
        p = end != NULL ? end + 1 : NULL;
    }
    return 0;
}

int sshp_check_kex(const void *value, char *err, size_t errlen)
{
    return check_list(*(const char *const *)value, SSH_KEX, err, errlen);
}

int sshp_check_ciphers(const void *value, char *err, size_t errlen)
{
    return check_list(*(const char *const *)value, SSH_CRYPT_C_S, err, errlen);
}

int sshp_check_macs(const void *value, char *err, size_t errlen)
{
    return check_list(*(const char *const *)value, SSH_MAC_C_S, err, errlen);
}

int sshp_check_hostkey_algos(const void *value, char *err, size_t errlen)
{
    return check_list(*(const char *const *)value, SSH_HOSTKEYS, err, errlen);
}

/* The host key signature algorithms a key of this type can serve. */
static const char *algos_for_key(enum ssh_keytypes_e type)
{
    switch (type) {
    case SSH_KEYTYPE_ED25519:
        return "ssh-ed25519";
    case SSH_KEYTYPE_RSA:
        return "rsa-sha2-512,rsa-sha2-256,ssh-rsa";
    case SSH_KEYTYPE_ECDSA_P256:
        return "ecdsa-sha2-nistp256";
    case SSH_KEYTYPE_ECDSA_P384:
        return "ecdsa-sha2-nistp384";
    case SSH_KEYTYPE_ECDSA_P521:
        return "ecdsa-sha2-nistp521";
    default:
        return "";
    }
}

/* At least one of ssh.hostkey_algorithms must have a key in ssh.host_keys, or every key
 * exchange would fail (libssh offers only algorithms it has a key for). Runs at start and
 * for -t, off any loop. */
int sshp_check_hostkeys_cover(const sshp_conf *cf, char *err, size_t errlen)
{
    char have[256] = "";
    size_t used = 0;
    for (size_t i = 0; i < cf->host_keys.n; i++) {
        ssh_key key = NULL;
        if (ssh_pki_import_privkey_file(cf->host_keys.v[i], NULL, NULL, NULL, &key) != SSH_OK)
            continue; /* unreadable files are reported by the host_keys check */
        const char *algos = algos_for_key(ssh_key_type(key));
        ssh_key_free(key);
        for (const char *p = algos; *p != '\0';) {
            const char *end = strchr(p, ',');
            size_t n = end != NULL ? (size_t)(end - p) : strlen(p);
            if (in_list(cf->hostkey_algorithms, p, n))
                return 0;
            p = end != NULL ? end + 1 : p + n;
        }
        used += (size_t)snprintf(have + used, used < sizeof have ? sizeof have - used : 0, "%s%s",
                                 used ? "," : "", algos);
    }
    snprintf(err, errlen, "none of \"%s\" has a key in ssh.host_keys (the keys there serve: %s)",
             cf->hostkey_algorithms, have[0] ? have : "nothing");
    return -1;
}

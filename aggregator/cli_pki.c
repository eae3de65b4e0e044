/*
 * cli_pki.c: the plait-aggregator certificate commands: enroll (issue a device
 * certificate), import-enrollment (record a device enrolled on an offline CA
 * host), revoke, renew and cert-info. Conventions: cli.c.
 */
#include "cli_int.h"
#include "stagedir.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <limits.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include "plait/adapter.h"
#include "plait/peft.h"
#include "plait/aggcfg.h"
#include "plait/aggstore.h"
#include "plait/crypto.h"
#include "plait/file.h"
#include "plait/json.h"
#include "plait/log.h"
#include "plait/lora.h"
#include "plait/model.h"
#include "plait/pki.h"
#include "plait/plait.h"
#include "plait/privacy.h"
#include "selection.h"
#include "plait/server.h"

/* ---- enroll / revoke ------------------------------------------------------ */

/* A fresh opaque device id: 128 random bits in hex. The certificate CN is this, never the
 * operator's label: TLS 1.2 sends the client certificate in clear. */
static int random_device_id(char out[33])
{
    plait_drbg_t d;
    plait_drbg_init(&d);
    static const uint8_t pers[] = "plait-device-id";
    uint8_t b[16];
    int rc = plait_drbg_seed(&d, pers, sizeof(pers) - 1);
    if (rc == 0) rc = plait_drbg_random(&d, b, sizeof(b));
    plait_drbg_free(&d);
    if (rc == 0) plait_hex(b, sizeof(b), out);
    return rc;
}

int plait__aggcli_enroll(int argc, char **argv, FILE *out, FILE *err)
{
    const char *dir = NULL, *v[5] = {NULL, NULL, NULL, NULL, NULL};
    plait_flag_t flags[] = {
        PLAIT_F_STR("device", &v[0], "LABEL", "the operator's name for the device (1..64 of A-Z a-z 0-9 . _ -)"),
        PLAIT_F_STR("csr", &v[1], "FILE", "certify the key of this request (`plait-agent keygen`)"),
        PLAIT_F_STR("out-key", &v[2], "FILE", "generate a P-256 key and write it here (0600)"),
        PLAIT_F_STR("out-cert", &v[3], "FILE", "write the certificate here"),
        PLAIT_F_STR("out-record", &v[4], "FILE", "write a signed enrollment record (offline CA host)"),
    };
    static const plait_flag_rule_t rules[] = {{PLAIT_RULE_SHOW_REQUIRED, {"device"}}, {PLAIT_RULE_SHOW_ONE_OF, {"csr", "out-key"}}};
    plait_flags_cmd_t cmd = {
        .prog = PROG " enroll",
        .args = "DIR",
        .about = "Issue a device certificate (clientAuth) with the CA in DIR. Its CN is a fresh\n"
                 "random id (128 bits, hex), never LABEL: TLS 1.2 sends client certificates in\n"
                 "clear. LABEL is the operator's name for the device; it stays in the database\n"
                 "and in this tool's output. With --csr the device keeps its key (`plait-agent\n"
                 "keygen`): the request's signature is verified and its public key certified.\n"
                 "With --out-key a fresh P-256 key is generated and written (0600).\n"
                 "Without --out-record the device is recorded in DIR's database (this host\n"
                 "serves). With --out-record (an offline CA host) the database is not touched:\n"
                 "FILE is an enrollment record signed by the CA, to be imported on the serving\n"
                 "host with `" PROG " import-enrollment`. Labels and ids are never reused.\n"
                 "Give --out-cert, --out-record or both.\n",
        .flags = flags,
        .n_flags = sizeof(flags) / sizeof(flags[0]),
        .rules = rules,
        .n_rules = sizeof(rules) / sizeof(rules[0]),
    };
    int rc = plait__aggcli_flags("enroll", &cmd, &dir, "missing deployment directory DIR (try --help)", argc, argv, out, err);
    if (rc != AGGCLI_FLAGS_OK) return rc;
    const char *label = v[0], *csr = v[1], *okey = v[2], *ocrt = v[3],
               *orec = v[4];
    if (!label || (!ocrt && !orec) || (!csr == !okey)) {
        fputs(PROG " enroll: need --device, --out-cert or --out-record, and exactly one of --csr, --out-key (try "
                   "--help)\n",
              err);
        return 2;
    }
    if (!plait_pki_device_id_valid(label)) {
        fprintf(err, PROG " enroll: bad device label '%s' (1..64 of A-Z a-z 0-9 . _ -)\n", label);
        return 2;
    }
    char id[33];
    if (random_device_id(id) != 0) {
        fprintf(err, PROG " enroll: no randomness for a device id: %s\n", plait_errmsg());
        return 1;
    }
    plait_pki_config_t pc;
    plait_pki_config_default(&pc);
    char *crt = NULL, *key = NULL, *req = NULL, *rec = NULL;
    plait_pki_cert_info_t info;
    if (csr) {
        if ((rc = plait_pki_read_file(csr, &req)) != 0) {
            fprintf(err, PROG " enroll: %s: %s\n", csr, plait_errmsg());
            return 1;
        }
        rc = plait_pki_enroll_csr(dir, &pc, (const uint8_t *)req, strlen(req), id, &crt, &info);
        plait_pki_free_pem(req);
    } else {
        rc = plait_pki_enroll(dir, &pc, id, &crt, &key, &info);
    }
    if (rc == 0 && orec) {
        char p[1200], *ca_key = NULL;
        snprintf(p, sizeof(p), "%s/ca.key", dir);
        rc = plait_pki_read_file(p, &ca_key);
        if (rc == 0) rc = plait_pki_record_create(ca_key, label, id, crt, &rec);
        plait_pki_free_pem(ca_key);
    }
    if (rc != 0) {
        fprintf(err, PROG " enroll: %s (%s)\n", plait_errmsg(), plait_err_name(rc));
        rc = 1;
        goto done;
    }
    if (!orec) {
        plait_aggstore_t *st = NULL;
        if (plait__aggcli_open_store(dir, 0, &st, err, "enroll") != 0) {
            rc = 1;
            goto done;
        }
        rc = plait_aggstore_device_enroll_labeled(st, id, label, info.fingerprint);
        plait_aggstore_close(st);
        if (rc != 0) {
            fprintf(err, PROG " enroll: device %s: %s (%s)\n", label, plait_errmsg(), plait_err_name(rc));
            rc = 1;
            goto done;
        }
    }
    if ((key && (rc = plait_pki_write_file(okey, key, 1)) != 0) || (ocrt && (rc = plait_pki_write_file(ocrt, crt, 0)) != 0) ||
        (orec && (rc = plait_pki_write_file(orec, rec, 0)) != 0)) {
        fprintf(err, PROG " enroll: %s (%s)\n", plait_errmsg(),
                orec ? "nothing was recorded; retry" : "the device is enrolled; revoke it or retry with another label");
        rc = 1;
        goto done;
    }
    fprintf(out, "%s %s as id %s serial %s sha256 %s valid until %s\n", orec ? "record for" : "enrolled", label, id,
            info.serial_hex, info.fingerprint_hex, plait__aggcli_fmt_time(info.not_after, (char[32]){0}, 32));
    if (orec) fprintf(out, "next, on the serving host: " PROG " import-enrollment DIR %s\n", orec);
    rc = 0;
done:
    plait_pki_free_pem(crt);
    plait_pki_free_pem(key);
    plait_pki_free_pem(rec);
    return rc;
}

/* Whether DIR/revoked.txt already has the line "<kind> <hex>" (case-insensitive hex). */
static int revoked_has(const char *dir, const char *kind, const char *hex)
{
    char path[1200], line[256];
    snprintf(path, sizeof(path), "%s/revoked.txt", dir);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    size_t kl = strlen(kind), hl = strlen(hex);
    int found = 0;
    while (!found && fgets(line, sizeof(line), f)) {
        char *p = line;
        while (*p == ' ' || *p == '\t') p++;
        if (strncmp(p, kind, kl) != 0 || (p[kl] != ' ' && p[kl] != '\t')) continue;
        p += kl;
        while (*p == ' ' || *p == '\t') p++;
        size_t n = strcspn(p, " \t\r\n#");
        if (n != hl) continue;
        found = 1;
        for (size_t k = 0; k < n && found; k++) {
            char a = p[k], b = hex[k];
            if (a >= 'A' && a <= 'F') a = (char)(a - 'A' + 'a');
            if (b >= 'A' && b <= 'F') b = (char)(b - 'A' + 'a');
            found = a == b;
        }
    }
    fclose(f);
    return found;
}

/* 64 hex digits into 32 bytes; 0 or -1. */
static int parse_fingerprint(const char *hex, uint8_t fp[32])
{
    return strlen(hex) == 64 && plait_unhex(hex, fp, 32) == 0 ? 0 : -1;
}

typedef struct {
    const uint8_t *fp;
    char id[PLAIT_AGGSTORE_MAX_DEVICE_ID + 1];
} find_fp_t;

static int find_fp(void *ud, const plait_aggstore_device_t *d)
{
    find_fp_t *f = ud;
    if (memcmp(d->fingerprint, f->fp, 32) == 0) snprintf(f->id, sizeof(f->id), "%s", d->id);
    return 0;
}

int plait__aggcli_import_enrollment(int argc, char **argv, FILE *out, FILE *err)
{
    const char *dir = NULL, *file = NULL;
    int help = 0, rc;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) help = 1;
        else if (argv[i][0] == '-' || (dir && file)) {
            fprintf(err, PROG " import-enrollment: unexpected argument '%.60s' (try --help)\n", argv[i]);
            return 2;
        } else if (!dir) dir = argv[i];
        else file = argv[i];
    }
    if (help) {
        fputs("usage: " PROG " import-enrollment DIR RECORD\n"
              "\n"
              "Record a device enrolled on an offline CA host (`" PROG " enroll --out-record`)\n"
              "in DIR's database. The record's signature and certificate are checked against\n"
              "DIR/ca.crt; DIR needs no ca.key.\n",
              out);
        return 0;
    }
    if (!dir || !file) {
        fputs(PROG " import-enrollment: need DIR and RECORD (try --help)\n", err);
        return 2;
    }
    char p[1200], *ca = NULL, *rec = NULL;
    char label[PLAIT_PKI_ID_MAX + 1], id[PLAIT_PKI_ID_MAX + 1];
    plait_pki_cert_info_t info;
    snprintf(p, sizeof(p), "%s/ca.crt", dir);
    if ((rc = plait_pki_read_file(p, &ca)) == 0 && (rc = plait_pki_read_file(file, &rec)) == 0)
        rc = plait_pki_record_verify(ca, rec, strlen(rec), label, id, &info);
    plait_pki_free_pem(ca);
    plait_pki_free_pem(rec);
    if (rc != 0) {
        fprintf(err, PROG " import-enrollment: %s: %s (%s)\n", file, plait_errmsg(), plait_err_name(rc));
        return 1;
    }
    plait_aggstore_t *st = NULL;
    if (plait__aggcli_open_store(dir, 0, &st, err, "import-enrollment") != 0) return 1;
    rc = plait_aggstore_device_enroll_labeled(st, id, label, info.fingerprint);
    plait_aggstore_close(st);
    if (rc != 0) {
        fprintf(err, PROG " import-enrollment: device %s: %s (%s)\n", label, plait_errmsg(), plait_err_name(rc));
        return 1;
    }
    fprintf(out, "enrolled %s as id %s serial %s sha256 %s\n", label, id, info.serial_hex, info.fingerprint_hex);
    return 0;
}

int plait__aggcli_revoke(int argc, char **argv, FILE *out, FILE *err)
{
    const char *dir = NULL, *v[4] = {NULL, NULL, NULL, NULL};
    plait_flag_t flags[] = {
        PLAIT_F_STR("device", &v[0], "LABEL|ID", "by the device's label (as enrolled) or id"),
        PLAIT_F_STR("fingerprint", &v[2], "SHA256", "by the certificate's SHA-256 (as enroll and cert-info print it)"),
        PLAIT_F_STR("cert", &v[3], "FILE", "by a certificate file (its fingerprint)"),
        PLAIT_F_STR("serial", &v[1], "HEX",
                    "by serial: appends \"serial HEX\" to revoked.txt only (the\n"
                    "database does not keep serials; the device record is unchanged)"),
    };
    static const plait_flag_rule_t rules[] = {{PLAIT_RULE_SHOW_ONE_OF, {"device", "fingerprint", "cert", "serial"}}};
    plait_flags_cmd_t cmd = {
        .prog = PROG " revoke",
        .args = "DIR",
        .about = "Revoke a device: its certificate's fingerprint is appended to DIR/revoked.txt\n"
                 "(a running aggregator reloads it within a second and refuses the certificate in\n"
                 "the TLS handshake) and the device is marked revoked in the database (checked\n"
                 "after every handshake). Its past contributions stay in committed versions.\n",
        .epilogue = "Revoking what is already revoked changes nothing and says so.\n",
        .flags = flags,
        .n_flags = sizeof(flags) / sizeof(flags[0]),
        .rules = rules,
        .n_rules = sizeof(rules) / sizeof(rules[0]),
    };
    int rc = plait__aggcli_flags("revoke", &cmd, &dir, "missing deployment directory DIR (try --help)", argc, argv, out, err);
    if (rc != AGGCLI_FLAGS_OK) return rc;
    int given = !!v[0] + !!v[1] + !!v[2] + !!v[3];
    if (given != 1) {
        fputs(PROG " revoke: give exactly one of --device, --fingerprint, --cert, --serial (try --help)\n", err);
        return 2;
    }
    if (v[1]) { /* a serial: the revocation list only */
        const char *hex = v[1];
        if (revoked_has(dir, "serial", hex)) {
            fprintf(out, "serial %s is already revoked\n", hex);
            return 0;
        }
        if ((rc = plait_pki_revoke(dir, hex, NULL)) != 0) {
            fprintf(err, PROG " revoke: serial %s: %s\n", hex, plait_errmsg());
            return rc == PLAIT_EINVAL ? 2 : 1;
        }
        fprintf(out, "revoked serial %s\n", hex);
        return 0;
    }
    plait_aggstore_t *st = NULL;
    if (plait__aggcli_open_store(dir, 0, &st, err, "revoke") != 0) return 1;
    uint8_t fp[32];
    char id[PLAIT_AGGSTORE_MAX_DEVICE_ID + 1] = "";
    const char *what = v[0] ? v[0] : v[2] ? v[2] : v[3];
    if (v[0]) {
        rc = plait_aggstore_device_find(st, v[0], id);
    } else {
        if (v[2] && parse_fingerprint(v[2], fp) != 0) {
            plait_aggstore_close(st);
            fprintf(err, PROG " revoke: --fingerprint: '%.80s' is not 64 hex digits\n", v[2]);
            return 2;
        }
        if (v[3]) {
            char *pem = NULL;
            plait_pki_cert_info_t ci;
            if ((rc = plait_pki_read_file(v[3], &pem)) == 0)
                rc = plait_pki_cert_info((const uint8_t *)pem, strlen(pem), &ci);
            plait_pki_free_pem(pem);
            if (rc != 0) {
                plait_aggstore_close(st);
                fprintf(err, PROG " revoke: %s: %s\n", v[3], plait_errmsg());
                return 1;
            }
            memcpy(fp, ci.fingerprint, 32);
        }
        find_fp_t ff = {fp, ""};
        if ((rc = plait_aggstore_devices_foreach(st, find_fp, &ff)) == 0 && !ff.id[0])
            rc = plait_fail(PLAIT_ENOENT, "no enrolled device has this certificate (a renewed device's old one is "
                                          "already revoked)");
        snprintf(id, sizeof(id), "%s", ff.id);
    }
    plait_aggstore_device_t d;
    int already = 0;
    char label[PLAIT_AGGSTORE_MAX_DEVICE_ID + 1] = "";
    if (rc == 0 && plait_aggstore_device_label(st, id, label) != 0) label[0] = '\0';
    if (rc == 0 && (rc = plait_aggstore_device_get(st, id, &d)) == 0) {
        char hex[65];
        plait_hex(d.fingerprint, 32, hex);
        already = d.revoked && revoked_has(dir, "sha256", hex);
        if (!already && !revoked_has(dir, "sha256", hex)) rc = plait_pki_revoke(dir, NULL, d.fingerprint);
        if (rc == 0 && !d.revoked) rc = plait_aggstore_device_revoke(st, id);
    }
    plait_aggstore_close(st);
    if (rc != 0) {
        fprintf(err, PROG " revoke: %s%s: %s (%s)\n", v[0] ? "device " : "", what, plait_errmsg(),
                plait_err_name(rc));
        return 1;
    }
    if (already) fprintf(out, "device %s is already revoked\n", label[0] ? label : id);
    else fprintf(out, "revoked %s\n", label[0] ? label : id);
    return 0;
}

/* ---- renew ------------------------------------------------------------------- */

int plait__aggcli_renew(int argc, char **argv, FILE *out, FILE *err)
{
    const char *dir = NULL, *v[4] = {NULL, NULL, NULL, NULL};
    plait_flag_t flags[] = {
        PLAIT_F_STR("device", &v[0], "LABEL|ID", "the device, by label or id"),
        PLAIT_F_STR("csr", &v[1], "FILE", "certify the key of this request, as for enroll"),
        PLAIT_F_STR("out-key", &v[2], "FILE", "generate a P-256 key and write it here (0600), as for enroll"),
        PLAIT_F_STR("out-cert", &v[3], "FILE", "write the new certificate here"),
    };
    static const plait_flag_rule_t rules[] = {{PLAIT_RULE_SHOW_REQUIRED, {"device"}}, {PLAIT_RULE_SHOW_ONE_OF, {"csr", "out-key"}}, {PLAIT_RULE_SHOW_REQUIRED, {"out-cert"}}};
    plait_flags_cmd_t cmd = {
        .prog = PROG " renew",
        .args = "DIR",
        .about = "Issue a new certificate for an enrolled, unrevoked device, keeping its id and its\n"
                 "history (rounds, counters): before the old certificate expires, or after a lost\n"
                 "key. The database takes the new fingerprint and the old certificate's fingerprint\n"
                 "is appended to DIR/revoked.txt, so only the new one is accepted from now on.\n"
                 "A revoked device cannot be renewed.\n",
        .flags = flags,
        .n_flags = sizeof(flags) / sizeof(flags[0]),
        .rules = rules,
        .n_rules = sizeof(rules) / sizeof(rules[0]),
    };
    int rc = plait__aggcli_flags("renew", &cmd, &dir, "missing deployment directory DIR (try --help)", argc, argv, out, err);
    if (rc != AGGCLI_FLAGS_OK) return rc;
    const char *id = v[0], *csr = v[1], *okey = v[2], *ocrt = v[3];
    if (!id || !ocrt || (!csr == !okey)) {
        fputs(PROG " renew: need --device, --out-cert and exactly one of --csr, --out-key (try --help)\n", err);
        return 2;
    }
    plait_aggstore_t *st = NULL;
    if (plait__aggcli_open_store(dir, 0, &st, err, "renew") != 0) return 1;
    plait_aggstore_device_t d;
    const char *name = id; /* as the operator named it */
    char idb[PLAIT_AGGSTORE_MAX_DEVICE_ID + 1];
    if ((rc = plait_aggstore_device_find(st, name, idb)) == 0) id = idb; /* the certificate's CN */
    if (rc != 0 || (rc = plait_aggstore_device_get(st, id, &d)) != 0 || d.revoked) {
        fprintf(err, PROG " renew: device %s: %s\n", name,
                rc != 0 ? plait_errmsg() : "revoked (enroll it again under a new label instead)");
        plait_aggstore_close(st);
        return 1;
    }
    plait_pki_config_t pc;
    plait_pki_config_default(&pc);
    char *crt = NULL, *key = NULL, *req = NULL;
    plait_pki_cert_info_t info;
    if (csr) {
        if ((rc = plait_pki_read_file(csr, &req)) == 0)
            rc = plait_pki_enroll_csr(dir, &pc, (const uint8_t *)req, strlen(req), id, &crt, &info);
        plait_pki_free_pem(req);
    } else {
        rc = plait_pki_enroll(dir, &pc, id, &crt, &key, &info);
    }
    if (rc == 0 && key) rc = plait_pki_write_file(okey, key, 1);
    if (rc == 0) rc = plait_pki_write_file(ocrt, crt, 0);
    if (rc == 0) rc = plait_aggstore_device_rekey(st, id, info.fingerprint);
    if (rc == 0) rc = plait_pki_revoke(dir, NULL, d.fingerprint); /* the old certificate */
    plait_aggstore_close(st);
    plait_pki_free_pem(crt);
    plait_pki_free_pem(key);
    if (rc != 0) {
        fprintf(err, PROG " renew: device %s: %s (%s)\n", id, plait_errmsg(), plait_err_name(rc));
        return 1;
    }
    char tb[32];
    fprintf(out, "renewed %s (id %s) serial %s sha256 %s valid until %s (the old certificate is revoked)\n", name,
            id, info.serial_hex, info.fingerprint_hex, plait__aggcli_fmt_time(info.not_after, tb, sizeof(tb)));
    return 0;
}

/* ---- cert-info ---------------------------------------------------------------- */

int plait__aggcli_cert_info(int argc, char **argv, FILE *out, FILE *err)
{
    const char *file = NULL, *ca_path = NULL;
    int json = 0;
    plait_flag_t flags[] = {
        PLAIT_F_STR("ca", &ca_path, "CA.crt", "also verify it against this CA, as the TLS handshake does"),
        PLAIT_F_SET("json", &json, 1, "one JSON object"),
    };
    plait_flags_cmd_t cmd = {
        .prog = PROG " cert-info",
        .args = "FILE",
        .about = "Device id (CN), serial, SHA-256 fingerprint and validity of a certificate (PEM\n"
                 "or DER); with --ca also whether it verifies against that CA as a device\n"
                 "certificate, exactly as the TLS handshake checks it (chain, dates, usage).\n",
        .flags = flags,
        .n_flags = sizeof(flags) / sizeof(flags[0]),
    };
    int rc = plait__aggcli_flags("cert-info", &cmd, &file, "missing FILE (try --help)", argc, argv, out, err);
    if (rc != AGGCLI_FLAGS_OK) return rc;
    uint8_t *buf = NULL;
    size_t len = 0;
    plait_pki_cert_info_t ci;
    rc = plait_file_read(file, "certificate", 65535, &buf, &len); /* a FIFO is refused, not waited on */
    if (rc == 0) rc = plait_pki_cert_info(buf, len, &ci);
    free(buf);
    if (rc != 0) {
        fprintf(err, PROG " cert-info: %s: %s\n", file, plait_errmsg());
        return 1;
    }
    const char *verdict = NULL;
    char why[256] = "";
    if (ca_path) {
        char *ca = NULL, *crt = NULL;
        int vr = plait_pki_read_file(ca_path, &ca);
        if (vr == 0) vr = plait_pki_read_file(file, &crt);
        if (vr == 0) {
            const char *reason = NULL;
            vr = plait_pki_verify(ca, crt, 1, &reason);
            snprintf(why, sizeof(why), "%s", vr == 0 ? "ok" : reason ? reason : plait_errmsg());
        } else {
            snprintf(why, sizeof(why), "%s", plait_errmsg());
        }
        plait_pki_free_pem(ca);
        plait_pki_free_pem(crt);
        verdict = why;
    }
    char a[32], b[32];
    if (json) {
        plait_buf_t j;
        plait_buf_init(&j, 0);
        plait_buf_printf(&j, "{\"device\": ");
        plait_buf_json_string(&j, ci.device_id, strlen(ci.device_id));
        plait_buf_printf(&j, ", \"serial\": \"%s\", \"sha256\": \"%s\", \"not_before\": \"%s\", \"not_after\": \"%s\", "
                             "\"ca\": %s",
                         ci.serial_hex, ci.fingerprint_hex, plait__aggcli_fmt_time(ci.not_before, a, sizeof(a)),
                         plait__aggcli_fmt_time(ci.not_after, b, sizeof(b)), ci.is_ca ? "true" : "false");
        if (verdict) {
            plait_buf_printf(&j, ", \"verify\": ");
            plait_buf_json_string(&j, verdict, strlen(verdict));
        }
        plait_buf_printf(&j, "}\n");
        if (plait_buf_status(&j) == 0) fwrite(j.data, 1, j.len, out);
        plait_buf_free(&j);
    } else {
        fprintf(out, "device: %s\nserial: %s\nsha256: %s\nvalid: %s to %s\nca: %s\n", ci.device_id[0] ? ci.device_id : "-",
                ci.serial_hex, ci.fingerprint_hex, plait__aggcli_fmt_time(ci.not_before, a, sizeof(a)),
                plait__aggcli_fmt_time(ci.not_after, b, sizeof(b)), ci.is_ca ? "yes" : "no");
        if (verdict) fprintf(out, "verify: %s\n", verdict);
    }
    return verdict && strcmp(verdict, "ok") != 0 ? 1 : 0;
}


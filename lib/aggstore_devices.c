/*
 * aggstore_devices.c: enrolled devices (part of aggstore.c): enrolment,
 * revocation, re-keying, the certificate check at connect, the operator's
 * labels, and participation counting (devices.last_round only grows, so a
 * device is counted at most once per round).
 */
#include "aggstore_int.h"

#include <string.h>

#include "plait/crypto.h"

/* ------------------------------------------------------------------------ */
/* Devices                                                                   */
/* ------------------------------------------------------------------------ */

#define DEVICE_COLS "id, fingerprint, enrolled, revoked, revoked_at, last_seen, rounds_participated, last_round"

int plait__aggstore_check_id(const char *id)
{
    if (!plait__aggstore_printable_ok(id, PLAIT_AGGSTORE_MAX_DEVICE_ID))
        return plait_fail(PLAIT_EINVAL, "aggstore: device id must be 1..%d printable ASCII bytes",
                          PLAIT_AGGSTORE_MAX_DEVICE_ID);
    return 0;
}

/* Validate the current DEVICE_COLS row into d. */
static int read_device(sqlite3_stmt *s, plait_aggstore_device_t *d)
{
    memset(d, 0, sizeof(*d));
    size_t n;
    const unsigned char *id = plait__aggstore_text_col(s, 0, &n);
    if (!plait__aggstore_printable_bytes_ok(id, n, PLAIT_AGGSTORE_MAX_DEVICE_ID))
        return plait_fail(PLAIT_EPROTO, "aggstore: devices: a row has a malformed id");
    memcpy(d->id, id, n);
    d->id[n] = '\0';
    const char *bad = NULL;
    int64_t revoked = 0;
    if (sqlite3_column_type(s, 1) != SQLITE_BLOB || sqlite3_column_bytes(s, 1) != 32) bad = "fingerprint";
    else if (!plait__aggstore_nonneg(s, 2, &d->enrolled)) bad = "enrolled";
    else if (!plait__aggstore_nonneg(s, 3, &revoked) || revoked > 1) bad = "revoked";
    else if (!plait__aggstore_opt_nonneg(s, 4, &d->revoked_at)) bad = "revoked_at";
    else if (!plait__aggstore_opt_nonneg(s, 5, &d->last_seen)) bad = "last_seen";
    else if (!plait__aggstore_nonneg(s, 6, &d->rounds_participated)) bad = "rounds_participated";
    else if (!plait__aggstore_nonneg(s, 7, &d->last_round)) bad = "last_round";
    if (bad) return plait_fail(PLAIT_EPROTO, "aggstore: devices: device '%s': malformed %s", d->id, bad);
    memcpy(d->fingerprint, sqlite3_column_blob(s, 1), 32);
    d->revoked = revoked == 1;
    return 0;
}

/* Read one device; PLAIT_ENOENT if absent. */
static int load_device(plait_aggstore_t *st, const char *id, plait_aggstore_device_t *d)
{
    sqlite3_stmt *s;
    int ret = plait__aggstore_prep(st, "SELECT " DEVICE_COLS " FROM devices WHERE id = ?1", &s);
    if (ret != 0) return ret;
    sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) ret = read_device(s, d);
    else if (rc == SQLITE_DONE) ret = plait_fail(PLAIT_ENOENT, "aggstore: no device '%s'", id);
    else ret = plait__aggstore_sqfail(st->db, rc, "reading device");
    sqlite3_finalize(s);
    return ret;
}

int plait_aggstore_device_enroll(plait_aggstore_t *st, const char *id, const uint8_t fingerprint[32])
{
    int ret = plait__aggstore_check_usable(st);
    if (ret != 0 || (ret = plait__aggstore_check_id(id)) != 0) return ret;
    if (!fingerprint) return plait_fail(PLAIT_EINVAL, "aggstore: fingerprint is NULL");
    sqlite3_stmt *s;
    if ((ret = plait__aggstore_prep(
             st, "INSERT INTO devices(id, fingerprint, enrolled) VALUES (?1, ?2, ?3)", &s)) != 0)
        return ret;
    sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_blob(s, 2, fingerprint, 32, SQLITE_STATIC);
    sqlite3_bind_int64(s, 3, plait__aggstore_now_s());
    int rc = sqlite3_step(s);
    if (rc == SQLITE_DONE) ret = 0;
    else if ((rc & 0xff) == SQLITE_CONSTRAINT)
        ret = plait_fail(PLAIT_EINVAL, "aggstore: device '%s' is already enrolled", id);
    else ret = plait__aggstore_sqfail(st->db, rc, "enrolling device");
    sqlite3_finalize(s);
    return ret;
}

/* Run a one-device UPDATE with ?1 = id, ?2 = now; PLAIT_ENOENT if no row changed. */
static int device_update(plait_aggstore_t *st, const char *id, const char *sql, const char *what)
{
    int ret = plait__aggstore_check_usable(st);
    if (ret != 0 || (ret = plait__aggstore_check_id(id)) != 0) return ret;
    sqlite3_stmt *s;
    if ((ret = plait__aggstore_prep(st, sql, &s)) != 0) return ret;
    sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 2, plait__aggstore_now_s());
    if ((ret = plait__aggstore_step_done(st, s, what)) != 0) return ret;
    if (sqlite3_changes64(st->db) == 0) return plait_fail(PLAIT_ENOENT, "aggstore: no device '%s'", id);
    return 0;
}

int plait_aggstore_device_revoke(plait_aggstore_t *st, const char *id)
{
    return device_update(st, id,
                         "UPDATE devices SET revoked = 1, revoked_at = coalesce(revoked_at, ?2) WHERE id = ?1",
                         "revoking device");
}

int plait_aggstore_device_touch(plait_aggstore_t *st, const char *id)
{
    return device_update(st, id, "UPDATE devices SET last_seen = ?2 WHERE id = ?1", "touching device");
}

int plait_aggstore_device_rekey(plait_aggstore_t *st, const char *id, const uint8_t fingerprint[32])
{
    int ret = plait__aggstore_check_usable(st);
    if (ret != 0 || (ret = plait__aggstore_check_id(id)) != 0) return ret;
    if (!fingerprint) return plait_fail(PLAIT_EINVAL, "aggstore: fingerprint is NULL");
    sqlite3_stmt *s;
    if ((ret = plait__aggstore_prep(
             st, "UPDATE devices SET fingerprint = ?2 WHERE id = ?1 AND revoked = 0", &s)) != 0)
        return ret;
    sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_blob(s, 2, fingerprint, 32, SQLITE_STATIC);
    if ((ret = plait__aggstore_step_done(st, s, "renewing device")) != 0) return ret;
    if (sqlite3_changes64(st->db) == 0)
        return plait_fail(PLAIT_ENOENT, "aggstore: no enrolled, unrevoked device '%s'", id);
    return 0;
}

int plait_aggstore_device_get(plait_aggstore_t *st, const char *id, plait_aggstore_device_t *out)
{
    int ret = plait__aggstore_check_usable(st);
    if (ret != 0 || (ret = plait__aggstore_check_id(id)) != 0) return ret;
    if (!out) return plait_fail(PLAIT_EINVAL, "aggstore: out is NULL");
    return load_device(st, id, out);
}

int plait_aggstore_device_is_revoked(plait_aggstore_t *st, const char *id, bool *revoked)
{
    if (!revoked) return plait_fail(PLAIT_EINVAL, "aggstore: out is NULL");
    plait_aggstore_device_t d;
    int ret = plait_aggstore_device_get(st, id, &d);
    if (ret == 0) *revoked = d.revoked;
    return ret;
}

int plait_aggstore_device_check(plait_aggstore_t *st, const char *id, const uint8_t fingerprint[32])
{
    if (!fingerprint) return plait_fail(PLAIT_EINVAL, "aggstore: fingerprint is NULL");
    plait_aggstore_device_t d;
    int ret = plait_aggstore_device_get(st, id, &d);
    if (ret != 0) return ret;
    if (d.revoked) return plait_fail(PLAIT_EAUTH, "aggstore: device '%s' is revoked", id);
    if (plait_ct_memcmp(d.fingerprint, fingerprint, 32) != 0)
        return plait_fail(PLAIT_EAUTH, "aggstore: device '%s' presented a certificate other than the enrolled one",
                          id);
    return 0;
}

int plait_aggstore_device_mark_uploaded(plait_aggstore_t *st, const char *id, int64_t round)
{
    int ret = plait__aggstore_check_usable(st);
    if (ret != 0 || (ret = plait__aggstore_check_id(id)) != 0) return ret;
    if (round < 1) return plait_fail(PLAIT_EINVAL, "aggstore: bad round id %lld", (long long)round);
    if ((ret = plait__aggstore_tx_begin(st)) != 0) return ret;
    plait_aggstore_device_t d;
    plait_aggstore_round_state_t state;
    int64_t base;
    if ((ret = load_device(st, id, &d)) != 0) goto fail;
    if (d.revoked) {
        ret = plait_fail(PLAIT_EAUTH, "aggstore: device '%s' is revoked", id);
        goto fail;
    }
    if ((ret = plait__aggstore_round_state(st, round, &state, &base)) != 0) goto fail;
    if (state != PLAIT_AGGSTORE_ROUND_OPEN) {
        ret = plait_fail(PLAIT_ESTALE, "aggstore: round %lld is %s, not open", (long long)round,
                         plait_aggstore_round_state_name(state));
        goto fail;
    }
    if (d.last_round >= round) {
        ret = plait_fail(PLAIT_ESTALE, "aggstore: device '%s' already uploaded to round %lld", id,
                         (long long)d.last_round);
        goto fail;
    }
    sqlite3_stmt *s;
    if ((ret = plait__aggstore_prep(st,
                    "UPDATE devices SET last_round = ?2, rounds_participated = rounds_participated + 1,"
                    " last_seen = ?3 WHERE id = ?1",
                    &s)) != 0)
        goto fail;
    sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 2, round);
    sqlite3_bind_int64(s, 3, plait__aggstore_now_s());
    if ((ret = plait__aggstore_step_done(st, s, "marking upload")) != 0) goto fail;
    return plait__aggstore_tx_commit(st);
fail:
    plait__aggstore_tx_rollback(st);
    return ret;
}

int plait_aggstore_devices_foreach(plait_aggstore_t *st, plait_aggstore_device_cb cb, void *ud)
{
    int ret = plait__aggstore_check_usable(st);
    if (ret != 0) return ret;
    if (!cb) return plait_fail(PLAIT_EINVAL, "aggstore: callback is NULL");
    sqlite3_stmt *s;
    if ((ret = plait__aggstore_prep(st, "SELECT " DEVICE_COLS " FROM devices ORDER BY id", &s)) != 0) return ret;
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        plait_aggstore_device_t d;
        if ((ret = read_device(s, &d)) != 0) break;
        st->in_cb = true;
        ret = cb(ud, &d);
        st->in_cb = false;
        if (ret != 0) break;
    }
    if (ret == 0 && rc != SQLITE_DONE) ret = plait__aggstore_sqfail(st->db, rc, "reading devices");
    sqlite3_finalize(s);
    return ret;
}

/* ---- labels ---------------------------------------------------------------- */

/* 1 if the store has the device_labels table (a read-only open of an old store may not). */
static int have_labels(plait_aggstore_t *st, int *yes)
{
    int64_t n = 0;
    bool found;
    int ret = plait__aggstore_query_i64(
        st, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'device_labels'",
        false, 0, &n, &found, "inspecting schema");
    *yes = ret == 0 && n == 1;
    return ret;
}

int plait_aggstore_device_enroll_labeled(plait_aggstore_t *st, const char *id, const char *label,
                                         const uint8_t fingerprint[32])
{
    int ret = plait__aggstore_check_usable(st);
    if (ret != 0 || (ret = plait__aggstore_check_id(id)) != 0 ||
        (ret = plait__aggstore_check_id(label)) != 0)
        return ret;
    /* Lookups by name try labels first: a label shaped like a device id (32 hex digits) could
     * shadow another device's id, so only a device's own id may serve as its label. */
    if (strcmp(label, id) != 0 && strlen(label) == 32 && strspn(label, "0123456789abcdefABCDEF") == 32)
        return plait_fail(PLAIT_EINVAL, "aggstore: label '%s' looks like a device id; choose another", label);
    if ((ret = plait__aggstore_tx_begin(st)) != 0) return ret;
    if ((ret = plait_aggstore_device_enroll(st, id, fingerprint)) != 0) goto fail;
    sqlite3_stmt *s;
    if ((ret = plait__aggstore_prep(st, "INSERT INTO device_labels(label, id) VALUES (?1, ?2)", &s)) != 0) goto fail;
    sqlite3_bind_text(s, 1, label, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_DONE) ret = 0;
    else if ((rc & 0xff) == SQLITE_CONSTRAINT)
        ret = plait_fail(PLAIT_EINVAL, "aggstore: label '%s' is already taken (labels are never reused)", label);
    else ret = plait__aggstore_sqfail(st->db, rc, "labelling device");
    sqlite3_finalize(s);
    if (ret != 0) goto fail;
    return plait__aggstore_tx_commit(st);
fail:
    plait__aggstore_tx_rollback(st);
    return ret;
}

/* SELECT one text column by one text key into out (cap bytes); PLAIT_ENOENT if no row. */
static int label_query(plait_aggstore_t *st, const char *sql, const char *key, char *out, size_t cap)
{
    int yes = 0, ret = plait__aggstore_check_usable(st);
    if (ret != 0 || (ret = plait__aggstore_check_id(key)) != 0) return ret;
    if (!out) return plait_fail(PLAIT_EINVAL, "aggstore: out is NULL");
    out[0] = '\0';
    if ((ret = have_labels(st, &yes)) != 0) return ret;
    if (!yes) return plait_fail(PLAIT_ENOENT, "aggstore: no label '%s'", key);
    sqlite3_stmt *s;
    if ((ret = plait__aggstore_prep(st, sql, &s)) != 0) return ret;
    sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        size_t n;
        const unsigned char *v = plait__aggstore_text_col(s, 0, &n);
        if (!plait__aggstore_printable_bytes_ok(v, n, PLAIT_AGGSTORE_MAX_DEVICE_ID) || n >= cap) {
            ret = plait_fail(PLAIT_EPROTO, "aggstore: device_labels: a malformed row");
        } else {
            memcpy(out, v, n);
            out[n] = '\0';
        }
    } else if (rc == SQLITE_DONE) {
        ret = plait_fail(PLAIT_ENOENT, "aggstore: no device labelled or with id '%s'", key);
    } else {
        ret = plait__aggstore_sqfail(st->db, rc, "reading device_labels");
    }
    sqlite3_finalize(s);
    return ret;
}

int plait_aggstore_device_find(plait_aggstore_t *st, const char *label_or_id, char id[PLAIT_AGGSTORE_MAX_DEVICE_ID + 1])
{
    int ret = label_query(st, "SELECT id FROM device_labels WHERE label = ?1", label_or_id, id,
                          PLAIT_AGGSTORE_MAX_DEVICE_ID + 1);
    if (ret != PLAIT_ENOENT) return ret;
    plait_aggstore_device_t d;
    if ((ret = load_device(st, label_or_id, &d)) != 0) return ret;
    memcpy(id, d.id, sizeof(d.id));
    return 0;
}

int plait_aggstore_device_label(plait_aggstore_t *st, const char *id, char label[PLAIT_AGGSTORE_MAX_DEVICE_ID + 1])
{
    return label_query(st, "SELECT label FROM device_labels WHERE id = ?1", id, label,
                       PLAIT_AGGSTORE_MAX_DEVICE_ID + 1);
}

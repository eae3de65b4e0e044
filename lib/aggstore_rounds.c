/*
 * aggstore_rounds.c: a round's life in the aggregator store (part of
 * aggstore.c): begin, counters and rejections, failure, the one-transaction
 * commit of round state, version, ledger row and metrics, and reading rounds
 * back. At most one round is open; it leaves 'open' exactly once.
 */
#include "aggstore_int.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "plait/crashpoint.h"
#include "plait/crypto.h"
#include "plait/ddg.h"
#include "plait/json.h"

#define MAX_COHORT 1000000000LL

static const char *const STATE_NAMES[] = {"open", "committed", "failed", "abandoned"};

const char *plait_aggstore_round_state_name(plait_aggstore_round_state_t s)
{
    return (unsigned)s < 4 ? STATE_NAMES[s] : "?";
}

/* ------------------------------------------------------------------------ */
/* Rounds                                                                    */
/* ------------------------------------------------------------------------ */

/* Check a JSON object of n bytes (n excludes any NUL). */
static int json_object_ok(const char *text, size_t n)
{
    plait_json_limits_t lim;
    plait_json_limits_default(&lim);
    lim.max_nodes = 100000;
    plait_json_t *root = NULL;
    int ret = plait_json_parse_ex(text, n, &lim, &root);
    if (ret == 0 && plait_json_type(root) != PLAIT_JSON_OBJECT) ret = PLAIT_EPROTO;
    plait_json_free(root);
    return ret;
}

/* State of a round; PLAIT_ENOENT if none. Also validates the state text. */
int plait__aggstore_round_state(plait_aggstore_t *st, int64_t round, plait_aggstore_round_state_t *state, int64_t *base)
{
    sqlite3_stmt *s;
    int ret = plait__aggstore_prep(st, "SELECT state, base_version FROM rounds WHERE id = ?1", &s);
    if (ret != 0) return ret;
    sqlite3_bind_int64(s, 1, round);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        size_t tl;
        const unsigned char *t = plait__aggstore_text_col(s, 0, &tl);
        ret = plait_fail(PLAIT_EPROTO, "aggstore: rounds: round %lld: malformed state", (long long)round);
        for (int i = 0; i < 4 && t; i++)
            if (strcmp((const char *)t, STATE_NAMES[i]) == 0) {
                *state = (plait_aggstore_round_state_t)i;
                ret = 0;
            }
        if (ret == 0 && !plait__aggstore_nonneg(s, 1, base))
            ret = plait_fail(PLAIT_EPROTO, "aggstore: rounds: round %lld: malformed base_version", (long long)round);
    } else if (rc == SQLITE_DONE) {
        ret = plait_fail(PLAIT_ENOENT, "aggstore: no round %lld", (long long)round);
    } else {
        ret = plait__aggstore_sqfail(st->db, rc, "reading round");
    }
    sqlite3_finalize(s);
    return ret;
}

static int check_stats(const plait_aggstore_t *st, const plait_aggstore_stats_t *x)
{
    if (x->participants < 0 || x->dropouts < 0 || x->bytes_up < 0 || x->bytes_down < 0)
        return plait_fail(PLAIT_EINVAL, "aggstore: negative round counter");
    if (x->n_rejections > st->max_reasons)
        return plait_fail(PLAIT_ETOOBIG, "aggstore: %zu rejection reasons, max %zu", x->n_rejections,
                          st->max_reasons);
    if (x->n_rejections > 0 && !x->rejections) return plait_fail(PLAIT_EINVAL, "aggstore: rejections is NULL");
    for (size_t i = 0; i < x->n_rejections; i++) {
        if (!plait__aggstore_printable_ok(x->rejections[i].reason, PLAIT_AGGSTORE_MAX_KEY))
            return plait_fail(PLAIT_EINVAL, "aggstore: rejection reason %zu is not 1..%d printable bytes", i,
                              PLAIT_AGGSTORE_MAX_KEY);
        if (x->rejections[i].count < 0)
            return plait_fail(PLAIT_EINVAL, "aggstore: rejection '%s' has a negative count",
                              x->rejections[i].reason);
        for (size_t j = 0; j < i; j++)
            if (strcmp(x->rejections[i].reason, x->rejections[j].reason) == 0)
                return plait_fail(PLAIT_EINVAL, "aggstore: rejection reason '%s' given twice",
                                  x->rejections[i].reason);
    }
    return 0;
}

/* Counters of a round (step 1 of a commit writes them with the state). */
static int write_counters(plait_aggstore_t *st, int64_t round, const plait_aggstore_stats_t *x)
{
    sqlite3_stmt *s;
    int ret = plait__aggstore_prep(st,
                   "UPDATE rounds SET participants = ?2, dropouts = ?3, bytes_up = ?4, bytes_down = ?5"
                   " WHERE id = ?1",
                   &s);
    if (ret != 0) return ret;
    sqlite3_bind_int64(s, 1, round);
    sqlite3_bind_int64(s, 2, x->participants);
    sqlite3_bind_int64(s, 3, x->dropouts);
    sqlite3_bind_int64(s, 4, x->bytes_up);
    sqlite3_bind_int64(s, 5, x->bytes_down);
    return plait__aggstore_step_done(st, s, "writing round counters");
}

static int write_rejections(plait_aggstore_t *st, int64_t round, const plait_aggstore_stats_t *x)
{
    sqlite3_stmt *s;
    int ret = plait__aggstore_prep(st, "DELETE FROM rejections WHERE round_id = ?1", &s);
    if (ret != 0) return ret;
    sqlite3_bind_int64(s, 1, round);
    if ((ret = plait__aggstore_step_done(st, s, "replacing rejections")) != 0) return ret;
    for (size_t i = 0; i < x->n_rejections; i++) {
        if ((ret = plait__aggstore_prep(
                 st, "INSERT INTO rejections(round_id, reason, count) VALUES (?1, ?2, ?3)", &s)) !=
            0)
            return ret;
        sqlite3_bind_int64(s, 1, round);
        sqlite3_bind_text(s, 2, x->rejections[i].reason, -1, SQLITE_STATIC);
        sqlite3_bind_int64(s, 3, x->rejections[i].count);
        if ((ret = plait__aggstore_step_done(st, s, "writing rejections")) != 0) return ret;
    }
    return 0;
}

int plait_aggstore_round_begin(plait_aggstore_t *st, int64_t target_cohort, int64_t min_cohort,
                               const char *task_config, int64_t base_version, int64_t *round_out)
{
    int ret = plait__aggstore_check_usable(st);
    if (ret != 0) return ret;
    if (!round_out) return plait_fail(PLAIT_EINVAL, "aggstore: round_out is NULL");
    if (target_cohort < 1 || target_cohort > MAX_COHORT)
        return plait_fail(PLAIT_EINVAL, "aggstore: target_cohort %lld not in 1..%lld", (long long)target_cohort,
                          MAX_COHORT);
    if (min_cohort < 1 || min_cohort > target_cohort)
        return plait_fail(PLAIT_EINVAL, "aggstore: min_cohort %lld not in 1..%lld", (long long)min_cohort,
                          (long long)target_cohort);
    if (!task_config) return plait_fail(PLAIT_EINVAL, "aggstore: task_config is NULL");
    size_t clen = strnlen(task_config, st->max_config + 1);
    if (clen > st->max_config)
        return plait_fail(PLAIT_ETOOBIG, "aggstore: task config over %zu bytes", st->max_config);
    if (json_object_ok(task_config, clen) != 0)
        return plait_fail(PLAIT_EINVAL, "aggstore: task config is not a JSON object");
    if (base_version < 0) return plait_fail(PLAIT_EINVAL, "aggstore: negative base_version");
    if ((ret = plait__aggstore_tx_begin(st)) != 0) return ret;
    int64_t open_id = 0, latest = 0;
    bool found;
    if ((ret = plait__aggstore_query_i64(st, "SELECT id FROM rounds WHERE state = 'open'", false, 0, &open_id, &found,
                         "looking for an open round")) != 0)
        goto fail;
    if (found) {
        ret = plait_fail(PLAIT_EINVAL, "aggstore: round %lld is still open", (long long)open_id);
        goto fail;
    }
    if ((ret = plait__aggstore_query_i64(st, "SELECT coalesce(max(number), 0) FROM versions", false, 0, &latest, &found,
                         "reading latest version")) != 0)
        goto fail;
    if (base_version != latest) {
        ret = plait_fail(PLAIT_ESTALE, "aggstore: base version %lld is not the latest (%lld)",
                         (long long)base_version, (long long)latest);
        goto fail;
    }
    sqlite3_stmt *s;
    if ((ret = plait__aggstore_prep(st,
                    "INSERT INTO rounds(state, started, target_cohort, min_cohort, base_version, task_config)"
                    " VALUES ('open', ?1, ?2, ?3, ?4, ?5)",
                    &s)) != 0)
        goto fail;
    sqlite3_bind_int64(s, 1, plait__aggstore_now_s());
    sqlite3_bind_int64(s, 2, target_cohort);
    sqlite3_bind_int64(s, 3, min_cohort);
    sqlite3_bind_int64(s, 4, base_version);
    sqlite3_bind_text(s, 5, task_config, (int)clen, SQLITE_STATIC);
    if ((ret = plait__aggstore_step_done(st, s, "beginning round")) != 0) goto fail;
    int64_t id = sqlite3_last_insert_rowid(st->db);
    if ((ret = plait__aggstore_tx_commit(st)) != 0) return ret;
    *round_out = id;
    return 0;
fail:
    plait__aggstore_tx_rollback(st);
    return ret;
}

/* Begin a transaction and check that round is open. */
static int begin_on_open_round(plait_aggstore_t *st, int64_t round, int64_t *base)
{
    int ret = plait__aggstore_tx_begin(st);
    if (ret != 0) return ret;
    plait_aggstore_round_state_t state;
    if ((ret = plait__aggstore_round_state(st, round, &state, base)) != 0) goto fail;
    if (state != PLAIT_AGGSTORE_ROUND_OPEN) {
        ret = plait_fail(PLAIT_ESTALE, "aggstore: round %lld is %s, not open", (long long)round, STATE_NAMES[state]);
        goto fail;
    }
    return 0;
fail:
    plait__aggstore_tx_rollback(st);
    return ret;
}

int plait_aggstore_round_record_stats(plait_aggstore_t *st, int64_t round, const plait_aggstore_stats_t *stats)
{
    int ret = plait__aggstore_check_usable(st);
    if (ret != 0) return ret;
    if (!stats) return plait_fail(PLAIT_EINVAL, "aggstore: stats is NULL");
    if ((ret = check_stats(st, stats)) != 0) return ret;
    int64_t base;
    if ((ret = begin_on_open_round(st, round, &base)) != 0) return ret;
    if ((ret = write_counters(st, round, stats)) != 0 || (ret = write_rejections(st, round, stats)) != 0) {
        plait__aggstore_tx_rollback(st);
        return ret;
    }
    return plait__aggstore_tx_commit(st);
}

/* Length of the longest prefix of s (at most max bytes) that is whole UTF-8 characters. */
static size_t utf8_prefix(const char *s, size_t max)
{
    size_t n = strnlen(s, max);
    while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80 && s[n] != '\0') n--; /* do not split a character */
    return n;
}

int plait_aggstore_round_fail(plait_aggstore_t *st, int64_t round, const char *reason,
                              const plait_aggstore_stats_t *stats)
{
    int ret = plait__aggstore_check_usable(st);
    if (ret != 0) return ret;
    if (stats && (ret = check_stats(st, stats)) != 0) return ret;
    int64_t base;
    if ((ret = begin_on_open_round(st, round, &base)) != 0) return ret;
    if (stats && ((ret = write_counters(st, round, stats)) != 0 || (ret = write_rejections(st, round, stats)) != 0))
        goto fail;
    sqlite3_stmt *s;
    if ((ret = plait__aggstore_prep(st,
                                    "UPDATE rounds SET state = 'failed', ended = max(?2, started), "
                                    "reason = ?3 WHERE id = ?1",
                                    &s)) != 0)
        goto fail;
    sqlite3_bind_int64(s, 1, round);
    sqlite3_bind_int64(s, 2, plait__aggstore_now_s());
    sqlite3_bind_text(s, 3, reason ? reason : "", reason ? (int)utf8_prefix(reason, PLAIT_AGGSTORE_MAX_REASON) : 0,
                      SQLITE_STATIC);
    if ((ret = plait__aggstore_step_done(st, s, "failing round")) != 0) goto fail;
    return plait__aggstore_tx_commit(st);
fail:
    plait__aggstore_tx_rollback(st);
    return ret;
}

/* ------------------------------------------------------------------------ */
/* Commit                                                                    */
/* ------------------------------------------------------------------------ */

static int check_ledger(const plait_aggstore_ledger_t *l)
{
    if (!(l->q >= 0.0 && l->q <= 1.0)) return plait_fail(PLAIT_EINVAL, "aggstore: ledger q not in [0, 1]");
    if (!(l->noise_multiplier >= 0.0 && isfinite(l->noise_multiplier)))
        return plait_fail(PLAIT_EINVAL, "aggstore: ledger noise_multiplier not finite and >= 0");
    if (l->steps < 1) return plait_fail(PLAIT_EINVAL, "aggstore: ledger steps < 1");
    if (!(l->delta > 0.0 && l->delta < 1.0)) return plait_fail(PLAIT_EINVAL, "aggstore: ledger delta not in (0, 1)");
    if (!(l->epsilon >= 0.0)) return plait_fail(PLAIT_EINVAL, "aggstore: ledger epsilon not >= 0");
    if (!(l->clip >= 0.0 && isfinite(l->clip)))
        return plait_fail(PLAIT_EINVAL, "aggstore: ledger clip not finite and >= 0");
    if (strcmp(l->mechanism, "ddg") == 0 &&
        !(l->ddg_dim >= 1 && l->ddg_n >= 1 && l->ddg_n <= PLAIT_DDG_MAX_DEVICES &&
          l->ddg_var > 0.0 && isfinite(l->ddg_var) && l->ddg_l2 > 0.0 && isfinite(l->ddg_l2)))
        return plait_fail(
            PLAIT_EINVAL,
            "aggstore: ledger ddg row needs ddg_dim, ddg_n in 1..%u and finite ddg_var, ddg_l2 > 0",
            PLAIT_DDG_MAX_DEVICES);
    if (l->mechanism[0] && !plait__aggstore_printable_ok(l->mechanism, PLAIT_AGGSTORE_LEDGER_NAME))
        return plait_fail(PLAIT_EINVAL, "aggstore: ledger mechanism is not 1..%d printable bytes",
                          PLAIT_AGGSTORE_LEDGER_NAME);
    if (l->selection[0] && !plait__aggstore_printable_ok(l->selection, PLAIT_AGGSTORE_LEDGER_NAME))
        return plait_fail(PLAIT_EINVAL, "aggstore: ledger selection is not 1..%d printable bytes",
                          PLAIT_AGGSTORE_LEDGER_NAME);
    return 0;
}

/* Checks of the version part of c; computes the hash into sha. */
static int check_version_input(const plait_aggstore_t *st, const plait_aggstore_commit_t *c, uint8_t sha[32])
{
    if (!c->adapter || c->adapter_len == 0) return plait_fail(PLAIT_EINVAL, "aggstore: empty adapter");
    if (c->adapter_len > st->max_adapter)
        return plait_fail(PLAIT_ETOOBIG, "aggstore: adapter is %zu bytes, max %zu", c->adapter_len, st->max_adapter);
    if (c->opt_state_len > st->max_opt / 4)
        return plait_fail(PLAIT_ETOOBIG, "aggstore: optimizer state is %zu floats, max %zu bytes", c->opt_state_len,
                          st->max_opt);
    if (c->opt_state_len > 0 && !c->opt_state) return plait_fail(PLAIT_EINVAL, "aggstore: opt_state is NULL");
    for (size_t i = 0; i < c->opt_state_len; i++)
        if (!isfinite(c->opt_state[i]))
            return plait_fail(PLAIT_EINVAL, "aggstore: optimizer state element %zu is not finite", i);
    if (c->lora_rank < 1 || c->lora_rank > PLAIT_AGGSTORE_MAX_RANK)
        return plait_fail(PLAIT_EINVAL, "aggstore: lora_rank %d not in 1..%d", c->lora_rank, PLAIT_AGGSTORE_MAX_RANK);
    if (!(c->lora_alpha > 0.0 && isfinite(c->lora_alpha)))
        return plait_fail(PLAIT_EINVAL, "aggstore: lora_alpha not finite and > 0");
    if (c->lora_targets < 1 || c->lora_targets > 0x7f)
        return plait_fail(PLAIT_EINVAL, "aggstore: lora_targets 0x%x not in 1..0x7f", (unsigned)c->lora_targets);
    if (c->opt_kind < 0 || c->opt_kind > 255)
        return plait_fail(PLAIT_EINVAL, "aggstore: opt_kind %d not in 0..255", c->opt_kind);
    plait_sha256(c->adapter, c->adapter_len, sha);
    if (c->sha256 && memcmp(c->sha256, sha, 32) != 0)
        return plait_fail(PLAIT_EMISMATCH, "aggstore: the given sha256 does not match the adapter");
    return 0;
}

/* Injected failure after write `step` (tests only). */
static int fault(plait_aggstore_t *st, int step)
{
    if (st->fault_step != step) return 0;
    st->fault_step = 0;
    return plait_fail(PLAIT_EIO, "aggstore: injected fault after commit step %d", step);
}

static int insert_version(plait_aggstore_t *st, int64_t number, int64_t round, const plait_aggstore_commit_t *c,
                          const uint8_t sha[32])
{
    uint8_t *opt = NULL;
    if (c->opt_state_len > 0) {
        opt = malloc(c->opt_state_len * 4);
        if (!opt) return plait_fail(PLAIT_ENOMEM, "aggstore: out of memory");
        for (size_t i = 0; i < c->opt_state_len; i++) { /* little-endian, whatever the host */
            uint32_t u;
            memcpy(&u, &c->opt_state[i], 4);
            for (int b = 0; b < 4; b++) opt[4 * i + (size_t)b] = (uint8_t)(u >> (8 * b));
        }
    }
    sqlite3_stmt *s;
    int ret = plait__aggstore_prep(st,
                   "INSERT INTO versions(number, round_id, created, sha256, lora_rank, lora_alpha, lora_targets,"
                   " opt_kind, adapter, opt_state) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                   &s);
    if (ret == 0) {
        sqlite3_bind_int64(s, 1, number);
        if (round > 0) sqlite3_bind_int64(s, 2, round);
        else sqlite3_bind_null(s, 2);
        sqlite3_bind_int64(s, 3, plait__aggstore_now_s());
        sqlite3_bind_blob(s, 4, sha, 32, SQLITE_STATIC);
        sqlite3_bind_int(s, 5, c->lora_rank);
        sqlite3_bind_double(s, 6, c->lora_alpha);
        sqlite3_bind_int64(s, 7, (int64_t)c->lora_targets);
        sqlite3_bind_int(s, 8, c->opt_kind);
        sqlite3_bind_blob64(s, 9, c->adapter, (sqlite3_uint64)c->adapter_len, SQLITE_STATIC);
        if (opt) sqlite3_bind_blob64(s, 10, opt, (sqlite3_uint64)(c->opt_state_len * 4), SQLITE_STATIC);
        else sqlite3_bind_zeroblob(s, 10, 0); /* an empty BLOB, not NULL */
        ret = plait__aggstore_step_done(st, s, "writing version");
    }
    free(opt);
    return ret;
}

int plait_aggstore_round_commit(plait_aggstore_t *st, int64_t round, const plait_aggstore_commit_t *c,
                                int64_t *version_out)
{
    int ret = plait__aggstore_check_usable(st);
    if (ret != 0) return ret;
    if (!c) return plait_fail(PLAIT_EINVAL, "aggstore: commit is NULL");
    uint8_t sha[32];
    if ((ret = check_version_input(st, c, sha)) != 0) return ret;
    if (c->stats && (ret = check_stats(st, c->stats)) != 0) return ret;
    if (c->ledger && (ret = check_ledger(c->ledger)) != 0) return ret;
    if ((ret = plait__aggstore_check_metrics(st, c->metrics, c->n_metrics)) != 0) return ret;

    int64_t base = 0, latest = 0;
    bool found;
    plait_crash_point("aggstore.commit.begin");
    if ((ret = begin_on_open_round(st, round, &base)) != 0) return ret;
    if ((ret = plait__aggstore_query_i64(st, "SELECT coalesce(max(number), 0) FROM versions", false, 0, &latest, &found,
                         "reading latest version")) != 0)
        goto fail;
    if (base != latest) {
        ret = plait_fail(PLAIT_ESTALE, "aggstore: round %lld trained on version %lld, but %lld is the latest",
                         (long long)round, (long long)base, (long long)latest);
        goto fail;
    }
    int64_t number = latest + 1;
    /* Step 1: the round row. */
    sqlite3_stmt *s;
    if ((ret = plait__aggstore_prep(st,
                    "UPDATE rounds SET state = 'committed', ended = max(?2, started), new_version = ?3"
                    " WHERE id = ?1 AND state = 'open'",
                    &s)) != 0)
        goto fail;
    sqlite3_bind_int64(s, 1, round);
    sqlite3_bind_int64(s, 2, plait__aggstore_now_s());
    sqlite3_bind_int64(s, 3, number);
    if ((ret = plait__aggstore_step_done(st, s, "committing round")) != 0) goto fail;
    if (c->stats && (ret = write_counters(st, round, c->stats)) != 0) goto fail;
    /* The uploaders' participation counters, in the same transaction. A device
     * revoked since its upload, or unknown, or already counted, is skipped. */
    for (size_t i = 0; i < c->n_uploaders; i++) {
        if (!c->uploaders || !c->uploaders[i] || plait__aggstore_check_id(c->uploaders[i]) != 0) continue;
        if ((ret = plait__aggstore_prep(st,
                        "UPDATE devices SET last_round = ?2, rounds_participated = rounds_participated + 1,"
                        " last_seen = ?3 WHERE id = ?1 AND revoked = 0 AND coalesce(last_round, 0) < ?2",
                        &s)) != 0)
            goto fail;
        sqlite3_bind_text(s, 1, c->uploaders[i], -1, SQLITE_STATIC);
        sqlite3_bind_int64(s, 2, round);
        sqlite3_bind_int64(s, 3, plait__aggstore_now_s());
        if ((ret = plait__aggstore_step_done(st, s, "counting participation")) != 0) goto fail;
    }
    if ((ret = fault(st, 1)) != 0) goto fail;
    /* Step 2: rejections. */
    if (c->stats && (ret = write_rejections(st, round, c->stats)) != 0) goto fail;
    if ((ret = fault(st, 2)) != 0) goto fail;
    /* Step 3: the version. */
    if ((ret = insert_version(st, number, round, c, sha)) != 0) goto fail;
    plait_crash_point("aggstore.commit.version");
    if ((ret = fault(st, 3)) != 0) goto fail;
    /* Step 4: the ledger row. */
    if (c->ledger) {
        if ((ret = plait__aggstore_prep(st,
                        "INSERT INTO ledger(round_id, q, noise_multiplier, steps, delta, epsilon, mechanism,"
                        " clip, selection, ddg_dim, ddg_var, ddg_n, ddg_l2)"
                        " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                        &s)) != 0)
            goto fail;
        sqlite3_bind_int64(s, 1, round);
        sqlite3_bind_double(s, 2, c->ledger->q);
        sqlite3_bind_double(s, 3, c->ledger->noise_multiplier);
        sqlite3_bind_int64(s, 4, c->ledger->steps);
        sqlite3_bind_double(s, 5, c->ledger->delta);
        sqlite3_bind_double(s, 6, c->ledger->epsilon);
        sqlite3_bind_text(s, 7, c->ledger->mechanism[0] ? c->ledger->mechanism : "unrecorded", -1, SQLITE_STATIC);
        sqlite3_bind_double(s, 8, c->ledger->clip);
        sqlite3_bind_text(s, 9, c->ledger->selection[0] ? c->ledger->selection : "unrecorded", -1, SQLITE_STATIC);
        sqlite3_bind_int64(s, 10, c->ledger->ddg_dim);
        sqlite3_bind_double(s, 11, c->ledger->ddg_var);
        sqlite3_bind_int64(s, 12, c->ledger->ddg_n);
        sqlite3_bind_double(s, 13, c->ledger->ddg_l2);
        if ((ret = plait__aggstore_step_done(st, s, "writing ledger")) != 0) goto fail;
        /* Devices that uploaded to this round (mark_uploaded set their last_round) joined one more DP round. */
        if ((ret = plait__aggstore_prep(
                 st, "UPDATE devices SET dp_rounds = dp_rounds + 1 WHERE last_round = ?1", &s)) !=
            0)
            goto fail;
        sqlite3_bind_int64(s, 1, round);
        if ((ret = plait__aggstore_step_done(st, s, "counting DP participation")) != 0) goto fail;
    }
    if ((ret = fault(st, 4)) != 0) goto fail;
    /* Step 5: metrics. */
    if ((ret = plait__aggstore_insert_metrics(st, round, c->metrics, c->n_metrics, false)) != 0) goto fail;
    if ((ret = fault(st, 5)) != 0) goto fail;
    plait_crash_point("aggstore.commit.precommit");
    if ((ret = plait__aggstore_tx_commit(st)) != 0) return ret;
    plait_crash_point("aggstore.commit.done");
    if (version_out) *version_out = number;
    return 0;
fail:
    plait__aggstore_tx_rollback(st);
    return ret;
}

int plait_aggstore_version_put_initial(plait_aggstore_t *st, const plait_aggstore_commit_t *c)
{
    int ret = plait__aggstore_check_usable(st);
    if (ret != 0) return ret;
    if (!c) return plait_fail(PLAIT_EINVAL, "aggstore: commit is NULL");
    if (c->stats || c->ledger || c->n_metrics)
        return plait_fail(PLAIT_EINVAL, "aggstore: the initial version has no stats, ledger or metrics");
    uint8_t sha[32];
    if ((ret = check_version_input(st, c, sha)) != 0) return ret;
    if ((ret = plait__aggstore_tx_begin(st)) != 0) return ret;
    int64_t n = 0;
    bool found;
    if ((ret = plait__aggstore_query_i64(st, "SELECT count(*) FROM versions", false, 0, &n, &found,
                                         "counting versions")) != 0)
        goto fail;
    if (n != 0) {
        ret = plait_fail(PLAIT_EINVAL, "aggstore: the store already has versions");
        goto fail;
    }
    if ((ret = insert_version(st, 1, 0, c, sha)) != 0 || (ret = fault(st, 3)) != 0) goto fail;
    return plait__aggstore_tx_commit(st);
fail:
    plait__aggstore_tx_rollback(st);
    return ret;
}

/* ------------------------------------------------------------------------ */
/* Reading rounds                                                            */
/* ------------------------------------------------------------------------ */

#define ROUND_COLS                                                                                   \
    "id, state, started, ended, target_cohort, min_cohort, base_version, new_version, participants," \
    " dropouts, bytes_up, bytes_down, reason, length(task_config), typeof(task_config),"             \
    " CASE WHEN length(task_config) <= ?9 THEN task_config END"

/* Rejections of a round, validated, into caller arrays of st->max_reasons entries. */
typedef struct {
    plait_aggstore_rejection_t *rej;
    char (*names)[PLAIT_AGGSTORE_MAX_KEY + 1];
} rej_buf_t;

static int load_rejections(plait_aggstore_t *st, int64_t round, rej_buf_t *b, size_t *n_out)
{
    sqlite3_stmt *s;
    int ret = plait__aggstore_prep(st, "SELECT reason, count FROM rejections WHERE round_id = ?1 ORDER BY reason", &s);
    if (ret != 0) return ret;
    sqlite3_bind_int64(s, 1, round);
    size_t n = 0;
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        if (n >= st->max_reasons) {
            ret = plait_fail(PLAIT_EPROTO, "aggstore: rejections: round %lld has more than %zu reasons",
                             (long long)round, st->max_reasons);
            break;
        }
        size_t rl;
        const unsigned char *r = plait__aggstore_text_col(s, 0, &rl);
        int64_t cnt;
        if (!plait__aggstore_printable_bytes_ok(r, rl, PLAIT_AGGSTORE_MAX_KEY) ||
            !plait__aggstore_nonneg(s, 1, &cnt)) {
            ret = plait_fail(PLAIT_EPROTO, "aggstore: rejections: round %lld: malformed row", (long long)round);
            break;
        }
        memcpy(b->names[n], r, rl);
        b->names[n][rl] = '\0';
        b->rej[n].reason = b->names[n];
        b->rej[n].count = cnt;
        n++;
    }
    if (ret == 0 && rc != SQLITE_DONE) ret = plait__aggstore_sqfail(st->db, rc, "reading rejections");
    sqlite3_finalize(s);
    *n_out = n;
    return ret;
}

/* Validate the current ROUND_COLS row, load its rejections and call cb. */
static int deliver_round(plait_aggstore_t *st, sqlite3_stmt *s, rej_buf_t *b, plait_aggstore_round_cb cb, void *ud)
{
    plait_aggstore_round_t r;
    memset(&r, 0, sizeof(r));
    r.id = sqlite3_column_int64(s, 0);
    long long id = (long long)r.id;
    size_t sl;
    const unsigned char *state = plait__aggstore_text_col(s, 1, &sl);
    int si = -1;
    for (int i = 0; i < 4 && state; i++)
        if (strcmp((const char *)state, STATE_NAMES[i]) == 0) si = i;
    const char *bad = NULL;
    if (si < 0) bad = "state";
    else if (!plait__aggstore_nonneg(s, 2, &r.started)) bad = "started";
    else if (!plait__aggstore_opt_nonneg(s, 3, &r.ended) ||
             (si == PLAIT_AGGSTORE_ROUND_OPEN) != (sqlite3_column_type(s, 3) == SQLITE_NULL))
        bad = "ended";
    else if (!plait__aggstore_nonneg(s, 4, &r.target_cohort) || r.target_cohort < 1 || r.target_cohort > MAX_COHORT)
        bad = "target_cohort";
    else if (!plait__aggstore_nonneg(s, 5, &r.min_cohort) || r.min_cohort < 1 ||
             r.min_cohort > r.target_cohort)
        bad = "min_cohort";
    else if (!plait__aggstore_nonneg(s, 6, &r.base_version)) bad = "base_version";
    else if (!plait__aggstore_opt_nonneg(s, 7, &r.new_version) ||
             (si == PLAIT_AGGSTORE_ROUND_COMMITTED) !=
                 (r.new_version >= 1 && sqlite3_column_type(s, 7) == SQLITE_INTEGER))
        bad = "new_version";
    else if (!plait__aggstore_nonneg(s, 8, &r.stats.participants)) bad = "participants";
    else if (!plait__aggstore_nonneg(s, 9, &r.stats.dropouts)) bad = "dropouts";
    else if (!plait__aggstore_nonneg(s, 10, &r.stats.bytes_up)) bad = "bytes_up";
    else if (!plait__aggstore_nonneg(s, 11, &r.stats.bytes_down)) bad = "bytes_down";
    if (bad) return plait_fail(PLAIT_EPROTO, "aggstore: rounds: round %lld: malformed %s", id, bad);
    r.state = (plait_aggstore_round_state_t)si;
    size_t rlen;
    const unsigned char *reason = plait__aggstore_text_col(s, 12, &rlen);
    if (!reason || rlen > PLAIT_AGGSTORE_MAX_REASON ||
        strlen((const char *)reason) != rlen)
        return plait_fail(PLAIT_EPROTO, "aggstore: rounds: round %lld: malformed reason", id);
    r.reason = (const char *)reason;
    /* The task config: withheld by the query when too long, so never
     * materialized (length() counts characters for text, so at most 4x
     * max_config bytes get through; the byte length is checked below). */
    const unsigned char *ty = sqlite3_column_text(s, 14);
    if (!ty || strcmp((const char *)ty, "text") != 0)
        return plait_fail(PLAIT_EPROTO, "aggstore: rounds: round %lld: task_config is not text", id);
    if (sqlite3_column_type(s, 15) == SQLITE_NULL)
        return plait_fail(PLAIT_EPROTO, "aggstore: rounds: round %lld: task_config over %zu bytes", id, st->max_config);
    const unsigned char *cfg = sqlite3_column_text(s, 15);
    size_t clen = (size_t)sqlite3_column_bytes(s, 15);
    if (!cfg) return plait__aggstore_sqfail(st->db, sqlite3_errcode(st->db), "reading task_config");
    if (clen > st->max_config)
        return plait_fail(PLAIT_EPROTO, "aggstore: rounds: round %lld: task_config over %zu bytes", id, st->max_config);
    if (json_object_ok((const char *)cfg, clen) != 0)
        return plait_fail(PLAIT_EPROTO, "aggstore: rounds: round %lld: task_config is not a JSON object", id);
    r.task_config = (const char *)cfg;
    r.task_config_len = clen;
    int ret = load_rejections(st, r.id, b, &r.stats.n_rejections);
    if (ret != 0) return ret;
    r.stats.rejections = b->rej;
    st->in_cb = true;
    ret = cb(ud, &r);
    st->in_cb = false;
    return ret;
}

static int rej_buf_alloc(const plait_aggstore_t *st, rej_buf_t *b)
{
    size_t n = st->max_reasons ? st->max_reasons : 1;
    b->rej = calloc(n, sizeof(*b->rej));
    b->names = calloc(n, sizeof(*b->names));
    if (!b->rej || !b->names) {
        free(b->rej);
        free(b->names);
        return plait_fail(PLAIT_ENOMEM, "aggstore: out of memory");
    }
    return 0;
}

static void rej_buf_free(rej_buf_t *b)
{
    free(b->rej);
    free(b->names);
}

/* Run a round query (?9 = max config, ?1 = arg) and deliver rows; want_one: ENOENT if none. */
static int rounds_query(plait_aggstore_t *st, const char *sql, int64_t arg, bool want_one,
                        plait_aggstore_round_cb cb, void *ud)
{
    int ret = plait__aggstore_check_usable(st);
    if (ret != 0) return ret;
    if (!cb) return plait_fail(PLAIT_EINVAL, "aggstore: callback is NULL");
    rej_buf_t b;
    if ((ret = rej_buf_alloc(st, &b)) != 0) return ret;
    sqlite3_stmt *s;
    if ((ret = plait__aggstore_prep(st, sql, &s)) != 0) {
        rej_buf_free(&b);
        return ret;
    }
    sqlite3_bind_int64(s, 1, arg);
    sqlite3_bind_int64(s, 9, (int64_t)st->max_config);
    int rc;
    bool any = false;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        any = true;
        if ((ret = deliver_round(st, s, &b, cb, ud)) != 0) break;
    }
    if (ret == 0 && rc != SQLITE_DONE) ret = plait__aggstore_sqfail(st->db, rc, "reading rounds");
    if (ret == 0 && want_one && !any) ret = plait_fail(PLAIT_ENOENT, "aggstore: no round %lld", (long long)arg);
    sqlite3_finalize(s);
    rej_buf_free(&b);
    return ret;
}

int plait_aggstore_round_get(plait_aggstore_t *st, int64_t round, plait_aggstore_round_cb cb, void *ud)
{
    return rounds_query(st, "SELECT " ROUND_COLS " FROM rounds WHERE id = ?1", round, true, cb, ud);
}

int plait_aggstore_rounds_foreach(plait_aggstore_t *st, bool newest_first, size_t max_rounds,
                                  plait_aggstore_round_cb cb, void *ud)
{
    int64_t lim = max_rounds == 0 || max_rounds > (size_t)INT64_MAX ? -1 : (int64_t)max_rounds;
    return rounds_query(st,
                        newest_first ? "SELECT " ROUND_COLS " FROM rounds ORDER BY id DESC LIMIT ?1"
                                     : "SELECT " ROUND_COLS " FROM rounds ORDER BY id LIMIT ?1",
                        lim, false, cb, ud);
}

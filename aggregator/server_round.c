/*
 * server_round.c: the service's round glue (server_int.h): who is in the
 * round (the cohort, pace steering), the answer to a Hello (a task or come
 * back later), uploads and declines, devices that leave or are revoked, the
 * SecAgg+ glue around server_secagg.c, and plait__srv_round_step, which the tick calls
 * to drive deadlines, failure, commit and the next round.
 *
 * Contract: loop thread only, and never while a store job owns the round
 * core (`busy`): every entry point checks it. The round core (round.h)
 * decides; this file turns its answers into messages. A member's `submitted`
 * state is the one written in member_t (server_int.h). Held updates are
 * owned by their member and wiped when dropped. Logs carry round and device
 * ids and counts; never update words.
 */
#include "server_int.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plait/crypto.h"
#include "plait/log.h"
#include "plait/secagg.h"

/* ---- the cohort and pace steering ----------------------------------------------- */

member_t *plait__srv_member_find(plait_server_t *s, uint64_t client)
{
    for (size_t i = 0; i < s->n_cohort; i++)
        if (s->cohort[i].client == client) return &s->cohort[i];
    return NULL;
}

static int member_add(plait_server_t *s, uint64_t client, const char *device)
{
    if (s->n_cohort == s->cap_cohort) {
        size_t nc = s->cap_cohort ? 2 * s->cap_cohort : 16;
        member_t *n = realloc(s->cohort, nc * sizeof(*n));
        if (!n) return PLAIT_ENOMEM;
        s->cohort = n;
        s->cap_cohort = nc;
    }
    s->cohort[s->n_cohort].client = client;
    s->cohort[s->n_cohort].submitted = 0;
    s->cohort[s->n_cohort].pending = NULL;
    s->cohort[s->n_cohort].revoked = 0;
    snprintf(s->cohort[s->n_cohort].device, sizeof(s->cohort[s->n_cohort].device), "%s", device);
    s->n_cohort++;
    return 0;
}

static uint64_t pace_last(plait_server_t *s, uint64_t client)
{
    for (size_t i = 0; i < s->n_pace; i++)
        if (s->pace[i].client == client) return s->pace[i].last_round;
    return 0;
}

static void pace_mark(plait_server_t *s, uint64_t client, uint64_t rid)
{
    for (size_t i = 0; i < s->n_pace; i++)
        if (s->pace[i].client == client) {
            s->pace[i].last_round = rid;
            return;
        }
    if (s->n_pace == s->cap_pace) {
        size_t nc = s->cap_pace ? 2 * s->cap_pace : 64;
        pace_t *n = realloc(s->pace, nc * sizeof(*n));
        if (!n) return; /* pace steering is best effort */
        s->pace = n;
        s->cap_pace = nc;
    }
    s->pace[s->n_pace].client = client;
    s->pace[s->n_pace].last_round = rid;
    s->n_pace++;
}

/* ---- devices leaving --------------------------------------------------------- */

/* A selected device left before its update was in: tell the round core. */
void plait__srv_conn_leave_round(conn_t *c)
{
    plait_server_t *s = c->srv;
    if (c->round_id == 0 || c->round_id != s->cur_rid || s->busy || s->round == NULL) return;
    member_t *mb = plait__srv_member_find(s, c->client);
    if (s->sa && mb) { /* a secure round has no rejoin: the device's round keys died with it */
        for (conn_t *o = s->conns; o; o = o->next)
            if (o != c && !o->closing && o->client == c->client && o->round_id == c->round_id) return;
        plait__sa_left(s->sa, c->client);
        return;
    }
    if (mb == NULL || mb->submitted) return;
    /* Another live connection of the same device keeps its place. */
    for (conn_t *o = s->conns; o; o = o->next)
        if (o != c && !o->closing && o->client == c->client && o->round_id == c->round_id) return;
    /* The device may reconnect and resume (protocol.md §6, crash-safe resume):
     * it becomes a dropout only after rejoin_grace_s, and only in training (the
     * core takes no dropouts while selecting). */
    mb->submitted = -2;
    mb->left_at = now_s(s);
    PLAIT_LOG(PLAIT_LOG_INFO, "device left round=%llu device=%s (a dropout unless it reconnects within %.3g s)",
              (unsigned long long)c->round_id, c->device, s->cfg.rejoin_grace_s);
}

static void submit_member(plait_server_t *s, member_t *mb, uint8_t *upd, size_t n, unsigned w, conn_t *c);

/* Once training has started: submit updates held since selection, and report
 * devices that left during selection as dropouts. */
static void report_early_dropouts(plait_server_t *s)
{
    /* s->busy: a submission completed the round and its commit job owns the core now. */
    for (size_t i = 0; i < s->n_cohort && !s->busy && plait_round_state(s->round) == PLAIT_ROUND_TRAINING; i++) {
        member_t *mb = &s->cohort[i];
        if (mb->submitted == 2) {
            uint8_t *w = mb->pending;
            mb->pending = NULL;
            submit_member(s, mb, w, mb->n_pending, mb->w_pending, NULL);
            continue;
        }
        if (mb->submitted != -3 && (mb->submitted != -2 || now_s(s) - mb->left_at < s->cfg.rejoin_grace_s))
            continue;
        mb->submitted = -1;
        if (plait_round_dropout(s->round, mb->client, s->cur_core, now_s(s)) == 0)
            PLAIT_LOG(PLAIT_LOG_INFO, "dropout round=%llu device=%s", (unsigned long long)s->cur_rid, mb->device);
    }
}

/* ---- the round ---------------------------------------------------------------- */

static void fill_task(plait_server_t *s, plait_msg_task_t *t)
{
    const plait_aggcfg_t *cf = &s->cfg;
    t->round_id = s->cur_rid;
    t->adapter_version = s->blob->version;
    t->adapter_len = s->blob->len;
    memcpy(t->adapter_sha256, s->blob->sha, 32);
    t->lora.rank = (uint32_t)cf->lora_rank;
    t->lora.alpha = (float)cf->lora_alpha;
    t->lora.targets = s->lora.cfg.targets;
    t->lora.mode = s->mode;
    t->lora.a_seed = cf->a_seed;
    t->train.local_steps = (uint32_t)cf->local_steps;
    t->train.batch = (uint32_t)cf->batch;
    t->train.seq_len = (uint32_t)cf->seq_len;
    t->train.lr = cf->lr;
    t->train.prox_mu = cf->prox_mu;
    t->clip_norm = plait_round_clip(s->round);
    t->quant_bits = plait_round_quant(s->round)->bits;
    t->quant_range = plait_round_quant(s->round)->range;
    t->secure_agg = 0;
    t->dp.mode = s->rcfg.dp ? PLAIT_DP_CENTRAL : PLAIT_DP_NONE;
    t->dp.noise_multiplier = s->rcfg.dp ? s->cfg.noise_multiplier : 0;
    if (s->rcfg.ddg && plait_aggcfg_ddg_variance(&s->cfg, &t->dp.ddg_var_num, &t->dp.ddg_var_den) == 0) {
        t->dp.mode = PLAIT_DP_DISTRIBUTED; /* validated at startup: cannot fail here */
        t->dp.noise_multiplier = s->cfg.noise_multiplier;
    }
    plait_round_stats_t st;
    plait_round_stats(s->round, &st);
    double left = s->rcfg.round_timeout_s;
    if (st.state == PLAIT_ROUND_TRAINING) left = st.t_train + s->rcfg.round_timeout_s - now_s(s);
    else left += st.t_open + s->rcfg.selection_timeout_s - now_s(s);
    if (left < 1) left = 1;
    if (left > s->lim.max_deadline_s) left = s->lim.max_deadline_s;
    t->deadline_s = (uint32_t)ceil(left);
    t->update_elements = s->span_len + 1 + (size_t)s->rcfg.clip_bit;
    t->clip_bit = s->rcfg.clip_bit; /* adaptive clipping: one more word, the device's "norm <= clip" bit */
    t->example_cap = (uint32_t)cf->example_cap;
    t->max_chunk_bytes = (uint32_t)s->lim.max_chunk_bytes;
    t->packed_update = s->cfg.packed_updates ? 1 : 0; /* plait__sa_task() clears it in a secure round */
    plait__srv_eval_fill_task(s, t); /* an evaluation round: kind, L, the two metric words */
}

static void send_task(conn_t *c)
{
    plait_server_t *s = c->srv;
    plait_msg_t m;
    plait_msg_init(&m, PLAIT_MSG_TASK);
    fill_task(s, &m.u.task);
    if (s->sa && plait__sa_task(s->sa, c->client, &m.u.task) != 0) {
        plait__srv_send_cbl(c, PLAIT_RETRY_SECAGG_CLOSED, s->cfg.retry_ms);
        plait__srv_conn_close(c, 1);
        return;
    }
    c->round_id = s->cur_rid;
    s->m.tasks_offered++;
    PLAIT_LOG(PLAIT_LOG_INFO, "task round=%llu device=%s conn=%llu version=%llu",
              (unsigned long long)s->cur_rid, c->device, (unsigned long long)c->id,
              (unsigned long long)s->blob->version);
    (void)plait__srv_send_msg(c, &m);
}

/* The answer to a Hello: a task, or come back later (pace steering). */
void plait__srv_offer(conn_t *c)
{
    plait_server_t *s = c->srv;
    if (s->stopping) {
        plait__srv_send_cbl(c, PLAIT_RETRY_SHUTTING_DOWN, s->cfg.retry_ms);
        plait__srv_conn_close(c, 1);
        return;
    }
    if (s->busy || s->round == NULL || !s->round_live) {
        plait__srv_send_cbl(c, PLAIT_RETRY_NO_ROUND, s->cfg.retry_ms);
        plait__srv_conn_close(c, 1);
        return;
    }
    plait_round_state_t st = plait_round_state(s->round);
    member_t *mb = plait__srv_member_find(s, c->client);
    if (mb && s->sa) { /* secure round: a device that left cannot come back into it */
        plait__srv_send_cbl(c, PLAIT_RETRY_SECAGG_CLOSED, s->cfg.retry_ms);
        plait__srv_conn_close(c, 1);
        return;
    }
    if (mb && (mb->submitted == 0 || mb->submitted == 2 || mb->submitted == -2) &&
        (st == PLAIT_ROUND_SELECTION || st == PLAIT_ROUND_TRAINING)) {
        /* Reconnected (crash-safe resume): same task again; a held update stays held. */
        if (mb->submitted == -2) mb->submitted = 0;
        /* Reconnected: the device keeps its place; the older connection goes. */
        for (conn_t *o = s->conns; o; o = o->next)
            if (o != c && !o->closing && o->client == c->client && o->round_id == s->cur_rid) {
                o->round_id = 0;
                PLAIT_LOG(PLAIT_LOG_INFO, "conn=%llu replaced by conn=%llu device=%s", (unsigned long long)o->id,
                          (unsigned long long)c->id, c->device);
                plait__srv_conn_close(o, 1);
            }
        send_task(c);
        return;
    }
    if (st != PLAIT_ROUND_SELECTION || mb) { /* mb: done with this round (declined, refused) */
        /* Pace steering only when pace_rounds asks for it. */
        plait__srv_send_cbl(c, mb && s->cfg.pace_rounds > 0 ? PLAIT_RETRY_PACE : PLAIT_RETRY_NO_ROUND, s->cfg.retry_ms);
        plait__srv_conn_close(c, 1);
        return;
    }
    uint64_t last = pace_last(s, c->client);
    if (s->cfg.pace_rounds > 0 && last > 0 && s->cur_rid - last <= s->cfg.pace_rounds) {
        plait__srv_send_cbl(c, PLAIT_RETRY_PACE, s->cfg.retry_ms * (s->cfg.pace_rounds - (s->cur_rid - last) + 1));
        plait__srv_conn_close(c, 1);
        return;
    }
    if (s->rcfg.poisson) {
        /* Poisson sampling: admitted with probability q, decided once per round. */
        int admitted = 0;
        int e = plait_sel_decide(s->sel, &s->sel_rng, c->client, &admitted, NULL);
        if (e != 0 || !admitted) {
            plait__srv_send_cbl(c, e != 0 ? PLAIT_RETRY_BUSY : PLAIT_RETRY_NOT_SAMPLED, s->cfg.retry_ms);
            plait__srv_conn_close(c, 1);
            return;
        }
    }
    int rc = plait_round_select(s->round, c->client, now_s(s));
    if (rc == 0 && s->sa && (rc = plait__sa_assign(s->sa, c->client, c->device)) != 0)
        PLAIT_LOG(PLAIT_LOG_ERROR, "secagg: no index for device=%s: %s", c->device, plait_errmsg());
    if (rc == PLAIT_EBUSY) {
        plait__srv_send_cbl(c, PLAIT_RETRY_COHORT_FULL, s->cfg.retry_ms);
        plait__srv_conn_close(c, 1);
        return;
    }
    if (rc != 0 || member_add(s, c->client, c->device) != 0) {
        PLAIT_LOG(PLAIT_LOG_ERROR, "select device=%s failed: %s", c->device, plait_err_name(rc));
        plait__srv_send_cbl(c, PLAIT_RETRY_BUSY, s->cfg.retry_ms);
        plait__srv_conn_close(c, 1);
        return;
    }
    pace_mark(s, c->client, s->cur_rid);
    send_task(c);
}

/* ---- secure aggregation glue (the stages are in server_secagg.c) ---------------- */

static conn_t *member_conn(plait_server_t *s, uint64_t client)
{
    for (conn_t *o = s->conns; o; o = o->next)
        if (!o->closing && o->client == client && o->round_id == s->cur_rid) return o;
    return NULL;
}

static int sa_send(void *ud, uint64_t client, const plait_msg_t *m)
{
    plait_server_t *s = ud;
    conn_t *c = member_conn(s, client);
    if (!c) return plait_fail(PLAIT_ENOENT, "no live connection");
    return plait__srv_send_msg(c, m);
}

static int sa_accept(void *ud, uint64_t client)
{
    plait_server_t *s = ud;
    member_t *mb = plait__srv_member_find(s, client);
    int rc = plait_round_submit_masked(s->round, client, s->cur_core, plait__srv_words(s), now_s(s));
    if (rc == 0 && mb) {
        mb->submitted = 1;
        s->m.updates_accepted++;
    } else if (mb) {
        mb->submitted = -1;
    }
    return rc;
}

static void sa_dropout(void *ud, uint64_t client)
{
    plait_server_t *s = ud;
    member_t *mb = plait__srv_member_find(s, client);
    if (mb && mb->submitted == 0) mb->submitted = -1;
    if (plait_round_dropout(s->round, client, s->cur_core, now_s(s)) == 0)
        PLAIT_LOG(PLAIT_LOG_INFO, "dropout round=%llu device=%s", (unsigned long long)s->cur_rid,
                  mb ? mb->device : "?");
}

int plait__srv_secagg_open(plait_server_t *s, double now)
{
    plait_round_stats_t st;
    plait_round_stats(s->round, &st);
    plait__sa_config_t sc;
    memset(&sc, 0, sizeof(sc));
    sc.dep = s->dep;
    sc.dep_len = sizeof(s->dep);
    sc.round_id = s->cur_rid;
    sc.n = (uint32_t)st.want;
    sc.quant_bits = (unsigned)s->cfg.quant_bits;
    if (s->rcfg.ddg) { /* distributed DP: the ring is Z_{2^32}, the headroom the noise needs */
        unsigned lg = 0;
        while (lg < 32 && ((uint64_t)1 << lg) < sc.n) lg++;
        if (lg < 32 && 32 - lg > sc.quant_bits) sc.quant_bits = 32 - lg;
    }
    sc.len = plait__srv_words(s); /* every word of the update is masked */
    sc.dropout = s->cfg.secagg_dropout;
    sc.corrupt = s->cfg.secagg_corrupt;
    sc.sigma = s->cfg.secagg_sigma;
    sc.stage_timeout_s = s->cfg.secagg_stage_timeout_s;
    sc.ca_pem = s->ca_pem;
    sc.max_chunk_bytes = s->lim.max_chunk_bytes;
    plait__sa_io_t io = {s, sa_send, sa_accept, sa_dropout};
    return plait__sa_open(&s->sa, &sc, &io, now);
}

/* ---- driving the round ------------------------------------------------------- */

/* Drive the round: deadlines, failure, commit, next round. Loop thread. */
void plait__srv_round_step(plait_server_t *s)
{
    if (s->busy || s->stopping || s->round == NULL) return;
    double now = now_s(s);
    if (!s->round_live) {
        if (now >= s->next_open) plait__srv_round_open(s);
        return;
    }
    plait_round_state_t st = plait_round_state(s->round);
    if (st == PLAIT_ROUND_SELECTION || st == PLAIT_ROUND_TRAINING) {
        (void)plait_round_tick(s->round, now);
        if (!s->sa) report_early_dropouts(s);
        if (s->busy) return; /* the commit job owns the round core now */
        st = plait_round_state(s->round);
    }
    if (s->sa) {
        /* Secure round: the stages run alongside the core; the sum goes in once unmasked. */
        plait__sa_step(s->sa, st, now);
        if (plait__sa_finish_due(s->sa)) {
            if (plait__srv_start_unmask(s)) return; /* the job runs it; its end steps again */
            plait__sa_step(s->sa, st, now);         /* it ran here (no job): apply it */
        }
        st = plait_round_state(s->round);
        if (st == PLAIT_ROUND_AGGREGATION) {
            plait__sa_result_t res = plait__sa_result(s->sa);
            if (res == PLAIT__SA_RUNNING) return;
            if (res == PLAIT__SA_DONE &&
                plait_round_set_unmasked_sum(s->round, plait__sa_sum(s->sa), plait__srv_words(s)) == 0) {
                plait__srv_start_commit(s);
                return;
            }
            plait_round_abort(s->round, now); /* below threshold: nothing is committed */
            st = plait_round_state(s->round);
        }
    }
    if (st == PLAIT_ROUND_AGGREGATION) plait__srv_start_commit(s);
    else if (st == PLAIT_ROUND_FAILED || st == PLAIT_ROUND_IDLE) plait__srv_round_failed(s);
}

/* ---- messages ------------------------------------------------------------------ */

/* ---- update buffers ------------------------------------------------------------ *
 * An update is kept as it arrives, one word in w bytes (little-endian): w = ceil(quant_bits / 8),
 * so at 8 bits a buffered update costs P bytes, not 4·P. Packed chunks at 8, 16 or 24 bits are
 * copied as they are (the layout is the same); other widths are unpacked, then stored. A word
 * that does not fit in w bytes (a device sending 32-bit words out of range) widens the whole
 * buffer to 4 bytes a word, so every word reaches the round core exactly as sent and is
 * judged there. The complete update goes to the round core as it is
 * (plait_round_submit_narrow reads the w-byte words in place).
 *
 * Freed buffers are wiped and kept in a pool (at most max_uploads_in_flight of them) for the
 * round's next uploads, instead of being given back to the system and faulted in again for
 * each device (the page faults cost more than the copy here); the pool is emptied when the
 * round's commit starts (server_commit.c), so between rounds, and while the next round's
 * devices download, no update buffer is held.
 * Each buffer carries its capacity in a header of UHDR bytes before the data. */

#define UHDR 16

static size_t ubuf_cap(const uint8_t *b)
{
    size_t c;
    memcpy(&c, b - UHDR, sizeof(c));
    return c;
}

/* A buffer of at least `bytes` (> 0): the smallest pooled one that fits, else a new one. */
static uint8_t *upd_get(plait_server_t *s, size_t bytes)
{
    size_t best = s->n_upool;
    for (size_t i = 0; i < s->n_upool; i++)
        if (ubuf_cap(s->upool[i]) >= bytes && (best == s->n_upool || ubuf_cap(s->upool[i]) < ubuf_cap(s->upool[best])))
            best = i;
    if (best < s->n_upool) {
        uint8_t *b = s->upool[best];
        s->upool[best] = s->upool[--s->n_upool];
        return b;
    }
    uint8_t *raw = malloc(UHDR + bytes);
    if (!raw) return NULL;
    memcpy(raw, &bytes, sizeof(bytes));
    return raw + UHDR;
}

void plait__srv_upd_free(plait_server_t *s, uint8_t *b, size_t n, unsigned w)
{
    if (!b) return;
    s->slot_freed = 1; /* parked uploads may go on (plait__srv_uploads_resume) */
    plait_zeroize(b, n * w); /* the rest of a pooled buffer is zero already (wiped at each return) */
    size_t keep = (size_t)s->cfg.max_uploads_in_flight;
    if (s->n_upool == s->cap_upool && s->cap_upool < keep) {
        size_t nc = s->cap_upool ? 2 * s->cap_upool : 16;
        if (nc > keep) nc = keep;
        uint8_t **np = realloc(s->upool, nc * sizeof(*np));
        if (np) {
            s->upool = np;
            s->cap_upool = nc;
        }
    }
    if (s->n_upool < s->cap_upool) {
        s->upool[s->n_upool++] = b;
        return;
    }
    /* Full: keep the larger of b and the smallest pooled buffer. */
    size_t small = 0;
    for (size_t i = 1; i < s->n_upool; i++)
        if (ubuf_cap(s->upool[i]) < ubuf_cap(s->upool[small])) small = i;
    if (s->n_upool > 0 && ubuf_cap(s->upool[small]) < ubuf_cap(b)) {
        uint8_t *t = s->upool[small];
        s->upool[small] = b;
        b = t;
    }
    free(b - UHDR);
}

void plait__srv_upd_pool_clear(plait_server_t *s)
{
    for (size_t i = 0; i < s->n_upool; i++) free(s->upool[i] - UHDR);
    free(s->upool);
    s->upool = NULL;
    s->n_upool = s->cap_upool = 0;
}

/* c's buffer from w bytes a word to 4. */
static int upd_widen(conn_t *c)
{
    plait_server_t *s = c->srv;
    size_t n = (size_t)c->upd_total, w = c->upd_w;
    uint8_t *b = upd_get(s, n * 4);
    if (!b) return plait_fail(PLAIT_ENOMEM, "update buffer of %zu words", n);
    for (size_t i = 0; i < (size_t)c->upd_have; i++) {
        uint32_t v = plait_narrow_word(c->upd, (unsigned)w, i);
        for (size_t k = 0; k < 4; k++) b[4 * i + k] = (uint8_t)(v >> (8 * k));
    }
    plait__srv_upd_free(s, c->upd, n, (unsigned)w);
    c->upd = b;
    c->upd_w = 4;
    return 0;
}

/* Append n words at c->upd_have. */
static int upd_store(conn_t *c, const uint32_t *v, size_t n)
{
    if (c->upd_w < 4) {
        uint32_t lim = (uint32_t)1 << (8 * c->upd_w), big = 0;
        for (size_t i = 0; i < n; i++) big |= (uint32_t)(v[i] >= lim);
        if (big && upd_widen(c) != 0) return PLAIT_ENOMEM;
    }
    uint8_t *o = c->upd + (size_t)c->upd_have * c->upd_w;
    if (c->upd_w == 1) {
        for (size_t i = 0; i < n; i++) o[i] = (uint8_t)v[i];
    } else {
        for (size_t i = 0; i < n; i++)
            for (size_t k = 0; k < c->upd_w; k++) o[c->upd_w * i + k] = (uint8_t)(v[i] >> (8 * k));
    }
    return 0;
}

/* Hand a complete update to the round core; ack or refuse on c (NULL: the
 * device's connection, if it still has one). Takes ownership of upd (n words of w bytes). */
static void submit_member(plait_server_t *s, member_t *mb, uint8_t *upd, size_t n, unsigned w, conn_t *c)
{
    if (c == NULL)
        for (conn_t *o = s->conns; o; o = o->next)
            if (!o->closing && o->client == mb->client && o->round_id == s->cur_rid) c = o;
    /* The round core reads the buffer in place: no widening into 32-bit words. */
    int rc = plait_round_submit_narrow(s->round, mb->client, s->cur_core, upd, w, n, 0, now_s(s));
    plait__srv_upd_free(s, upd, n, w);
    if (rc == 0) {
        mb->submitted = 1;
        s->m.updates_accepted++;
        PLAIT_LOG(PLAIT_LOG_INFO, "update accepted round=%llu device=%s words=%zu", (unsigned long long)s->cur_rid,
                  mb->device, n);
        if (c) {
            plait_msg_t a;
            plait_msg_init(&a, PLAIT_MSG_ACK);
            a.u.ack.round_id = s->cur_rid;
            a.u.ack.kind = PLAIT_ACK_UPDATE;
            a.u.ack.elements = n;
            (void)plait__srv_send_msg(c, &a);
        }
        if (plait_round_state(s->round) == PLAIT_ROUND_AGGREGATION && !s->sa) plait__srv_start_commit(s);
        return;
    }
    mb->submitted = -1; /* the core counted it as refused */
    plait__rej_t why = PLAIT__REJ_MALFORMED_UPDATE;
    const char *txt = "malformed update";
    if (rc == PLAIT_ESTALE) why = PLAIT__REJ_LATE, txt = "round closed";
    else if (rc == PLAIT_ENOENT) why = PLAIT__REJ_NOT_SELECTED, txt = "not selected";
    else if (rc == PLAIT_EMISMATCH) why = PLAIT__REJ_WRONG_SHAPE, txt = "wrong update size";
    else if (rc == PLAIT_ETOOBIG) why = PLAIT__REJ_NORM, txt = "update norm above the clip bound";
    if (c) {
        plait__srv_reject(c, why, "update for round %llu refused by the round: %s (%s)", (unsigned long long)s->cur_rid,
               plait_errmsg(), plait_err_name(rc));
        plait__srv_fail_conn(c, why, rc, txt);
    } else {
        s->m.rejections[why]++;
        s->rs.rej[why]++;
        PLAIT_LOG(PLAIT_LOG_WARN, "rejected device=%s reason=%s: held update for round %llu: %s (%s)", mb->device,
                  plait__rej_name(why), (unsigned long long)s->cur_rid, plait_errmsg(), plait_err_name(rc));
    }
}

void plait__srv_handle_update(conn_t *c, const plait_msg_update_chunk_t *u)
{
    plait_server_t *s = c->srv;
    uint64_t expect = plait__srv_words(s);
    if (s->sa) {
        plait__srv_reject(c, PLAIT__REJ_ORDER, "plain update in a secure round %llu", (unsigned long long)u->round_id);
        plait__srv_fail_conn(c, PLAIT__REJ_ORDER, PLAIT_EPROTO, "this round takes masked input only");
        return;
    }
    if (u->round_id != s->cur_rid || !s->round_live) {
        plait__srv_reject(c, PLAIT__REJ_STALE, "update for round %llu, current round is %llu%s", (unsigned long long)u->round_id,
               (unsigned long long)s->cur_rid, s->round_live ? "" : " (closed)");
        plait__srv_fail_conn(c, PLAIT__REJ_STALE, PLAIT_ESTALE, "stale round");
        return;
    }
    member_t *mb = plait__srv_member_find(s, c->client);
    if (mb == NULL || c->round_id != s->cur_rid) {
        plait__srv_reject(c, PLAIT__REJ_NOT_SELECTED, "update for round %llu from a device not selected in it",
               (unsigned long long)u->round_id);
        plait__srv_fail_conn(c, PLAIT__REJ_NOT_SELECTED, PLAIT_ENOENT, "not selected for this round");
        return;
    }
    if (mb->submitted == 1 || mb->submitted == -1) {
        plait__srv_reject(c, PLAIT__REJ_DUPLICATE, "second update for round %llu", (unsigned long long)u->round_id);
        plait__srv_fail_conn(c, PLAIT__REJ_DUPLICATE, PLAIT_ESTALE, "duplicate update");
        return;
    }
    if (s->busy) {
        plait__srv_reject(c, PLAIT__REJ_LATE, "update for round %llu after it closed", (unsigned long long)u->round_id);
        plait__srv_fail_conn(c, PLAIT__REJ_LATE, PLAIT_ESTALE, "round closed");
        return;
    }
    if (u->total_elements != expect) {
        plait__srv_reject(c, PLAIT__REJ_WRONG_SHAPE, "update of %llu words, the task wants %llu",
               (unsigned long long)u->total_elements, (unsigned long long)expect);
        plait__srv_fail_conn(c, PLAIT__REJ_WRONG_SHAPE, PLAIT_EMISMATCH, "wrong update size");
        return;
    }
    if (u->chunk_index != c->upd_next || u->offset != c->upd_have) {
        plait__srv_reject(c, PLAIT__REJ_BAD_MESSAGE, "update chunk %u at word %llu, expected chunk %u at word %llu",
               u->chunk_index, (unsigned long long)u->offset, c->upd_next, (unsigned long long)c->upd_have);
        plait__srv_fail_conn(c, PLAIT__REJ_BAD_MESSAGE, PLAIT_EPROTO, "update chunks out of order");
        return;
    }
    unsigned qbits = plait_round_quant(s->round)->bits;
    if (u->packed && u->bits != qbits) {
        plait__srv_reject(c, PLAIT__REJ_WRONG_SHAPE, "update chunk packed at %u bits, the task has %u", u->bits,
                          qbits);
        plait__srv_fail_conn(c, PLAIT__REJ_WRONG_SHAPE, PLAIT_EMISMATCH, "packed at the wrong bit width");
        return;
    }
    if (c->upd == NULL) {
        c->upd_w = (qbits + 7) / 8;
        c->upd = upd_get(s, (size_t)expect * c->upd_w);
        if (!c->upd) {
            PLAIT_LOG(PLAIT_LOG_ERROR, "conn=%llu: out of memory for an update", (unsigned long long)c->id);
            plait__srv_fail_conn(c, PLAIT__REJ_MALFORMED_UPDATE, PLAIT_EBUSY, "out of memory");
            return;
        }
        c->upd_total = expect;
        c->upd_reserved = 0; /* the slot is c->upd now */
    }
    /* The decoder checked the form, the span (offset + n_words <= total_elements, and
     * offset == upd_have above) and, packed, the exact length and zero padding. */
    int src = 0;
    if (u->words) {
        src = upd_store(c, u->words, u->n_words);
    } else if (u->bits == 8 * c->upd_w && u->packed_len == u->n_words * c->upd_w) {
        memcpy(c->upd + (size_t)c->upd_have * c->upd_w, u->packed, u->packed_len); /* the same layout */
    } else if (u->n_words > s->words_cap) {
        src = plait_fail(PLAIT_EINTERNAL, "update chunk of %zu words, room for %zu", u->n_words, s->words_cap);
    } else if ((src = plait_unpack_bits(u->packed, u->packed_len, u->n_words, u->bits, s->words)) != 0) {
        plait_zeroize(s->words, u->n_words * sizeof(uint32_t)); /* the words it wrote before the padding check */
        plait__srv_reject(c, PLAIT__REJ_BAD_MESSAGE, "update chunk %u: %s", u->chunk_index, plait_errmsg());
        plait__srv_fail_conn(c, PLAIT__REJ_BAD_MESSAGE, PLAIT_EPROTO, "bad packed update chunk");
        return;
    } else {
        src = upd_store(c, s->words, u->n_words);
        plait_zeroize(s->words, u->n_words * sizeof(uint32_t));
    }
    if (src != 0) {
        PLAIT_LOG(PLAIT_LOG_ERROR, "conn=%llu: storing an update chunk: %s", (unsigned long long)c->id, plait_errmsg());
        plait__srv_fail_conn(c, PLAIT__REJ_MALFORMED_UPDATE, PLAIT_EBUSY, "out of memory");
        return;
    }
    s->m.upload_chunks[u->words ? 0 : 1]++;
    s->m.upload_bytes[u->words ? 0 : 1] += u->words ? (uint64_t)u->n_words * 4 : u->packed_len;
    c->upd_have += u->n_words;
    c->upd_next++;
    if (c->upd_have < c->upd_total) return;

    uint8_t *words = c->upd;
    unsigned w = c->upd_w;
    c->upd = NULL;
    c->upd_have = 0;
    c->upd_next = 0;
    if (plait_round_state(s->round) == PLAIT_ROUND_SELECTION) {
        /* Trained before selection ended: hold the update (the member owns it
         * now, so a disconnect does not lose it) and submit it when training starts. */
        /* a resumed device uploads its stored update again: keep one */
        plait__srv_upd_free(s, mb->pending, mb->n_pending, mb->w_pending);
        mb->pending = words;
        mb->n_pending = (size_t)expect;
        mb->w_pending = w;
        mb->submitted = 2;
        PLAIT_LOG(PLAIT_LOG_INFO, "update held until training starts round=%llu device=%s",
                  (unsigned long long)u->round_id, c->device);
        return;
    }
    submit_member(s, mb, words, (size_t)expect, w, c);
}

/* A device declined its task (a DeclineCode, never text: only the code is logged). It takes
 * no further part in the round: in training it is a dropout at once, so the round need not
 * wait for it; in selection it keeps its slot (the core cannot unselect) and becomes a dropout
 * when training starts, without the rejoin grace. plait__srv_offer() does not give it the task again. */
void plait__srv_handle_decline(conn_t *c, const plait_msg_decline_t *d)
{
    plait_server_t *s = c->srv;
    s->m.tasks_declined++;
    PLAIT_LOG(PLAIT_LOG_INFO, "task declined round=%llu device=%s code=%s", (unsigned long long)d->round_id,
              c->device, plait_decline_code_name((int)d->code));
    member_t *mb = plait__srv_member_find(s, c->client);
    if (mb && d->round_id == s->cur_rid && c->round_id == s->cur_rid && s->round_live && !s->busy && s->round &&
        (mb->submitted == 0 || mb->submitted == -2)) {
        plait_round_state_t st = plait_round_state(s->round);
        if (st == PLAIT_ROUND_SELECTION) {
            mb->submitted = -3;
        } else if (st == PLAIT_ROUND_TRAINING) {
            mb->submitted = -1;
            if (plait_round_dropout(s->round, mb->client, s->cur_core, now_s(s)) == 0)
                PLAIT_LOG(PLAIT_LOG_INFO, "dropout round=%llu device=%s (declined)", (unsigned long long)s->cur_rid,
                          mb->device);
            if (plait_round_state(s->round) == PLAIT_ROUND_AGGREGATION && !s->sa) plait__srv_start_commit(s);
        }
    }
    if (s->sa && mb && d->round_id == s->cur_rid && !s->busy) /* busy: a commit job owns the round core */
        plait__sa_left(s->sa, c->client);                            /* no rejoin */
    c->round_id = 0;
    plait__srv_conn_close(c, 1);
}

/* ---- revocation and the end of a round ---------------------------------------- */

/* A device revoked while in the round: its held update is dropped and it
 * counts as a dropout (it cannot reconnect). An update the round core
 * accepted before the revocation stays in the aggregate. Not while a job
 * owns the round core (the next sweep does it). */
void plait__srv_member_revoke(plait_server_t *s, member_t *mb)
{
    if (mb->revoked || s->busy || s->round == NULL) return;
    mb->revoked = 1;
    if (s->sa) plait__sa_left(s->sa, mb->client); /* the secure stages stop waiting for it */
    if (mb->submitted == 1) {
        PLAIT_LOG(PLAIT_LOG_WARN, "device=%s revoked in round=%llu after its update was accepted; the update stays",
                  mb->device, (unsigned long long)s->cur_rid);
        return;
    }
    plait__srv_upd_free(s, mb->pending, mb->n_pending, mb->w_pending);
    mb->pending = NULL;
    mb->n_pending = 0;
    if (mb->submitted == -1 || mb->submitted == -3) return; /* refused, dropped or declined already */
    if (plait_round_state(s->round) == PLAIT_ROUND_TRAINING) {
        mb->submitted = -1;
        int rc = plait_round_dropout(s->round, mb->client, s->cur_core, now_s(s));
        (void)rc; /* the core may have counted it already */
    } else {
        mb->submitted = -3; /* out of the round: a dropout when training starts (report_early_dropouts) */
    }
    PLAIT_LOG(PLAIT_LOG_WARN, "device=%s revoked in round=%llu: held update dropped, counted as a dropout", mb->device,
              (unsigned long long)s->cur_rid);
}

/* The round ended without a commit: tell its devices still connected (in
 * training, or waiting for their Ack) instead of leaving them to time out. */
void plait__srv_signal_round_end(plait_server_t *s, plait_retry_reason_t why)
{
    for (conn_t *c = s->conns; c; c = c->next) {
        if (c->closing || !c->authed || c->round_id == 0 || c->round_id != s->cur_rid) continue;
        c->round_id = 0;
        PLAIT_LOG(PLAIT_LOG_INFO, "round=%llu ended without a commit: device=%s conn=%llu told to come back later",
                  (unsigned long long)s->cur_rid, c->device, (unsigned long long)c->id);
        plait__srv_send_cbl(c, why, s->cfg.retry_ms);
        plait__srv_conn_close(c, 1);
    }
}

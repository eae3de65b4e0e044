/*
 * server.c: the aggregator service, libuv glue around the round core: setup,
 * the listeners, the tick, signals, shutdown. The other concerns have files
 * of their own (server_int.h lists them): connections in server_conn.c, the
 * round glue in server_round.c, the store jobs in server_commit.c, the
 * metrics endpoint in server_metrics.c.
 *
 * Threads: one loop thread (the caller of plait_server_run) owns the
 * listeners, every connection, the metrics, and the round core. The commit of
 * a round (aggregate, server-optimizer step, adapter serialization, store
 * transaction) runs on a libuv worker; while it runs (`busy`) the loop thread
 * does not touch the round core, the DP rng, the work adapter or the store,
 * and it answers devices with come-back-later or "late". The result is
 * applied in after_work on the loop thread.
 *
 * One periodic uv_timer (the tick) drives handshake/idle deadlines, forced
 * closes of connections that do not drain, and the round deadlines.
 *
 * Logs carry connection ids, device ids (pseudonymous certificate CNs), round
 * ids, sizes and error names; never update words, adapter bytes or keys.
 */
#include "server_int.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plait/adapter.h"
#include "plait/crypto.h"
#include "plait/log.h"
#include "plait/update.h"

/* ---- small helpers --------------------------------------------------------- */

void plait__srv_blob_unref(blob_t *b)
{
    if (b && --b->refs == 0) {
        free(b->data);
        free(b->params);
        free(b->seeded);
        for (size_t i = 0; i < b->n_delta; i++) free(b->delta[i].data);
        free(b);
    }
}

/* ---- tick, signals, shutdown ------------------------------------------------ */

static void on_handle_closed(uv_handle_t *h) { (void)h; }

static void maybe_finish_shutdown(plait_server_t *s)
{
    if (!s->stopping || s->stopped_handles || s->busy || s->conns || s->mconns) return;
    s->stopped_handles = 1;
    uv_close((uv_handle_t *)&s->tick, on_handle_closed);
    PLAIT_LOG(PLAIT_LOG_INFO, "shutdown complete: %llu rounds committed, global version %llu",
              (unsigned long long)s->m.rounds_committed, (unsigned long long)s->blob->version);
}

static void on_tick(uv_timer_t *t)
{
    plait_server_t *s = t->data;
    double now = now_s(s);
    int judge = s->t_tick > 0 && now - s->t_tick < 1.0; /* a late tick: reads may be waiting behind it */
    s->t_tick = now;
    double rate = 0;
    for (conn_t *c = s->conns, *nx; c; c = nx) {
        nx = c->next;
        if (c->closing) {
            if (!c->uv_closing && now - c->t_close > CLOSE_GRACE_S) {
                c->uv_closing = 1;
                uv_close((uv_handle_t *)&c->tcp, plait__srv_on_conn_closed);
            }
            continue;
        }
        if (!c->authed && now - c->t_open > s->cfg.auth_timeout_s) {
            plait__srv_reject(c, PLAIT__REJ_AUTH_TIMEOUT, "no %s within %.3g s", c->established ? "hello" : "TLS handshake",
                   s->cfg.auth_timeout_s);
            plait__srv_conn_close(c, 0);
        } else if (!c->parked && now - c->t_last > s->cfg.idle_timeout_s) { /* parked: waits on us */
            plait__srv_reject(c, PLAIT__REJ_IDLE_TIMEOUT, "nothing received for %.3g s", s->cfg.idle_timeout_s);
            if (c->authed) plait__srv_send_error(c, PLAIT_ECANCELED, "idle");
            plait__srv_conn_close(c, 1);
        } else if (plait__srv_upload_too_slow(c, now, judge, &rate)) {
            plait__srv_reject(c, PLAIT__REJ_SLOW_UPLOAD,
                              "upload made %.3g bytes/s over the last %.3g s (min_upload_rate %llu) while %zu waited",
                              rate, s->cfg.upload_grace_s, (unsigned long long)s->cfg.min_upload_rate, s->n_parked);
            plait__srv_send_error(c, PLAIT_ECANCELED, "upload too slow");
            plait__srv_conn_close(c, 1);
        } else if (c->out_queued > 0 && now - c->t_wprog > s->cfg.idle_timeout_s) {
            plait__srv_reject(c, PLAIT__REJ_WRITE_STALL, "%zu bytes unsent for %.3g s: the peer does not read", c->out_queued,
                   s->cfg.idle_timeout_s);
            plait__srv_conn_close(c, 0);
        }
    }
    plait__srv_mark_write_stalls(s, now);
    for (mconn_t *mc = s->mconns, *nx; mc; mc = nx) {
        nx = mc->next;
        if (now - mc->t_open > METRICS_DEADLINE_S) plait__srv_mconn_close(mc);
    }
    if (!s->stopping && now - s->rev_swept >= REVOKE_SWEEP_S) {
        s->rev_swept = now;
        plait__srv_revoke_sweep(s);
        if (s->admit.suppressed > s->admit.suppressed_reported) {
            PLAIT_LOG(PLAIT_LOG_WARN, "%llu refusal log lines suppressed (rate limit); see plait_rejections_total",
                      (unsigned long long)(s->admit.suppressed - s->admit.suppressed_reported));
            s->admit.suppressed_reported = s->admit.suppressed;
        }
    }
    plait__srv_accept_resume(s); /* pool slots freed by closes still draining, revocations, a failed calloc */
    plait__srv_round_step(s);
    plait__srv_uploads_resume(s); /* buffers freed by closes and by held updates going in */
    maybe_finish_shutdown(s);
}

static void begin_shutdown(plait_server_t *s, const char *why)
{
    if (s->stopping) return;
    s->stopping = 1;
    PLAIT_LOG(PLAIT_LOG_INFO, "shutting down (%s)", why);
    uv_close((uv_handle_t *)&s->listener, on_handle_closed);
    if (s->have_metrics) uv_close((uv_handle_t *)&s->mlistener, on_handle_closed);
    uv_close((uv_handle_t *)&s->sigterm, on_handle_closed);
    uv_close((uv_handle_t *)&s->sigint, on_handle_closed);
    uv_close((uv_handle_t *)&s->stop_async, on_handle_closed);
    plait__srv_abandon_round(s, "shutdown"); /* when a job runs, after_job finishes it first */
    for (conn_t *c = s->conns; c; c = c->next) {
        if (c->closing) continue;
        if (c->authed) plait__srv_send_cbl(c, PLAIT_RETRY_SHUTTING_DOWN, s->cfg.retry_ms);
        plait__srv_conn_close(c, 1);
    }
    for (mconn_t *mc = s->mconns; mc; mc = mc->next) plait__srv_mconn_close(mc);
}

static void on_signal(uv_signal_t *h, int signum)
{
    begin_shutdown(h->data, signum == SIGTERM ? "SIGTERM" : "SIGINT");
}

static void on_stop_async(uv_async_t *a) { begin_shutdown(a->data, "stop requested"); }

/* ---- setup -------------------------------------------------------------------- */

static int bind_listener(plait_server_t *s, uv_tcp_t *h, const char *addr, uint64_t port, uv_connection_cb cb,
                         int *bound)
{
    struct sockaddr_storage sa;
    int rc = uv_ip4_addr(addr, (int)port, (struct sockaddr_in *)&sa);
    if (rc != 0) rc = uv_ip6_addr(addr, (int)port, (struct sockaddr_in6 *)&sa);
    if (rc != 0) return plait_fail(PLAIT_EINVAL, "'%s' is not an IPv4 or IPv6 address", addr);
    uv_tcp_init(&s->loop, h);
    h->data = s;
    if ((rc = uv_tcp_bind(h, (struct sockaddr *)&sa, 0)) != 0 || (rc = uv_listen((uv_stream_t *)h, LISTEN_BACKLOG, cb)) != 0) {
        uv_close((uv_handle_t *)h, NULL);
        return plait_fail(PLAIT_EIO, "listen on %s:%llu: %s", addr, (unsigned long long)port, uv_strerror(rc));
    }
    struct sockaddr_storage got;
    int len = sizeof(got);
    uv_tcp_getsockname(h, (struct sockaddr *)&got, &len);
    *bound = ntohs(got.ss_family == AF_INET ? ((struct sockaddr_in *)&got)->sin_port
                                            : ((struct sockaddr_in6 *)&got)->sin6_port);
    return 0;
}

static int read_pem(const char *dir, const char *name, char **out)
{
    char path[1200];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    int rc = plait_pki_read_file(path, out);
    if (rc != 0) return plait_fail(rc, "%s: %s", path, plait_strerror(rc));
    return 0;
}

static int setup_model(plait_server_t *s)
{
    plait_model_t m;
    memset(&m, 0, sizeof(m));
    int rc = plait_model_load(&m, s->cfg.base_model);
    if (rc != 0) return plait_fail(rc, "base_model %s: %s", s->cfg.base_model, plait_errmsg());
    s->mcfg = m.cfg;
    memcpy(s->base_sha, m.sha256, 32);
    plait_model_free(&m);
    plait_lora_config_t lc;
    plait_lora_config_default(&lc);
    lc.rank = (int)s->cfg.lora_rank;
    lc.alpha = (float)s->cfg.lora_alpha;
    if ((rc = plait_lora_parse_targets(s->cfg.lora_targets, &lc.targets)) != 0) return rc;
    if ((rc = plait_lora_mode_parse(s->cfg.lora_mode, &s->mode)) != 0) return rc;
    plait_lora_init(&s->lora);
    if ((rc = plait_lora_setup(&s->lora, &s->mcfg, &lc)) != 0) return rc;
    plait_lora_init_weights(&s->lora, s->cfg.a_seed);
    if ((rc = plait_update_span(&s->lora, s->mode, &s->span_off, &s->span_len)) != 0) return rc;
    /* The widest update a round takes (span, weight, clip bit; an evaluation's 2 words fit). */
    s->words_cap = s->span_len + 2;
    s->words = malloc(s->words_cap * sizeof(uint32_t));
    if (!s->words) return PLAIT_ENOMEM;
    return 0;
}

/* The newest committed adapter from the store (restart), or version 1 from
 * the configuration (fresh deployment: A from a_seed, B = 0). */
static int setup_versions(plait_server_t *s)
{
    blob_t *b = calloc(1, sizeof(*b));
    if (!b) return PLAIT_ENOMEM;
    b->refs = 1;
    int64_t number = 0;
    int rc = plait__svc_latest(s->store, &number, &b->data, &b->len);
    if (rc == 0) {
        plait_lora_t l;
        plait_lora_init(&l);
        plait_model_t mm;
        memset(&mm, 0, sizeof(mm));
        mm.cfg = s->mcfg;
        memcpy(mm.sha256, s->base_sha, 32);
        rc = plait_adapter_load_mem(&l, b->data, b->len, &mm, 0);
        if (rc == 0 && (l.n_params != s->lora.n_params || l.n_a != s->lora.n_a || l.cfg.rank != s->lora.cfg.rank ||
                        l.cfg.targets != s->lora.cfg.targets))
            rc = plait_fail(PLAIT_EMISMATCH, "LoRA shape differs from the configuration");
        if (rc != 0) {
            char keep[300];
            snprintf(keep, sizeof(keep), "%s", plait_errmsg());
            plait_lora_free(&l);
            plait__srv_blob_unref(b);
            return plait_fail(rc, "stored adapter version %lld does not fit the configured model and LoRA: %s",
                              (long long)number, keep);
        }
        memcpy(s->lora.params, l.params, l.n_params * sizeof(float));
        plait_lora_free(&l);
        b->version = (uint64_t)number;
    } else if (rc == PLAIT_ENOENT) {
        if ((rc = plait_adapter_save_mem(&s->lora, s->base_sha, &b->data, &b->len)) != 0) {
            plait__srv_blob_unref(b);
            return rc;
        }
        plait_sha256(b->data, b->len, b->sha);
        plait__svc_lora_t lo;
        lo.rank = s->lora.cfg.rank;
        lo.alpha = s->lora.cfg.alpha;
        lo.targets = s->lora.cfg.targets;
        lo.opt_kind = 0;
        if ((rc = plait__svc_put_initial(s->store, b->data, b->len, b->sha, &lo)) != 0) {
            plait__srv_blob_unref(b);
            return rc;
        }
        b->version = 1;
        PLAIT_LOG(PLAIT_LOG_INFO, "initial adapter stored as version 1 (%zu bytes)", b->len);
    } else {
        plait__srv_blob_unref(b);
        return rc;
    }
    plait_sha256(b->data, b->len, b->sha);
    if ((rc = plait__srv_blob_set_params(b, s->lora.params, s->lora.n_params, s->lora.n_a)) != 0) {
        plait__srv_blob_unref(b);
        return rc;
    }
    s->blob = b;
    s->m.global_version = b->version;
    plait__srv_hist_load(s);
    return 0;
}

static int setup_round(plait_server_t *s)
{
    plait_round_config_t *rc = &s->rcfg;
    plait_round_config_default(rc);
    rc->dim = s->span_len;
    rc->target_cohort = (size_t)s->cfg.target_cohort;
    rc->min_cohort = (size_t)s->cfg.min_cohort;
    rc->overselect = s->cfg.overselect;
    rc->selection_timeout_s = s->cfg.selection_timeout_s;
    rc->round_timeout_s = s->cfg.round_timeout_s;
    rc->quant.bits = (unsigned)s->cfg.quant_bits;
    rc->quant.range = s->cfg.quant_range;
    rc->clip_norm = s->cfg.clip_norm;
    rc->secure = s->cfg.secure_agg ? 1 : 0; /* masked words: no per-update check, the device's clip is the bound */
    plait_server_opt_kind_t k;
    int e = plait_server_opt_kind_parse(s->cfg.server_opt, &k);
    if (e != 0) return e;
    plait_server_opt_config_default(&rc->opt, k);
    rc->opt.lr = s->cfg.server_lr;
    rc->opt.beta1 = s->cfg.server_momentum;
    if (strcmp(s->cfg.aggregation, "mean") != 0) { /* config.c refused it with secure_agg or dp */
        rc->robust = 1;
        rc->robust_kind = strcmp(s->cfg.aggregation, "median") == 0 ? PLAIT_ROBUST_MEDIAN : PLAIT_ROBUST_TRIMMED_MEAN;
        rc->trim_fraction = s->cfg.trim_fraction;
    }
    if (strcmp(s->cfg.dp, "central") == 0) {
        rc->dp = 1;
        rc->dp_cfg.clip = s->cfg.clip_norm;
        rc->dp_cfg.noise_multiplier = s->cfg.noise_multiplier;
        rc->dp_delta = s->cfg.dp_delta;
        /* Poisson sampling over the enrolled, non-revoked devices (selection.h). */
        uint64_t enrolled = 0, pop = 0;
        if ((e = plait__svc_population(s->store, &enrolled)) != 0 ||
            (e = plait_sel_population(s->cfg.population, enrolled, &pop)) != 0)
            return e;
        if (s->cfg.dp_delta == 0 && pop < 2)
            return plait_fail(PLAIT_EINVAL,
                              "dp_delta: the default 1 / population^1.1 needs at least 2 enrolled devices (%llu now); "
                              "enroll them first or set dp_delta",
                              (unsigned long long)pop);
        rc->poisson = 1;
        rc->population = pop ? (size_t)pop : 1;
        if ((e = plait_sel_rate_of(s->cfg.target_cohort, pop, s->cfg.sampling_rate, &rc->sample_rate)) != 0) return e;
        if ((e = plait_sel_create(&s->sel)) != 0) return e;
        if (s->cfg.adaptive_clip) {
            rc->dp_cfg.adaptive = 1;
            rc->dp_cfg.target_quantile = s->cfg.clip_target_quantile;
            rc->dp_cfg.clip_lr = s->cfg.clip_lr;
            rc->dp_cfg.count_stddev = s->cfg.clip_count_stddev;
            rc->dp_cfg.max_clip = s->cfg.quant_range; /* a larger clip would only be clamped by quantization */
            rc->clip_bit = 1;
            /* Resume the clip where the last committed adaptive round left it (it was released with
             * that round); a value the configuration now excludes restarts from clip_norm. */
            double c0 = 0;
            int64_t r0 = 0;
            e = plait__svc_adaptive_clip(s->store, &c0, &r0);
            if (e == 0 && c0 >= rc->dp_cfg.min_clip && c0 <= rc->dp_cfg.max_clip) {
                rc->dp_cfg.clip = c0;
                PLAIT_LOG(PLAIT_LOG_INFO, "adaptive clip resumed at %.9g (after round %lld)", c0, (long long)r0);
            } else if (e == 0) {
                PLAIT_LOG(PLAIT_LOG_WARN, "adaptive clip: the stored clip after round %lld (%.9g) is outside [%g, "
                          "quant_range %g]; starting from clip_norm %g", (long long)r0, c0, rc->dp_cfg.min_clip,
                          rc->dp_cfg.max_clip, s->cfg.clip_norm);
            } else if (e == PLAIT_EPROTO) {
                PLAIT_LOG(PLAIT_LOG_WARN, "adaptive clip: %s; starting from clip_norm %g", plait_errmsg(),
                          s->cfg.clip_norm);
            } else if (e != PLAIT_ENOENT) {
                return e;
            }
            e = 0;
        }
    } else if (strcmp(s->cfg.dp, "distributed") == 0) {
        /* The devices add the noise (ddg.h); the round core only decodes and accounts. */
        uint64_t num = 0, den = 1, enrolled = 0;
        if ((e = plait_aggcfg_ddg_variance(&s->cfg, &num, &den)) != 0) return e;
        if ((e = plait__svc_population(s->store, &enrolled)) != 0) return e;
        if (s->cfg.dp_delta == 0 && enrolled < 2)
            return plait_fail(PLAIT_EINVAL,
                              "dp_delta: the default 1 / population^1.1 needs at least 2 enrolled devices (%llu now); "
                              "enroll them first or set dp_delta",
                              (unsigned long long)enrolled);
        rc->ddg = 1;
        rc->ddg_var = (double)num / (double)den;
        rc->dp_delta = s->cfg.dp_delta;
        rc->population = enrolled ? (size_t)enrolled : 1;
    }
    plait_drbg_t d;
    plait_drbg_init(&d);
    if ((e = plait_drbg_seed(&d, (const uint8_t *)"plait-aggregator dp", 19)) != 0 ||
        (e = plait_rng_seed_drbg(&s->rng, &d)) != 0 || (e = plait_rng_seed_drbg(&s->sel_rng, &d)) != 0) {
        plait_drbg_free(&d);
        return e;
    }
    plait_drbg_free(&d);
    if ((e = plait_round_create(&s->round, rc, s->blob->params + s->span_off, s->span_len)) != 0) return e;
    /* Resume the server optimizer's state saved with the latest version. */
    int kind = 0;
    float *state = NULL;
    size_t n = 0;
    e = plait__svc_latest_opt(s->store, &kind, &state, &n);
    if (e == 0 && n > 0) {
        if (kind == (int)k && n == plait_round_opt_state_len(s->round)) {
            e = plait_round_opt_import(s->round, state, n);
            if (e == 0) PLAIT_LOG(PLAIT_LOG_INFO, "server optimizer state restored (%zu floats)", n);
        } else {
            PLAIT_LOG(PLAIT_LOG_WARN, "stored server optimizer state (kind %d, %zu floats) does not fit the configured "
                      "optimizer; starting it fresh", kind, n);
        }
    } else if (e == PLAIT_ENOENT) {
        e = 0;
    }
    free(state);
    return e;
}

int plait_server_create(plait_server_t **out, const char *dir, const plait_aggcfg_t *cfg)
{
    if (!out || !dir || !cfg) return plait_fail(PLAIT_EINVAL, "server_create: NULL argument");
    *out = NULL;
    int rc = plait_aggcfg_validate(cfg);
    if (rc != 0) return rc;
    plait_server_t *s = calloc(1, sizeof(*s));
    if (!s) return PLAIT_ENOMEM;
    s->cfg = *cfg;
    snprintf(s->dir, sizeof(s->dir), "%s", dir);
    plait_pki_revlist_init(&s->rev);
    plait__admit_init(&s->admit);
    s->preauth_cap = plait__admit_cap(cfg->max_connections, cfg->max_preauth_connections);
    plait_lora_init(&s->lora);
    char *ca = NULL, *crt = NULL, *key = NULL;
    int loop_ok = 0;

    plait_wire_limits_default(&s->lim);
    s->lim.max_frame = (size_t)cfg->max_frame;
    s->lim.max_preauth_frame = (size_t)cfg->max_preauth_frame;
    s->lim.max_chunk_bytes = (size_t)cfg->max_chunk_bytes;
    s->lim.max_update_elements = cfg->max_update_elements;
    if ((rc = plait_wire_limits_validate(&s->lim)) != 0) goto fail;

    snprintf(s->rev_path, sizeof(s->rev_path), "%s/revoked.txt", dir);
    if ((rc = plait_pki_revlist_load(&s->rev, s->rev_path)) != 0) goto fail;
    if ((rc = read_pem(dir, "ca.crt", &ca)) != 0 || (rc = read_pem(dir, "server.crt", &crt)) != 0 ||
        (rc = read_pem(dir, "server.key", &key)) != 0)
        goto fail;
    if ((rc = plait_tls_config_server(&s->tls, ca, crt, key, 1, plait_pki_revlist_check, &s->rev)) != 0) goto fail;
    plait_sha256((const uint8_t *)ca, strlen(ca), s->dep); /* the deployment id of SecAgg+ */
    if (!(s->ca_pem = strdup(ca))) {
        rc = PLAIT_ENOMEM;
        goto fail;
    }
    if (s->cfg.tls_ticket_lifetime_s > 0 &&
        (rc = plait_tls_config_tickets(s->tls, (uint32_t)s->cfg.tls_ticket_lifetime_s)) != 0)
        goto fail;

    if ((rc = setup_model(s)) != 0) goto fail;
    char dbpath[1200];
    snprintf(dbpath, sizeof(dbpath), "%s/plait.db", dir);
    int64_t abandoned = 0;
    if ((rc = plait__svc_open(&s->store, dbpath, 0, 1, &abandoned)) != 0) {
        rc = plait_fail(rc, "%s: %s", dbpath, plait_errmsg());
        goto fail;
    }
    if (abandoned)
        PLAIT_LOG(PLAIT_LOG_WARN, "recovery: %lld round(s) left open by a crash marked abandoned; "
                  "the global adapter is the last committed version", (long long)abandoned);
    if ((rc = plait__svc_open(&s->store_r, dbpath, 0, 0, NULL)) != 0) goto fail;

    if ((rc = uv_loop_init(&s->loop)) != 0) {
        rc = plait_fail(PLAIT_EIO, "uv_loop_init: %s", uv_strerror(rc));
        goto fail;
    }
    loop_ok = 1;
    s->loop_init = 1;
    if ((rc = bind_listener(s, &s->listener, cfg->listen_addr, cfg->port, plait__srv_on_conn, &s->port)) != 0) goto fail_loop;
    if (cfg->metrics_enabled) {
        if ((rc = bind_listener(s, &s->mlistener, cfg->metrics_addr, cfg->metrics_port, plait__srv_on_mconn, &s->metrics_port)) !=
            0) {
            uv_close((uv_handle_t *)&s->listener, NULL);
            goto fail_loop;
        }
        s->have_metrics = 1;
    }
    /* Only once listening: a first serve that cannot bind must not store version 1 (it fixes the LoRA shape). */
    if ((rc = setup_versions(s)) != 0) goto fail;
    if ((rc = setup_round(s)) != 0) goto fail;
    uv_timer_init(&s->loop, &s->tick);
    s->tick.data = s;
    uv_signal_init(&s->loop, &s->sigterm);
    uv_signal_init(&s->loop, &s->sigint);
    s->sigterm.data = s->sigint.data = s;
    uv_async_init(&s->loop, &s->stop_async, on_stop_async);
    s->stop_async.data = s;
    plait_pki_free_pem(ca);
    plait_pki_free_pem(crt);
    plait_pki_free_pem(key);
    *out = s;
    return 0;

fail_loop:
fail:
    (void)loop_ok;
    plait_pki_free_pem(ca);
    plait_pki_free_pem(crt);
    plait_pki_free_pem(key);
    {
        char keep[512];
        snprintf(keep, sizeof(keep), "%s", plait_errmsg());
        plait_server_destroy(s);
        plait_fail(rc, "%s", keep);
    }
    return rc;
}

int plait_server_port(const plait_server_t *s) { return s ? s->port : 0; }
int plait_server_metrics_port(const plait_server_t *s) { return s ? s->metrics_port : 0; }

static int write_port_file(plait_server_t *s)
{
    if (s->cfg.port_file[0] == '\0') return 0;
    char tmp[PLAIT_AGGCFG_STR_MAX + 8];
    snprintf(tmp, sizeof(tmp), "%s.tmp", s->cfg.port_file);
    FILE *f = fopen(tmp, "w");
    if (!f) return plait_fail(PLAIT_EIO, "port_file %s: cannot write", tmp);
    fprintf(f, "{\"port\": %d, \"metrics_port\": %d}\n", s->port, s->metrics_port);
    if (fclose(f) != 0 || rename(tmp, s->cfg.port_file) != 0)
        return plait_fail(PLAIT_EIO, "port_file %s: cannot write", s->cfg.port_file);
    return 0;
}

int plait_server_run(plait_server_t *s)
{
    uv_signal_start(&s->sigterm, on_signal, SIGTERM);
    uv_signal_start(&s->sigint, on_signal, SIGINT);
    uv_timer_start(&s->tick, on_tick, TICK_MS, TICK_MS);
    s->next_open = now_s(s);
    int rc = write_port_file(s);
    if (rc != 0) {
        PLAIT_LOG(PLAIT_LOG_ERROR, "%s", plait_errmsg());
        begin_shutdown(s, "port file");
    }
    PLAIT_LOG(PLAIT_LOG_INFO,
              "serving port=%d metrics_port=%d version=%llu span=%zu words target_cohort=%llu min_cohort=%llu",
              s->port, s->metrics_port, (unsigned long long)s->blob->version, s->span_len + 1,
              (unsigned long long)s->cfg.target_cohort, (unsigned long long)s->cfg.min_cohort);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    rc = uv_loop_close(&s->loop);
    if (rc != 0) {
        PLAIT_LOG(PLAIT_LOG_ERROR, "loop did not close cleanly: %s", uv_strerror(rc));
        return PLAIT_EINTERNAL;
    }
    s->stopped_handles = 2;
    return 0;
}

void plait_server_stop(plait_server_t *s)
{
    if (s) uv_async_send(&s->stop_async);
}

static void close_any(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h)) uv_close(h, NULL);
}

void plait_server_destroy(plait_server_t *s)
{
    if (!s) return;
    if (s->loop_init && s->stopped_handles != 2) {
        /* Created but not run (or run failed early): close what setup opened. */
        uv_walk(&s->loop, close_any, NULL);
        uv_run(&s->loop, UV_RUN_DEFAULT);
        (void)uv_loop_close(&s->loop);
    }
    plait__srv_eval_end(s); /* an evaluation core, if one runs; s->round is the training core again */
    plait_round_destroy(s->round);
    plait__svc_close(s->store_r);
    plait__svc_close(s->store);
    plait_tls_config_free(s->tls);
    plait_pki_revlist_free(&s->rev);
    plait__admit_free(&s->admit);
    plait_lora_free(&s->lora);
    plait__srv_hist_clear(s);
    plait__srv_blob_unref(s->blob);
    plait__srv_cohort_clear(s);
    plait__srv_upd_pool_clear(s);
    if (s->words) plait_zeroize(s->words, s->words_cap * sizeof(uint32_t));
    free(s->words);
    free(s->cohort);
    free(s->pace);
    plait__sa_free(s->sa);
    free(s->ca_pem);
    plait_rng_wipe(&s->rng);
    plait_rng_wipe(&s->sel_rng);
    plait_sel_destroy(s->sel);
    free(s);
}

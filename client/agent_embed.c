/*
 * agent_embed.c: what client.h adds for an embedding app around the agent
 * core: the per-agent log sink (on_log, routed with a thread sink of log.h
 * for the duration of each public call), the fatal/retryable verdict of the
 * last failure, and handles for inference with the personalized model (the
 * base model, the tokenizer, the adapter the last round trained).
 *
 * Invariants: a thread sink installed here is restored before the call
 * returns; the training thread installs its own (agent_train.c job_main).
 */
#include "agent_int.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "plait/adapter.h"
#include "plait/client.h"
#include "plait/log.h"
#include "plait/lora.h"

/* Route this thread's log lines to the agent's sink for one call. */
typedef struct {
    int on;
    plait_log_cb prev;
    void *prev_ud;
} sink_scope_t;

static sink_scope_t sink_enter(plait_log_cb cb, void *ud)
{
    sink_scope_t s = {0, NULL, NULL};
    if (cb) {
        plait_log_set_thread_sink(cb, ud, &s.prev, &s.prev_ud);
        s.on = 1;
    }
    return s;
}

static void sink_leave(const sink_scope_t *s)
{
    if (s->on) plait_log_set_thread_sink(s->prev, s->prev_ud, NULL, NULL);
}

int plait_agent_create(plait_agent_t **out, const plait_agent_config_t *cfg)
{
    /* on_log is read only from a layout that has it (validate refuses the others). */
    int has = cfg && cfg->struct_size == sizeof(*cfg);
    sink_scope_t s = sink_enter(has ? cfg->on_log : NULL, has ? cfg->log_ud : NULL);
    int rc = plait__agent_create(out, cfg);
    sink_leave(&s);
    return rc;
}

int plait_agent_run_once(plait_agent_t *a, plait_agent_result_t *res_out)
{
    sink_scope_t s = sink_enter(a ? a->cfg.on_log : NULL, a ? a->cfg.log_ud : NULL);
    int rc = plait__agent_run_once(a, res_out);
    sink_leave(&s);
    return rc;
}

int plait_agent_run(plait_agent_t *a)
{
    sink_scope_t s = sink_enter(a ? a->cfg.on_log : NULL, a ? a->cfg.log_ud : NULL);
    int rc = plait__agent_run_loop(a);
    sink_leave(&s);
    return rc;
}

int plait_agent_last_error_fatal(const plait_agent_t *a) { return a ? a->fatal : 0; }

const plait_model_t *plait_agent_model(const plait_agent_t *a) { return a ? &a->model : NULL; }

const plait_tok_t *plait_agent_tokenizer(const plait_agent_t *a) { return a ? &a->tok : NULL; }

int plait_agent_personal_load(const plait_agent_t *a, plait_lora_t *out)
{
    if (!a || !out) return plait_fail(PLAIT_EINVAL, "personal_load: NULL agent or adapter");
    plait_lora_init(out);
    /* The validated choice (agent_serve.c) when there is one; else the last trained personal copy. */
    char path[4096];
    int rc = plait_agent_serving(a->state_dir, path, sizeof(path), NULL, 0);
    if (rc != 0 && rc != PLAIT_ENOENT) return rc; /* a malformed choice is said, not silently replaced */
    if (rc != 0 && (rc = plait__agent_path_join(path, sizeof(path), a->state_dir, PERSONAL_FILE)) != 0) return rc;
    struct stat sb;
    if (stat(path, &sb) != 0 && errno == ENOENT)
        return plait_fail(PLAIT_ENOENT, "no personalized adapter yet: it appears once this device has trained in a "
                                        "round (PLAIT_AGENT_EV_ADAPTER_UPDATED)");
    if ((rc = plait_adapter_load(out, path, &a->model, 0)) != 0) {
        char why[256];
        snprintf(why, sizeof(why), "%s", plait_errmsg());
        return plait_fail(rc, "personalized adapter: %s", why);
    }
    return 0;
}

/*
 * embed.c: how an app embeds the plait agent (docs/client-api.md).
 *
 * The app owns the policy (when the device may train: here a stand-in for
 * "idle and charging") and the thread the agent runs on; the agent owns the
 * conversation with the aggregator, training, and its state directory.
 *
 *   plait-embed-example HOST PORT CA.crt DEV.crt DEV.key STORE STATE_DIR [SECONDS]
 *
 * Runs the agent as a daemon on a background thread for SECONDS (default 60),
 * printing its events, then stops it from the main thread and exits.
 */
#include "plait/client.h"
#include "plait/lora.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* The app's eligibility policy. A real app asks the OS (battery, screen, network). */
static int idle_and_charging(void *ud)
{
    (void)ud;
    return 1;
}

static void on_event(void *ud, const plait_agent_event_t *ev)
{
    (void)ud;
    switch (ev->type) {
    case PLAIT_AGENT_EV_TASK:
        printf("round %llu: taking part\n", (unsigned long long)ev->round_id);
        break;
    case PLAIT_AGENT_EV_TRAINING:
        printf("round %llu: step %u/%u\n", (unsigned long long)ev->round_id, ev->step, ev->steps);
        break;
    case PLAIT_AGENT_EV_ACKED:
        printf("round %llu: update accepted\n", (unsigned long long)ev->round_id);
        break;
    case PLAIT_AGENT_EV_ADAPTER_UPDATED: /* an app reloads its on-device model here */
        printf("round %llu: personalized adapter updated\n", (unsigned long long)ev->round_id);
        break;
    case PLAIT_AGENT_EV_COME_BACK:
        printf("no round now; retry in %llu ms\n", (unsigned long long)ev->delay_ms);
        break;
    case PLAIT_AGENT_EV_ERROR:
        printf("attempt failed: %s\n", plait_err_name(ev->rc));
        break;
    default:
        break;
    }
    fflush(stdout);
}

static void *agent_thread(void *p)
{
    int rc = plait_agent_run(p); /* blocks until plait_agent_stop() */
    if (rc != 0) fprintf(stderr, "agent: %s\n", plait_errmsg());
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 8) {
        fprintf(stderr, "usage: %s HOST PORT CA.crt DEV.crt DEV.key STORE STATE_DIR [SECONDS]\n",
                argv[0]);
        return 2;
    }
    const char *assets = getenv("PLAIT_ASSETS");
    char model[1024], tok[1024];
    snprintf(model, sizeof(model), "%s/stories260K.bin", assets ? assets : "../shared/assets");
    snprintf(tok, sizeof(tok), "%s/tok512.bin", assets ? assets : "../shared/assets");

    plait_agent_config_t cfg;
    plait_agent_config_default(&cfg);
    cfg.server_host = argv[1];
    cfg.server_port = atoi(argv[2]);
    cfg.ca_path = argv[3];
    cfg.cert_path = argv[4];
    cfg.key_path = argv[5];
    cfg.store_path = argv[6];
    cfg.state_dir = argv[7];
    cfg.model_path = model;
    cfg.tokenizer_path = tok;
    cfg.eligible = idle_and_charging;
    cfg.on_event = on_event;
    cfg.daemon = 1;

    plait_agent_t *agent = NULL;
    if (plait_agent_create(&agent, &cfg) != 0) {
        fprintf(stderr, "create: %s\n", plait_errmsg());
        return 1;
    }
    pthread_t th;
    if (pthread_create(&th, NULL, agent_thread, agent) != 0) {
        plait_agent_destroy(agent);
        return 1;
    }
    struct timespec ts = {.tv_sec = argc > 8 ? atoi(argv[8]) : 60};
    nanosleep(&ts, NULL);    /* the app goes on with its life */
    plait_agent_stop(agent); /* e.g. the user unplugged the phone */
    pthread_join(th, NULL);
    printf("%u rounds acknowledged\n", plait_agent_rounds_acked(agent));
    /* The personalized model for inference: base model + this adapter (plait_infer_setup, infer.h). */
    plait_lora_t personal;
    if (plait_agent_personal_load(agent, &personal) == 0) {
        printf("personalized adapter: %zu parameters\n", personal.n_params);
        plait_lora_free(&personal);
    }
    plait_agent_destroy(agent);
    return 0;
}

/*
 * metrics.c: Prometheus text exposition of the service counters.
 *
 * Pure formatting: the loop thread passes its counters and a buffer, gets the
 * body of a `GET /metrics` answer. Names follow the Prometheus conventions
 * (`_total` for counters, base units, one HELP and TYPE line per family).
 */
#include "metrics.h"

const char *plait__rej_name(plait__rej_t r)
{
    static const char *const names[] = {
#define PLAIT__XX(e, s) s,
        PLAIT__REJ_MAP(PLAIT__XX)
#undef PLAIT__XX
    };
    return (unsigned)r < PLAIT__REJ_COUNT ? names[r] : "unknown";
}

static void family(plait_buf_t *b, const char *name, const char *type, const char *help)
{
    plait_buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

int plait__metrics_render(const plait__metrics_t *m, plait_buf_t *b)
{
    family(b, "plait_rounds_total", "counter", "Rounds ended, by result.");
    plait_buf_printf(b, "plait_rounds_total{result=\"committed\"} %llu\n", (unsigned long long)m->rounds_committed);
    plait_buf_printf(b, "plait_rounds_total{result=\"failed\"} %llu\n", (unsigned long long)m->rounds_failed);
    plait_buf_printf(b, "plait_rounds_total{result=\"abandoned\"} %llu\n", (unsigned long long)m->rounds_abandoned);
    family(b, "plait_round_duration_seconds", "summary", "Duration of committed rounds, open to commit.");
    plait_buf_printf(b, "plait_round_duration_seconds_sum %.6f\n", m->round_seconds_sum);
    plait_buf_printf(b, "plait_round_duration_seconds_count %llu\n", (unsigned long long)m->round_seconds_count);
    family(b, "plait_last_round_duration_seconds", "gauge", "Duration of the last committed round.");
    plait_buf_printf(b, "plait_last_round_duration_seconds %.6f\n", m->last_round_seconds);
    family(b, "plait_global_version", "gauge", "Newest committed global adapter version.");
    plait_buf_printf(b, "plait_global_version %llu\n", (unsigned long long)m->global_version);
    family(b, "plait_round_id", "gauge", "Id of the current or last round.");
    plait_buf_printf(b, "plait_round_id %llu\n", (unsigned long long)m->round_id);
    family(b, "plait_evals_total", "counter", "Federated evaluations committed.");
    plait_buf_printf(b, "plait_evals_total %llu\n", (unsigned long long)m->evals_committed);
    if (m->eval_version > 0) { /* aggregates over >= min_cohort devices, never one device's loss */
        family(b, "plait_eval_mean_loss", "gauge", "Mean clipped held-out loss of the last federated evaluation.");
        plait_buf_printf(b, "plait_eval_mean_loss %.6f\n", m->eval_mean_loss);
        family(b, "plait_eval_version", "gauge", "Global adapter version the last federated evaluation measured.");
        plait_buf_printf(b, "plait_eval_version %llu\n", (unsigned long long)m->eval_version);
    }
    family(b, "plait_clients_connected", "gauge", "Open federation connections.");
    plait_buf_printf(b, "plait_clients_connected %llu\n", (unsigned long long)m->connections_open);
    family(b, "plait_connections_total", "counter", "Federation connections accepted.");
    plait_buf_printf(b, "plait_connections_total %llu\n", (unsigned long long)m->connections_total);
    family(b, "plait_bytes_received_total", "counter", "Bytes received on federation connections (TLS records).");
    plait_buf_printf(b, "plait_bytes_received_total %llu\n", (unsigned long long)m->bytes_in);
    family(b, "plait_bytes_sent_total", "counter", "Bytes sent on federation connections (TLS records).");
    plait_buf_printf(b, "plait_bytes_sent_total %llu\n", (unsigned long long)m->bytes_out);
    family(b, "plait_tls_handshakes_total", "counter", "Completed TLS handshakes of devices.");
    plait_buf_printf(b, "plait_tls_handshakes_total %llu\n", (unsigned long long)m->tls_handshakes);
    family(b, "plait_tls_resumed_total", "counter", "Handshakes that resumed a session (RFC 5077 ticket).");
    plait_buf_printf(b, "plait_tls_resumed_total %llu\n", (unsigned long long)m->tls_resumed);
    family(b, "plait_tasks_offered_total", "counter", "Tasks offered to devices.");
    plait_buf_printf(b, "plait_tasks_offered_total %llu\n", (unsigned long long)m->tasks_offered);
    family(b, "plait_tasks_declined_total", "counter", "Tasks declined by devices (Decline messages).");
    plait_buf_printf(b, "plait_tasks_declined_total %llu\n", (unsigned long long)m->tasks_declined);
    family(b, "plait_come_back_later_total", "counter", "Come-back-later answers (pace steering, no round, full).");
    plait_buf_printf(b, "plait_come_back_later_total %llu\n", (unsigned long long)m->come_back_later);
    family(b, "plait_updates_accepted_total", "counter", "Device updates accepted into a round.");
    plait_buf_printf(b, "plait_updates_accepted_total %llu\n", (unsigned long long)m->updates_accepted);
    static const char *const enc[3] = {"full", "delta", "seeded"};
    family(b, "plait_adapter_downloads_total", "counter", "Adapter downloads started, by encoding.");
    for (int e = 0; e < 3; e++)
        plait_buf_printf(b, "plait_adapter_downloads_total{encoding=\"%s\"} %llu\n", enc[e],
                         (unsigned long long)m->downloads[e]);
    family(b, "plait_adapter_download_bytes_total", "counter",
           "Adapter bytes sent in AdapterChunk data (before framing and TLS), by encoding.");
    for (int e = 0; e < 3; e++)
        plait_buf_printf(b, "plait_adapter_download_bytes_total{encoding=\"%s\"} %llu\n", enc[e],
                         (unsigned long long)m->download_bytes[e]);
    static const char *const form[2] = {"words", "packed"};
    family(b, "plait_update_chunks_total", "counter", "Plain update chunks taken into an update, by form.");
    for (int f = 0; f < 2; f++)
        plait_buf_printf(b, "plait_update_chunks_total{form=\"%s\"} %llu\n", form[f],
                         (unsigned long long)m->upload_chunks[f]);
    family(b, "plait_update_bytes_total", "counter",
           "Plain update bytes received in UpdateChunks (words x 4 or packed bytes, before framing and TLS), by form.");
    for (int f = 0; f < 2; f++)
        plait_buf_printf(b, "plait_update_bytes_total{form=\"%s\"} %llu\n", form[f],
                         (unsigned long long)m->upload_bytes[f]);
    family(b, "plait_rejections_total", "counter", "Connections or updates refused, by reason.");
    for (int r = 0; r < PLAIT__REJ_COUNT; r++)
        plait_buf_printf(b, "plait_rejections_total{reason=\"%s\"} %llu\n", plait__rej_name((plait__rej_t)r),
                         (unsigned long long)m->rejections[r]);
    family(b, "plait_preauth_connections", "gauge", "Federation connections before their Hello is accepted.");
    plait_buf_printf(b, "plait_preauth_connections %llu\n", (unsigned long long)m->preauth_open);
    family(b, "plait_accept_waiting", "gauge",
           "1 while new connections wait in the listen backlog because the pre-auth pool is full.");
    plait_buf_printf(b, "plait_accept_waiting %llu\n", (unsigned long long)m->accept_waiting);
    family(b, "plait_accept_waits_total", "counter", "Times accepting paused because the pre-auth pool was full.");
    plait_buf_printf(b, "plait_accept_waits_total %llu\n", (unsigned long long)m->accept_waits);
    family(b, "plait_send_queue_bytes", "gauge",
           "Ciphertext queued for devices, by whether the device reads (stalled: nothing read for 2 s).");
    plait_buf_printf(b, "plait_send_queue_bytes{state=\"flowing\"} %llu\n", (unsigned long long)m->send_flowing);
    plait_buf_printf(b, "plait_send_queue_bytes{state=\"stalled\"} %llu\n", (unsigned long long)m->send_stalled);
    family(b, "plait_stalled_connections", "gauge", "Federation connections whose device has read nothing for 2 s.");
    plait_buf_printf(b, "plait_stalled_connections %llu\n", (unsigned long long)m->stalled_open);
    family(b, "plait_uploads_parked", "gauge", "Uploads waiting for an update buffer (max_uploads_in_flight).");
    plait_buf_printf(b, "plait_uploads_parked %llu\n", (unsigned long long)m->uploads_parked);
    family(b, "plait_rejection_logs_suppressed_total", "counter",
           "Refusal log lines not written (rate limit); the refusals are counted in plait_rejections_total.");
    plait_buf_printf(b, "plait_rejection_logs_suppressed_total %llu\n",
                     (unsigned long long)m->rejection_logs_suppressed);
    family(b, "plait_metrics_connections_evicted_total", "counter",
           "Idle metrics connections closed to make room for a new one.");
    plait_buf_printf(b, "plait_metrics_connections_evicted_total %llu\n", (unsigned long long)m->metrics_evicted);
    return plait_buf_status(b);
}

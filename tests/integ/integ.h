/*
 * integ.h: harness of the integration tests. A deployment is created with
 * the real `plait-aggregator` commands (called in-process through the CLI
 * table), the service runs as a child process `plait-aggregator serve` on
 * 127.0.0.1 port 0 (the port is read back from --port-file), and test
 * clients speak the real protocol over mutual TLS (tls.h over a blocking
 * socket, wire.h frames). Every wait is bounded.
 */
#ifndef PLAIT_INTEG_H
#define PLAIT_INTEG_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "plait/tls.h"
#include "plait/wire.h"

/** A deployment directory with a running (or stopped) aggregator. */
typedef struct {
    char dir[512];
    char log[600];
    pid_t pid;
    int port, metrics_port;
} it_dep_t;

/** Run `plait-aggregator ARGS...` in-process (NULL-terminated); returns its exit status. */
int it_cli(const char *arg0, ...);

/** Create a deployment in a fresh scratch dir (init with the given --set items, NULL-terminated). 0 on success. */
int it_init(it_dep_t *d, const char *tag, ...);
/** Enroll a device: writes DIR/<id>.crt and DIR/<id>.key. 0 on success. */
int it_enroll(it_dep_t *d, const char *id);
/** Start `serve` (extra args NULL-terminated); waits for the port file (10 s). 0 on success. */
int it_start(it_dep_t *d, ...);
/** SIGTERM and wait (10 s); returns the exit status, or -1 (then it was SIGKILLed). */
int it_stop(it_dep_t *d);
/** SIGKILL and reap. */
void it_kill9(it_dep_t *d);
/** Wait (up to timeout_ms) until the log contains needle; 1 if found. */
int it_log_wait(const it_dep_t *d, const char *needle, int timeout_ms);
/** Count occurrences of needle in the log now. */
int it_log_count(const it_dep_t *d, const char *needle);
/** GET /metrics; returns malloc'd body or NULL. */
char *it_metrics(const it_dep_t *d);
/** Read a file of the deployment (malloc'd, NUL-terminated) or NULL. */
char *it_read(const it_dep_t *d, const char *name);

/** A test client: one TCP connection with a TLS session. */
typedef struct {
    int fd;
    plait_tls_config_t *cfg;
    plait_tls_t *tls;
    uint8_t in[2 << 20];
    size_t in_len;
    plait_wire_limits_t lim;
} it_client_t;

/** Later connections ask for a receive buffer of this many bytes before they connect (0: the
 *  system's default), so a peer that stops reading stops the sender soon. */
void it_client_rcvbuf(int bytes);
/** Connect to 127.0.0.1:port; no handshake yet. crt/key may be NULL (no certificate). */
int it_client_open(it_client_t *c, int port, const char *ca_pem, const char *crt_pem, const char *key_pem);
/** Open with DIR's CA and DIR/<id>.crt/.key, and complete the handshake. 0 or an error code. */
int it_client_connect(it_client_t *c, const it_dep_t *d, const char *id);
/** Send a message. */
int it_send(it_client_t *c, const plait_msg_t *m);
/** Send raw plaintext bytes inside TLS. */
int it_send_raw(it_client_t *c, const uint8_t *buf, size_t len);
/** Receive one message (timeout_ms). 0, or PLAIT_EIO when the server closed, PLAIT_EAGAIN on timeout. */
int it_recv(it_client_t *c, plait_msg_t *m, int timeout_ms);
/** Close the socket and free everything (no close_notify: an abrupt close). */
void it_client_close(it_client_t *c);

/** Send a Hello with the deployment's base model hash (from DIR/aggregator.conf's model). */
int it_hello(it_client_t *c, const it_dep_t *d);
/** The same with the given PLAIT_CAP_* bits (it_hello announces PLAIT_CAP_FFA). */
int it_hello_caps(it_client_t *c, const it_dep_t *d, uint32_t caps);

/**
 * A full well-behaved participation: hello, task, adapter download (hash
 * checked), an update of task.update_elements words (all coordinates `value`,
 * weight 1), ack. Returns 0 when acked; task (if not NULL) gets the task.
 */
int it_participate(const it_dep_t *d, const char *id, float value, plait_msg_task_t *task);
/** As it_participate(); *up_bytes (if not NULL) grows by the update frames' bytes (before TLS). The
 *  update goes packed at quant_bits when the task says packed_update, as the agent sends it. */
int it_participate_ex(const it_dep_t *d, const char *id, float value, plait_msg_task_t *task, uint64_t *up_bytes);
/** Send w[0, n_total) as packed UpdateChunks at t->quant_bits, within t->max_chunk_bytes; *bytes (if
 *  not NULL) grows by the frames' bytes. \return 0 or the first error. */
int it_upload_packed(it_client_t *c, const plait_msg_task_t *t, const uint32_t *w, size_t n_total, uint64_t *bytes);

/** Upload words[0, upto) of an update of n_total words in chunks of chunk_words. */
int it_upload(it_client_t *c, const plait_msg_task_t *t, const uint32_t *w, size_t n_total, size_t upto,
              size_t chunk_words);

/** Quantized update words for a task: n = update_elements words, all coordinates `value`, weight 1. */
uint32_t *it_update_words(const plait_msg_task_t *t, float value);

/* Child processes (agents, CLIs), every wait bounded. */
/** Monotonic seconds. */
double it_mono(void);
/** fork + exec argv, stdout to out_path and stderr appended to err_path (NULL: /dev/null; created
 *  0600), PLAIT_ASSETS set to the tests' assets. The pid, or -1. */
pid_t it_spawn(char *const argv[], const char *out_path, const char *err_path);
/** Exit status of pid; -1 when it did not exit normally or was still running at deadline
 *  (it_mono seconds: then it is SIGKILLed and reaped). */
int it_reap(pid_t pid, double deadline);
/** it_spawn, then it_reap within timeout_s. */
int it_run(char *const argv[], const char *out_path, const char *err_path, double timeout_s);

/** Base model path (shared assets). */
const char *it_model(void);

#endif

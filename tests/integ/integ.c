/*
 * integ.c: the integration-test harness (see integ.h). Only loopback
 * traffic; every wait has a deadline so a hung aggregator fails the test
 * (check's tcase timeout is the outer bound).
 */
#define _GNU_SOURCE
#include "integ.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "plait/crypto.h"
#include "plait/model.h"
#include "plait/pki.h"
#include "plait/rng.h"
#include "plait/update.h"
#include "testutil.h"

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

const char *it_model(void)
{
    static char path[1024];
    if (!path[0]) snprintf(path, sizeof(path), "%s/stories260K.bin", tu_assets_dir());
    return path;
}

int it_cli(const char *arg0, ...)
{
    char *argv[64];
    int argc = 0;
    argv[argc++] = (char *)"plait-aggregator";
    va_list ap;
    va_start(ap, arg0);
    for (const char *a = arg0; a && argc < 63; a = va_arg(ap, const char *)) argv[argc++] = (char *)a;
    va_end(ap);
    argv[argc] = NULL;
    FILE *null = fopen("/dev/null", "w");
    int rc = plait__agg_cli_main(argc, argv, null ? null : stdout, stderr);
    if (null) fclose(null);
    return rc;
}

int it_init(it_dep_t *d, const char *tag, ...)
{
    memset(d, 0, sizeof(*d));
    char *t = tu_tmpdir(tag);
    if (!t) return -1;
    snprintf(d->dir, sizeof(d->dir), "%s/dep", t);
    free(t);
    snprintf(d->log, sizeof(d->log), "%s/server.log", d->dir);
    char *argv[64];
    int argc = 0;
    argv[argc++] = (char *)"plait-aggregator";
    argv[argc++] = (char *)"init";
    argv[argc++] = d->dir;
    argv[argc++] = (char *)"--base-model";
    argv[argc++] = (char *)it_model();
    va_list ap;
    va_start(ap, tag);
    for (const char *a = va_arg(ap, const char *); a && argc < 60; a = va_arg(ap, const char *)) {
        argv[argc++] = (char *)"--set";
        argv[argc++] = (char *)a;
    }
    va_end(ap);
    argv[argc] = NULL;
    FILE *null = fopen("/dev/null", "w");
    int rc = plait__agg_cli_main(argc, argv, null ? null : stdout, stderr);
    if (null) fclose(null);
    return rc;
}

int it_enroll(it_dep_t *d, const char *id)
{
    char crt[700], key[700];
    snprintf(crt, sizeof(crt), "%s/%s.crt", d->dir, id);
    snprintf(key, sizeof(key), "%s/%s.key", d->dir, id);
    return it_cli("enroll", d->dir, "--device", id, "--out-key", key, "--out-cert", crt, NULL);
}

int it_start(it_dep_t *d, ...)
{
    char pf[700];
    snprintf(pf, sizeof(pf), "%s/ports.json", d->dir);
    unlink(pf);
    char *argv[64];
    int argc = 0;
    argv[argc++] = (char *)PLAIT_AGG_BIN;
    argv[argc++] = (char *)"serve";
    argv[argc++] = d->dir;
    argv[argc++] = (char *)"--port";
    argv[argc++] = (char *)"0";
    argv[argc++] = (char *)"--metrics-port";
    argv[argc++] = (char *)"0";
    argv[argc++] = (char *)"--port-file";
    argv[argc++] = pf;
    va_list ap;
    va_start(ap, d);
    for (const char *a = va_arg(ap, const char *); a && argc < 62; a = va_arg(ap, const char *)) argv[argc++] = (char *)a;
    va_end(ap);
    argv[argc] = NULL;
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        int fd = open(d->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 2);
            dup2(fd, 1);
            close(fd);
        }
        execv(argv[0], argv);
        _exit(127);
    }
    d->pid = pid;
    for (int i = 0; i < 200; i++) {
        FILE *f = fopen(pf, "r");
        if (f) {
            int p = 0, m = 0;
            int n = fscanf(f, "{\"port\": %d, \"metrics_port\": %d}", &p, &m);
            fclose(f);
            if (n == 2 && p > 0) {
                d->port = p;
                d->metrics_port = m;
                return 0;
            }
        }
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            d->pid = 0;
            return -1;
        }
        sleep_ms(50);
    }
    it_kill9(d);
    return -1;
}

int it_stop(it_dep_t *d)
{
    if (d->pid <= 0) return -1;
    kill(d->pid, SIGTERM);
    for (int i = 0; i < 200; i++) {
        int st;
        pid_t r = waitpid(d->pid, &st, WNOHANG);
        if (r == d->pid) {
            d->pid = 0;
            return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
        }
        sleep_ms(50);
    }
    it_kill9(d);
    return -1;
}

void it_kill9(it_dep_t *d)
{
    if (d->pid <= 0) return;
    kill(d->pid, SIGKILL);
    int st;
    waitpid(d->pid, &st, 0);
    d->pid = 0;
}

char *it_read(const it_dep_t *d, const char *name)
{
    char *p = tu_path(d->dir, name);
    size_t n;
    char *s = (char *)tu_read_file(p, &n);
    free(p);
    return s;
}

int it_log_count(const it_dep_t *d, const char *needle)
{
    size_t n;
    char *s = (char *)tu_read_file(d->log, &n);
    if (!s) return 0;
    int k = 0;
    for (const char *p = s; (p = strstr(p, needle)) != NULL; p++) k++;
    free(s);
    return k;
}

int it_log_wait(const it_dep_t *d, const char *needle, int timeout_ms)
{
    for (int t = 0; t <= timeout_ms; t += 25) {
        if (it_log_count(d, needle) > 0) return 1;
        sleep_ms(25);
    }
    return 0;
}

static int rcvbuf_next; /* it_client_rcvbuf() */

void it_client_rcvbuf(int bytes) { rcvbuf_next = bytes; }

static int tcp_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    if (rcvbuf_next > 0) (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf_next, sizeof(rcvbuf_next));
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

char *it_metrics(const it_dep_t *d)
{
    int fd = tcp_connect(d->metrics_port);
    if (fd < 0) return NULL;
    const char *req = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    if (write(fd, req, strlen(req)) < 0) {
        close(fd);
        return NULL;
    }
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap + 1);
    ssize_t r;
    while (buf && len < cap && (r = read(fd, buf + len, cap - len)) > 0) len += (size_t)r;
    close(fd);
    if (buf) buf[len] = '\0';
    return buf;
}

int it_client_open(it_client_t *c, int port, const char *ca_pem, const char *crt_pem, const char *key_pem)
{
    signal(SIGPIPE, SIG_IGN); /* the server may close first: a write then fails with EPIPE */
    memset(c, 0, offsetof(it_client_t, in));
    c->in_len = 0;
    plait_wire_limits_default(&c->lim);
    c->fd = tcp_connect(port);
    if (c->fd < 0) return PLAIT_EIO;
    int rc = plait_tls_config_client(&c->cfg, ca_pem, crt_pem, key_pem, "127.0.0.1");
    if (rc == 0) rc = plait_tls_new(&c->tls, c->cfg);
    return rc;
}

int it_client_connect(it_client_t *c, const it_dep_t *d, const char *id)
{
    char name[128];
    char *ca = it_read(d, "ca.crt");
    snprintf(name, sizeof(name), "%s.crt", id);
    char *crt = it_read(d, name);
    snprintf(name, sizeof(name), "%s.key", id);
    char *key = it_read(d, name);
    int rc = (ca && crt && key) ? it_client_open(c, d->port, ca, crt, key) : PLAIT_ENOENT;
    free(ca);
    free(crt);
    free(key);
    if (rc == 0) rc = plait_tls_fd_handshake(c->tls, c->fd);
    return rc;
}

int it_send(it_client_t *c, const plait_msg_t *m)
{
    uint8_t *buf;
    size_t len;
    int rc = plait_wire_encode_alloc(m, &c->lim, &buf, &len);
    if (rc != 0) return rc;
    rc = plait_tls_fd_write(c->tls, c->fd, buf, len);
    free(buf);
    return rc;
}

int it_send_raw(it_client_t *c, const uint8_t *buf, size_t len) { return plait_tls_fd_write(c->tls, c->fd, buf, len); }

int it_recv(it_client_t *c, plait_msg_t *m, int timeout_ms)
{
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    for (;;) {
        size_t used = 0;
        int rc = plait_wire_parse(c->in, c->in_len, &c->lim, 0, m, &used);
        if (rc == 0) {
            memmove(c->in, c->in + used, c->in_len - used);
            c->in_len -= used;
            return 0;
        }
        if (rc != PLAIT_EAGAIN) return rc;
        if (c->in_len == sizeof(c->in)) return PLAIT_ETOOBIG;
        int r = plait_tls_fd_read(c->tls, c->fd, c->in + c->in_len, sizeof(c->in) - c->in_len);
        if (r > 0) {
            c->in_len += (size_t)r;
            continue;
        }
        if (r == 0) return PLAIT_EIO;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return PLAIT_EAGAIN;
        return r;
    }
}

void it_client_close(it_client_t *c)
{
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    plait_tls_free(c->tls);
    plait_tls_config_free(c->cfg);
    c->tls = NULL;
    c->cfg = NULL;
}

static uint8_t g_model_sha[32];
static int g_model_sha_ok;
static pthread_once_t g_model_once = PTHREAD_ONCE_INIT;

static void load_model_sha(void)
{
    plait_model_t m;
    memset(&m, 0, sizeof(m));
    if (plait_model_load(&m, it_model()) != 0) return;
    memcpy(g_model_sha, m.sha256, 32);
    plait_model_free(&m);
    g_model_sha_ok = 1;
}

int it_hello(it_client_t *c, const it_dep_t *d)
{
    return it_hello_caps(c, d, PLAIT_CAP_FFA);
}

int it_hello_caps(it_client_t *c, const it_dep_t *d, uint32_t caps)
{
    (void)d;
    pthread_once(&g_model_once, load_model_sha); /* clients run on several threads */
    if (!g_model_sha_ok) return PLAIT_EIO;
    plait_msg_t h;
    plait_msg_init(&h, PLAIT_MSG_HELLO);
    snprintf(h.u.hello.client_version, sizeof(h.u.hello.client_version), "integ-test/1");
    memcpy(h.u.hello.base_model_sha256, g_model_sha, 32);
    h.u.hello.capabilities = caps;
    return it_send(c, &h);
}

uint32_t *it_update_words(const plait_msg_task_t *t, float value)
{
    size_t n = (size_t)t->update_elements, p = n - 1;
    float *x = malloc(p * sizeof(float));
    uint32_t *w = malloc(n * sizeof(uint32_t));
    if (!x || !w) {
        free(x);
        free(w);
        return NULL;
    }
    for (size_t i = 0; i < p; i++) x[i] = value;
    plait_quant_config_t qc = {t->quant_bits, t->quant_range};
    plait_rng_t rng;
    plait_rng_seed_u64(&rng, 42, 7);
    if (plait_quant_encode(&qc, x, p, &rng, w) != 0 || plait_quant_encode_weight(&qc, 1.0, &rng, &w[p]) != 0) {
        free(x);
        free(w);
        return NULL;
    }
    free(x);
    return w;
}

/* Download the whole adapter of a task; 0 when its hash checks. */
static int download(it_client_t *c, const plait_msg_task_t *t)
{
    plait_msg_t m;
    plait_msg_init(&m, PLAIT_MSG_ADAPTER_REQUEST);
    m.u.adapter_request.round_id = t->round_id;
    m.u.adapter_request.version = t->adapter_version;
    m.u.adapter_request.offset = 0;
    int rc = it_send(c, &m);
    if (rc != 0) return rc;
    plait_sha256_t h;
    plait_sha256_init(&h);
    uint64_t have = 0;
    /* 30 s a chunk: a download may wait behind stalled peers until they are closed (10 s) */
    while (have < t->adapter_len) {
        plait_msg_t r;
        if ((rc = it_recv(c, &r, 30000)) != 0) return rc;
        if (r.type != PLAIT_MSG_ADAPTER_CHUNK || r.u.adapter_chunk.offset != have) {
            plait_msg_free(&r);
            return PLAIT_EPROTO;
        }
        plait_sha256_update(&h, r.u.adapter_chunk.data, r.u.adapter_chunk.len);
        have += r.u.adapter_chunk.len;
        uint8_t want[32];
        int last = r.u.adapter_chunk.has_sha256;
        if (last) memcpy(want, r.u.adapter_chunk.sha256, 32);
        plait_msg_free(&r);
        if (last) {
            uint8_t got[32];
            plait_sha256_finish(&h, got);
            if (memcmp(got, want, 32) != 0 || memcmp(got, t->adapter_sha256, 32) != 0) return PLAIT_EAUTH;
        }
    }
    return 0;
}

int it_upload(it_client_t *c, const plait_msg_task_t *t, const uint32_t *w, size_t n_total, size_t upto,
              size_t chunk_words)
{
    uint32_t idx = 0;
    for (size_t off = 0; off < upto; off += chunk_words, idx++) {
        size_t n = upto - off < chunk_words ? upto - off : chunk_words;
        plait_msg_t m;
        plait_msg_init(&m, PLAIT_MSG_UPDATE_CHUNK);
        m.u.update_chunk.round_id = t->round_id;
        m.u.update_chunk.chunk_index = idx;
        m.u.update_chunk.offset = off;
        m.u.update_chunk.total_elements = n_total;
        m.u.update_chunk.words = w + off;
        m.u.update_chunk.n_words = n;
        int rc = it_send(c, &m);
        if (rc != 0) return rc;
    }
    return 0;
}

int it_upload_packed(it_client_t *c, const plait_msg_task_t *t, const uint32_t *w, size_t n_total, uint64_t *bytes)
{
    plait_wire_limits_t lim = c->lim;
    if (t->max_chunk_bytes >= 4 && t->max_chunk_bytes < lim.max_chunk_bytes) lim.max_chunk_bytes = t->max_chunk_bytes;
    uint8_t *buf = malloc(lim.max_chunk_bytes);
    if (!buf) return PLAIT_ENOMEM;
    plait_wire_xfer_t x;
    plait_wire_xfer_init(&x, t->round_id, n_total, 0);
    plait_msg_t m;
    int rc;
    while ((rc = plait_wire_update_tx_next_packed(&x, &lim, w, t->quant_bits, buf, lim.max_chunk_bytes, &m)) == 1) {
        size_t len = 0;
        if ((rc = plait_wire_encoded_size(&m, &c->lim, &len)) != 0 || (rc = it_send(c, &m)) != 0) break;
        if (bytes) *bytes += len;
    }
    free(buf);
    return rc;
}

int it_participate(const it_dep_t *d, const char *id, float value, plait_msg_task_t *task)
{
    return it_participate_ex(d, id, value, task, NULL);
}

int it_participate_ex(const it_dep_t *d, const char *id, float value, plait_msg_task_t *task, uint64_t *up_bytes)
{
    it_client_t *c = malloc(sizeof(*c));
    if (!c) return PLAIT_ENOMEM;
    int rc = PLAIT_EBUSY;
    plait_msg_t m;
    plait_msg_task_t t;
    memset(&t, 0, sizeof(t));
    /* Come back later (no round yet, cohort full) is honoured, a bounded number of times. */
    for (int attempt = 0; attempt < 100 && rc == PLAIT_EBUSY; attempt++) {
        rc = it_client_connect(c, d, id);
        if (rc == 0) rc = it_hello(c, d);
        if (rc == 0) rc = it_recv(c, &m, 20000);
        if (rc == 0) {
            if (m.type == PLAIT_MSG_TASK) {
                t = m.u.task;
            } else {
                int ms = m.type == PLAIT_MSG_COME_BACK_LATER ? (int)m.u.come_back_later.retry_ms : 200;
                rc = PLAIT_EBUSY;
                it_client_close(c);
                sleep_ms(ms > 300 ? 300 : ms);
            }
            plait_msg_free(&m);
        }
    }
    if (rc == 0 && task) *task = t;
    if (rc == 0) rc = download(c, &t);
    uint32_t *w = rc == 0 ? it_update_words(&t, value) : NULL;
    if (rc == 0 && !w) rc = PLAIT_ENOMEM;
    if (rc == 0 && t.packed_update) { /* as the agent: packed at quant_bits when the aggregator reads it */
        rc = it_upload_packed(c, &t, w, (size_t)t.update_elements, up_bytes);
    } else if (rc == 0) {
        rc = it_upload(c, &t, w, (size_t)t.update_elements, (size_t)t.update_elements, 700);
        for (size_t off = 0; rc == 0 && up_bytes && off < t.update_elements; off += 700) {
            plait_msg_t u; /* the frames it_upload sent, counted the same way */
            plait_msg_init(&u, PLAIT_MSG_UPDATE_CHUNK);
            u.u.update_chunk.round_id = t.round_id;
            u.u.update_chunk.chunk_index = (uint32_t)(off / 700);
            u.u.update_chunk.offset = off;
            u.u.update_chunk.total_elements = t.update_elements;
            u.u.update_chunk.words = w + off;
            u.u.update_chunk.n_words = t.update_elements - off < 700 ? (size_t)(t.update_elements - off) : 700;
            size_t len = 0;
            rc = plait_wire_encoded_size(&u, &c->lim, &len);
            *up_bytes += len;
        }
    }
    free(w);
    if (rc == 0) rc = it_recv(c, &m, 20000);
    if (rc == 0) {
        if (m.type != PLAIT_MSG_ACK || m.u.ack.round_id != t.round_id) rc = PLAIT_EPROTO;
        plait_msg_free(&m);
    }
    if (rc == 0) (void)plait_tls_fd_close(c->tls, c->fd);
    it_client_close(c);
    free(c);
    return rc;
}

double it_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

pid_t it_spawn(char *const argv[], const char *out_path, const char *err_path)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid != 0) return pid;
    int o = open(out_path ? out_path : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0600);
    int e = open(err_path ? err_path : "/dev/null", O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (o >= 0) dup2(o, 1);
    if (e >= 0) dup2(e, 2);
    setenv("PLAIT_ASSETS", tu_assets_dir(), 1);
    execv(argv[0], argv);
    _exit(127);
}

int it_reap(pid_t pid, double deadline)
{
    for (;;) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
        if (it_mono() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            return -1;
        }
        usleep(20000);
    }
}

int it_run(char *const argv[], const char *out_path, const char *err_path, double timeout_s)
{
    pid_t pid = it_spawn(argv, out_path, err_path);
    return pid < 0 ? -1 : it_reap(pid, it_mono() + timeout_s);
}

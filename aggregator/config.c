/*
 * config.c: the aggregator service's configuration (aggcfg.h).
 *
 * One table (SETTINGS) describes every setting: name, type, offset in
 * plait_aggcfg_t, range, default and the comment `init` writes above it.
 * Defaults, the strict file parser, `--set` flags and the written file all
 * come from that table, so a setting added there is everywhere at once.
 *
 * Input here is untrusted in the ordinary sense (an operator's typo must give
 * a line number, not a crash): every line is bounded, every number is parsed
 * whole with its range checked, and strings are bounded by
 * PLAIT_AGGCFG_STR_MAX. plait_aggcfg_validate() checks the words of the
 * string settings that take a few (CHOICES) and the cross-field rules.
 */
#include "plait/aggcfg.h"
#include "plait/ddg.h"
#include "plait/file.h"
#include "plait/secagg.h"
#include "plait/update.h"

#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

typedef enum { T_UINT, T_DOUBLE, T_STR, T_BOOL } stype_t;

typedef struct {
    const char *name;
    stype_t type;
    size_t off;
    size_t size;    /* T_STR: capacity including the NUL */
    double min, max;
    const char *def; /* default as text (parsed through the same code) */
    const char *comment;
} setting_t;

#define F(f) offsetof(plait_aggcfg_t, f), sizeof(((plait_aggcfg_t *)0)->f)

static const setting_t SETTINGS[] = {
    {"listen_addr", T_STR, F(listen_addr), 0, 0, "127.0.0.1",
     "IPv4/IPv6 address the federation port binds (0.0.0.0 for every interface)"},
    {"port", T_UINT, F(port), 0, 65535, "7443", "federation TCP port (mutual TLS); 0 picks a free port"},
    {"metrics_enabled", T_BOOL, F(metrics_enabled), 0, 1, "true", "serve Prometheus metrics over plain HTTP"},
    {"metrics_addr", T_STR, F(metrics_addr), 0, 0, "127.0.0.1",
     "address of the metrics endpoint (keep it on a private network: it is not authenticated)"},
    {"metrics_port", T_UINT, F(metrics_port), 0, 65535, "9464", "metrics port (GET /metrics); 0 picks a free port"},
    {"port_file", T_STR, F(port_file), 0, 0, "",
     "once listening, write {\"port\":N,\"metrics_port\":M} here (\"\" = do not)"},
    {"max_connections", T_UINT, F(max_connections), 1, 1000000, "256",
     "connections open at once; further ones are closed at accept and counted"},
    {"max_preauth_connections", T_UINT, F(max_preauth_connections), 1, 1000000, "64",
     "connections before their Hello at once (at most 3/4 of max_connections: the rest is kept for devices)"},
    {"max_preauth_per_addr", T_UINT, F(max_preauth_per_addr), 1, 1000000, "8",
     "connections before their Hello from one IP address at once"},
    {"max_frame", T_UINT, F(max_frame), 1024, 16777216, "1052672",
     "largest frame accepted after the Hello, bytes, length field included (>= max_chunk_bytes + 256)"},
    {"max_preauth_frame", T_UINT, F(max_preauth_frame), 64, 65536, "4096",
     "largest frame accepted before the Hello, bytes (unauthenticated peers get little)"},
    {"max_chunk_bytes", T_UINT, F(max_chunk_bytes), 4, 16777216, "262144",
     "adapter bytes per download chunk and update bytes per upload chunk"},
    {"max_update_elements", T_UINT, F(max_update_elements), 2, 67108865, "16777216",
     "largest update accepted, in 32-bit words"},
    {"max_uploads_in_flight", T_UINT, F(max_uploads_in_flight), 1, 1000000, "16",
     "plain updates buffered at once (being received, or held until training starts); further uploads wait "
     "unread, so the service's memory is this times the update size, whatever the cohort"},
    {"max_send_queue", T_UINT, F(max_send_queue), 65536, 1073741824, "2097152",
     "bytes of ciphertext queued for sending beyond what the sockets take, all connections together (one "
     "32 KiB download piece a connection at most); a peer that has read nothing for 10 s while downloads wait "
     "for room is closed (write_stall)"},
    {"packed_updates", T_BOOL, F(packed_updates), 0, 1, "true",
     "plain rounds: devices may send update chunks packed at quant_bits (a quarter of the 32-bit words at 8 "
     "bits); false: words only (both forms are accepted either way)"},
    {"min_upload_rate", T_UINT, F(min_upload_rate), 0, 1000000000, "8192",
     "bytes/s: while other uploads wait for a buffer, an upload holding one that brings less than this over "
     "upload_grace_s is cut (slow_upload), so slow or trickling devices cannot hold every buffer; 0 = no floor"},
    {"upload_grace_s", T_DOUBLE, F(upload_grace_s), 0.05, 86400, "10",
     "the window, in seconds, over which min_upload_rate is judged"},
    {"auth_timeout_s", T_DOUBLE, F(auth_timeout_s), 0.05, 3600, "5",
     "TLS handshake and Hello must complete within this many seconds"},
    {"idle_timeout_s", T_DOUBLE, F(idle_timeout_s), 0.05, 86400, "90",
     "close a connection that sends nothing for this many seconds"},
    {"tls_ticket_lifetime_s", T_UINT, F(tls_ticket_lifetime_s), 0, 604800, "86400",
     "TLS session tickets: a returning device resumes its session for this long (0 = full handshakes only)"},
    {"base_model", T_STR, F(base_model), 0, 0, "",
     "path of the base model checkpoint (llama2.c .bin); devices must run the same file (sha256)"},
    {"lora_rank", T_UINT, F(lora_rank), 1, 1024, "8", "LoRA rank R (as plait-agent and plait-sim)"},
    {"lora_alpha", T_DOUBLE, F(lora_alpha), 1e-6, 1e6, "16", "LoRA alpha (scaling alpha / R)"},
    {"lora_targets", T_STR, F(lora_targets), 0, 0, "wq,wv", "adapted projections: wq,wk,wv,wo,w1,w2,w3"},
    {"lora_mode", T_STR, F(lora_mode), 0, 0, "ffa", "ffa (A frozen, B averaged), fedit or fedsa"},
    {"a_seed", T_UINT, F(a_seed), 0, 1.8e19, "1", "seed of the LoRA A matrices"},
    {"local_steps", T_UINT, F(local_steps), 1, 1000000, "8", "device training steps per round"},
    {"batch", T_UINT, F(batch), 1, 4096, "2", "device batch size B"},
    {"seq_len", T_UINT, F(seq_len), 1, 65536, "32", "device sequence length T"},
    {"lr", T_DOUBLE, F(lr), 1e-12, 1, "0.01", "device learning rate"},
    {"prox_mu", T_DOUBLE, F(prox_mu), 0, 1e4, "0",
     "FedProx: devices add (prox_mu/2)*|w - w_global|^2 to their local objective (0 = off; typical 0.001..1)"},
    {"clip_norm", T_DOUBLE, F(clip_norm), 1e-9, 1e9, "1", "S: L2 bound of a device update"},
    {"quant_bits", T_UINT, F(quant_bits), 8, 32, "16", "bits per quantized update word"},
    {"quant_range", T_DOUBLE, F(quant_range), 1e-9, 1e9, "1", "quantization clamps to [-R, R]; R >= clip_norm"},
    {"example_cap", T_UINT, F(example_cap), 1, 4294967295.0, "64", "device weight = min(examples, cap) / cap"},
    {"download_delta_keep", T_UINT, F(download_delta_keep), 0, 16, "2",
     "previous versions kept in memory so a device holding one downloads a delta (0 = full downloads only)"},
    {"download_delta_bits", T_UINT, F(download_delta_bits), 0, 16, "0",
     "0 = exact download deltas; 8 or 16 = commit each version as the previous one plus a delta quantized to "
     "this many bits per element (a lossy step the operator chooses)"},
    {"target_cohort", T_UINT, F(target_cohort), 1, 4194304, "8", "updates wanted per round"},
    {"min_cohort", T_UINT, F(min_cohort), 1, 4194304, "2", "a round with fewer updates at its deadline fails"},
    {"overselect", T_DOUBLE, F(overselect), 1, 10, "1.25", "select ceil(target_cohort * overselect) devices"},
    {"selection_timeout_s", T_DOUBLE, F(selection_timeout_s), 0.01, 86400, "60",
     "selection ends this long after a round opens (training starts with >= min_cohort)"},
    {"round_timeout_s", T_DOUBLE, F(round_timeout_s), 0.01, 604800, "600",
     "updates are due this long after training starts"},
    {"rejoin_grace_s", T_DOUBLE, F(rejoin_grace_s), 0, 86400, "10",
     "a selected device that disconnects may reconnect and resume this long before it counts as a dropout"},
    {"round_pause_s", T_DOUBLE, F(round_pause_s), 0, 86400, "0", "wait between the end of a round and the next"},
    {"retry_ms", T_UINT, F(retry_ms), 1, 86400000, "5000",
     "come-back-later delay when no round is selecting (devices add jitter)"},
    {"pace_rounds", T_UINT, F(pace_rounds), 0, 1000000, "0",
     "pace steering: a device that took part in one of the last N rounds is told to come back later (0 = off)"},
    {"server_opt", T_STR, F(server_opt), 0, 0, "fedavg", "server optimizer: fedavg, fedadagrad, fedadam, fedyogi, fedavgm"},
    {"server_lr", T_DOUBLE, F(server_lr), 1e-12, 1e6, "1", "server learning rate"},
    {"server_momentum", T_DOUBLE, F(server_momentum), 0, 0.999, "0.9",
     "fedavgm: server momentum; fedadagrad, fedadam, fedyogi: beta1"},
    {"aggregation", T_STR, F(aggregation), 0, 0, "mean",
     "mean (weighted, FedAvg), median or trimmed_mean (coordinate-wise, robust to a few bad devices; they need "
     "each device's update: secure_agg = false, dp = none)"},
    {"trim_fraction", T_DOUBLE, F(trim_fraction), 0, 0.49, "0.1",
     "aggregation = trimmed_mean: fraction of values dropped at each end of every coordinate"},
    {"dp", T_STR, F(dp), 0, 0, "none", "differential privacy: none, central (DP-FedAvg) or distributed (discrete Gaussian added by the devices; needs secure_agg)"},
    {"noise_multiplier", T_DOUBLE, F(noise_multiplier), 1e-6, 1e6, "1", "z of central DP, or of the sum with distributed DP"},
    {"population", T_UINT, F(population), 0, 1e15, "0",
     "devices sampled from (q = target_cohort / population); 0 = the enrolled, non-revoked devices; "
     "serve refuses a value above that count"},
    {"sampling_rate", T_DOUBLE, F(sampling_rate), 0, 1, "0",
     "q with dp = central: each checking-in device joins a round with this probability (0 = target_cohort / population)"},
    {"adaptive_clip", T_BOOL, F(adaptive_clip), 0, 1, "false",
     "dp = central: devices report a noised 'norm <= clip' bit and the clip follows clip_target_quantile"},
    {"clip_target_quantile", T_DOUBLE, F(clip_target_quantile), 0.001, 0.999, "0.5",
     "adaptive_clip: fraction of updates the clip should leave unclipped"},
    {"clip_lr", T_DOUBLE, F(clip_lr), 1e-6, 10, "0.2", "adaptive_clip: geometric learning rate of the clip"},
    {"clip_count_stddev", T_DOUBLE, F(clip_count_stddev), 0, 1e9, "0",
     "adaptive_clip: noise std of the unclipped count (0 = target_cohort / 20)"},
    {"dp_delta", T_DOUBLE, F(dp_delta), 0, 0.5, "0", "delta of the reported epsilon; 0 = 1 / population^1.1"},
    {"secure_agg", T_BOOL, F(secure_agg), 0, 1, "true",
     "secure aggregation (SecAgg+): the aggregator learns only the sum of a round's updates"},
    {"secagg_stage_timeout_s", T_DOUBLE, F(secagg_stage_timeout_s), 0.01, 86400, "30",
     "secure aggregation: the advertise, share and unmask stages each close after this many seconds"},
    {"secagg_dropout", T_DOUBLE, F(secagg_dropout), 0, 0.9, "0.3",
     "secure aggregation: fraction of a cohort that may drop out (sizes the graph degree k and threshold t)"},
    {"secagg_corrupt", T_DOUBLE, F(secagg_corrupt), 0, 0.5, "0",
     "secure aggregation: fraction of devices assumed to collude with the aggregator"},
    {"secagg_sigma", T_DOUBLE, F(secagg_sigma), 1, 128, "20",
     "secure aggregation: the parameters fail or leak with probability at most 2^-sigma"},
    {"eval_every", T_UINT, F(eval_every), 0, 1000000, "0",
     "federated evaluation after every N committed training rounds (0 = off; needs secure_agg and dp = none)"},
    {"eval_loss_max", T_DOUBLE, F(eval_loss_max), 1e-6, 1000, "10",
     "federated evaluation: each device's held-out loss is clipped to this before it is summed"},
    {"log_level", T_STR, F(log_level), 0, 0, "info", "debug, info, warn or error"},
};
#define N_SETTINGS (sizeof(SETTINGS) / sizeof(SETTINGS[0]))

/* Other spellings accepted for a setting: plait-sim's config names (docs/operator-guide.md). The canonical
 * name is the one written by the generated aggregator.conf. */
static const struct {
    const char *alias, *name;
} ALIASES[] = {
    {"clients_per_round", "target_cohort"}, {"min_clients", "min_cohort"}, {"clip", "clip_norm"},
    {"strategy", "server_opt"},             {"local_lr", "lr"},           {"rank", "lora_rank"},
    {"alpha", "lora_alpha"},
};

static const setting_t *find(const char *name, size_t n)
{
    for (size_t i = 0; i < sizeof(ALIASES) / sizeof(ALIASES[0]); i++)
        if (strlen(ALIASES[i].alias) == n && memcmp(ALIASES[i].alias, name, n) == 0) {
            name = ALIASES[i].name;
            n = strlen(name);
            break;
        }
    for (size_t i = 0; i < N_SETTINGS; i++)
        if (strlen(SETTINGS[i].name) == n && memcmp(SETTINGS[i].name, name, n) == 0) return &SETTINGS[i];
    return NULL;
}

/* Parse value text v[0, n) for setting s into c. Returns 0 or a static reason. */
static const char *apply(plait_aggcfg_t *c, const setting_t *s, const char *v, size_t n)
{
    char buf[PLAIT_AGGCFG_STR_MAX + 1];
    if (n > PLAIT_AGGCFG_STR_MAX) return "value too long";
    memcpy(buf, v, n);
    buf[n] = '\0';
    char *p = (char *)c + s->off;
    switch (s->type) {
    case T_UINT: {
        if (n == 0 || buf[0] < '0' || buf[0] > '9') return "want a non-negative integer";
        errno = 0;
        char *end;
        unsigned long long x = strtoull(buf, &end, 10);
        if (*end != '\0' || errno == ERANGE) return "want a non-negative integer";
        if ((double)x < s->min || (double)x > s->max) return "out of range";
        *(uint64_t *)(void *)p = (uint64_t)x;
        return NULL;
    }
    case T_DOUBLE: {
        if (n == 0) return "want a number";
        errno = 0;
        char *end;
        double x = strtod(buf, &end);
        if (*end != '\0' || errno == ERANGE || !isfinite(x)) return "want a finite number";
        if (x < s->min || x > s->max) return "out of range";
        *(double *)(void *)p = x;
        return NULL;
    }
    case T_BOOL:
        if (strcmp(buf, "true") == 0 || strcmp(buf, "1") == 0 || strcmp(buf, "on") == 0) *(int *)(void *)p = 1;
        else if (strcmp(buf, "false") == 0 || strcmp(buf, "0") == 0 || strcmp(buf, "off") == 0) *(int *)(void *)p = 0;
        else return "want true or false";
        return NULL;
    case T_STR:
        if (n + 1 > s->size) return "value too long";
        for (size_t i = 0; i < n; i++)
            if ((unsigned char)buf[i] < 0x20 || buf[i] == 0x7f || buf[i] == '"') return "control character or quote in value";
        memcpy(p, buf, n + 1);
        return NULL;
    }
    return "bad setting type";
}

static const char *range_hint(const setting_t *s, char *buf, size_t len)
{
    if (s->type == T_UINT || s->type == T_DOUBLE) snprintf(buf, len, " (%g..%g)", s->min, s->max);
    else buf[0] = '\0';
    return buf;
}

void plait_aggcfg_default(plait_aggcfg_t *c)
{
    memset(c, 0, sizeof(*c));
    for (size_t i = 0; i < N_SETTINGS; i++) {
        const char *why = apply(c, &SETTINGS[i], SETTINGS[i].def, strlen(SETTINGS[i].def));
        PLAIT_ASSERT(why == NULL);
    }
}

static int is_space(char ch) { return ch == ' ' || ch == '\t' || ch == '\r'; }

/* One line; returns NULL or a reason (with *key_out naming the setting when known). */
static const char *parse_line(plait_aggcfg_t *c, const char *l, size_t n, unsigned char *seen,
                              const setting_t **key_out)
{
    *key_out = NULL;
    size_t i = 0;
    while (i < n && is_space(l[i])) i++;
    if (i == n || l[i] == '#') return NULL;
    size_t k0 = i;
    while (i < n && (l[i] == '_' || (l[i] >= 'a' && l[i] <= 'z') || (l[i] >= '0' && l[i] <= '9'))) i++;
    size_t k1 = i;
    if (k1 == k0) return "expected `key = value`";
    const setting_t *s = find(l + k0, k1 - k0);
    if (s == NULL) return "unknown setting";
    *key_out = s;
    while (i < n && is_space(l[i])) i++;
    if (i == n || l[i] != '=') return "expected '=' after the key";
    i++;
    while (i < n && is_space(l[i])) i++;
    size_t v0, v1;
    if (i < n && l[i] == '"') {
        v0 = ++i;
        while (i < n && l[i] != '"') i++;
        if (i == n) return "unterminated \"string\"";
        v1 = i++;
        while (i < n && is_space(l[i])) i++;
        if (i < n && l[i] != '#') return "text after the quoted value";
    } else {
        v0 = i;
        while (i < n && l[i] != '#') i++;
        v1 = i;
        while (v1 > v0 && is_space(l[v1 - 1])) v1--;
        if (s->type != T_STR && v1 == v0) return "missing value";
    }
    size_t idx = (size_t)(s - SETTINGS);
    if (seen[idx]) return "set twice";
    seen[idx] = 1;
    return apply(c, s, l + v0, v1 - v0);
}

int plait_aggcfg_parse(plait_aggcfg_t *c, const char *text, size_t len, const char *name)
{
    if (c == NULL || (text == NULL && len > 0)) return plait_fail(PLAIT_EINVAL, "aggcfg_parse: NULL argument");
    unsigned char seen[N_SETTINGS];
    memset(seen, 0, sizeof(seen));
    size_t line = 0, pos = 0;
    while (pos < len) {
        line++;
        size_t e = pos;
        while (e < len && text[e] != '\n') e++;
        if (memchr(text + pos, '\0', e - pos) != NULL)
            return plait_fail(PLAIT_EPROTO, "%s:%zu: NUL byte in line", name, line);
        if (e - pos > 4096) return plait_fail(PLAIT_EPROTO, "%s:%zu: line longer than 4096 bytes", name, line);
        const setting_t *s;
        const char *why = parse_line(c, text + pos, e - pos, seen, &s);
        if (why != NULL) {
            char hint[64];
            if (s != NULL)
                return plait_fail(PLAIT_EPROTO, "%s:%zu: %s: %s%s", name, line, s->name, why,
                                  strcmp(why, "out of range") == 0 ? range_hint(s, hint, sizeof(hint)) : "");
            return plait_fail(PLAIT_EPROTO, "%s:%zu: %s", name, line, why);
        }
        pos = e + 1;
    }
    return 0;
}

int plait_aggcfg_load(plait_aggcfg_t *c, const char *path)
{
    FILE *f = NULL;
    int frc = plait_file_fopen(path, NULL, &f); /* regular files only: a FIFO is refused, not waited on */
    if (frc != 0) return frc;
    char *buf = malloc(PLAIT_AGGCFG_FILE_MAX + 1);
    if (buf == NULL) {
        fclose(f);
        return plait_fail(PLAIT_ENOMEM, "%s: out of memory", path);
    }
    size_t n = fread(buf, 1, PLAIT_AGGCFG_FILE_MAX + 1, f);
    int err = ferror(f);
    fclose(f);
    int rc;
    if (err) rc = plait_fail(PLAIT_EIO, "%s: read error", path);
    else if (n > PLAIT_AGGCFG_FILE_MAX) rc = plait_fail(PLAIT_ETOOBIG, "%s: larger than %d bytes", path, PLAIT_AGGCFG_FILE_MAX);
    else rc = plait_aggcfg_parse(c, buf, n, path);
    free(buf);
    return rc;
}

int plait_aggcfg_set(plait_aggcfg_t *c, const char *kv)
{
    if (c == NULL || kv == NULL) return plait_fail(PLAIT_EINVAL, "aggcfg_set: NULL argument");
    const char *eq = strchr(kv, '=');
    if (eq == NULL) return plait_fail(PLAIT_EINVAL, "--set '%s': want key=value", kv);
    const setting_t *s = find(kv, (size_t)(eq - kv));
    if (s == NULL) return plait_fail(PLAIT_EINVAL, "--set: unknown setting '%.*s'", (int)(eq - kv), kv);
    const char *why = apply(c, s, eq + 1, strlen(eq + 1));
    if (why != NULL) {
        char hint[64];
        return plait_fail(PLAIT_EINVAL, "--set %s: %s%s", s->name, why,
                          strcmp(why, "out of range") == 0 ? range_hint(s, hint, sizeof(hint)) : "");
    }
    return 0;
}

/* String settings that take one of a few words, in SETTINGS order: plait_aggcfg_validate() refuses any
 * other value with "<name>: '<value>' is not a, b or c". */
static const struct {
    const char *name;
    const char *const words[6]; /* NULL-terminated */
} CHOICES[] = {
    {"lora_mode", {"ffa", "fedit", "fedsa", NULL}},
    {"server_opt", {"fedavg", "fedadagrad", "fedadam", "fedyogi", "fedavgm", NULL}},
    {"aggregation", {"mean", "median", "trimmed_mean", NULL}},
    {"dp", {"none", "central", "distributed", NULL}},
    {"log_level", {"debug", "info", "warn", "error", NULL}},
};

/* 0 when setting `name` of c holds one of `words`, else PLAIT_EINVAL naming them. */
static int check_choice(const plait_aggcfg_t *c, const char *name, const char *const *words)
{
    const setting_t *s = find(name, strlen(name));
    PLAIT_ASSERT(s != NULL && s->type == T_STR);
    const char *v = (const char *)c + s->off;
    char list[128] = "";
    size_t n = 0;
    for (size_t i = 0; words[i]; i++) {
        if (strcmp(v, words[i]) == 0) return 0;
        n++;
    }
    for (size_t i = 0; i < n; i++) {
        const char *sep = i == 0 ? "" : i + 1 == n ? " or " : ", ";
        size_t used = strlen(list);
        snprintf(list + used, sizeof(list) - used, "%s%s", sep, words[i]);
    }
    return plait_fail(PLAIT_EINVAL, "%s: '%s' is not %s", s->name, v, list);
}

int plait_aggcfg_eval_allowed(const plait_aggcfg_t *c)
{
    if (c == NULL) return plait_fail(PLAIT_EINVAL, "aggcfg_eval_allowed: NULL");
    if (!c->secure_agg)
        return plait_fail(PLAIT_EINVAL, "federated evaluation needs secure_agg = true (without it the aggregator would "
                                        "see each device's held-out loss)");
    if (strcmp(c->dp, "none") != 0)
        return plait_fail(PLAIT_EINVAL, "federated evaluation needs dp = none (dp = %s: the metric would be released "
                                        "without noise and without a privacy ledger row)", c->dp);
    return 0;
}

int plait_aggcfg_validate(const plait_aggcfg_t *c)
{
    if (c == NULL) return plait_fail(PLAIT_EINVAL, "aggcfg_validate: NULL");
    if (c->base_model[0] == '\0') return plait_fail(PLAIT_EINVAL, "base_model: required (path of the checkpoint)");
    for (size_t i = 0; i < sizeof(CHOICES) / sizeof(CHOICES[0]); i++) {
        int rc = check_choice(c, CHOICES[i].name, CHOICES[i].words);
        if (rc != 0) return rc;
    }
    if (c->min_cohort > c->target_cohort) return plait_fail(PLAIT_EINVAL, "min_cohort: larger than target_cohort");
    if (c->download_delta_bits != 0 && c->download_delta_bits != 8 && c->download_delta_bits != 16)
        return plait_fail(PLAIT_EINVAL, "download_delta_bits: %llu, must be 0, 8 or 16",
                          (unsigned long long)c->download_delta_bits);
    if (c->download_delta_bits != 0 && c->download_delta_keep == 0)
        return plait_fail(PLAIT_EINVAL, "download_delta_bits: needs download_delta_keep >= 1");
    if (c->quant_range < c->clip_norm) return plait_fail(PLAIT_EINVAL, "quant_range: smaller than clip_norm");
    if (c->max_frame < c->max_chunk_bytes + 256)
        return plait_fail(PLAIT_EINVAL, "max_frame: must be at least max_chunk_bytes + 256");
    if (c->max_preauth_frame > c->max_frame) return plait_fail(PLAIT_EINVAL, "max_preauth_frame: larger than max_frame");
    if (c->max_send_queue < 65536) /* below one download piece and its framing no download would go out */
        return plait_fail(PLAIT_EINVAL, "max_send_queue: %llu, must be at least 65536", (unsigned long long)c->max_send_queue);
    if (strcmp(c->dp, "central") == 0 && c->pace_rounds != 0)
        return plait_fail(PLAIT_EINVAL, "pace_rounds: must be 0 with dp = central (the accountant assumes each device "
                                        "is sampled independently every round)");
    if (strcmp(c->aggregation, "mean") != 0) {
        /* Median and trimmed mean rank every device's update per coordinate. */
        if (c->secure_agg)
            return plait_fail(PLAIT_EINVAL, "aggregation = %s needs each device's update, and secure aggregation shows "
                                            "the aggregator only their sum: set secure_agg = false or aggregation = mean",
                              c->aggregation);
        if (strcmp(c->dp, "none") != 0)
            return plait_fail(PLAIT_EINVAL, "aggregation = %s with dp = %s: the privacy accounting assumes a noised "
                                            "sum of clipped updates; use aggregation = mean",
                              c->aggregation, c->dp);
    }
    if (c->eval_every > 0 && plait_aggcfg_eval_allowed(c) != 0)
        return plait_fail(PLAIT_EINVAL, "eval_every: %s", plait_errmsg());
    if (c->adaptive_clip && strcmp(c->dp, "central") != 0)
        return plait_fail(PLAIT_EINVAL, "adaptive_clip: needs dp = central");
    if (c->secure_agg) {
        /* The masked ring Z_{2^m} needs m = quant_bits + ceil(log2(selected)) <= 32. */
        double want = ceil((double)c->target_cohort * c->overselect);
        if (want < 2) return plait_fail(PLAIT_EINVAL, "secure_agg: needs at least 2 selected devices (target_cohort * overselect)");
        unsigned m = 0;
        if (plait_secagg_mask_bits((unsigned)c->quant_bits, (uint32_t)(want < 4e9 ? want : 4e9), &m) != 0 ||
            want > PLAIT_SECAGG_MAX_COHORT)
            return plait_fail(PLAIT_EINVAL,
                              "secure_agg: quant_bits %llu + ceil(log2(%.0f selected devices)) exceeds 32 bits (lower "
                              "quant_bits or the cohort, or set secure_agg = false)",
                              (unsigned long long)c->quant_bits, want);
        plait_secagg_params_t sp;
        if (plait_secagg_params_choose((uint32_t)want, c->secagg_dropout, c->secagg_corrupt, c->secagg_sigma, &sp) != 0)
            return plait_fail(PLAIT_EINVAL, "secure_agg: no graph and threshold for %.0f selected devices: %s", want,
                              plait_errmsg());
    }
    if (strcmp(c->dp, "distributed") == 0) {
        if (!c->secure_agg)
            return plait_fail(PLAIT_EINVAL, "dp: distributed needs secure_agg = true (the noise is in the masked sum)");
        if (c->example_cap != 1)
            return plait_fail(PLAIT_EINVAL, "example_cap: must be 1 with dp = distributed (uniform weights: the weight "
                                            "word carries no noise)");
        uint64_t num, den;
        if (plait_aggcfg_ddg_variance(c, &num, &den) != 0)
            return plait_fail(PLAIT_EINVAL, "dp = distributed: %s", plait_errmsg());
        /* The ring of a ddg round is Z_{2^32}. Worst case, selected devices each move a word by
         * clip + 1 steps from the centre; the noise of all of them must stay 8 std inside the rest. */
        double want = ceil((double)c->target_cohort * c->overselect);
        plait_quant_config_t qc = {.bits = (unsigned)c->quant_bits, .range = c->quant_range};
        double cs = c->clip_norm / plait_quant_step(&qc);
        double sd = sqrt(want * (double)num / (double)den);
        if (want * (cs + 1) + 8 * sd > ldexp(1.0, 31))
            return plait_fail(PLAIT_EINVAL,
                              "dp = distributed: %.0f selected devices at %.0f steps of clip plus 8 x the noise std "
                              "%.4g exceed the 2^31 headroom of the ring (lower quant_bits or noise_multiplier)",
                              want, cs, sd);
    }
    if (c->metrics_enabled && c->port != 0 && c->port == c->metrics_port && strcmp(c->listen_addr, c->metrics_addr) == 0)
        return plait_fail(PLAIT_EINVAL, "metrics_port: same as port");
    return 0;
}

int plait_aggcfg_ddg_variance(const plait_aggcfg_t *c, uint64_t *num, uint64_t *den)
{
    if (!c || !num || !den) return plait_fail(PLAIT_EINVAL, "aggcfg_ddg_variance: NULL");
    plait_quant_config_t qc = {.bits = (unsigned)c->quant_bits, .range = c->quant_range};
    double step = plait_quant_step(&qc);
    if (!(step > 0) || c->min_cohort < 1) return plait_fail(PLAIT_EINVAL, "aggcfg_ddg_variance: bad quantization");
    double cs = c->clip_norm / step, sd = c->noise_multiplier * cs;
    return plait_ddg_variance(sd * sd / (double)c->min_cohort, num, den);
}

static int needs_quotes(const char *v)
{
    if (v[0] == '\0') return 1;
    if (is_space(v[0]) || is_space(v[strlen(v) - 1])) return 1;
    return strchr(v, '#') != NULL;
}

int plait_aggcfg_write(const plait_aggcfg_t *c, FILE *f)
{
    fputs("# plait-aggregator configuration: every setting, with its default range.\n"
          "# Format: key = value  (# starts a comment; strings may be \"quoted\").\n"
          "# Command-line flags (serve --port, --metrics-port, --set key=value) override this file.\n",
          f);
    for (size_t i = 0; i < N_SETTINGS; i++) {
        const setting_t *s = &SETTINGS[i];
        const char *p = (const char *)c + s->off;
        char hint[64];
        fprintf(f, "\n# %s%s\n", s->comment, range_hint(s, hint, sizeof(hint)));
        switch (s->type) {
        case T_UINT: fprintf(f, "%s = %llu\n", s->name, (unsigned long long)*(const uint64_t *)(const void *)p); break;
        case T_DOUBLE: {
            double v = *(const double *)(const void *)p;
            char num[40];
            for (int prec = 15; prec <= 17; prec++) { /* shortest text that reads back exactly */
                snprintf(num, sizeof(num), "%.*g", prec, v);
                if (strtod(num, NULL) == v) break;
            }
            fprintf(f, "%s = %s\n", s->name, num);
            break;
        }
        case T_BOOL: fprintf(f, "%s = %s\n", s->name, *(const int *)(const void *)p ? "true" : "false"); break;
        case T_STR:
            if (needs_quotes(p)) fprintf(f, "%s = \"%s\"\n", s->name, p);
            else fprintf(f, "%s = %s\n", s->name, p);
            break;
        }
    }
    if (fflush(f) != 0 || ferror(f)) return plait_fail(PLAIT_EIO, "writing the configuration failed");
    return 0;
}

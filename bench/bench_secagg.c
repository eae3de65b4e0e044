/*
 * bench_secagg.c: `plait-bench secagg`: the cost of secure aggregation.
 *
 *  1. Client: the time one device takes to mask P values (default 1,000,000)
 *     with k = 10 neighbours (a complete graph of 11 devices, t = 6), and the
 *     time of its key steps (advertise, check 10 adverts, share, decrypt 10
 *     shares). Real device objects, real certificates.
 *  2. Server: the unmask time (reveals ingested + plait_secagg_server_finish)
 *     for cohorts of 100 and 1,000 at 0%, 10% and 30% dropouts. k and t come
 *     from plait_secagg_params_choose(n, 0.3, 0, 20) (the graph must be
 *     chosen before anyone drops, so it is sized for the worst rate).
 *     Dropouts leave after sharing keys (the costliest case for the server:
 *     their pairwise masks must be recomputed). The cohort's key material and
 *     Shamir shares are made directly with the library's primitives
 *     (untimed), and the masked inputs are random words: the server's work
 *     does not depend on their values. Correctness is the unit tests' job.
 *  3. Bytes per device: the masked upload packed at m bits against the plain
 *     upload packed at the quantizer's bits and at m bits, plus the key and
 *     share messages (payload sizes; the wire adds framing).
 *
 * Every figure is the median of R runs.
 */
#define _GNU_SOURCE
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <time.h>

#include "bench.h"
#include "plait/cli.h"
#include "plait/pki.h"
#include "plait/secagg.h"

#define MAX_REPS 101

/* --server-values A B: the flag's value is A, B is the next argument (getopt's
 * optind), consumed here. */
typedef struct {
    size_t *p100, *p1000;
    int argc;
    char **argv;
} server_values_t;

static int set_server_values(void *dest, const char *value)
{
    server_values_t *sv = dest;
    long long a, b;
    if (optind >= sv->argc) return plait_fail(PLAIT_EINVAL, "--server-values needs two values");
    if (plait_cli_int("--server-values", value, 0, 100000000, &a) != 0 ||
        plait_cli_int("--server-values", sv->argv[optind], 0, 100000000, &b) != 0)
        return PLAIT_EINVAL;
    optind++;
    *sv->p100 = (size_t)a;
    *sv->p1000 = (size_t)b;
    return 0;
}

static const uint8_t DEP[] = "bench-deployment";

/* CPU seconds of this thread: on a machine shared with other jobs the wall
 * time includes waiting for a core, the CPU time does not. */
static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef struct {
    double wall, cpu;
} span_t;

static int seeded(plait_drbg_t *d, uint64_t seed)
{
    uint8_t s[8];
    for (int i = 0; i < 8; i++) s[i] = (uint8_t)(seed >> (8 * i));
    plait_drbg_init(d);
    return plait_drbg_seed_deterministic(d, s, 8);
}

static int setup_round(plait_secagg_round_t *r, uint32_t n, uint32_t k, uint32_t t, unsigned m, size_t len)
{
    plait_secagg_params_t p = {.n = n, .k = k, .t = t};
    uint8_t seed[32] = {7};
    plait_secagg_round_init(r);
    return plait_secagg_round_setup(r, DEP, sizeof(DEP) - 1, 1, &p, seed, m, len);
}

/* ---- 1. client -------------------------------------------------------------- */

typedef struct {
    char *ca, *ca_key, *crt[12], *key[12];
    size_t crt_len;
} certs_t;

static int client_run(const certs_t *c, size_t P, unsigned m, uint64_t seed, span_t *t_keys, span_t *t_mask)
{
    enum { N = 11, K = 10 };
    plait_secagg_round_t r;
    plait_drbg_t d;
    plait_secagg_device_t *dev[N + 1] = {0};
    plait_secagg_advert_t adv[N + 1];
    plait_secagg_ct_t ct[N + 1][K];
    size_t nct[N + 1];
    uint32_t *x = malloc(P * sizeof(uint32_t)), *y = malloc(P * sizeof(uint32_t));
    int ok = x && y && setup_round(&r, N, K, 6, m, P) == 0 && seeded(&d, seed) == 0;
    for (size_t i = 0; ok && i < P; i++) x[i] = (uint32_t)(i * 2654435761u) & ((1u << (m - 4)) - 1u);
    /* Devices 2..11 get to the point where device 1 can mask (untimed). */
    for (uint32_t u = 1; ok && u <= N; u++)
        ok = plait_secagg_device_create(&dev[u], &r, u, &d) == 0 &&
             plait_secagg_device_advertise(dev[u], c->key[u], &d, &adv[u]) == 0;
    for (uint32_t u = 2; ok && u <= N; u++) {
        for (uint32_t v = 1; ok && v <= N; v++)
            if (v != u)
                ok = plait_secagg_device_accept_advert(dev[u], &adv[v], (const uint8_t *)c->crt[v],
                                                       strlen(c->crt[v]), c->ca) == 0;
        ok = ok && plait_secagg_device_shares(dev[u], &d, ct[u], K, &nct[u]) == 0;
    }
    /* Device 1: its key steps, then its masking (timed separately). */
    double t0 = bench_now(), c0 = cpu_now();
    plait_secagg_advert_t mine;
    ok = ok && plait_secagg_device_advertise(dev[1], c->key[1], &d, &mine) == 0;
    for (uint32_t v = 2; ok && v <= N; v++)
        ok = plait_secagg_device_accept_advert(dev[1], &adv[v], (const uint8_t *)c->crt[v], strlen(c->crt[v]),
                                               c->ca) == 0;
    ok = ok && plait_secagg_device_shares(dev[1], &d, ct[1], K, &nct[1]) == 0;
    for (uint32_t u = 2; ok && u <= N; u++)
        for (size_t i = 0; ok && i < nct[u]; i++)
            if (ct[u][i].to == 1) ok = plait_secagg_device_recv_share(dev[1], &ct[u][i]) == 0;
    double t1 = bench_now(), c1 = cpu_now();
    ok = ok && plait_secagg_device_mask(dev[1], x, P, y) == 0;
    double t2 = bench_now(), c2 = cpu_now();
    t_keys->wall = t1 - t0;
    t_keys->cpu = c1 - c0;
    t_mask->wall = t2 - t1;
    t_mask->cpu = c2 - c1;
    for (uint32_t u = 1; u <= N; u++) plait_secagg_device_free(dev[u]);
    plait_drbg_free(&d);
    plait_secagg_round_free(&r);
    free(x);
    free(y);
    return ok ? 0 : -1;
}

/* ---- 2. server -------------------------------------------------------------- */

typedef struct {
    uint8_t c_sk[32], c_pk[32], b[32];
    uint8_t (*sk_sh)[PLAIT_SECAGG_SHARE_LEN]; /* k + 1: at row(u)[0..k-1], then u itself */
    uint8_t (*b_sh)[PLAIT_SECAGG_SHARE_LEN];
} syn_t;

static long row_pos(const uint32_t *row, uint32_t k, uint32_t v)
{
    for (uint32_t i = 0; i < k; i++)
        if (row[i] == v) return (long)i;
    return -1;
}

static int server_run(uint32_t n, size_t P, unsigned m, double drop, const plait_secagg_params_t *p, uint64_t seed,
                      span_t *secs)
{
    uint32_t k = p->k, t = p->t;
    plait_secagg_round_t r;
    plait_drbg_t d;
    syn_t *dev = calloc(n + 1, sizeof(syn_t));
    uint32_t *xs = malloc((k + 1) * sizeof(uint32_t)), *y = malloc(P * sizeof(uint32_t)),
             *sum = malloc(P * sizeof(uint32_t));
    plait_secagg_reveal_t *rev = malloc((k + 1) * sizeof(*rev));
    plait_secagg_server_t *s = NULL;
    int ok = dev && xs && y && sum && rev && setup_round(&r, n, k, t, m, P) == 0 && seeded(&d, seed) == 0;
    static const uint8_t nine[32] = {9};
    for (uint32_t u = 1; ok && u <= n; u++) {
        syn_t *v = &dev[u];
        ok = plait_drbg_random(&d, v->c_sk, 32) == 0 && plait_drbg_random(&d, v->b, 32) == 0;
        v->c_sk[0] &= 248;
        v->c_sk[31] = (uint8_t)((v->c_sk[31] & 127) | 64);
        ok = ok && plait_x25519(v->c_sk, nine, v->c_pk) == 0;
        v->sk_sh = malloc((k + 1) * PLAIT_SECAGG_SHARE_LEN);
        v->b_sh = malloc((k + 1) * PLAIT_SECAGG_SHARE_LEN);
        ok = ok && v->sk_sh && v->b_sh;
        const uint32_t *row = plait_secagg_neighbours(&r, u);
        memcpy(xs, row, k * sizeof(uint32_t));
        xs[k] = u;
        ok = ok && plait_shamir_split(v->c_sk, t, xs, k + 1, &d, v->sk_sh) == 0 &&
             plait_shamir_split(v->b, t, xs, k + 1, &d, v->b_sh) == 0;
    }
    uint32_t n_drop = (uint32_t)(drop * n + 0.5);
    ok = ok && plait_secagg_server_create(&s, &r) == 0;
    for (uint32_t u = 1; ok && u <= n; u++) {
        plait_secagg_advert_t a = {.idx = u};
        memcpy(a.c_pk, dev[u].c_pk, 32);
        ok = plait_secagg_server_add_advert(s, &a) == 0;
    }
    for (uint32_t u = 1; ok && u <= n; u++) ok = plait_secagg_server_mark_shared(s, u) == 0;
    for (uint32_t u = 1; ok && u <= n - n_drop; u++) {
        for (size_t i = 0; i < P; i++) y[i] = (uint32_t)(i * 2246822519u + u) & ((1u << m) - 1u);
        ok = plait_secagg_server_add_masked(s, u, y, P) == 0;
    }
    /* Timed: every survivor's answer is ingested, then the masks are removed. */
    double t0 = bench_now(), c0 = cpu_now();
    for (uint32_t v = 1; ok && v <= n - n_drop; v++) {
        const uint32_t *sv, *dp;
        size_t ns, nd, c = 0;
        ok = plait_secagg_server_request(s, v, &sv, &ns, &dp, &nd) == 0;
        for (size_t i = 0; ok && i < ns; i++) {
            uint32_t o = sv[i];
            long pos = o == v ? (long)k : row_pos(plait_secagg_neighbours(&r, o), k, v);
            rev[c].owner = o;
            rev[c].kind = PLAIT_SECAGG_REVEAL_B;
            memcpy(rev[c++].share, dev[o].b_sh[pos], PLAIT_SECAGG_SHARE_LEN);
        }
        for (size_t i = 0; ok && i < nd; i++) {
            uint32_t o = dp[i];
            long pos = row_pos(plait_secagg_neighbours(&r, o), k, v);
            rev[c].owner = o;
            rev[c].kind = PLAIT_SECAGG_REVEAL_SK;
            memcpy(rev[c++].share, dev[o].sk_sh[pos], PLAIT_SECAGG_SHARE_LEN);
        }
        ok = ok && plait_secagg_server_add_reveals(s, v, rev, c) == 0;
    }
    int rc = ok ? plait_secagg_server_finish(s, sum, P) : -1;
    secs->wall = bench_now() - t0;
    secs->cpu = cpu_now() - c0;
    if (ok && rc != 0) fprintf(stderr, "plait-bench secagg: finish: %s\n", plait_errmsg());
    plait_secagg_server_free(s);
    for (uint32_t u = 1; dev && u <= n; u++) {
        free(dev[u].sk_sh);
        free(dev[u].b_sh);
    }
    free(dev);
    free(xs);
    free(y);
    free(sum);
    free(rev);
    plait_drbg_free(&d);
    plait_secagg_round_free(&r);
    return ok && rc == 0 ? 0 : -1;
}

/* ---- 3. bytes ----------------------------------------------------------------- */

static void bytes_report(size_t P, unsigned qbits, unsigned m, uint32_t k, size_t crt_len, size_t sig_len)
{
    size_t adv = 4 + 2 * PLAIT_SECAGG_KEY_LEN + sig_len;
    size_t sh = 8 + PLAIT_SECAGG_CT_LEN;
    size_t up_m = plait_pack_bits_len(P, m), up_q = plait_pack_bits_len(P, qbits), up32 = P * 4;
    size_t sent = adv + k * sh + (k + 1) * (8 + PLAIT_SECAGG_SHARE_LEN);
    size_t recv = k * (adv + crt_len) + k * sh + (k + 1) * 4;
    printf("  k = %3u: masked upload %zu B (%u-bit words); plain packed %zu B at %u bits, %zu B at %u bits, "
           "%zu B as 32-bit words\n",
           (unsigned)k, up_m, m, up_q, qbits, up_m, m, up32);
    printf("           key/share messages: %zu B sent (advert %zu, %u shares of %zu, %u reveals of %u), %zu B "
           "received (adverts with %zu-B PEM certificates, shares, unmask request)\n",
           sent, adv, (unsigned)k, sh, (unsigned)(k + 1), 8 + PLAIT_SECAGG_SHARE_LEN, recv, crt_len);
    printf("           masked total sent / plain packed at %u bits: %.3f; at %u bits: %.3f\n", m,
           (double)(up_m + sent) / (double)up_m, qbits, (double)(up_m + sent) / (double)up_q);
}

int bench_secagg(int argc, char **argv)
{
    size_t P = 1000000, P100 = 100000, P1000 = 10000, R = 3, QB = 16;
    server_values_t sv = {&P100, &P1000, argc, argv};
    plait_flag_t flags[] = {
        PLAIT_F_SIZE("values", &P, 0, 100000000, "P", "values masked by the client", 1),
        PLAIT_F_CUSTOM("server-values", &sv, set_server_values, "A B",
                       "vector length for the server at cohort 100 and 1000\n(default 100000 and 10000)"),
        PLAIT_F_SIZE("reps", &R, 0, MAX_REPS, "R", "runs per figure; the median is reported", 1),
        PLAIT_F_SIZE("quant-bits", &QB, 0, 22, "B", "quantizer bits for the byte counts", 1),
    };
    plait_flags_cmd_t cmd = {
        .prog = "plait-bench secagg",
        .synopsis = "plait-bench secagg [--values P] [--server-values P100 P1000] [--reps R] [--quant-bits B]\n",
        .flags = flags,
        .n_flags = sizeof(flags) / sizeof(flags[0]),
    };
    int st = bench_flags(&cmd, argc, argv);
    if (st >= 0) return st;
    if (P == 0 || P100 == 0 || P1000 == 0 || R == 0 || QB == 0) {
        fputs("plait-bench secagg: values, reps and bits must be > 0\n", stderr);
        return 2;
    }
    unsigned m;
    if (plait_secagg_mask_bits((unsigned)QB, 1000, &m) != 0) {
        fprintf(stderr, "plait-bench secagg: %s\n", plait_errmsg());
        return 2;
    }
    char machine[512];
    bench_machine(machine, sizeof(machine));
    printf("plait-bench secagg: %s\nring: %zu quantizer bits + ceil(log2 1000) = %u bits; median of %zu runs\n",
           machine, QB, m, R);

    /* 1. client */
    certs_t c;
    memset(&c, 0, sizeof(c));
    plait_drbg_t d;
    plait_pki_config_t cfg;
    plait_pki_config_default(&cfg);
    int ok = seeded(&d, 1) == 0 && plait_pki_ca_create(&cfg, &d, &c.ca, &c.ca_key) == 0;
    for (uint32_t u = 1; ok && u <= 11; u++) {
        char id[16];
        plait_pki_cert_info_t info;
        snprintf(id, sizeof(id), "dev-%u", (unsigned)u);
        ok = plait_pki_device_issue(&cfg, c.ca, c.ca_key, id, &d, &c.crt[u], &c.key[u], &info) == 0;
    }
    plait_drbg_free(&d);
    if (!ok) {
        fprintf(stderr, "plait-bench secagg: certificates: %s\n", plait_errmsg());
        return 1;
    }
    double kw[MAX_REPS], kc[MAX_REPS], mw[MAX_REPS], mc[MAX_REPS];
    for (size_t i = 0; i < R; i++) {
        span_t tk, tm;
        if (client_run(&c, P, m, 100 + i, &tk, &tm) != 0) {
            fprintf(stderr, "plait-bench secagg: client run failed: %s\n", plait_errmsg());
            return 1;
        }
        kw[i] = tk.wall, kc[i] = tk.cpu, mw[i] = tm.wall, mc[i] = tm.cpu;
    }
    printf("client, k = 10 neighbours: mask %zu values %.1f ms wall (%.1f ms CPU); key steps (sign, check 10 "
           "adverts and certificates, share, decrypt 10 shares) %.1f ms wall (%.1f ms CPU)\n",
           P, 1e3 * bench_median(mw, R), 1e3 * bench_median(mc, R), 1e3 * bench_median(kw, R),
           1e3 * bench_median(kc, R));

    /* 2. server */
    const uint32_t cohorts[2] = {100, 1000};
    const double drops[3] = {0.0, 0.1, 0.3};
    for (int ci = 0; ci < 2; ci++) {
        uint32_t n = cohorts[ci];
        size_t Ps = ci == 0 ? P100 : P1000;
        plait_secagg_params_t p;
        if (plait_secagg_params_choose(n, 0.3, 0.0, 20, &p) != 0) {
            fprintf(stderr, "plait-bench secagg: params: %s\n", plait_errmsg());
            return 1;
        }
        printf("server, cohort %u (k = %u, t = %u, %zu values):", (unsigned)n, (unsigned)p.k, (unsigned)p.t, Ps);
        for (int di = 0; di < 3; di++) {
            double ts[MAX_REPS], tc[MAX_REPS];
            for (size_t i = 0; i < R; i++) {
                span_t sp;
                if (server_run(n, Ps, m, drops[di], &p, 200 + i, &sp) != 0) {
                    fprintf(stderr, "\nplait-bench secagg: server run failed: %s\n", plait_errmsg());
                    return 1;
                }
                ts[i] = sp.wall, tc[i] = sp.cpu;
            }
            printf(" %2.0f%% dropouts %.0f ms (%.0f ms CPU)%s", 100 * drops[di], 1e3 * bench_median(ts, R),
                   1e3 * bench_median(tc, R), di < 2 ? ";" : "\n");
            fflush(stdout);
        }
        fflush(stdout);
    }

    /* 3. bytes */
    printf("bytes per device for %zu values:\n", P);
    plait_secagg_params_t p1000;
    if (plait_secagg_params_choose(1000, 0.3, 0.0, 20, &p1000) != 0) return 1;
    size_t crt_len = strlen(c.crt[1]);
    bytes_report(P, (unsigned)QB, m, 10, crt_len, PLAIT_SECAGG_SIG_MAX);
    bytes_report(P, (unsigned)QB, m, p1000.k, crt_len, PLAIT_SECAGG_SIG_MAX);
    for (uint32_t u = 1; u <= 11; u++) {
        plait_pki_free_pem(c.crt[u]);
        plait_pki_free_pem(c.key[u]);
    }
    plait_pki_free_pem(c.ca);
    plait_pki_free_pem(c.ca_key);
    return 0;
}

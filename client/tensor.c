/*
 * tensor.c: the matmul kernels and their run-time dispatch (the thread pool
 * is in tensor_pool.c; the AVX2 and AVX-512 kernels in tensor_avx2.c and
 * tensor_avx512.c, declared in tensor_kern.h).
 *
 * Shape letters: N rows (B*T tokens), IC input channels, OC output channels,
 * R LoRA rank. Everything is row-major float; W is (OC, IC) as in llama2.c.
 *
 * Workload. A training step of a small llama2.c model issues hundreds of
 * matmuls of N = 1024 rows with IC, OC between 8 (LoRA rank) and a few
 * hundred (32000 for a classifier); inference issues N = 1 matrix-vector
 * products. So both the per-call dispatch cost and the inner loop matter.
 *
 * Matmul. All three products are one GEMM, C (M, NN) (+)= A (M, K) · B (K, NN),
 * with strides that describe the operands in place:
 *   forward  out  (N, OC)  = inp (N, IC)  · Wᵀ      B(k, j) = W[j, k] (transposed pack)
 *   dinp     dinp (N, IC) += dout (N, OC) · W       B(k, j) = W[k, j]
 *   dw       dw  (OC, IC) += doutᵀ (OC, N) · inp    A(m, k) = dout[k, m]
 * B is packed, per work item, into blocks of KC rows x NC columns stored as
 * panels of NR = 16 contiguous columns (zero-padded), so the micro-kernel
 * reads B with aligned vector loads and never handles a column remainder.
 * The AVX2+FMA micro-kernel keeps a 6 x 16 tile of C in 12 ymm registers and
 * per k does 2 loads, 6 broadcasts of A and 12 FMAs; rows past the end of A
 * re-read its last row (never out of bounds) and are not stored. Where the
 * CPU has AVX512F, an 8 x 32 tile in 16 zmm registers (panels of NR512 = 32
 * columns) takes its place: per k 2 loads, 8 broadcasts and 16 FMAs, with
 * masked stores for edge tiles. A portable micro-kernel with the 6 x 16 tile
 * is the fallback. The path is the widest the CPU has, narrowed by the
 * PLAIT_KERNEL environment variable or by plait__tensor_force_path (tests).
 * The trainer's BF16 base (plait__matmul_*_bf16) takes the same driver with
 * W packed once in BF16 pairs and the vdpbf16ps micro-kernel of
 * tensor_bf16.c, on AVX512-BF16 CPUs at the AVX-512 path only.
 *
 * Threads. Work items are (row block, column block) pairs taken from an
 * atomic counter, so a thread that wakes late, or shares a core with other
 * work, simply takes fewer items. Problems under PAR_MIN_MACS multiply-adds
 * run on the caller. Forward with N < SMALL_N rows (token-by-token
 * inference) instead computes dot products of input rows with W rows,
 * threaded over OC, since packing W would cost as much as the product.
 *
 * Invariants. Each element of C is summed in a fixed order (k blocks in
 * order, k within a block in order) that depends only on the shape, never on
 * which thread or item computes it: results are bit-identical for any pool.
 * Outputs must not alias inputs (tensor.h). The plain *_ref kernels define
 * the contract; tests/unit/check_tensor.c holds the optimized ones to them.
 */
#include "plait/tensor.h"
#include "tensor_int.h"
#include "tensor_kern.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- matmul */

void plait_matmul_forward_ref(float *out, const float *inp, const float *w, size_t N, size_t IC,
                              size_t OC, int accumulate)
{
    for (size_t n = 0; n < N; n++) {
        for (size_t o = 0; o < OC; o++) {
            double s = 0.0;
            for (size_t i = 0; i < IC; i++) s += (double)inp[n * IC + i] * (double)w[o * IC + i];
            out[n * OC + o] = accumulate ? out[n * OC + o] + (float)s : (float)s;
        }
    }
}

void plait_matmul_backward_ref(float *dinp, float *dw, const float *dout, const float *inp,
                               const float *w, size_t N, size_t IC, size_t OC)
{
    if (dinp) {
        for (size_t n = 0; n < N; n++)
            for (size_t i = 0; i < IC; i++) {
                double s = 0.0;
                for (size_t o = 0; o < OC; o++) s += (double)dout[n * OC + o] * (double)w[o * IC + i];
                dinp[n * IC + i] += (float)s;
            }
    }
    if (dw) {
        for (size_t o = 0; o < OC; o++)
            for (size_t i = 0; i < IC; i++) {
                double s = 0.0;
                for (size_t n = 0; n < N; n++) s += (double)dout[n * OC + o] * (double)inp[n * IC + i];
                dw[o * IC + i] += (float)s;
            }
    }
}

/* ------------------------------------------------------- CPU dispatch */

static atomic_int force_max = -1; /* cap on the path, set by tests and tools only; -1 none */

enum { CPU_AVX2_FMA = 1, CPU_AVX512 = 2, CPU_AVX512_BF16 = 4 };

/* The instruction sets the kernels use, probed once (a bit each; each
 * wider set implies the narrower ones); probing twice is harmless. */
static int cpu_features(void)
{
#if PLAIT_HAVE_X86_SIMD
    static atomic_int cached = -1; /* -1 not probed yet */
    int v = atomic_load_explicit(&cached, memory_order_relaxed);
    if (v < 0) {
        __builtin_cpu_init();
        v = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? CPU_AVX2_FMA : 0;
        if (v && __builtin_cpu_supports("avx512f")) v |= CPU_AVX512;
        if ((v & CPU_AVX512) && __builtin_cpu_supports("avx512bf16")) v |= CPU_AVX512_BF16;
        atomic_store_explicit(&cached, v, memory_order_relaxed);
    }
    return v;
#else
    return 0;
#endif
}

int plait_cpu_has_avx2_fma(void) { return (cpu_features() & CPU_AVX2_FMA) != 0; }

int plait_cpu_has_avx512(void) { return (cpu_features() & CPU_AVX512) != 0; }

int plait_cpu_has_avx512_bf16(void) { return (cpu_features() & CPU_AVX512_BF16) != 0; }

/* The widest path the CPU has, capped by PLAIT_KERNEL (portable, avx2,
 * avx512) when the environment sets it: read once, at the first kernel. */
static int cpu_path(void)
{
    static atomic_int cached = -1;
    int v = atomic_load_explicit(&cached, memory_order_relaxed);
    if (v >= 0) return v;
    v = plait_cpu_has_avx512() ? PLAIT__KPATH_AVX512 : plait_cpu_has_avx2_fma() ? PLAIT__KPATH_AVX2 : 0;
    const char *e = getenv("PLAIT_KERNEL");
    if (e && *e) {
        int cap = strcmp(e, "portable") == 0 ? PLAIT__KPATH_PORTABLE
                  : strcmp(e, "avx2") == 0   ? PLAIT__KPATH_AVX2
                  : strcmp(e, "avx512") == 0 ? PLAIT__KPATH_AVX512
                                             : -1;
        if (cap >= 0 && cap < v) v = cap; /* an unknown name or an absent path changes nothing */
    }
    atomic_store_explicit(&cached, v, memory_order_relaxed);
    return v;
}

void plait__tensor_force_path(int max) { atomic_store(&force_max, max < 0 ? -1 : max); }

void plait__tensor_force_scalar(int on) { plait__tensor_force_path(on ? PLAIT__KPATH_PORTABLE : -1); }

int plait__tensor_path(void)
{
    int v = cpu_path();
    int cap = atomic_load_explicit(&force_max, memory_order_relaxed);
    return cap >= 0 && cap < v ? cap : v;
}

int plait__tensor_simd_active(void) { return plait__tensor_path() >= PLAIT__KPATH_AVX2; }

int plait__bf16_active(void)
{
    return plait__tensor_path() == PLAIT__KPATH_AVX512 && plait_cpu_has_avx512_bf16();
}

static atomic_int amx_off = 0;

void plait__tensor_force_amx_off(int off) { atomic_store(&amx_off, off != 0); }

int plait__amx_active(void)
{
#if PLAIT_HAVE_X86_SIMD
    static atomic_int env_off = -1;
    int e = atomic_load_explicit(&env_off, memory_order_relaxed);
    if (e < 0) {
        const char *v = getenv("PLAIT_AMX");
        e = v && (strcmp(v, "0") == 0 || strcmp(v, "off") == 0);
        atomic_store_explicit(&env_off, e, memory_order_relaxed);
    }
    return !e && !atomic_load_explicit(&amx_off, memory_order_relaxed) && plait__bf16_active() &&
           plait__amx_usable();
#else
    return 0;
#endif
}

int plait_amx_bf16_active(void) { return plait__amx_active(); }

const char *plait_kernel_path_name(void)
{
    static const char *const names[] = {"portable", "avx2", "avx512"};
    return names[plait__tensor_path()];
}

/* ------------------------------------------------------------ blocking */

#define NC_MAX 64       /* columns of one packed block of B (4 panels) */
#define MB_MIN 24       /* fewest rows per work item, to amortize packing */
#define SMALL_N 12      /* forward with fewer rows (and IC >= DOT_MIN_IC) uses dot products */
#define DOT_MIN_IC 16
#define ITEMS_PER_THREAD 4

/* Below this many multiply-adds (about 10-20 us on one core) a call runs on
 * the calling thread. Handing a job to the pool costs a microsecond when the
 * workers are spinning but tens when they sleep or share their core, and the
 * second thread repacks B; measured with tools/plait-bench-matmul, rank-8
 * LoRA products of the 260K model (N = 1024, 0.5M MACs) ran no faster on two
 * threads than on one. */
#define PAR_MIN_MACS ((size_t)1 << 20)
static atomic_size_t par_min_macs = PAR_MIN_MACS; /* tests lower it */

size_t plait__tensor_set_par_min_macs(size_t macs)
{
    return atomic_exchange(&par_min_macs, macs);
}

static int run_inline(size_t macs)
{
    return macs < atomic_load_explicit(&par_min_macs, memory_order_relaxed);
}

/*
 * One GEMM call: C (M, NN) = or += A (M, K) · B (K, NN), with
 *   A(m, k) = a[m * ars + k * acs]
 *   B(k, j) = btrans ? b[j * ldb + k] : b[k * ldb + j]
 *   C(m, j) = c[m * ldc + j]
 * Work items are (row block, column block) pairs handed out by an atomic
 * counter, so a thread that is slow to wake (or shares its core with a
 * compiler) takes fewer items instead of holding everyone up.
 */
typedef struct {
    float *c;
    size_t ldc;
    const float *a;
    size_t ars, acs;
    const float *b;
    size_t ldb;
    int btrans;
    const plait_wmat_t *bw; /* typed (non-F32) B instead of b, or NULL */
    const uint16_t *bpk;    /* pre-packed BF16 B instead of b (the BF16 base path), or NULL */
    size_t K2;              /* its k pairs per panel: ceil(K / 2) */
    size_t M, K, NN;
    int accumulate;
    int path;               /* PLAIT__KPATH_* */
    size_t mr, nr;          /* micro-tile of the path */
    size_t mb, nc;          /* rows / columns per work item */
    size_t m_items, n_items;
    atomic_size_t next;     /* next unclaimed item */
} gemm_t;

typedef void (*ukernel_fn)(size_t kc, const float *a, size_t ars, size_t acs, const float *bp,
                           float *c, size_t ldc, size_t mr, size_t nr, int load_c);

/* Pack B(k0 .. k0+kc, j0 .. j0+nc) into panels of NR columns, each panel kc
 * rows of NR contiguous floats; columns past nc are zero, so the micro-kernel
 * never needs a column remainder loop. */
/* pack_b for a typed W: each row piece is dequantized straight into the
 * panel (transposed: kc elements of W row j into column jj; not transposed:
 * w elements of W row k0 + k into packed row k). */
static void pack_b_typed(float *restrict dst, const gemm_t *g, size_t k0, size_t kc, size_t j0, size_t nc)
{
    float tmp[KC];
    const size_t NRW = g->nr; /* panel width of the path: NR or NR512 */
    for (size_t p = 0; p < nc; p += NRW) {
        size_t w = nc - p < NRW ? nc - p : NRW;
        float *restrict d = dst + p * kc;
        if (g->btrans) {
            for (size_t jj = 0; jj < w; jj++) {
                plait_dequant_row(tmp, g->bw, j0 + p + jj, k0, kc);
                for (size_t k = 0; k < kc; k++) d[k * NRW + jj] = tmp[k];
            }
            for (size_t jj = w; jj < NRW; jj++)
                for (size_t k = 0; k < kc; k++) d[k * NRW + jj] = 0.0f;
        } else {
            for (size_t k = 0; k < kc; k++) {
                plait_dequant_row(d + k * NRW, g->bw, k0 + k, j0 + p, w);
                for (size_t jj = w; jj < NRW; jj++) d[k * NRW + jj] = 0.0f;
            }
        }
    }
}

static void pack_b(float *restrict dst, const gemm_t *g, size_t k0, size_t kc, size_t j0,
                   size_t nc)
{
    if (g->bw) {
        pack_b_typed(dst, g, k0, kc, j0, nc);
        return;
    }
    const size_t NRW = g->nr; /* panel width of the path: NR or NR512 */
    for (size_t p = 0; p < nc; p += NRW) {
        size_t w = nc - p < NRW ? nc - p : NRW;
        float *restrict d = dst + p * kc;
        if (g->btrans) {
            /* B(k, j) = b[j * ldb + k]: read w rows of b side by side, so the
             * writes stay sequential. */
            const float *s = g->b + (j0 + p) * g->ldb + k0;
            size_t ldb = g->ldb;
#if PLAIT_HAVE_X86_SIMD
            if (w == NRW && g->path >= PLAIT__KPATH_AVX2) {
                plait__pack_bt_panel_avx2(d, s, ldb, kc, NRW);
                continue;
            }
#endif
            for (size_t k = 0; k < kc; k++) {
                for (size_t jj = 0; jj < w; jj++) d[k * NRW + jj] = s[jj * ldb + k];
                for (size_t jj = w; jj < NRW; jj++) d[k * NRW + jj] = 0.0f;
            }
        } else {
            /* B(k, j) = b[k * ldb + j]: each packed row is a slice of a b row. */
#if PLAIT_HAVE_X86_SIMD
            if (w == NR512 && g->path == PLAIT__KPATH_AVX512) {
                plait__pack_rows32_avx512(d, g->b + k0 * g->ldb + j0 + p, g->ldb, kc);
                continue;
            }
#endif
            for (size_t k = 0; k < kc; k++) {
                const float *src = g->b + (k0 + k) * g->ldb + j0 + p;
                memcpy(d + k * NRW, src, w * sizeof(float));
                if (w < NRW) memset(d + k * NRW + w, 0, (NRW - w) * sizeof(float));
            }
        }
    }
}

/* Write a finished MR x NR tile: only mr rows and nr columns are real. */
static void store_tile(float *c, size_t ldc, const float *tile, size_t mr, size_t nr, int load_c)
{
    for (size_t r = 0; r < mr; r++)
        for (size_t j = 0; j < nr; j++)
            c[r * ldc + j] = load_c ? c[r * ldc + j] + tile[r * NR + j] : tile[r * NR + j];
}

/* Portable micro-kernel. GCC and clang get 4-float generic vectors (SSE2 on
 * baseline x86-64, NEON on arm64) and work on two rows at a time, so the 8
 * accumulators plus the 4 B vectors fit the 16 registers of the smallest of
 * those; other compilers get plain loops. Rows past mr re-read row mr - 1
 * (never past the end of A) and are discarded by store_tile. */
#if defined(__GNUC__) || defined(__clang__)
typedef float v4f __attribute__((vector_size(16)));

static void ukernel_portable(size_t kc, const float *a, size_t ars, size_t acs, const float *bp,
                             float *c, size_t ldc, size_t mr, size_t nr, int load_c)
{
    _Alignas(16) float tile[MR * NR];
    for (size_t r = 0; r < MR; r += 2) {
        const float *x0 = a + (r < mr ? r : mr - 1) * ars;
        const float *x1 = a + (r + 1 < mr ? r + 1 : mr - 1) * ars;
        v4f c00 = {0}, c01 = {0}, c02 = {0}, c03 = {0}, c10 = {0}, c11 = {0}, c12 = {0}, c13 = {0};
        const float *b = bp;
        size_t off = 0;
        for (size_t k = 0; k < kc; k++, off += acs, b += NR) {
            v4f b0, b1, b2, b3;
            memcpy(&b0, b, sizeof(b0));
            memcpy(&b1, b + 4, sizeof(b1));
            memcpy(&b2, b + 8, sizeof(b2));
            memcpy(&b3, b + 12, sizeof(b3));
            float s0 = x0[off], s1 = x1[off];
            c00 += s0 * b0; c01 += s0 * b1; c02 += s0 * b2; c03 += s0 * b3;
            c10 += s1 * b0; c11 += s1 * b1; c12 += s1 * b2; c13 += s1 * b3;
        }
        float *t = tile + r * NR;
        memcpy(t, &c00, 16); memcpy(t + 4, &c01, 16); memcpy(t + 8, &c02, 16); memcpy(t + 12, &c03, 16);
        t += NR;
        memcpy(t, &c10, 16); memcpy(t + 4, &c11, 16); memcpy(t + 8, &c12, 16); memcpy(t + 12, &c13, 16);
    }
    store_tile(c, ldc, tile, mr, nr, load_c);
}
#else
static void ukernel_portable(size_t kc, const float *a, size_t ars, size_t acs, const float *bp,
                             float *c, size_t ldc, size_t mr, size_t nr, int load_c)
{
    float acc[MR * NR] = {0};
    const float *ar[MR];
    for (size_t r = 0; r < MR; r++) ar[r] = a + (r < mr ? r : mr - 1) * ars;
    size_t off = 0;
    for (size_t k = 0; k < kc; k++, off += acs) {
        const float *b = bp + k * NR;
        for (size_t r = 0; r < MR; r++) {
            float x = ar[r][off];
            for (size_t j = 0; j < NR; j++) acc[r * NR + j] += x * b[j];
        }
    }
    store_tile(c, ldc, acc, mr, nr, load_c);
}
#endif

#define NC_BF16 128 /* columns of one packed BF16 block of B (4 panels of 32) */
#define MR_AMX 32   /* rows of the AMX kernel's block (tensor_amx.c) */

#if PLAIT_HAVE_X86_SIMD
/* gemm_task for the BF16 base path: B was packed once, whole (panels of 32
 * columns over all K2 pairs, plait__bf16_pack), so a block of it is a
 * pointer; each 8-row tile of A is rounded to BF16 once per block of B,
 * which its NC_BF16 columns then share. Summation order as in gemm_task:
 * fixed by the shape, so results do not depend on the threads. */
static void gemm_task_bf16(void *ctx, size_t begin, size_t end)
{
    (void)begin;
    (void)end;
    gemm_t *g = ctx;
    _Alignas(64) uint32_t apack[MR_AMX * KC / 2]; /* 16 KiB: MR_AMX rows (MR512 without AMX) */
    int amx = g->mr == MR_AMX;
    if (amx) plait__amx_begin();
    size_t total = g->m_items * g->n_items;
    for (;;) {
        size_t item = atomic_fetch_add_explicit(&g->next, 1, memory_order_relaxed);
        if (item >= total) break;
        size_t m0 = (item % g->m_items) * g->mb, j0 = (item / g->m_items) * g->nc;
        size_t m1 = m0 + g->mb < g->M ? m0 + g->mb : g->M;
        size_t nc = g->NN - j0 < g->nc ? g->NN - j0 : g->nc;
        for (size_t k0 = 0; k0 < g->K; k0 += KC) {
            size_t kc = g->K - k0 < KC ? g->K - k0 : KC, kc2 = (kc + 1) / 2;
            int load_c = g->accumulate || k0 > 0;
            for (size_t m = m0; m < m1; m += g->mr) {
                size_t mr = m1 - m < g->mr ? m1 - m : g->mr;
                /* MR512 rows per pack; rows past mr repeat the last one (not stored) */
                for (size_t r = 0; r < g->mr; r += MR512) {
                    size_t rows = r < mr ? (mr - r < MR512 ? mr - r : MR512) : 1;
                    const float *a = g->a + (m + (r < mr ? r : mr - 1)) * g->ars + k0;
                    plait__pack_a_bf16(apack + r * (KC / 2), a, g->ars, rows, kc);
                }
                for (size_t p = 0; p < nc; p += NR512) {
                    size_t nr = nc - p < NR512 ? nc - p : NR512;
                    const uint16_t *bp = g->bpk + (j0 + p) * 2 * g->K2 + k0 * NR512; /* pair k0 / 2 */
                    float *c = g->c + m * g->ldc + j0 + p;
                    if (amx) plait__ukernel_amx(kc2, apack, bp, c, g->ldc, mr, nr, load_c);
                    else plait__ukernel_bf16(kc2, apack, bp, c, g->ldc, mr, nr, load_c);
                }
            }
        }
    }
    if (amx) plait__amx_end();
}
#endif

/* Run work items until none is left. Called once per pool thread. */
static void gemm_task(void *ctx, size_t begin, size_t end)
{
    (void)begin;
    (void)end;
    gemm_t *g = ctx;
    _Alignas(64) float bpack[KC * NC_MAX]; /* 64 KiB: one packed block of B */
    ukernel_fn uk = ukernel_portable;
#if PLAIT_HAVE_X86_SIMD
    if (g->path == PLAIT__KPATH_AVX512) uk = plait__ukernel_avx512;
    else if (g->path == PLAIT__KPATH_AVX2) uk = plait__ukernel_avx2;
#endif
    size_t total = g->m_items * g->n_items;
    for (;;) {
        size_t item = atomic_fetch_add_explicit(&g->next, 1, memory_order_relaxed);
        if (item >= total) break;
        /* Column-block-major: consecutive items read the same B columns,
         * which are then still in cache when they are packed again. */
        size_t m0 = (item % g->m_items) * g->mb, j0 = (item / g->m_items) * g->nc;
        size_t m1 = m0 + g->mb < g->M ? m0 + g->mb : g->M;
        size_t nc = g->NN - j0 < g->nc ? g->NN - j0 : g->nc;
        for (size_t k0 = 0; k0 < g->K; k0 += KC) {
            size_t kc = g->K - k0 < KC ? g->K - k0 : KC;
            int load_c = g->accumulate || k0 > 0;
            pack_b(bpack, g, k0, kc, j0, nc);
            for (size_t m = m0; m < m1; m += g->mr) {
                size_t mr = m1 - m < g->mr ? m1 - m : g->mr;
                const float *a = g->a + m * g->ars + k0 * g->acs;
                for (size_t p = 0; p < nc; p += g->nr) {
                    size_t nr = nc - p < g->nr ? nc - p : g->nr;
                    uk(kc, a, g->ars, g->acs, bpack + p * kc, g->c + m * g->ldc + j0 + p, g->ldc,
                       mr, nr, load_c);
                }
            }
        }
    }
}

static size_t ceil_div(size_t a, size_t b) { return (a + b - 1) / b; }

static void gemm_run(plait_pool_t *pool, gemm_t *g)
{
    if (g->M == 0 || g->NN == 0) return;
    if (g->K == 0) { /* empty sums */
        if (!g->accumulate)
            for (size_t m = 0; m < g->M; m++) memset(g->c + m * g->ldc, 0, g->NN * sizeof(float));
        return;
    }
    g->path = plait__tensor_path();
    g->mr = g->path == PLAIT__KPATH_AVX512 ? MR512 : MR;
    if (g->bpk && plait__amx_active()) g->mr = MR_AMX;
    g->nr = g->path == PLAIT__KPATH_AVX512 ? NR512 : NR;
    size_t nc_max = g->bpk ? NC_BF16 : NC_MAX;
    int threads = plait_pool_size(pool);
    if (run_inline(g->M * g->K * g->NN)) threads = 1;
    /* Fewer, wider column blocks pack less; narrow them only when the
     * problem would otherwise give the threads too few items. */
    size_t target = threads > 1 ? (size_t)threads * ITEMS_PER_THREAD : 1;
    size_t m_tiles = ceil_div(g->M, g->mr);
    g->nc = nc_max;
    while (g->nc > g->nr && m_tiles * ceil_div(g->NN, g->nc) < target) g->nc /= 2;
    g->n_items = ceil_div(g->NN, g->nc);
    size_t m_parts = ceil_div(target, g->n_items);
    g->mb = ceil_div(ceil_div(g->M, m_parts), g->mr) * g->mr;
    if (g->mb < MB_MIN) g->mb = MB_MIN;
    g->m_items = ceil_div(g->M, g->mb);
    atomic_init(&g->next, 0);
    size_t total = g->m_items * g->n_items;
    plait_pool_fn task = gemm_task;
#if PLAIT_HAVE_X86_SIMD
    if (g->bpk) task = gemm_task_bf16;
#endif
    if (threads == 1 || total == 1) task(g, 0, 1);
    else plait_pool_run(pool, task, g, total < (size_t)threads ? total : (size_t)threads);
}

/* ------------------------------------------------- dot-product (N small) */

/* The job (dot_t) is declared in tensor_kern.h. */

#define DOT_OC_CHUNK 16 /* W rows per pool item */

static void dot_portable(const dot_t *d, size_t o0, size_t o1)
{
    size_t IC = d->IC;
    for (size_t n = 0; n < d->N; n++) {
        const float *x = d->inp + n * IC;
        float *y = d->out + n * d->OC;
        for (size_t o = o0; o < o1; o++) {
            const float *wr = d->w + o * IC;
            float s[4] = {0, 0, 0, 0};
            size_t i = 0;
            for (; i + 4 <= IC; i += 4)
                for (size_t l = 0; l < 4; l++) s[l] += x[i + l] * wr[i + l];
            float t = (s[0] + s[1]) + (s[2] + s[3]);
            for (; i < IC; i++) t += x[i] * wr[i];
            y[o] = d->accumulate ? y[o] + t : t;
        }
    }
}

/* Dot products against a typed W: each row is dequantized KC elements at a
 * time into a stack buffer, which every input row then uses. */
static void dot_typed(const dot_t *d, size_t o0, size_t o1)
{
    float wr[KC];
    size_t IC = d->IC;
    for (size_t o = o0; o < o1; o++) {
        for (size_t n = 0; n < d->N; n++)
            if (!d->accumulate) d->out[n * d->OC + o] = 0.0f;
        for (size_t i0 = 0; i0 < IC; i0 += KC) {
            size_t m = IC - i0 < KC ? IC - i0 : KC;
            plait_dequant_row(wr, d->wt, o, i0, m);
            for (size_t n = 0; n < d->N; n++) {
                const float *x = d->inp + n * IC + i0;
                float s[8] = {0};
                size_t i = 0;
                for (; i + 8 <= m; i += 8)
                    for (size_t l = 0; l < 8; l++) s[l] += x[i + l] * wr[i + l];
                float t = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
                for (; i < m; i++) t += x[i] * wr[i];
                d->out[n * d->OC + o] += t;
            }
        }
    }
}

static void dot_task(void *ctx, size_t b, size_t e)
{
    const dot_t *d = ctx;
    size_t o0 = b * DOT_OC_CHUNK, o1 = e * DOT_OC_CHUNK < d->OC ? e * DOT_OC_CHUNK : d->OC;
    if (d->wt) {
        dot_typed(d, o0, o1);
        return;
    }
#if PLAIT_HAVE_X86_SIMD
    if (d->path == PLAIT__KPATH_AVX512) {
        plait__dot_avx512(d, o0, o1);
        return;
    }
    if (d->path == PLAIT__KPATH_AVX2) {
        plait__dot_avx2(d, o0, o1);
        return;
    }
#endif
    dot_portable(d, o0, o1);
}

/* -------------------------------------------------------- public kernels */

void plait_matmul_forward(plait_pool_t *pool, float *out, const float *inp, const float *w,
                          size_t N, size_t IC, size_t OC, int accumulate)
{
    if (N == 0 || OC == 0) return;
    if (N < SMALL_N && IC >= DOT_MIN_IC) {
        dot_t d = {.out = out, .inp = inp, .w = w, .N = N, .IC = IC, .OC = OC,
                   .accumulate = accumulate, .path = plait__tensor_path()};
        size_t items = ceil_div(OC, DOT_OC_CHUNK);
        if (run_inline(N * IC * OC)) dot_task(&d, 0, items);
        else plait_pool_run(pool, dot_task, &d, items);
        return;
    }
    gemm_t g = {.c = out, .ldc = OC, .a = inp, .ars = IC, .acs = 1, .b = w, .ldb = IC,
                .btrans = 1, .M = N, .K = IC, .NN = OC, .accumulate = accumulate};
    gemm_run(pool, &g);
}

void plait_matmul_backward(plait_pool_t *pool, float *dinp, float *dw, const float *dout,
                           const float *inp, const float *w, size_t N, size_t IC, size_t OC)
{
    if (dinp) { /* dinp (N, IC) += dout (N, OC) · W (OC, IC) */
        gemm_t g = {.c = dinp, .ldc = IC, .a = dout, .ars = OC, .acs = 1, .b = w, .ldb = IC,
                    .btrans = 0, .M = N, .K = OC, .NN = IC, .accumulate = 1};
        gemm_run(pool, &g);
    }
    if (dw) { /* dw (OC, IC) += doutᵀ (OC, N) · inp (N, IC) */
        gemm_t g = {.c = dw, .ldc = IC, .a = dout, .ars = 1, .acs = OC, .b = inp, .ldb = IC,
                    .btrans = 0, .M = OC, .K = N, .NN = IC, .accumulate = 1};
        gemm_run(pool, &g);
    }
}

void plait_matmul_forward_w(plait_pool_t *pool, float *out, const float *inp, const plait_wmat_t *w, size_t N,
                            size_t IC, size_t OC, int accumulate)
{
    if (w->type == PLAIT_DT_F32) {
        plait_matmul_forward(pool, out, inp, (const float *)w->data, N, IC, OC, accumulate);
        return;
    }
    if (N == 0 || OC == 0) return;
    if (N < SMALL_N) {
        dot_t d = {.out = out, .inp = inp, .wt = w, .N = N, .IC = IC, .OC = OC, .accumulate = accumulate};
        size_t items = ceil_div(OC, DOT_OC_CHUNK);
        if (run_inline(N * IC * OC)) dot_task(&d, 0, items);
        else plait_pool_run(pool, dot_task, &d, items);
        return;
    }
    gemm_t g = {.c = out, .ldc = OC, .a = inp, .ars = IC, .acs = 1, .bw = w, .btrans = 1,
                .M = N, .K = IC, .NN = OC, .accumulate = accumulate};
    gemm_run(pool, &g);
}

void plait_matmul_backward_w(plait_pool_t *pool, float *dinp, const float *dout, const plait_wmat_t *w, size_t N,
                             size_t IC, size_t OC)
{
    if (w->type == PLAIT_DT_F32) {
        plait_matmul_backward(pool, dinp, NULL, dout, NULL, (const float *)w->data, N, IC, OC);
        return;
    }
    gemm_t g = {.c = dinp, .ldc = IC, .a = dout, .ars = OC, .acs = 1, .bw = w, .btrans = 0,
                .M = N, .K = OC, .NN = IC, .accumulate = 1};
    gemm_run(pool, &g);
}

/* ------------------------------------------------------ BF16 base products */

static size_t round32(size_t n) { return (n + 31) & ~(size_t)31; }

size_t plait__bf16_packed_elems(size_t IC, size_t OC, int bwd)
{
    return bwd ? round32(IC) * 2 * ((OC + 1) / 2) : round32(OC) * 2 * ((IC + 1) / 2);
}

void plait__bf16_pack(uint16_t *dst, const uint16_t *w, size_t IC, size_t OC, int bwd)
{
#if PLAIT_HAVE_X86_SIMD
    if (bwd) plait__pack_b_bf16(dst, w, IC, 0, 0, OC, 0, IC);
    else plait__pack_b_bf16(dst, w, IC, 1, 0, IC, 0, OC);
#else
    (void)dst, (void)w, (void)IC, (void)OC, (void)bwd;
#endif
}

void plait__matmul_forward_bf16(plait_pool_t *pool, float *out, const float *inp, const plait_wmat_t *w,
                                const uint16_t *fwd, size_t N, size_t IC, size_t OC, int accumulate)
{
    if (!fwd || N < SMALL_N || !plait__bf16_active()) {
        plait_matmul_forward_w(pool, out, inp, w, N, IC, OC, accumulate);
        return;
    }
    gemm_t g = {.c = out, .ldc = OC, .a = inp, .ars = IC, .acs = 1, .bpk = fwd, .K2 = (IC + 1) / 2,
                .M = N, .K = IC, .NN = OC, .accumulate = accumulate};
    gemm_run(pool, &g);
}

void plait__matmul_backward_bf16(plait_pool_t *pool, float *dinp, const float *dout, const plait_wmat_t *w,
                                 const uint16_t *bwd, size_t N, size_t IC, size_t OC)
{
    if (!bwd || !plait__bf16_active()) {
        plait_matmul_backward_w(pool, dinp, dout, w, N, IC, OC);
        return;
    }
    gemm_t g = {.c = dinp, .ldc = IC, .a = dout, .ars = OC, .acs = 1, .bpk = bwd, .K2 = (OC + 1) / 2,
                .M = N, .K = OC, .NN = IC, .accumulate = 1};
    gemm_run(pool, &g);
}

/*
 * train_layers.c: the trainer's layer operations (train_int.h): RMSNorm,
 * RoPE, causal attention, SwiGLU and the fused classifier with softmax
 * cross-entropy, each a pool job over rows, or over (sequence, key/value
 * head) pairs for attention, whose inner loops go through the kernel table
 * of the current path (train_kern.h) and the plait_matmul_* kernels.
 * Invariants: see train.c (results independent of the thread count; the
 * probabilities stored block-triangular; logits never all at once).
 */
#include "train_int.h"
#include "tensor_int.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* out (N, C) = inp * rstd * w; rstd (N) kept for backward. */
static void rmsnorm_forward_rows(void *ctx, size_t b, size_t e)
{
    job_t *j = ctx;
    size_t C = j->C;
    const plait__tkern_t *K = plait__tkern();
    for (size_t n = b; n < e; n++)
        j->out2[n] = K->rms_fwd_row(j->out + n * C, j->in + n * C, j->w, C, j->tr->m->cfg.rms_eps);
}

void plait__rmsnorm_forward(plait_trainer_t *tr, float *out, float *rstd, const float *inp,
                            const float *w, size_t N, size_t C)
{
    job_t j = {.tr = tr, .out = out, .out2 = rstd, .in = inp, .w = w, .C = C};
    plait_pool_run(tr->pool, rmsnorm_forward_rows, &j, N);
}

/* dinp (N, C) += d/dx of (x * rstd(x) * w) applied to dout. */
static void rmsnorm_backward_rows(void *ctx, size_t b, size_t e)
{
    job_t *j = ctx;
    size_t C = j->C;
    const plait__tkern_t *K = plait__tkern();
    for (size_t n = b; n < e; n++)
        K->rms_bwd_row(j->out + n * C, j->in + n * C, j->in2 + n * C, j->w, j->in3[n], C);
}

void plait__rmsnorm_backward(plait_trainer_t *tr, float *dinp, const float *dout, const float *inp,
                             const float *rstd, const float *w, size_t N, size_t C)
{
    job_t j = {.out = dinp, .in = dout, .in2 = inp, .in3 = rstd, .w = w, .C = C};
    plait_pool_run(tr->pool, rmsnorm_backward_rows, &j, N);
}

/* Rotate interleaved pairs of every head of q (N, C) and k (N, KV) in place;
 * sgn = +1 forward, -1 backward (the transpose of a rotation is its inverse).
 * The tables hold, per position, cos repeated over each pair and sin with the
 * pair's sign (-sin, +sin), so a rotation is x * cs + swap_pairs(x) * sn. */
static void rope_rows(void *ctx, size_t b, size_t e)
{
    job_t *j = ctx;
    plait_trainer_t *tr = j->tr;
    size_t T = tr->T, HS = tr->HS, C = tr->C, KV = tr->KV;
    float sgn = j->scale;
    const plait__tkern_t *K = plait__tkern();
    int neox = tr->m->cfg.rope_neox;
    size_t half = HS / 2;
    for (size_t n = b; n < e; n++) {
        const float *cs = tr->rope_cos + (n % T) * HS, *sn = tr->rope_sin + (n % T) * HS;
        for (int which = 0; which < 2; which++) {
            float *x = which == 0 ? j->out + n * C : j->out2 + n * KV;
            size_t width = which == 0 ? C : KV;
            if (!neox) {
                K->rope_heads(x, cs, sn, width, HS, sgn);
                continue;
            }
            for (size_t h0 = 0; h0 < width; h0 += HS) { /* rotate-half: pairs (i, i + HS/2) at angle i */
                float *xh = x + h0;
                for (size_t i = 0; i < half; i++) {
                    float x0 = xh[i], x1 = xh[i + half], c = cs[2 * i], sv = sn[2 * i + 1] * sgn;
                    xh[i] = x0 * c - x1 * sv;
                    xh[i + half] = x1 * c + x0 * sv;
                }
            }
        }
    }
}

void plait__rope_apply(plait_trainer_t *tr, float *q, float *k, size_t N, float sgn)
{
    job_t j = {.tr = tr, .out = q, .out2 = k, .scale = sgn};
    plait_pool_run(tr->pool, rope_rows, &j, N);
}

/* Attention runs per (sequence b, key/value head g): a task gathers that
 * head's keys and values once, then serves the rep = NH / NKV query heads
 * that read them, so under GQA dk and dv are accumulated inside one task
 * and need no synchronization. The products are plait_matmul_* calls on the
 * calling thread (NULL pool) over contiguous per-head copies, which is where
 * the SIMD kernels pay off; the pool splits the (b, g) pairs, one contiguous
 * share per thread with that thread's scratch (tr->attn_scratch). */
typedef struct {
    float *qh;  /* (T, HS) */
    float *kh;  /* (T, HS) */
    float *vh;  /* (T, HS) */
    float *oh;  /* (T, HS) output, or dO in backward */
    float *dqh; /* (T, HS) */
    float *dkh; /* (T, HS) */
    float *dvh; /* (T, HS) */
    float *dp;  /* (ATT_BLOCK, T) gradient of one block's probabilities, then scores; the
                 * row-wise backward's scratch (attn_dp_floats) */
    float *kvT; /* (HS, T8) keys (forward) or values (backward) transposed, zero-padded */
    float *row; /* (round16(T)) one row of scores */
} attn_scratch_t;

/* Floats of dp: the blocked path's (ATT_BLOCK, T), or the row-wise
 * backward's scratch where that is larger. */
static size_t attn_dp_floats(size_t T, size_t HS)
{
    size_t bwd = plait__attn_bwd_scratch_floats(T, HS);
    return bwd > ATT_BLOCK * T ? bwd : ATT_BLOCK * T;
}

/* Floats of one thread's attention scratch. */
size_t plait__attn_scratch_floats(size_t T, size_t HS)
{
    return attn_dp_floats(T, HS) + 7 * T * HS + HS * round8(T) + round16(T);
}

static attn_scratch_t attn_scratch(const plait_trainer_t *tr, size_t item)
{
    size_t T = tr->T, HS = tr->HS;
    float *base = tr->attn_scratch + item * plait__attn_scratch_floats(T, HS);
    attn_scratch_t s;
    s.qh = base;
    s.kh = base + T * HS;
    s.vh = base + 2 * T * HS;
    s.oh = base + 3 * T * HS;
    s.dqh = base + 4 * T * HS;
    s.dkh = base + 5 * T * HS;
    s.dvh = base + 6 * T * HS;
    s.dp = base + 7 * T * HS;
    s.kvT = s.dp + attn_dp_floats(T, HS);
    s.row = s.kvT + HS * round8(T);
    return s;
}

/* One row of a head: HS = 8 (stories260K) as a constant size, which the
 * compiler copies inline rather than through a libc call per 32 bytes. */
static inline void copy_head_row(float *dst, const float *src, size_t HS)
{
    if (HS == 8)
        memcpy(dst, src, 8 * sizeof(float));
    else
        memcpy(dst, src, HS * sizeof(float));
}

/* dst (T, HS) = head `h0 / HS` of rows b*T .. b*T+T-1 of src (N, width). */
static void gather_head(float *dst, const float *src, size_t width, size_t b, size_t h0, size_t T,
                        size_t HS)
{
    for (size_t t = 0; t < T; t++)
        copy_head_row(dst + t * HS, src + (b * T + t) * width + h0, HS);
}

static void scatter_head(float *dst, const float *src, size_t width, size_t b, size_t h0, size_t T,
                         size_t HS)
{
    for (size_t t = 0; t < T; t++)
        copy_head_row(dst + (b * T + t) * width + h0, src + t * HS, HS);
}

/* dst (HS, T8) = the same head transposed, columns T..T8-1 zero. */
static void gather_head_t(float *dst, const float *src, size_t width, size_t b, size_t h0, size_t T,
                          size_t HS)
{
    size_t T8 = round8(T);
    for (size_t t = 0; t < T; t++)
        for (size_t i = 0; i < HS; i++)
            dst[i * T8 + t] = src[(b * T + t) * width + h0 + i];
    for (size_t i = 0; i < HS; i++)
        memset(dst + i * T8 + T, 0, (T8 - T) * sizeof(float));
}

/* att (B, NH, att_size) = causal softmax(q kᵀ / sqrt(HS)) (row t of a block
 * is zero beyond column t), out (N, C) = att · v. */
static void attention_forward_items(void *ctx, size_t i0, size_t i1)
{
    job_t *j = ctx;
    plait_trainer_t *tr = j->tr;
    size_t T = tr->T, HS = tr->HS, C = tr->C, KV = tr->KV, NH = tr->NH, NKV = tr->NKV,
           rep = NH / NKV, P = tr->P;
    size_t npairs = j->nb * NKV, AS = tr->att_size;
    const float *q = j->in, *k = j->in2, *v = j->in3;
    float scale = 1.0f / sqrtf((float)HS);
    const plait__tkern_t *K = plait__tkern();
    int rowwise = K->attn_head_fwd && HS % 8 == 0;
    for (size_t item = i0; item < i1; item++) {
        attn_scratch_t s = attn_scratch(tr, item);
        for (size_t pair = npairs * item / P; pair < npairs * (item + 1) / P; pair++) {
            size_t b = pair / NKV, g = pair % NKV;
            gather_head(s.kh, k, KV, b, g * HS, T, HS);
            gather_head(s.vh, v, KV, b, g * HS, T, HS);
            if (rowwise) gather_head_t(s.kvT, k, KV, b, g * HS, T, HS);
            for (size_t h = g * rep; h < (g + 1) * rep; h++) {
                float *att = j->out2 + (b * NH + h) * AS;
                gather_head(s.qh, q, C, b, h * HS, T, HS);
                if (rowwise) {
                    K->attn_head_fwd(att, s.oh, s.qh, s.kvT, s.vh, s.row, T, HS, scale);
                    scatter_head(j->out, s.oh, C, b, h * HS, T, HS);
                    continue;
                }
                memset(s.oh, 0, T * HS * sizeof(float));
                for (size_t r0 = 0; r0 < T; r0 += ATT_BLOCK) {
                    size_t r1 = r0 + ATT_BLOCK < T ? r0 + ATT_BLOCK : T, rows = r1 - r0;
                    float *blk = att + att_block_offset(r0 / ATT_BLOCK, T); /* (rows, r1) */
                    plait_matmul_forward(NULL, blk, s.qh + r0 * HS, s.kh, rows, HS, r1, 0);
                    for (size_t t = r0; t < r1; t++) {
                        float *a = blk + (t - r0) * r1;
                        /* scale > 0, so the max of the raw scores is the max of the scaled ones. */
                        float mx = K->max(a, t + 1);
                        double sum = K->exp_sum(a, t + 1, mx, scale);
                        K->scale_flush(a, t + 1, (float)(1.0 / sum));
                        memset(a + t + 1, 0, (r1 - t - 1) * sizeof(float));
                    }
                    /* O[r0:r1] = P_blk (rows, r1) · V[0:r1] (r1, HS). */
                    plait_matmul_backward(NULL, s.oh + r0 * HS, NULL, blk, NULL, s.vh, rows, HS,
                                          r1);
                }
                scatter_head(j->out, s.oh, C, b, h * HS, T, HS);
            }
        }
    }
}

void plait__attention_forward(plait_trainer_t *tr, float *out, float *att, const float *q,
                              const float *k, const float *v, size_t nb)
{
    job_t j = {.tr = tr, .out = out, .out2 = att, .in = q, .in2 = k, .in3 = v, .nb = nb};
    plait_pool_run(tr->pool, attention_forward_items, &j, tr->P);
}

/* Given dout (N, C): dq (N, C), dk and dv (N, KV), all overwritten. */
static void attention_backward_items(void *ctx, size_t i0, size_t i1)
{
    job_t *j = ctx;
    plait_trainer_t *tr = j->tr;
    size_t T = tr->T, HS = tr->HS, C = tr->C, KV = tr->KV, NH = tr->NH, NKV = tr->NKV,
           rep = NH / NKV, P = tr->P;
    size_t npairs = j->nb * NKV, AS = tr->att_size;
    const float *dout = j->in, *att = j->in2, *q = j->in3, *k = j->in4, *v = j->w;
    float scale = 1.0f / sqrtf((float)HS);
    const plait__tkern_t *K = plait__tkern();
    int rowwise = K->attn_head_fwd && HS % 8 == 0;
    for (size_t item = i0; item < i1; item++) {
        attn_scratch_t s = attn_scratch(tr, item);
        for (size_t pair = npairs * item / P; pair < npairs * (item + 1) / P; pair++) {
            size_t b = pair / NKV, g = pair % NKV;
            gather_head(s.kh, k, KV, b, g * HS, T, HS);
            gather_head(s.vh, v, KV, b, g * HS, T, HS);
            if (rowwise) gather_head_t(s.kvT, v, KV, b, g * HS, T, HS);
            memset(s.dkh, 0, T * HS * sizeof(float));
            memset(s.dvh, 0, T * HS * sizeof(float));
            for (size_t h = g * rep; h < (g + 1) * rep; h++) {
                const float *a_h = att + (b * NH + h) * AS;
                gather_head(s.qh, q, C, b, h * HS, T, HS);
                gather_head(s.oh, dout, C, b, h * HS, T, HS);
                if (rowwise) {
                    K->attn_head_bwd(a_h, s.qh, s.kh, s.kvT, s.oh, s.dqh, s.dkh, s.dvh, s.dp, T,
                                     HS, scale);
                    scatter_head(j->out, s.dqh, C, b, h * HS, T, HS);
                    continue;
                }
                memset(s.dqh, 0, T * HS * sizeof(float));
                for (size_t r0 = 0; r0 < T; r0 += ATT_BLOCK) {
                    size_t r1 = r0 + ATT_BLOCK < T ? r0 + ATT_BLOCK : T, rows = r1 - r0;
                    const float *blk = a_h + att_block_offset(r0 / ATT_BLOCK, T); /* (rows, r1) */
                    const float *dob = s.oh + r0 * HS, *qb = s.qh + r0 * HS;
                    /* dP = dO · Vᵀ; dV[0:r1] += Pᵀ · dO. */
                    plait_matmul_forward(NULL, s.dp, dob, s.vh, rows, HS, r1, 0);
                    plait_matmul_backward(NULL, NULL, s.dvh, blk, dob, NULL, rows, HS, r1);
                    /* dS = P ⊙ (dP - rowsum(P ⊙ dP)) * scale, zero beyond the diagonal. */
                    for (size_t t = r0; t < r1; t++) {
                        const float *pr = blk + (t - r0) * r1;
                        float *dr = s.dp + (t - r0) * r1;
                        K->softmax_bwd(dr, pr, t + 1, (float)K->dot(pr, dr, t + 1), scale);
                        memset(dr + t + 1, 0, (r1 - t - 1) * sizeof(float));
                    }
                    /* dQ[r0:r1] += dS · K[0:r1]; dK[0:r1] += dSᵀ · Q[r0:r1]. */
                    plait_matmul_backward(NULL, s.dqh + r0 * HS, s.dkh, s.dp, qb, s.kh, rows, HS,
                                          r1);
                }
                scatter_head(j->out, s.dqh, C, b, h * HS, T, HS);
            }
            scatter_head(j->out2, s.dkh, KV, b, g * HS, T, HS);
            scatter_head(j->out3, s.dvh, KV, b, g * HS, T, HS);
        }
    }
}

void plait__attention_backward(plait_trainer_t *tr, float *dq, float *dk, float *dv,
                               const float *dout, const float *att, const float *q, const float *k,
                               const float *v, size_t nb)
{
    job_t j = {.tr = tr,
               .out = dq,
               .out2 = dk,
               .out3 = dv,
               .in = dout,
               .in2 = att,
               .in3 = q,
               .in4 = k,
               .w = v,
               .nb = nb};
    plait_pool_run(tr->pool, attention_backward_items, &j, tr->P);
}

/* hg (N, H) = silu(h1) * h3. */
static void swiglu_forward_rows(void *ctx, size_t b, size_t e)
{
    job_t *j = ctx;
    size_t H = j->H;
    plait__tkern()->swiglu_fwd(j->out + b * H, j->in + b * H, j->in2 + b * H, (e - b) * H);
}

void plait__swiglu_forward(plait_trainer_t *tr, float *hg, const float *h1, const float *h3,
                           size_t N)
{
    job_t j = {.out = hg, .in = h1, .in2 = h3, .H = tr->H};
    plait_pool_run(tr->pool, swiglu_forward_rows, &j, N);
}

/* dh1 = dhg * h3 * silu'(h1), dh3 = dhg * silu(h1) (both overwritten). */
static void swiglu_backward_rows(void *ctx, size_t b, size_t e)
{
    job_t *j = ctx;
    size_t H = j->H;
    plait__tkern()->swiglu_bwd(j->out + b * H, j->out2 + b * H, j->in + b * H, j->in2 + b * H,
                               j->in3 + b * H, (e - b) * H);
}

void plait__swiglu_backward(plait_trainer_t *tr, float *dh1, float *dh3, const float *dhg,
                            const float *h1, const float *h3, size_t N)
{
    job_t j = {.out = dh1, .out2 = dh3, .in = dhg, .in2 = h1, .in3 = h3, .H = tr->H};
    plait_pool_run(tr->pool, swiglu_backward_rows, &j, N);
}

/* Rows of logits per classifier call: each call streams the whole (V, C)
 * classifier through the matmul kernel (packing it as it goes), so more rows
 * per call amortize that; the per-thread scratch of rows x V floats is held
 * near PLAIT_TRAIN_LOGIT_BYTES (16 rows at least, 256 at most). */
size_t plait__logit_rows(size_t V)
{
    size_t r = PLAIT_TRAIN_LOGIT_BYTES / (V * sizeof(float));
    return r < 16 ? 16 : r > 256 ? 256 : r;
}

/* Classifier, softmax and cross-entropy, fused per thread: item i of P owns
 * a contiguous share of the N rows and a vc x V scratch,
 * so the (N, V) logits never exist at once. With dlnf != NULL it also writes
 * dlnf (N, C) = dlogits · Wcls with dlogits = (softmax - onehot) * scale.
 * The trainer's logit bias (if any) joins every row first; with j->out3 !=
 * NULL each row's logits, bias included, are also copied to out3 (N, V). */
void plait__classifier_items(void *ctx, size_t b0, size_t e0)
{
    job_t *j = ctx;
    plait_trainer_t *tr = j->tr;
    size_t N = j->n, V = tr->V, C = tr->C, P = tr->P, VC = tr->vc;
    const plait_wmat_t *wcls = plait_model_classifier(tr->m);
    const uint16_t *cls_fwd = tr->bpk ? tr->bpk[2 * tr->L * PLAIT_NPROJ] : NULL;
    const uint16_t *cls_bwd = tr->bpk ? tr->bpk[2 * tr->L * PLAIT_NPROJ + 1] : NULL;
    const plait__tkern_t *K = plait__tkern();
    for (size_t item = b0; item < e0; item++) {
        size_t r0 = N * item / P, r1 = N * (item + 1) / P;
        float *lg = tr->logits + item * VC * V;
        for (size_t c0 = r0; c0 < r1; c0 += VC) {
            size_t nr = r1 - c0 < VC ? r1 - c0 : VC;
            plait__matmul_forward_bf16(NULL, lg, tr->lnf + c0 * C, wcls, cls_fwd, nr, C, V, 0);
            for (size_t r = 0; r < nr; r++) {
                size_t n = c0 + r, b = n / tr->T, t = n % tr->T;
                int32_t target = j->tokens[b * (tr->T + 1) + t + 1];
                float *row = lg + r * V;
                if (tr->logit_bias)
                    for (size_t v = 0; v < V; v++) row[v] += tr->logit_bias[v];
                if (j->out3) memcpy(j->out3 + n * V, row, V * sizeof(float));
                float mx = K->max(row, V);
                float zt = row[target] - mx;
                double sum = K->exp_sum(row, V, mx, 1.0f);
                tr->row_loss[n] = log(sum) - (double)zt;
                if (j->out) {
                    K->scale_flush(row, V, (float)(1.0 / sum) * j->scale);
                    row[target] -= j->scale;
                }
            }
            if (j->out) {
                memset(j->out + c0 * C, 0, nr * C * sizeof(float));
                plait__matmul_backward_bf16(NULL, j->out + c0 * C, lg, wcls, cls_bwd, nr, C, V);
            }
        }
    }
}
/*
 * tensor_amx.c: the AMX-BF16 micro-kernel of the BF16 base path
 * (tensor.c, gemm_task_bf16). It reads the same packed operands as the
 * vdpbf16ps kernel of tensor_bf16.c:
 *   B panel: 32 columns, per k pair 64 BF16 values (column jj's pair at
 *            2 jj, 2 jj + 1), 128 bytes a pair: its 16-column halves are
 *            AMX B tiles of 16 pair-rows with a 128-byte stride.
 *   A tile:  rows of KC / 2 32-bit words (BF16 pairs), 32 rows here;
 *            16 rows of 16 words (64 bytes) are an AMX A tile.
 * One call computes a 32 x 32 block of C: tiles 0-3 accumulate
 * C[16 r + i][16 c + j] over the pairs in groups of 16 (tdpbf16ps:
 * C += A · B with pairs of products summed in float32), tiles 4-5 hold A's
 * two row halves and 6-7 B's two column halves. The last kc2 mod 16 pairs
 * go through the vdpbf16ps kernel, which adds into what AMX stored.
 *
 * Linux hands out the tile state only on request (arch_prctl
 * ARCH_REQ_XCOMP_PERM, kernel 5.16+): plait__amx_usable() asks once per
 * process and says no when the CPU or the kernel lacks it. Each thread
 * loads the tile configuration before a task (plait__amx_begin) and
 * releases it after (plait__amx_end).
 */
#include "tensor_kern.h"

#if PLAIT_HAVE_X86_SIMD

#include <cpuid.h>
#include <stdatomic.h>
#include <sys/syscall.h>
#include <unistd.h>

#define AMX __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bf16,avx2,fma")))

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

int plait__amx_usable(void)
{
    static atomic_int cached = -1;
    int v = atomic_load_explicit(&cached, memory_order_relaxed);
    if (v >= 0) return v;
    unsigned a, b, c, d;
    v = 0;
    /* CPUID.(7,0):EDX bit 22 AMX-BF16, bit 24 AMX-TILE */
    if (__get_cpuid_count(7, 0, &a, &b, &c, &d) && (d & (1u << 22)) && (d & (1u << 24)))
        v = syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
    atomic_store_explicit(&cached, v, memory_order_relaxed);
    return v;
}

/* Palette 1; every tile 16 rows of 64 bytes. */
typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} amx_cfg_t;

/* A static object: GCC's _tile_loadconfig tells the compiler it reads only
 * 8 bytes, so the stores filling a local configuration were dropped as dead
 * (every tile left unconfigured, the first tile instruction faulting). */
static const _Alignas(64) amx_cfg_t amx_cfg = {
    .palette = 1,
    .colsb = {64, 64, 64, 64, 64, 64, 64, 64},
    .rows = {16, 16, 16, 16, 16, 16, 16, 16},
};

AMX void plait__amx_begin(void) { _tile_loadconfig(&amx_cfg); }

AMX void plait__amx_end(void) { _tile_release(); }

/* c rows < mr, columns < nr: (c if load_c) + t, t a 16 x 16 float block. */
AMX static void add_block(float *c, size_t ldc, const float *t, size_t mr, size_t nr, int load_c)
{
    if (mr == 0 || nr == 0) return;
    __mmask16 m = nr >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << nr) - 1u);
    for (size_t r = 0; r < mr && r < 16; r++) {
        __m512 v = _mm512_loadu_ps(t + r * 16);
        if (load_c) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, c + r * ldc));
        _mm512_mask_storeu_ps(c + r * ldc, m, v);
    }
}

AMX void plait__ukernel_amx(size_t kc2, const uint32_t *ap, const uint16_t *bp, float *c, size_t ldc, size_t mr,
                            size_t nr, int load_c)
{
    const size_t ST = KC / 2; /* words per A row */
    size_t full = kc2 / 16 * 16;
    if (full > 0) {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        for (size_t q = 0; q < full; q += 16) {
            _tile_loadd(4, ap + q, ST * 4);
            _tile_loadd(5, ap + 16 * ST + q, ST * 4);
            _tile_loadd(6, bp + q * 2 * NR512, 2 * NR512 * 2);
            _tile_loadd(7, bp + q * 2 * NR512 + NR512, 2 * NR512 * 2);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
        }
        _Alignas(64) float t[4][256];
        _tile_stored(0, t[0], 64);
        _tile_stored(1, t[1], 64);
        _tile_stored(2, t[2], 64);
        _tile_stored(3, t[3], 64);
        size_t nr0 = nr < 16 ? nr : 16, nr1 = nr > 16 ? nr - 16 : 0;
        size_t mr0 = mr < 16 ? mr : 16, mr1 = mr > 16 ? mr - 16 : 0;
        add_block(c, ldc, t[0], mr0, nr0, load_c);
        add_block(c + 16, ldc, t[1], mr0, nr1, load_c);
        add_block(c + 16 * ldc, ldc, t[2], mr1, nr0, load_c);
        add_block(c + 16 * ldc + 16, ldc, t[3], mr1, nr1, load_c);
        load_c = 1;
    }
    if (full < kc2) /* the last pairs: the vdpbf16ps kernel, 8 rows at a time */
        for (size_t r = 0; r < mr; r += MR512)
            plait__ukernel_bf16(kc2 - full, ap + r * ST + full, bp + full * 2 * NR512, c + r * ldc, ldc,
                                mr - r < MR512 ? mr - r : MR512, nr, load_c);
}

#endif /* PLAIT_HAVE_X86_SIMD */

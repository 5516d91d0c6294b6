/* The per-sample kernels of the hook path (loaded by _native.py).
 *
 * 1. abs_products: per-sample Σ_ij |W_ij| |G_n,ij| with G_n = D_n U_n, without writing G_n.
 * 2. batch_norm_backward, group_norm_backward, layer_norm_backward: an eval-mode BatchNorm's,
 *    a GroupNorm's or a LayerNorm's input gradient with its per-sample γ and β gradients, in one
 *    pass over the output gradient and the input.
 * 3. guard_extremes: the exactness guard's comparison of many parameters in one pass.
 *
 * abs_products, in detail. D_n is (O, L) and U_n is (L, K): a conv layer's output gradient and
 * its unfolded input (L output positions, K = kernel positions × channels), or a Linear layer's
 * output gradient and input over a sequence of L tokens. The batched matmul route writes every sample's G_n (up to
 * 147,456 entries for a 128-channel 3×3 conv) and reads it back for |·| and the product with |W|;
 * here a register tile of G_n is formed, reduced against |W| and dropped, so the cost is the
 * matmul's FLOPs.
 *
 * U_n is never formed either: row l, columns [k, k + LANES) of U_n start at
 * X_n + off_l[l] + off_k[k / LANES], so a padded channels-last input serves as its own im2col
 * matrix (each LANES-column block is LANES consecutive channels of one kernel position). A conv
 * input in planes (NCHW) is copied that way by each thread, a block of samples at a time, into
 * a buffer that stays in cache.
 *
 * For the guard's first g samples the signed G_n, weighted by gw[n], is also added to grad
 * (O, K): the same accumulators give the checked sum and the measured values.
 *
 * Threads share out items of (a block of samples, a strip of columns); per-sample sums are kept
 * per thread and added by the caller. Written for GCC's and Clang's vector extensions, in vectors
 * of the widest registers the compiler targets (64 bytes with AVX-512, 32 with AVX2, 16 with
 * SSE or NEON).
 */
#ifndef PER_SAMPLE_KERNELS_BODY
#define PER_SAMPLE_KERNELS_BODY

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#else /* compiled without OpenMP: one thread */
static int omp_get_thread_num(void) { return 0; }
#endif

/* The widest vectors the compiler targets, and a tile of ROWS × COLS of them that, with COLS
 * vectors of U and one broadcast of D, fits the vector registers. */
#if defined(__AVX512F__) /* 32 registers of 64 bytes (8 × 2, 6 × 4, 4 × 4 and 12 × 2 tiles were
                            slower than 8 × 3 on ResNet-18's layers on a Xeon; compare with
                            BIASDECAY_NATIVE_CFLAGS='-DROWS=6 -DCOLS=4'
                            python benchmarks/bench_conv_routes.py) */
#define VBYTES 64
#define TILE_ROWS 8
#define TILE_COLS 3
#elif defined(__AVX__) /* 16 registers of 32 bytes */
#define VBYTES 32
#define TILE_ROWS 4
#define TILE_COLS 3
#elif defined(__aarch64__) /* NEON: 32 registers of 16 bytes */
#define VBYTES 16
#define TILE_ROWS 8
#define TILE_COLS 3
#else /* SSE: 16 registers of 16 bytes */
#define VBYTES 16
#define TILE_ROWS 4
#define TILE_COLS 3
#endif
#ifndef ROWS /* -DROWS=… -DCOLS=… try other tiles */
#define ROWS TILE_ROWS
#define COLS TILE_COLS
#endif

/* Element alignment (the loads are unaligned) and may_alias (they read float and double arrays). */
typedef float vec_f32 __attribute__((vector_size(VBYTES), aligned(4), may_alias));
typedef int32_t bits_f32 __attribute__((vector_size(VBYTES), aligned(4), may_alias));
typedef double vec_f64 __attribute__((vector_size(VBYTES), aligned(8), may_alias));
typedef int64_t bits_f64 __attribute__((vector_size(VBYTES), aligned(8), may_alias));

/* The lanes of one vector, for the Python side to lay out its offsets. */
int abs_products_lanes_f32(void) { return VBYTES / 4; }
int abs_products_lanes_f64(void) { return VBYTES / 8; }

#define REAL float
#define VEC vec_f32
#define BITS bits_f32
#define ABS_MASK 0x7fffffff
#define LANES (VBYTES / 4)
#define NAME(x) x##_f32
#include __FILE__
#undef REAL
#undef VEC
#undef BITS
#undef ABS_MASK
#undef LANES
#undef NAME

#define REAL double
#define VEC vec_f64
#define BITS bits_f64
#define ABS_MASK 0x7fffffffffffffffLL
#define LANES (VBYTES / 8)
#define NAME(x) x##_f64
#include __FILE__

#else /* the body, once per element type */

/* Sample n, rows [o0, o0 + rb) of W and vectors [j0, j0 + cb) of its columns: adds
 * Σ|W ⊙ G_n| over the tile to *s and, for a guard sample, gw[n] · G_n to grad. */
static inline __attribute__((always_inline)) void NAME(tile)(
    const int rb, const int cb, int64_t n, int64_t o0, int64_t j0, int64_t L, int64_t K,
    const REAL *Dn, int64_t sdo, int64_t sdl, const REAL *Xn, const int64_t *off_l,
    const int64_t *off_k, const REAL *W, int64_t g, const REAL *gw, REAL *grad, VEC *s)
{
    VEC acc[ROWS][COLS];
    for (int r = 0; r < rb; r++)
        for (int c = 0; c < cb; c++)
            acc[r][c] = (VEC){0};
    const REAL *Do = Dn + o0 * sdo;
    const REAL *Xj[COLS];
    for (int c = 0; c < cb; c++)
        Xj[c] = Xn + off_k[j0 + c];
    for (int64_t l = 0; l < L; l++) {
        VEC u[COLS];
        const int64_t at = off_l[l];
        for (int c = 0; c < cb; c++)
            u[c] = *(const VEC *)(Xj[c] + at);
        const REAL *Dl = Do + l * sdl;
        for (int r = 0; r < rb; r++) {
            const REAL d = Dl[r * sdo];
            for (int c = 0; c < cb; c++)
                acc[r][c] += d * u[c];
        }
    }
    /* Per-row partial sums, then a tree: a chain of rb · cb dependent additions into *s
     * would outlast the next tile's start. */
    VEC part[ROWS];
    for (int r = 0; r < rb; r++) {
        const VEC *w = (const VEC *)(W + (o0 + r) * K + j0 * LANES);
        part[r] = (VEC)((BITS)acc[r][0] & ABS_MASK) * w[0];
        for (int c = 1; c < cb; c++)
            part[r] += (VEC)((BITS)acc[r][c] & ABS_MASK) * w[c];
    }
    for (int step = 1; step < rb; step *= 2)
        for (int r = 0; r + step < rb; r += 2 * step)
            part[r] += part[r + step];
    *s += part[0];
    if (n < g)
        for (int r = 0; r < rb; r++)
            for (int c = 0; c < cb; c++) {
                VEC *out = (VEC *)(grad + (o0 + r) * K + (j0 + c) * LANES);
                *out += gw[n] * acc[r][c];
            }
}

/* Every row of W, columns [j0, j0 + cb · LANES), sample n: added to *sum. */
static inline __attribute__((always_inline)) void NAME(strip)(
    const int cb, int64_t n, int64_t O, int64_t j0, int64_t L, int64_t K, const REAL *Dn,
    int64_t sdo, int64_t sdl, const REAL *Xn, const int64_t *off_l, const int64_t *off_k,
    const REAL *W, int64_t g, const REAL *gw, REAL *grad, double *sum)
{
    VEC s = (VEC){0};
    int64_t o0 = 0;
    for (; o0 + ROWS <= O; o0 += ROWS)
        NAME(tile)(ROWS, cb, n, o0, j0, L, K, Dn, sdo, sdl, Xn, off_l, off_k, W, g, gw, grad, &s);
    for (; o0 < O; o0++)
        NAME(tile)(1, cb, n, o0, j0, L, K, Dn, sdo, sdl, Xn, off_l, off_k, W, g, gw, grad, &s);
    double total = 0;
    for (int i = 0; i < LANES; i++)
        total += s[i];
    *sum += total;
}

/* Copies sample src (C, H, W planes, strides sc, sh, sw) into the interior of its padded
 * channels-last copy dst (rows of wp positions of cp channels each); the border and the
 * channels past C are left as they are (zero). */
static void NAME(fill)(REAL *dst, const REAL *src, int64_t sc, int64_t sh, int64_t sw, int64_t C,
                       int64_t H, int64_t Wd, int64_t ph, int64_t pw, int64_t wp, int64_t cp)
{
    for (int64_t h = 0; h < H; h++)
        for (int64_t w = 0; w < Wd; w++) {
            const REAL *from = src + h * sh + w * sw;
            REAL *to = dst + ((h + ph) * wp + w + pw) * cp;
            for (int64_t c = 0; c < C; c++)
                to[c] = from[c * sc];
        }
}

/* Σ_t sums[t·samples + n] = Σ_ij |W_ij| |(D_n U_n)_ij| for n < samples (thread t adds to row t
 * of the zeroed (threads, samples) sums); grad += Σ_{n<g} gw[n] D_n U_n.
 *
 * D_n[o, l] = D[n·sdn + o·sdo + l·sdl]; W is (O, K) row-major and K a multiple of LANES. U_n
 * is read as above from X_n, which is X + n·sxn if planar[0] (C) is 0. Otherwise X is a conv's
 * input in planes, planar = {C, H, W, stride of c, of h, of w, padding of h, of w, padded
 * width, padded channels, stride of n}, and X_n is sample n's padded channels-last copy (sxn
 * elements: padded height × padded width × padded channels), made by each thread
 * for each block of samples it takes, in its own part of `copies` (threads × sample_block ×
 * sxn elements, zeroed by the caller): the copy stays in cache, where a copy made beforehand
 * for the whole batch goes to memory and back.
 *
 * The work is split into items of sample_block samples by one strip of columns: a block's
 * inputs and output gradients stay in cache while the strips of |W| pass over them, and there
 * are enough items to balance the threads on any layer shape. Only the items of the first
 * block write grad (the caller makes g <= sample_block), each to its own strip's columns. */
void NAME(abs_products)(
    int64_t samples, int64_t O, int64_t L, int64_t K, const REAL *D, int64_t sdn, int64_t sdo,
    int64_t sdl, const REAL *X, int64_t sxn, const int64_t *planar, REAL *copies,
    const int64_t *off_l, const int64_t *off_k, const REAL *W, int64_t g, const REAL *gw,
    REAL *grad, double *sums, int64_t sample_block, int threads)
{
    const int64_t blocks = K / LANES;
    const int64_t strips = (blocks + COLS - 1) / COLS;
    const int64_t sample_blocks = (samples + sample_block - 1) / sample_block;
#pragma omp parallel num_threads(threads)
    {
        const int t = omp_get_thread_num();
        double *mine = sums + t * samples;
        REAL *copy = planar[0] ? copies + t * sample_block * sxn : NULL;
        int64_t copied = -1; /* the block of samples in this thread's copy */
#pragma omp for schedule(static)
        for (int64_t item = 0; item < sample_blocks * strips; item++) {
            const int64_t n0 = item / strips * sample_block, j0 = item % strips * COLS;
            const int64_t n1 = n0 + sample_block < samples ? n0 + sample_block : samples;
            if (copy && copied != n0) {
                for (int64_t n = n0; n < n1; n++)
                    NAME(fill)(copy + (n - n0) * sxn, X + n * planar[10], planar[3], planar[4],
                               planar[5], planar[0], planar[1], planar[2], planar[6], planar[7],
                               planar[8], planar[9]);
                copied = n0;
            }
            for (int64_t n = n0; n < n1; n++) {
                const REAL *Dn = D + n * sdn;
                const REAL *Xn = copy ? copy + (n - n0) * sxn : X + n * sxn;
/* With sdo a literal 1 (a Linear layer's output gradient read along its last axis), the
 * tile's eight broadcasts take constant offsets; a runtime stride costs each one a register the
 * tile does not have to spare, and the compiler reloads them from the stack on every step. */
#define STRIP(cb) \
    (sdo == 1 ? NAME(strip)(cb, n, O, j0, L, K, Dn, 1, sdl, Xn, off_l, off_k, W, g, gw, grad, \
                            mine + n) \
              : NAME(strip)(cb, n, O, j0, L, K, Dn, sdo, sdl, Xn, off_l, off_k, W, g, gw, grad, \
                            mine + n))
                switch (blocks - j0 < COLS ? blocks - j0 : COLS) { /* a constant per case */
                case 1: STRIP(1); break;
#if COLS > 1
                case 2: STRIP(2); break;
#endif
#if COLS > 2
                case 3: STRIP(3); break;
#endif
#if COLS > 3
                case 4: STRIP(4); break;
#endif
                }
#undef STRIP
            }
        }
    }
}


/* Σ δ and Σ δ (x − m) over one plane of S contiguous positions; gi = δ · k if gi. */
static inline void NAME(plane_sums)(int64_t S, const REAL *d, const REAL *x, REAL m, REAL k,
                                    REAL *gi, double *sum_d, double *sum_dx)
{
    VEC vd = (VEC){0}, vdx = (VEC){0};
    int64_t s = 0;
    for (; s + LANES <= S; s += LANES) {
        const VEC dv = *(const VEC *)(d + s);
        vd += dv;
        vdx += dv * (*(const VEC *)(x + s) - m);
        if (gi)
            *(VEC *)(gi + s) = dv * k;
    }
    double td = 0, tdx = 0;
    for (int i = 0; i < LANES; i++) {
        td += vd[i];
        tdx += vdx[i];
    }
    for (; s < S; s++) {
        td += d[s];
        tdx += (double)d[s] * (x[s] - m);
        if (gi)
            gi[s] = d[s] * k;
    }
    *sum_d = td;
    *sum_dx = tdx;
}

/* The backward of an eval-mode BatchNorm, y = γ[c] (x − mean[c]) / √(var[c] + eps) + β[c], per
 * plane p = (n, c) of S contiguous positions (planes = N · C, c = p mod C), δ the output gradient:
 *   gi = δ · scale[c] (if gi is not NULL; scale = γ / √(var + eps): the input gradient),
 *   sum_d[p] = Σ δ (the per-sample β gradient),
 *   sum_dx[p] = Σ δ · (x − mean[c]) (times 1/√(var + eps): the per-sample γ gradient).
 * One read of δ and x, where autograd's backward (which reads both too) and a second pass for
 * the per-sample sums read them twice. */
void NAME(batch_norm_backward)(int64_t planes, int64_t C, int64_t S, const REAL *D, const REAL *X,
                               const REAL *mean, const REAL *scale, REAL *gi, double *sum_d,
                               double *sum_dx, int threads)
{
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t p = 0; p < planes; p++)
        NAME(plane_sums)(S, D + p * S, X + p * S, mean[p % C], scale[p % C],
                         gi ? gi + p * S : NULL, sum_d + p, sum_dx + p);
}

/* The backward of a GroupNorm, y = γ[c] (x − mean[q]) rstd[q] + β[c] with the statistics of
 * sample n and group g (q = n · G + g) that its forward saved: per plane p = (n, c),
 * sum_d[p] = Σ δ and sum_dx[p] = Σ δ (x − mean[q]) (times rstd[q]: the per-sample γ gradient),
 * and, if gi is not NULL, the input gradient (autograd's formula)
 *   gi = δ γ[c] rstd + c2 (x − mean) + c3,  c2 = −rstd³ Σ_c γ[c] sum_dx / (D S),
 *   c3 = −rstd Σ_c γ[c] sum_d / (D S),
 * with D = C / G channels of S positions per group. A group's planes are read a second time
 * for gi while they are still in cache: one pass over memory, where autograd's backward makes
 * two and the per-sample sums a third. */
void NAME(group_norm_backward)(int64_t N, int64_t C, int64_t G, int64_t S, const REAL *D,
                               const REAL *X, const REAL *mean, const REAL *rstd,
                               const REAL *gamma, REAL *gi, double *sum_d, double *sum_dx,
                               int threads)
{
    const int64_t per_group = C / G;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t q = 0; q < N * G; q++) {
        const int64_t first = q / G * C + q % G * per_group; /* plane of the group's channel 0 */
        const REAL m = mean[q], r = rstd[q];
        double gamma_dx = 0, gamma_d = 0;
        for (int64_t j = 0; j < per_group; j++) {
            const int64_t p = first + j;
            NAME(plane_sums)(S, D + p * S, X + p * S, m, 0, NULL, sum_d + p, sum_dx + p);
            gamma_dx += gamma[q % G * per_group + j] * sum_dx[p];
            gamma_d += gamma[q % G * per_group + j] * sum_d[p];
        }
        if (!gi)
            continue;
        const double share = 1.0 / ((double)per_group * (double)S);
        const REAL c2 = (REAL)(-gamma_dx * r * r * r * share);
        const REAL c3 = (REAL)(-gamma_d * r * share);
        for (int64_t j = 0; j < per_group; j++) {
            const int64_t p = first + j;
            const REAL k = gamma[q % G * per_group + j] * r;
            const REAL *d = D + p * S, *x = X + p * S;
            REAL *g = gi + p * S;
            int64_t s = 0;
            for (; s + LANES <= S; s += LANES) {
                const VEC dv = *(const VEC *)(d + s), xv = *(const VEC *)(x + s);
                *(VEC *)(g + s) = dv * k + (xv - m) * c2 + c3;
            }
            for (; s < S; s++)
                g[s] = d[s] * k + (x[s] - m) * c2 + c3;
        }
    }
}


/* The backward of a LayerNorm over the last D elements of each of N · T rows (T rows per
 * sample), y = γ x̂ + β with x̂ = (x − mean[r]) rstd[r], the statistics its forward saved. Per
 * sample n, added to its zeroed rows of g_gamma and g_beta (N, D): Σ_rows δ x̂ and Σ_rows δ
 * (the per-sample γ and β gradients); and, if gi is not NULL, the input gradient (autograd's
 * formula) gi = rstd (g − mean(g) − x̂ mean(g x̂)) with g = δ γ, means over the row. A row is
 * read a second time for gi while it is in cache: one pass over memory, where autograd's
 * backward makes one and the per-sample sums another three. Threads take whole samples. */
void NAME(layer_norm_backward)(int64_t N, int64_t T, int64_t D, const REAL *Dl, const REAL *X,
                               const REAL *mean, const REAL *rstd, const REAL *gamma, REAL *gi,
                               REAL *g_gamma, REAL *g_beta, int threads)
{
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t n = 0; n < N; n++) {
        REAL *sg = g_gamma + n * D, *sb = g_beta + n * D;
        for (int64_t t = 0; t < T; t++) {
            const int64_t r = n * T + t;
            const REAL *d = Dl + r * D, *x = X + r * D;
            const REAL m = mean[r], k = rstd[r];
            VEC vg = (VEC){0}, vgx = (VEC){0};
            REAL tg = 0, tgx = 0;
            int64_t j = 0;
            for (; j + LANES <= D; j += LANES) {
                const VEC dv = *(const VEC *)(d + j);
                const VEC xh = (*(const VEC *)(x + j) - m) * k;
                const VEC g = dv * *(const VEC *)(gamma + j);
                *(VEC *)(sg + j) += dv * xh;
                *(VEC *)(sb + j) += dv;
                vg += g;
                vgx += g * xh;
            }
            for (; j < D; j++) {
                const REAL xh = (x[j] - m) * k, g = d[j] * gamma[j];
                sg[j] += d[j] * xh;
                sb[j] += d[j];
                tg += g;
                tgx += g * xh;
            }
            if (!gi)
                continue;
            for (int i = 0; i < LANES; i++) {
                tg += vg[i];
                tgx += vgx[i];
            }
            const REAL mg = tg / D, mgx = tgx / D;
            REAL *o = gi + r * D;
            for (j = 0; j + LANES <= D; j += LANES) {
                const VEC xh = (*(const VEC *)(x + j) - m) * k;
                const VEC g = *(const VEC *)(d + j) * *(const VEC *)(gamma + j);
                *(VEC *)(o + j) = k * (g - mg - xh * mgx);
            }
            for (; j < D; j++) {
                const REAL xh = (x[j] - m) * k;
                o[j] = k * (d[j] * gamma[j] - mg - xh * mgx);
            }
        }
    }
}


/* The exactness guard's comparison (one read of each operand, nothing written but the result):
 * for each of `count` tensors t of sizes[t] contiguous elements at the addresses theta[t],
 * truth[t] and formula[t] (0: zero), out[2t] = max |θ g| and out[2t + 1] = max |θ (g − f)|,
 * NaN where a NaN was met. Tensors are cut into chunks of GUARD_CHUNK elements that the threads
 * share (one large weight would otherwise keep one thread busy); partial holds two values per
 * chunk. */
#ifndef GUARD_CHUNK
#define GUARD_CHUNK 32768
#endif
static inline REAL NAME(vmax)(VEC v, BITS *nan)
{
    REAL m = 0;
    for (int i = 0; i < LANES; i++)
        m = v[i] > m ? v[i] : m;
    *nan |= (BITS)(v != v);
    return m;
}

static inline int NAME(any)(BITS b)
{
    int any = 0;
    for (int i = 0; i < LANES; i++)
        any |= b[i] != 0;
    return any;
}

void NAME(guard_extremes)(int64_t count, const int64_t *sizes, const int64_t *theta,
                          const int64_t *truth, const int64_t *formula, int64_t chunks,
                          const int64_t *first_chunk, REAL *partial, REAL *out, int threads)
{
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
    for (int64_t c = 0; c < chunks; c++) {
        int64_t t = 0;
        while (first_chunk[t + 1] <= c)
            t++;
        const int64_t start = (c - first_chunk[t]) * GUARD_CHUNK;
        const int64_t end = start + GUARD_CHUNK < sizes[t] ? start + GUARD_CHUNK : sizes[t];
        const REAL *th = (const REAL *)(intptr_t)theta[t], *g = (const REAL *)(intptr_t)truth[t];
        const REAL *f = formula[t] ? (const REAL *)(intptr_t)formula[t] : NULL;
        VEC scale = (VEC){0}, error = (VEC){0};
        BITS nan_p = (BITS){0}, nan_e = (BITS){0};
        int64_t i = start;
        for (; i + LANES <= end; i += LANES) {
            const VEC p = *(const VEC *)(th + i) * *(const VEC *)(g + i);
            VEC e = p;
            if (f)
                e -= *(const VEC *)(th + i) * *(const VEC *)(f + i);
            const VEC ap = (VEC)((BITS)p & ABS_MASK), ae = (VEC)((BITS)e & ABS_MASK);
            const BITS up = (BITS)(ap > scale), ue = (BITS)(ae > error);
            scale = (VEC)(((BITS)ap & up) | ((BITS)scale & ~up));
            error = (VEC)(((BITS)ae & ue) | ((BITS)error & ~ue));
            nan_p |= (BITS)(p != p);
            nan_e |= (BITS)(e != e);
        }
        REAL ms = NAME(vmax)(scale, &nan_p), me = NAME(vmax)(error, &nan_e);
        int bad_p = NAME(any)(nan_p), bad_e = NAME(any)(nan_e);
        for (; i < end; i++) {
            const REAL p = th[i] * g[i], e = f ? p - th[i] * f[i] : p;
            const REAL ap = p < 0 ? -p : p, ae = e < 0 ? -e : e;
            ms = ap > ms ? ap : ms;
            me = ae > me ? ae : me;
            bad_p |= p != p;
            bad_e |= e != e;
        }
        partial[2 * c] = bad_p ? (REAL)NAN : ms;
        partial[2 * c + 1] = bad_e ? (REAL)NAN : me;
    }
    for (int64_t t = 0; t < count; t++)
        for (int k = 0; k < 2; k++) {
            REAL m = 0;
            int bad = 0;
            for (int64_t c = first_chunk[t]; c < first_chunk[t + 1]; c++) {
                const REAL v = partial[2 * c + k];
                bad |= v != v;
                m = v > m ? v : m;
            }
            out[2 * t + k] = bad ? (REAL)NAN : m;
        }
}
#endif

/* CPU kernels for matching pursuit (docs/methods.md#mpsae-speed), called from saekit/sae/native.py.
 *
 * Compiled twice, with REAL=float / SUFFIX=_f32 and REAL=double / SUFFIX=_f64. Every array
 * is row-major and contiguous; the caller checks shapes and dtypes, and that inputs are
 * finite (the build assumes so, see native.py). One call works on a
 * slice of the batch, so the caller can run slices on several threads (ctypes drops the GIL).
 *
 * Why C: a pursuit step touches one Gram row per sample and then needs the row's argmax.
 * Done in torch that is several passes over [batch, n_latents] per step plus ~20 op launches
 * per chunk of samples; here each sample's correlation row stays in L1 for all its steps and
 * the update, the next step's block maxima and the argmax are one pass.
 */
#include <tgmath.h> /* fabs on REAL without a round trip through double */
#include <stdint.h>
#include <string.h>

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define FN(name) CAT(name, SUFFIX)

/* Argmax bookkeeping: the row is split in blocks of BLOCK latents whose maxima are kept, so
 * the argmax reads nblk maxima and one block instead of the whole row. */
#define BLOCK 256

enum { NONNEG = 0, SIGNED = 1, ABS = 2 };

/* Max of x[0..n) (of |x| when absval), n >= 1. Plain max reductions that the compiler
 * vectorises (it needs -ffinite-math-only for that, so no infinities here: start at x[0]). */
static inline REAL FN(block_max)(const REAL *x, int64_t n, int absval) {
    REAL m = absval ? fabs(x[0]) : x[0];
    if (absval) {
        for (int64_t i = 1; i < n; i++) { REAL v = fabs(x[i]); m = v > m ? v : m; }
    } else {
        for (int64_t i = 1; i < n; i++) { REAL v = x[i]; m = v > m ? v : m; }
    }
    return m;
}

/* x -= a * g on one block (n >= 1), returning the block's new max. */
static inline REAL FN(update_block)(REAL *restrict x, const REAL *restrict g, REAL a, int64_t n,
                                    int absval) {
    x[0] -= a * g[0];
    REAL m = absval ? fabs(x[0]) : x[0];
    if (absval) {
        for (int64_t i = 1; i < n; i++) {
            REAL v = x[i] - a * g[i];
            x[i] = v;
            v = fabs(v);
            m = v > m ? v : m;
        }
    } else {
        for (int64_t i = 1; i < n; i++) {
            REAL v = x[i] - a * g[i];
            x[i] = v;
            m = v > m ? v : m;
        }
    }
    return m;
}

/* First index of the row's largest score, given the block maxima. */
static inline int64_t FN(first_argmax)(const REAL *row, const REAL *bmax, int64_t nblk, int64_t p,
                                       int absval) {
    int64_t k = 0;
    REAL best = bmax[0];
    for (int64_t q = 1; q < nblk; q++)
        if (bmax[q] > best) { best = bmax[q]; k = q; }
    int64_t hi = (k + 1) * BLOCK < p ? (k + 1) * BLOCK : p;
    for (int64_t i = k * BLOCK; i < hi; i++) {
        REAL v = absval ? fabs(row[i]) : row[i];
        if (v == best) return i;
    }
    return k * BLOCK; /* unreachable for finite rows */
}

/* Pursuit steps t0 .. t1-1 for `batch` samples, on the Gram path (c <- c - a G[j]).
 *
 * c [batch, p]: the correlations <r, d_i> at step t0, updated in place (not after the last
 *   step of the range: the caller recomputes them exactly before the next range).
 * G [p, p]: D D^T, symmetric.
 * r [batch, d] or NULL: the residual, updated in place (needed for thresholds and refreshes);
 *   D [p, d] is read only when r is given. e0 [batch]: ||r^0||^2 for the relative threshold.
 * abs_sq, rel: stop once ||r||^2 < abs_sq or ||r||^2 < rel * e0; negative = off.
 * Outputs [batch, n_steps]: indices, coefs, updated (columns t0..t1-1 written).
 * finished [batch]: in/out; a finished sample is skipped. A sample finishes at a threshold,
 *   or when its coefficient is 0 (under NONNEG: every correlation <= 0).
 * bmax: scratch for ceil(p / BLOCK) block maxima.
 */
void FN(mp_pursue)(REAL *c, const REAL *G, REAL *r, const REAL *D, const REAL *e0,
                   int64_t batch, int64_t p, int64_t d, int64_t n_steps, int64_t t0,
                   int64_t t1, int mode, double abs_sq, double rel, int64_t *indices,
                   REAL *coefs, uint8_t *updated, uint8_t *finished, REAL *bmax) {
    const int absval = mode == ABS;
    const int64_t nblk = (p + BLOCK - 1) / BLOCK;
    const int thresholds = r != NULL && (abs_sq >= 0 || rel >= 0);
    for (int64_t b = 0; b < batch; b++) {
        if (finished[b]) continue;
        REAL *row = c + b * p;
        REAL *res = r ? r + b * d : NULL;
        for (int64_t q = 0; q < nblk; q++) {
            int64_t lo = q * BLOCK, n = p - lo < BLOCK ? p - lo : BLOCK;
            bmax[q] = FN(block_max)(row + lo, n, absval);
        }
        for (int64_t t = t0; t < t1; t++) {
            if (thresholds) {
                REAL energy = 0;
                for (int64_t i = 0; i < d; i++) energy += res[i] * res[i];
                if ((abs_sq >= 0 && energy < abs_sq) || (rel >= 0 && energy < rel * e0[b])) {
                    finished[b] = 1;
                    break;
                }
            }
            int64_t j = FN(first_argmax)(row, bmax, nblk, p, absval);
            REAL a = row[j];
            if (mode == NONNEG && a < 0) a = 0;
            if (a == 0) { finished[b] = 1; break; }
            indices[b * n_steps + t] = j;
            coefs[b * n_steps + t] = a;
            updated[b * n_steps + t] = 1;
            if (t == n_steps - 1) break;
            if (res) {
                const REAL *atom = D + j * d;
                for (int64_t i = 0; i < d; i++) res[i] -= a * atom[i];
            }
            if (t + 1 < t1) {
                const REAL *g = G + j * p;
                for (int64_t q = 0; q < nblk; q++) {
                    int64_t lo = q * BLOCK, n = p - lo < BLOCK ? p - lo : BLOCK;
                    bmax[q] = FN(update_block)(row + lo, g + lo, a, n, absval);
                }
            }
        }
    }
}

/* Copy the upper triangle of the square matrix G [p, p] onto its lower triangle, in tiles
 * that fit in L1 (a plain transposed copy strides through memory one element per line). */
void FN(mirror_upper)(REAL *G, int64_t p) {
    const int64_t tile = 64;
    for (int64_t i0 = 0; i0 < p; i0 += tile) {
        int64_t i1 = i0 + tile < p ? i0 + tile : p;
        for (int64_t j0 = 0; j0 <= i0; j0 += tile) {
            int64_t j1 = j0 + tile < p ? j0 + tile : p;
            for (int64_t i = i0; i < i1; i++) {
                int64_t stop = j1 < i ? j1 : i; /* strictly below the diagonal */
                for (int64_t j = j0; j < stop; j++) G[i * p + j] = G[j * p + i];
            }
        }
    }
}

/* Replay forward (docs/methods.md#mpsae-replay):
 * coefficients along fixed indices, alpha_t = m_t <d_{j_t}, r^{t-1}>,
 * r^t = r^{t-1} - alpha_t d_{j_t}. r0 [batch, d]; indices, mask [batch, T].
 * Writes alpha [batch, T], recon = sum_t alpha_t d_{j_t} [batch, d] and the final residual
 * r_final [batch, d] that the backward walks back from. */
void FN(mp_replay_forward)(const REAL *D, const REAL *r0, const int64_t *indices,
                           const uint8_t *mask, int64_t batch, int64_t d, int64_t T,
                           REAL *alpha, REAL *recon, REAL *r_final) {
    for (int64_t b = 0; b < batch; b++) {
        REAL *r = r_final + b * d, *xh = recon + b * d;
        memcpy(r, r0 + b * d, d * sizeof(REAL));
        memset(xh, 0, d * sizeof(REAL));
        for (int64_t t = 0; t < T; t++) {
            REAL a = 0;
            if (mask[b * T + t]) {
                const REAL *atom = D + indices[b * T + t] * d;
                for (int64_t i = 0; i < d; i++) a += atom[i] * r[i];
                for (int64_t i = 0; i < d; i++) { r[i] -= a * atom[i]; xh[i] += a * atom[i]; }
            }
            alpha[b * T + t] = a;
        }
    }
}

/* Replay backward: reverse-mode through the recursion above, O(T d) per sample.
 * With rho the adjoint of r^t (rho = 0 after the last step), going t = T-1 .. 0:
 *   abar   = g_alpha_t + <d_j, g_recon - rho>            (alpha_t feeds recon and r^t)
 *   g_D[j] += alpha_t (g_recon - rho) + abar r^{t-1}      (d_j feeds recon, r^t and alpha_t)
 *   rho   += abar d_j                                    (r^{t-1} feeds alpha_t and r^t)
 * with r^{t-1} = r^t + alpha_t d_j rebuilt from r_final; g_r0 = rho at the end.
 * g_recon [batch, d] is required (zeros when recon gets no gradient); g_alpha: NULL = zero.
 * g_D [p, d] is accumulated into (NULL: not needed);
 * g_r0 [batch, d] is written (NULL: not needed). scratch: 2 * d elements. */
void FN(mp_replay_backward)(const REAL *D, const REAL *r_final, const int64_t *indices,
                            const uint8_t *mask, const REAL *alpha, const REAL *g_recon,
                            const REAL *g_alpha, int64_t batch, int64_t d, int64_t T,
                            REAL *g_D, REAL *g_r0, REAL *scratch) {
    REAL *r = scratch, *rho = scratch + d;
    for (int64_t b = 0; b < batch; b++) {
        const REAL *gx = g_recon + b * d;
        memcpy(r, r_final + b * d, d * sizeof(REAL));
        memset(rho, 0, d * sizeof(REAL));
        for (int64_t t = T - 1; t >= 0; t--) {
            if (!mask[b * T + t]) continue;
            int64_t j = indices[b * T + t];
            const REAL *atom = D + j * d;
            REAL a = alpha[b * T + t];
            REAL abar = g_alpha ? g_alpha[b * T + t] : 0;
            for (int64_t i = 0; i < d; i++) abar += atom[i] * (gx[i] - rho[i]);
            for (int64_t i = 0; i < d; i++) r[i] += a * atom[i];
            if (g_D) {
                REAL *gd = g_D + j * d;
                for (int64_t i = 0; i < d; i++) gd[i] += a * (gx[i] - rho[i]) + abar * r[i];
            }
            for (int64_t i = 0; i < d; i++) rho[i] += abar * atom[i];
        }
        if (g_r0) memcpy(g_r0 + b * d, rho, d * sizeof(REAL));
    }
}

/* CPU kernels for TopK-style training (docs/methods.md#topk-speed): the per-row top-k of the
 * selection and the sparse products of its backward. Called from saekit/sae/sparse.py through
 * saekit/sae/native.py.
 *
 * Compiled with REAL=float / SUFFIX=_f32 and REAL=double / SUFFIX=_f64, like the pursuit
 * kernels, but without -ffinite-math-only: top-k also serves inference, where nobody checks the
 * scores first, so infinities must order correctly.
 *
 * Top-k: torch.topk on a [1024, 4096] fp32 matrix takes about as long as the encoder matmul
 * that produced it; here a row is one vectorised pass of block maxima, a bisection for a bound
 * on the k-th largest score, and a short pass over the few candidates above it.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define FN(name) CAT(name, SUFFIX)

#define BLOCK 16

/* Restore the min-heap property below position i (heap of k (value, index) pairs). A tie on
 * value puts the larger index nearer the root, so it is evicted first: among equal scores the
 * lowest indices are kept, as a stable sort would. */
static inline int FN(before)(REAL va, int64_t ia, REAL vb, int64_t ib) {
    return va < vb || (va == vb && ia > ib);
}

static inline void FN(sift_down)(REAL *val, int64_t *idx, int64_t k, int64_t i) {
    REAL v = val[i];
    int64_t x = idx[i];
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= k) break;
        if (c + 1 < k && FN(before)(val[c + 1], idx[c + 1], val[c], idx[c])) c++;
        if (!FN(before)(val[c], idx[c], v, x)) break;
        val[i] = val[c];
        idx[i] = idx[c];
        i = c;
    }
    val[i] = v;
    idx[i] = x;
}

/* Number of x[0..m) >= t: a plain counting loop, vectorised. */
static inline int64_t FN(count_at_least)(const REAL *x, int64_t m, REAL t) {
    int64_t c = 0;
    for (int64_t i = 0; i < m; i++) c += x[i] >= t;
    return c;
}

/* REALs as unsigned integers in the same order (-inf < ... < -0 < +0 < ... < +inf), so that a
 * bisection over keys ends after at most 8 * sizeof(REAL) probes, whatever the values. */
static inline uint64_t FN(to_key)(REAL x) {
    if (sizeof(REAL) == 4) {
        uint32_t u;
        memcpy(&u, &x, 4);
        return u ^ (u >> 31 ? 0xFFFFFFFFu : 0x80000000u);
    }
    uint64_t u;
    memcpy(&u, &x, 8);
    return u ^ (u >> 63 ? ~(uint64_t)0 : (uint64_t)1 << 63);
}

static inline REAL FN(from_key)(uint64_t key) {
    REAL x;
    if (sizeof(REAL) == 4) {
        uint32_t u = (uint32_t)key;
        u ^= u >> 31 ? 0x80000000u : 0xFFFFFFFFu;
        memcpy(&x, &u, 4);
    } else {
        key ^= key >> 63 ? (uint64_t)1 << 63 : ~(uint64_t)0;
        memcpy(&x, &key, 8);
    }
    return x;
}

/* The k-th largest of x[0..m) (1 <= k <= m, NaN ignored), by bisection over the keys: every
 * probe is one vectorised count, so there are no data-dependent branches to mispredict (a heap
 * or a quickselect over a few hundred values costs microseconds here). Invariant: at least k
 * values are >= from_key(lo) and fewer than k are >= from_key(hi). */
static REAL FN(kth_largest)(const REAL *x, int64_t m, int64_t k) {
    REAL mn = x[0], mx = x[0];
    for (int64_t i = 1; i < m; i++) {
        mn = x[i] < mn ? x[i] : mn;
        mx = x[i] > mx ? x[i] : mx;
    }
    if (FN(count_at_least)(x, m, mx) >= k) return mx;
    uint64_t lo = FN(to_key)(mn), hi = FN(to_key)(mx);
    while (hi - lo > 1) {
        uint64_t mid = lo + (hi - lo) / 2;
        if (FN(count_at_least)(x, m, FN(from_key)(mid)) >= k) lo = mid; else hi = mid;
    }
    return FN(from_key)(lo);
}

/* Maxima of the nblk blocks of len scores of row (the last block takes the remainder). */
#define LANES (64 / (int64_t)sizeof(REAL))
static void FN(block_maxima)(const REAL *row, int64_t n, int64_t len, int64_t nblk, REAL *bmax) {
    int64_t q = 0;
    if (len == LANES) /* a constant trip count: one vector max per block */
        for (; q + 1 < nblk; q++) {
            const REAL *x = row + q * LANES;
            REAL mx = x[0];
            for (int64_t i = 1; i < LANES; i++) mx = x[i] > mx ? x[i] : mx;
            bmax[q] = mx;
        }
    for (; q < nblk; q++) {
        int64_t lo = q * len, hi = q + 1 == nblk ? n : lo + len;
        REAL mx = row[lo];
        for (int64_t i = lo + 1; i < hi; i++) mx = row[i] > mx ? row[i] : mx;
        bmax[q] = mx;
    }
}

/* Rows [0, batch) of scores [batch, n]: the k (1 <= k <= n) largest of each row, written to
 * values/indices [batch, k] in descending order (ties: lower index first).
 *
 * The row is cut into nblk >= k blocks; the k-th largest block maximum t is a lower bound on
 * the row's k-th largest score (k blocks hold a score >= t), so only scores >= t in blocks whose
 * maximum reaches t are candidates: a few times k of them. The k-th largest candidate T is
 * found the same way, the scores above T and the first scores equal to T are kept, and their
 * order is given by their ranks. A row with more than CAND candidates (many equal scores) or
 * with NaN goes through a size-k heap instead. */
#define CAND 4096
void FN(row_topk)(const REAL *scores, int64_t batch, int64_t n, int64_t k, REAL *values,
                  int64_t *indices) {
    REAL cv[CAND], bmax[CAND];
    int64_t ci[CAND];
    /* Blocks of one vector register where that leaves at least k of them (the usual shapes),
     * else as many blocks as k needs. */
    int64_t len = n >= LANES * k ? LANES : n / k;
    if (len < 1) len = 1;
    const int64_t nblk = n / len; /* the last block takes the remainder */
    const int two_pass = nblk >= k && nblk <= CAND && k <= CAND;
    for (int64_t b = 0; b < batch; b++) {
        const REAL *row = scores + b * n;
        REAL *val = values + b * k;
        int64_t *idx = indices + b * k;
        if (two_pass) {
            FN(block_maxima)(row, n, len, nblk, bmax);
            const REAL t = FN(kth_largest)(bmax, nblk, k);
            int64_t m = 0;
            for (int64_t q = 0; q < nblk && m >= 0; q++) {
                if (!(bmax[q] >= t)) continue;
                int64_t lo = q * len, hi = q + 1 == nblk ? n : lo + len;
                for (int64_t i = lo; i < hi; i++)
                    if (row[i] >= t) {
                        if (m == CAND) { m = -1; break; }
                        cv[m] = row[i];
                        ci[m++] = i;
                    }
            }
            if (m >= k) {
                const REAL T = FN(kth_largest)(cv, m, k);
                int64_t above = 0;
                for (int64_t i = 0; i < m; i++) above += cv[i] > T;
                int64_t kept = 0, ties = k - above;
                for (int64_t i = 0; i < m && kept < k; i++) {
                    int keep = cv[i] > T || (cv[i] == T && ties-- > 0);
                    if (keep) { bmax[kept] = cv[i]; ci[kept++] = ci[i]; }
                }
                if (kept == k) {
                    /* rank = number of kept scores before it in the output order */
                    for (int64_t i = 0; i < k; i++) {
                        const REAL v = bmax[i];
                        int64_t r = 0;
                        for (int64_t j = 0; j < k; j++) r += bmax[j] > v || (bmax[j] == v && j < i);
                        val[r] = v;
                        idx[r] = ci[i];
                    }
                    continue;
                }
            }
        }
        /* Short rows, too many candidates, NaN: one pass with a size-k min-heap. */
        for (int64_t i = 0; i < k; i++) { val[i] = row[i]; idx[i] = i; }
        for (int64_t i = k / 2 - 1; i >= 0; i--) FN(sift_down)(val, idx, k, i);
        for (int64_t i = k; i < n; i++)
            if (row[i] > val[0]) { val[0] = row[i]; idx[0] = i; FN(sift_down)(val, idx, k, 0); }
        /* Heap sort: pop the minimum to the end, so the row ends up in descending order. */
        for (int64_t end = k - 1; end > 0; end--) {
            REAL tv = val[0]; val[0] = val[end]; val[end] = tv;
            int64_t ti = idx[0]; idx[0] = idx[end]; idx[end] = ti;
            FN(sift_down)(val, idx, end, 0);
        }
    }
}

/* The backward of a sparse product over entries e = (rows[e], cols[e]) with coefficients
 * coef[e], for A [*, d] indexed by cols and B [*, d] indexed by rows:
 *   grad_A[cols[e]] += coef[e] · B[rows[e]]   (grad_A may be NULL)
 *   grad_B[rows[e]] += coef[e] · A[cols[e]]   (grad_B may be NULL)
 *   dots[e]          = <A[cols[e]], B[rows[e]]> (dots may be NULL)
 * The encoder's backward is (A = W_enc, B = the centred input, coef = the gradient of the kept
 * pre-activations); the decoder's is (A = W_dec, B = the gradient of x̂, coef = the code values,
 * dots = the gradient of the values). torch needs a sparse matmul (with a sort), two
 * embedding_bag backwards and zero-filled temporaries for the same.
 *
 * grad_A is accumulated column by column (a counting sort of the entries by column first), so
 * each of its rows stays in L1 while it is summed and is written to memory once, instead of a
 * read-modify-write of a random row per entry. grad_B and dots go in entry order, which for
 * row-sorted entries keeps each grad_B row in L1 too.
 *
 * A call only touches grad_A rows in [a_lo, a_hi) and grad_B rows / dots of entries with rows
 * in [b_lo, b_hi), so threads given disjoint ranges never write the same memory. Returns 0, or
 * -1 when the scratch for the sort cannot be allocated (nothing written to grad_A then). */
int FN(sparse_backward)(const REAL *A, const REAL *B, const int64_t *rows, const int64_t *cols,
                        const REAL *coef, int64_t nnz, int64_t d, int64_t a_lo, int64_t a_hi,
                        int64_t b_lo, int64_t b_hi, REAL *grad_A, REAL *grad_B, REAL *dots) {
    if (grad_A && a_hi > a_lo) {
        const int64_t span = a_hi - a_lo;
        int64_t *start = calloc((size_t)span + 1, sizeof(int64_t));
        int64_t *order = malloc((size_t)(nnz > 0 ? nnz : 1) * sizeof(int64_t));
        if (!start || !order) { free(start); free(order); return -1; }
        for (int64_t e = 0; e < nnz; e++)
            if (cols[e] >= a_lo && cols[e] < a_hi) start[cols[e] - a_lo + 1]++;
        for (int64_t c = 0; c < span; c++) start[c + 1] += start[c];
        for (int64_t e = 0; e < nnz; e++)
            if (cols[e] >= a_lo && cols[e] < a_hi) order[start[cols[e] - a_lo]++] = e;
        /* start[c] now ends column c's run: column c is order[start[c-1] .. start[c]). */
        int64_t e0 = 0;
        for (int64_t c = 0; c < span; c++) {
            REAL *out = grad_A + (a_lo + c) * d;
            for (; e0 < start[c]; e0++) {
                const int64_t e = order[e0];
                const REAL *b = B + rows[e] * d;
                const REAL g = coef[e];
                for (int64_t i = 0; i < d; i++) out[i] += g * b[i];
            }
        }
        free(start);
        free(order);
    }
    if (!grad_B && !dots) return 0;
    for (int64_t e = 0; e < nnz; e++) {
        const int64_t r = rows[e];
        if (r < b_lo || r >= b_hi) continue;
        const REAL *a = A + cols[e] * d, *b = B + r * d;
        if (grad_B) {
            REAL *out = grad_B + r * d;
            const REAL g = coef[e];
            for (int64_t i = 0; i < d; i++) out[i] += g * a[i];
        }
        if (dots) {
            REAL s = 0;
            for (int64_t i = 0; i < d; i++) s += a[i] * b[i];
            dots[e] = s;
        }
    }
    return 0;
}

/* g_i -= (<g_i, w_i> / ||w_i||²) w_i for the n rows of W and G [n, d]: the radial part of a
 * unit-norm atom's gradient, removed in one pass (torch needs a product temporary, a row sum,
 * the norms and an update; its batched dot is slow at these shapes). */
void FN(remove_radial)(const REAL *W, REAL *G, int64_t n, int64_t d) {
    for (int64_t r = 0; r < n; r++) {
        const REAL *w = W + r * d;
        REAL *g = G + r * d;
        REAL dot = 0, sq = 0;
        for (int64_t i = 0; i < d; i++) {
            dot += g[i] * w[i];
            sq += w[i] * w[i];
        }
        const REAL c = dot / (sq > (REAL)1e-16 ? sq : (REAL)1e-16);
        for (int64_t i = 0; i < d; i++) g[i] -= c * w[i];
    }
}

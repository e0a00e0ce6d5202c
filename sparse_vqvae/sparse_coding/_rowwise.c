/* Sparse coding one signal at a time, in C: the CPU's kernels behind ``rowwise`` (the LASSO homotopy path and
 * OMP).
 *
 * Both start from the correlations D^T x and then work row by row in cache with the Gram matrix G = D^T D, in
 * float64, as SPAMS does; each row is coded on its own, so a code never depends on the other rows. The
 * correlations are computed here too, a few rows at a time (``correlate``), each element summed in one fixed
 * order: a BLAS GEMM's order depends on the batch (MKL on AMD sums a batch's edge rows otherwise), which would
 * make a code depend on the rows coded beside it. The kernels hold no state and release the GIL: Python
 * threads code disjoint blocks of rows in parallel.
 *
 * The LASSO: each row walks its path from lambda = max |d_j^T x| down to alpha; per event the direction's
 * correlations a = G[:, A] w (O(N k)), the join test over the N atoms, the leave test over the k active ones
 * and a k x k Cholesky solve. The events, thresholds and failure rules are ``lars._homotopy``'s; the end is
 * certified as ``fista.certify_lasso`` certifies (the exact solution on the support and signs, and KKT).
 *
 * OMP: Batch-OMP (Rubinstein, Zibulevsky, Elad 2008) as ``omp._omp_chunk`` does it for a batch: the atom most
 * correlated with the residual, the inverse Cholesky factor of the selected atoms' Gram block grown a row per
 * step, the coefficients L^-T L^-1 D_I^T x, and the residual's correlations D^T x - G[:, I] c (O(N k)).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../_buffers.h"

#define KKT_SLACK 1e-9 /* relative slack of the KKT test, as ``fista.certify_lasso`` allows float64 */

#define ROW_BLOCK 4 /* rows whose correlations are computed together: the dictionary is read once for them */
#define TILE 12     /* atoms whose ROW_BLOCK x TILE sums a pass of ``correlate`` keeps in registers */
_Static_assert(ROW_BLOCK == 4 && TILE == 12, "correlate's tile is written out as 4 rows of 3 vectors");

typedef double vector4 __attribute__((vector_size(32), aligned(8))); /* 4 doubles (GCC/Clang vector extension) */

/* Compiled twice where the compiler can: for AVX2 with FMA and for the baseline x86-64, the loader picking
 * the one the CPU runs (a machine kind's codes are its own; on one machine they never vary). */
#if defined(__x86_64__) && defined(__GNUC__)
#define VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define VECTOR_CLONES
#endif

/* out [ROW_BLOCK, n] = x [ROW_BLOCK, dim] D [dim, n], each element summed over dim in order. A tile of
 * 4 rows x 12 atoms of sums stays in registers (12 vectors, named: arrays of them went to the stack) while
 * the dictionary's rows stream past. */
VECTOR_CLONES
static void correlate(const double *restrict x, Py_ssize_t dim, const double *restrict dictionary, Py_ssize_t n,
                      double *restrict out) {
    Py_ssize_t first = 0;
    for (; first + TILE <= n; first += TILE) {
        vector4 a0 = {0}, a1 = {0}, a2 = {0}, b0 = {0}, b1 = {0}, b2 = {0}, /* rows 0 (a) to 3 (d) */
                c0 = {0}, c1 = {0}, c2 = {0}, d0 = {0}, d1 = {0}, d2 = {0};
        for (Py_ssize_t i = 0; i < dim; i++) {
            const double *atoms = dictionary + i * n + first;
            vector4 t0, t1, t2;
            memcpy(&t0, atoms, sizeof t0);
            memcpy(&t1, atoms + 4, sizeof t1);
            memcpy(&t2, atoms + 8, sizeof t2);
            double xa = x[i], xb = x[dim + i], xc = x[2 * dim + i], xd = x[3 * dim + i];
            a0 += xa * t0; a1 += xa * t1; a2 += xa * t2;
            b0 += xb * t0; b1 += xb * t1; b2 += xb * t2;
            c0 += xc * t0; c1 += xc * t1; c2 += xc * t2;
            d0 += xd * t0; d1 += xd * t1; d2 += xd * t2;
        }
        vector4 sums[ROW_BLOCK][3] = {{a0, a1, a2}, {b0, b1, b2}, {c0, c1, c2}, {d0, d1, d2}};
        for (int r = 0; r < ROW_BLOCK; r++) memcpy(out + r * n + first, sums[r], sizeof sums[r]);
    }
    for (; first < n; first++) { /* the atoms after the last whole tile */
        for (int r = 0; r < ROW_BLOCK; r++) {
            double sum = 0;
            for (Py_ssize_t i = 0; i < dim; i++) sum += x[r * dim + i] * dictionary[i * n + first];
            out[r * n + first] = sum;
        }
    }
}

/* The rows row0 .. row0 + ROW_BLOCK - 1 of ``signals`` (float32 or float64 by ``size``, [rows, dim]) in float64
 * into ``block``, zeros past the last row; their correlations into ``starts`` [ROW_BLOCK, n]. Returns how many
 * rows are real. */
static Py_ssize_t block_correlations(const void *signals, Py_ssize_t size, Py_ssize_t rows, Py_ssize_t row0,
                                     Py_ssize_t dim, const double *dictionary, Py_ssize_t n, double *block,
                                     double *starts) {
    Py_ssize_t real = rows - row0 < ROW_BLOCK ? rows - row0 : ROW_BLOCK;
    memset(block, 0, (size_t)(ROW_BLOCK * dim) * sizeof(double));
    for (Py_ssize_t i = 0; i < real * dim; i++)
        block[i] = size == 4 ? ((const float *)signals)[row0 * dim + i] : ((const double *)signals)[row0 * dim + i];
    correlate(block, dim, dictionary, n, starts);
    return real;
}

/* out[:k] = the solution of G[atoms, atoms] out = rhs[:k] by Cholesky (into chol, k x k with stride ld);
 * 0 where that Gram matrix is not positive definite. */
static int solve(const double *gram, Py_ssize_t n, const Py_ssize_t *atoms, Py_ssize_t k, const double *rhs,
                 double *chol, Py_ssize_t ld, double *out) {
    for (Py_ssize_t p = 0; p < k; p++) {
        for (Py_ssize_t q = 0; q <= p; q++) {
            double s = gram[atoms[p] * n + atoms[q]];
            for (Py_ssize_t r = 0; r < q; r++) s -= chol[p * ld + r] * chol[q * ld + r];
            if (p == q) {
                if (!(s > 0)) return 0;
                chol[p * ld + p] = sqrt(s);
            } else {
                chol[p * ld + q] = s / chol[q * ld + q];
            }
        }
    }
    for (Py_ssize_t p = 0; p < k; p++) { /* L y = rhs, then L^T out = y */
        double s = rhs[p];
        for (Py_ssize_t r = 0; r < p; r++) s -= chol[p * ld + r] * out[r];
        out[p] = s / chol[p * ld + p];
    }
    for (Py_ssize_t p = k - 1; p >= 0; p--) {
        double s = out[p];
        for (Py_ssize_t r = p + 1; r < k; r++) s -= chol[r * ld + p] * out[r];
        out[p] = s / chol[p * ld + p];
    }
    return 1;
}

/* Scratch of one row's path, allocated once for a block of rows. */
typedef struct {
    Py_ssize_t limit, size; /* size: the certified code's support, in support[:size] and exact[:size] */
    Py_ssize_t *active, *support;
    double *values, *chol, *w, *signs, *along, *steps, *c, *residual, *sign, *rhs, *exact;
} Scratch;

static void scratch_free(Scratch *s) {
    free(s->active); free(s->support); free(s->steps); free(s->values); free(s->chol); free(s->w);
    free(s->signs); free(s->along); free(s->c); free(s->residual); free(s->sign); free(s->rhs); free(s->exact);
}

/* 0 where memory ran out (then nothing is left allocated). */
static int scratch_alloc(Scratch *s, Py_ssize_t n, Py_ssize_t limit) {
    size_t l = (size_t)(limit > 0 ? limit : 1), m = (size_t)n;
    s->limit = limit;
    s->active = malloc(l * sizeof(Py_ssize_t)); s->support = malloc(l * sizeof(Py_ssize_t));
    s->steps = malloc(m * sizeof(double)); s->values = malloc(l * sizeof(double));
    s->chol = malloc(l * l * sizeof(double));
    s->w = malloc(l * sizeof(double)); s->signs = malloc(l * sizeof(double)); s->along = malloc(m * sizeof(double));
    s->c = malloc(m * sizeof(double)); s->residual = malloc(m * sizeof(double)); s->sign = malloc(l * sizeof(double));
    s->rhs = malloc(l * sizeof(double)); s->exact = malloc(l * sizeof(double));
    if (s->active && s->support && s->steps && s->values && s->chol && s->w && s->signs && s->along && s->c &&
        s->residual && s->sign && s->rhs && s->exact)
        return 1;
    scratch_free(s);
    return 0;
}

/* ``fista.certify_lasso`` for one row: the exact LASSO solution on the support and signs the path ended with,
 * c_S = (D_S^T D_S)^-1 (D_S^T x - penalty sign_S), written to code when its signs agree and every atom
 * satisfies |d_j^T (x - D c)| <= penalty (KKT): then it is left in s->support and s->exact. ``start`` holds
 * d_j^T x. */
static int certified(const double *start, const double *gram, Py_ssize_t n, const Py_ssize_t *active,
                     const double *values, Py_ssize_t k, double penalty, Scratch *s) {
    Py_ssize_t size = 0;
    for (Py_ssize_t p = 0; p < k; p++) {
        if (values[p] != 0) {
            s->support[size] = active[p];
            s->sign[size] = copysign(1.0, values[p]);
            s->rhs[size] = start[active[p]] - penalty * s->sign[size];
            size++;
        }
    }
    if (size && !solve(gram, n, s->support, size, s->rhs, s->chol, s->limit, s->exact)) return 0;
    memcpy(s->residual, start, (size_t)n * sizeof(double)); /* d_j^T (x - D c) */
    for (Py_ssize_t p = 0; p < size; p++) {
        double weight = s->exact[p];
        if (weight == 0 || copysign(1.0, weight) != s->sign[p]) return 0;
        const double *column = gram + s->support[p] * n;
        for (Py_ssize_t j = 0; j < n; j++) s->residual[j] -= weight * column[j];
    }
    double bound = penalty * (1.0 + KKT_SLACK) + KKT_SLACK;
    for (Py_ssize_t j = 0; j < n; j++)
        if (fabs(s->residual[j]) > bound) return 0;
    s->size = size;
    return 1;
}

/* The first index of the smallest of v[0..n) (v without NaN), -1 where none is below INFINITY. Eight running
 * minima, not one: a single one is a chain of dependent compares, which was the LASSO path's slowest loop. */
static Py_ssize_t first_min(const double *restrict v, Py_ssize_t n, double *smallest) {
    double lanes[8] = {INFINITY, INFINITY, INFINITY, INFINITY, INFINITY, INFINITY, INFINITY, INFINITY};
    Py_ssize_t j = 0;
    for (; j + 8 <= n; j += 8)
        for (int l = 0; l < 8; l++) lanes[l] = v[j + l] < lanes[l] ? v[j + l] : lanes[l];
    double best = INFINITY;
    for (; j < n; j++) best = v[j] < best ? v[j] : best;
    for (int l = 0; l < 8; l++) best = lanes[l] < best ? lanes[l] : best;
    *smallest = best;
    if (best == INFINITY) return -1;
    for (j = 0; v[j] != best; j++) {
    }
    return j;
}

/* One row's path from lambda = max |start_j| down to alpha, its certified code left in the scratch (``certified``);
 * 0 where ``lars._homotopy`` would fail the row, or the code is not certified. */
static int lasso_path(const double *start, const double *gram, Py_ssize_t n, double alpha, Py_ssize_t cap,
                Py_ssize_t max_steps, Scratch *s, double *penalty) {
    double *restrict c = s->c, *restrict values = s->values, *restrict w = s->w, *restrict signs = s->signs,
           *restrict along = s->along, *restrict steps = s->steps;
    Py_ssize_t *active = s->active;
    memcpy(c, start, (size_t)n * sizeof(double));
    for (Py_ssize_t j = 0; j < n; j++) steps[j] = -fabs(c[j]);
    double level;
    Py_ssize_t first = first_min(steps, n, &level);
    if (first < 0) return 0; /* every correlation NaN (finite inputs whose products overflowed): not certified */
    level = -level;
    s->size = 0;
    if (level <= alpha) return 1; /* the zero code */
    double tiny = sqrt(DBL_EPSILON) * 0.1 * fmax(level, DBL_MIN);
    memset(values, 0, (size_t)s->limit * sizeof(double));
    active[0] = first;
    Py_ssize_t k = 1;
    for (Py_ssize_t step = 0; step <= max_steps; step++) {
        if (step == max_steps || step > 3 * k + 10) return 0; /* too many events, or wandering: FISTA decides */
        /* Equiangular direction on the active set: (D_A^T D_A) w = sign(d_A^T r). */
        for (Py_ssize_t p = 0; p < k; p++) signs[p] = c[active[p]] != 0 ? copysign(1.0, c[active[p]]) : 0.0;
        if (!solve(gram, n, active, k, signs, s->chol, s->limit, w)) return 0;
        memset(along, 0, (size_t)n * sizeof(double));
        for (Py_ssize_t p = 0; p < k; p++) {
            double weight = w[p];
            const double *column = gram + active[p] * n;
            for (Py_ssize_t j = 0; j < n; j++) along[j] += weight * column[j];
        }
        /* Step to the first event: a join (either sign), a coefficient reaching zero, or alpha. Each atom's
         * step first (a loop without branches, which the compiler vectorises), the active atoms' then
         * excluded, the first smallest taken. */
        for (Py_ssize_t j = 0; j < n; j++) {
            double up = (level - c[j]) / (1.0 - along[j]), down = (level + c[j]) / (1.0 + along[j]);
            up = up > tiny ? up : INFINITY;
            down = down > tiny ? down : INFINITY;
            steps[j] = down < up ? down : up;
        }
        for (Py_ssize_t p = 0; p < k; p++) steps[active[p]] = INFINITY;
        double join_gamma, leave_gamma = INFINITY;
        Py_ssize_t join_atom = first_min(steps, n, &join_gamma), leave_slot = -1;
        for (Py_ssize_t p = 0; p < k; p++) {
            if (values[p] != 0) {
                double gamma = -values[p] / w[p];
                if (gamma > tiny && gamma < leave_gamma) leave_gamma = gamma, leave_slot = p;
            }
        }
        double stop_gamma = level - alpha;
        double gamma = fmin(fmin(join_gamma, leave_gamma), stop_gamma);
        if (!isfinite(gamma)) return 0;
        for (Py_ssize_t p = 0; p < k; p++) values[p] += gamma * w[p];
        for (Py_ssize_t j = 0; j < n; j++) c[j] -= gamma * along[j];
        level -= gamma;
        int stopped = stop_gamma <= fmin(join_gamma, leave_gamma);
        int joins = !stopped && join_gamma <= leave_gamma;
        if (joins && cap > 0 && k >= cap) { /* a join past max_nonzero: the code at this larger penalty */
            *penalty = level;
            stopped = 1;
        }
        if (stopped) return certified(start, gram, n, active, values, k, *penalty, s);
        if (joins) {
            if (k == s->limit || join_atom < 0) return 0;
            active[k] = join_atom, values[k] = 0.0;
            k++;
        } else { /* the coefficient reached zero: its atom leaves, the later slots move up */
            for (Py_ssize_t p = leave_slot; p < k - 1; p++) active[p] = active[p + 1], values[p] = values[p + 1];
            k--;
        }
    }
    return 0;
}

/* One row's OMP with ``count`` atoms: their indices and coefficients into ``indices`` and ``values`` (float64
 * scratch of the caller). An atom whose part orthogonal to the selected ones is below ``dependence`` (relative)
 * is listed with coefficient 0, as in ``omp._omp_chunk``. ``start`` holds d_j^T x; ``inverse`` is count x count,
 * ``c``, ``score`` n long, ``w``, ``coords`` count long. 0 where no atom can be chosen (all correlations NaN). */
static int omp_row(const double *start, const double *gram, Py_ssize_t n, Py_ssize_t count, double dependence,
                   double *restrict inverse, double *restrict c, double *restrict score, double *restrict w,
                   double *restrict coords, int64_t *indices, double *restrict values) {
    memcpy(c, start, (size_t)n * sizeof(double));
    for (Py_ssize_t k = 0; k < count; k++) {
        for (Py_ssize_t j = 0; j < n; j++) score[j] = -fabs(c[j]); /* the most correlated atom: the smallest */
        for (Py_ssize_t p = 0; p < k; p++) score[indices[p]] = INFINITY; /* never picked twice */
        double smallest;
        Py_ssize_t chosen = first_min(score, n, &smallest);
        if (chosen < 0) return 0; /* every correlation NaN: finite inputs whose products overflowed */
        indices[k] = chosen;
        /* The new row of L: w = L^-1 D_I^T d_j, its diagonal sqrt(||d_j||^2 - ||w||^2). */
        double norm2 = gram[chosen * n + chosen], schur = norm2, fitted = 0;
        for (Py_ssize_t p = 0; p < k; p++) {
            double sum = 0;
            for (Py_ssize_t q = 0; q <= p; q++) sum += inverse[p * count + q] * gram[indices[q] * n + chosen];
            w[p] = sum;
            schur -= sum * sum;
            fitted += sum * coords[p];
        }
        double inv_diag = schur > dependence * norm2 ? 1.0 / sqrt(schur) : 0.0; /* 0: a dependent atom */
        for (Py_ssize_t q = 0; q < k; q++) { /* L^-1's new row: -(w^T L^-1[:k, :k]) / L[k, k] */
            double sum = 0;
            for (Py_ssize_t p = q; p < k; p++) sum += w[p] * inverse[p * count + q];
            inverse[k * count + q] = -sum * inv_diag;
        }
        inverse[k * count + k] = inv_diag;
        coords[k] = (start[chosen] - fitted) * inv_diag; /* y = L^-1 D_I^T x */
        for (Py_ssize_t q = 0; q <= k; q++) { /* c = L^-T y */
            double sum = 0;
            for (Py_ssize_t p = q; p <= k; p++) sum += coords[p] * inverse[p * count + q];
            values[q] = sum;
        }
        if (k + 1 == count) return 1;
        memcpy(c, start, (size_t)n * sizeof(double)); /* D^T r = D^T x - G[:, I] c */
        for (Py_ssize_t p = 0; p <= k; p++) {
            double weight = values[p];
            const double *column = gram + indices[p] * n;
            for (Py_ssize_t j = 0; j < n; j++) c[j] -= weight * column[j];
        }
    }
    return 1;
}

/* A C-contiguous buffer of ``count`` float32 or float64 items: their size (4 or 8), 0 with an error. */
static Py_ssize_t get_real_buffer(PyObject *obj, Py_buffer *view, const char *name, Py_ssize_t count, int writable) {
    Py_ssize_t size = 8; /* what ``get_buffer`` asks of an object that is no buffer: float64, in its error */
    if (PyObject_CheckBuffer(obj) && PyObject_GetBuffer(obj, view, PyBUF_RECORDS_RO) == 0) { /* any layout */
        size = view->itemsize == 4 ? 4 : 8;
        PyBuffer_Release(view);
    }
    PyErr_Clear();
    return get_buffer(obj, view, name, size == 4 ? "f" : "d", size, count, writable) ? size : 0;
}

/* The entry points' arguments, checked before a buffer is read or anything allocated: each check 0 with a
 * ValueError that names the argument. Counts first (a negative one would size a memset or a malloc), then that
 * no product of them overflows, then the values the kernels cannot take: a NaN or an infinity makes ``first_min``
 * find no atom (an index of -1). */
static int check_count(const char *name, Py_ssize_t value, Py_ssize_t low) {
    if (value >= low) return 1;
    PyErr_Format(PyExc_ValueError, "%s must be at least %zd, got %zd", name, low, value);
    return 0;
}

/* 1 where ``a`` x ``b`` float64 items (a, b >= 0) fit in memory's addresses. */
static int check_product(const char *name, Py_ssize_t a, Py_ssize_t b) {
    if (b == 0 || a <= PY_SSIZE_T_MAX / (Py_ssize_t)sizeof(double) / b) return 1;
    PyErr_Format(PyExc_ValueError, "%s: %zd x %zd items are more than memory can address", name, a, b);
    return 0;
}

static int check_real(const char *name, double value) {
    if (isfinite(value) && value >= 0) return 1;
    char *text = PyOS_double_to_string(value, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    PyErr_Format(PyExc_ValueError, "%s must be a finite number >= 0, got %s", name, text ? text : "?");
    PyMem_Free(text);
    return 0;
}

/* Whether ``count`` float64 (``size`` 8) or float32 (4) values are all finite: an OR of whether each one's exponent
 * bits are all ones (NaN or infinity), which the compiler vectorises, not a branch per value. */
static int all_finite(const void *values, Py_ssize_t size, Py_ssize_t count) {
    if (size == 4) {
        const uint32_t *bits = values;
        uint32_t bad = 0;
        for (Py_ssize_t i = 0; i < count; i++) bad |= (bits[i] & 0x7f800000u) == 0x7f800000u;
        return !bad;
    }
    const uint64_t *bits = values;
    uint64_t bad = 0;
    for (Py_ssize_t i = 0; i < count; i++) bad |= (bits[i] & 0x7ff0000000000000u) == 0x7ff0000000000000u;
    return !bad;
}

/* The first of ``rows`` rows of ``dim`` values (float32 or float64 by ``size``) holding a NaN or an infinity; -1
 * where none does. */
static Py_ssize_t first_non_finite_row(const void *values, Py_ssize_t size, Py_ssize_t rows, Py_ssize_t dim) {
    for (Py_ssize_t row = 0; row < rows; row++)
        if (!all_finite((const char *)values + row * dim * size, size, dim)) return row;
    return -1;
}

/* The signals and the dictionary of ``omp`` and ``lasso_paths``, and all of ``lasso_certified``'s arrays. Not
 * those two's Gram matrix (D^T D of the dictionary checked): reading all of it costs as much as coding a block of
 * rows with K = 2, which reads a few of its columns. A NaN there codes garbage but reads no memory out of bounds:
 * ``first_min`` skips NaN scores, an all-NaN row is an error (``omp``) or uncertified (``lasso_paths``). */
static int check_finite(const char *name, const Py_buffer *view, Py_ssize_t size, Py_ssize_t count) {
    if (all_finite(view->buf, size, count)) return 1;
    PyErr_Format(PyExc_ValueError, "%s holds NaN or infinity", name);
    return 0;
}

static PyObject *py_lasso_paths(PyObject *self, PyObject *args) {
    PyObject *o_signals, *o_dict, *o_gram, *o_codes, *o_pen, *o_done;
    Py_ssize_t rows, n, dim, cap, max_steps;
    double alpha;
    if (!PyArg_ParseTuple(args, "OOOnnndnnOOO", &o_signals, &o_dict, &o_gram, &rows, &n, &dim, &alpha, &cap,
                          &max_steps, &o_codes, &o_pen, &o_done))
        return NULL;
    if (!check_count("rows", rows, 0) || !check_count("n", n, 1) || !check_count("dim", dim, 1) ||
        !check_count("cap", cap, 0) || !check_count("max_steps", max_steps, 0) || !check_real("alpha", alpha) ||
        !check_product("signals", rows, dim) || !check_product("dictionary", dim, n) ||
        !check_product("gram", n, n) || !check_product("codes", rows, n))
        return NULL;
    Py_buffer signals, dict, gram, codes, pen, done;
    Py_ssize_t signal_size = get_real_buffer(o_signals, &signals, "signals", rows * dim, 0);
    if (!signal_size) return NULL;
    if (!get_buffer(o_dict, &dict, "dictionary", "d", 8, dim * n, 0)) goto fail_dict;
    if (!get_buffer(o_gram, &gram, "gram", "d", 8, n * n, 0)) goto fail_gram;
    Py_ssize_t code_size = get_real_buffer(o_codes, &codes, "codes", rows * n, 1);
    if (!code_size) goto fail_codes;
    if (!get_buffer(o_pen, &pen, "penalties", "d", 8, rows, 1)) goto fail_pen;
    if (!get_buffer(o_done, &done, "done", "?bB", 1, rows, 1)) goto fail_done;
    if (!check_finite("dictionary", &dict, 8, dim * n)) goto fail_all; /* gram: see check_finite */
    /* More than min(n, d) active atoms: a singular Gram matrix. A cap above n is no cap (and sizes no scratch). */
    Py_ssize_t limit = cap == 0 || cap > n ? (n < dim ? n : dim) : cap;
    Py_ssize_t bad_row = -1;
    Scratch s;
    double *block = malloc((size_t)(ROW_BLOCK * dim) * sizeof(double)),
           *starts = malloc((size_t)(ROW_BLOCK * n) * sizeof(double));
    if (block && starts && scratch_alloc(&s, n, limit)) {
        Py_BEGIN_ALLOW_THREADS
        bad_row = first_non_finite_row(signals.buf, signal_size, rows, dim);
        for (Py_ssize_t row0 = 0; bad_row < 0 && row0 < rows; row0 += ROW_BLOCK) {
            Py_ssize_t real = block_correlations(signals.buf, signal_size, rows, row0, dim, (const double *)dict.buf,
                                                 n, block, starts);
            for (Py_ssize_t row = row0; row < row0 + real; row++) {
                int certain = lasso_path(starts + (row - row0) * n, (const double *)gram.buf, n, alpha, cap,
                                         max_steps, &s, (double *)pen.buf + row);
                ((char *)done.buf)[row] = (char)certain;
                for (Py_ssize_t p = 0; certain && p < s.size; p++) { /* codes: zeros in */
                    if (code_size == 4)
                        ((float *)codes.buf)[row * n + s.support[p]] = (float)s.exact[p];
                    else
                        ((double *)codes.buf)[row * n + s.support[p]] = s.exact[p];
                }
            }
        }
        Py_END_ALLOW_THREADS
        scratch_free(&s);
        if (bad_row >= 0) PyErr_Format(PyExc_ValueError, "signals: row %zd holds NaN or infinity", bad_row);
    } else {
        PyErr_NoMemory();
    }
    free(block); free(starts);
fail_all:
    PyBuffer_Release(&done);
fail_done:
    PyBuffer_Release(&pen);
fail_pen:
    PyBuffer_Release(&codes);
fail_codes:
    PyBuffer_Release(&gram);
fail_gram:
    PyBuffer_Release(&dict);
fail_dict:
    PyBuffer_Release(&signals);
    if (PyErr_Occurred()) return NULL;
    Py_RETURN_NONE;
}

static PyObject *py_lasso_certified(PyObject *self, PyObject *args) {
    PyObject *o_start, *o_gram, *o_atoms, *o_values, *o_code;
    Py_ssize_t n, k;
    double penalty;
    if (!PyArg_ParseTuple(args, "OOnOOndO", &o_start, &o_gram, &n, &o_atoms, &o_values, &k, &penalty, &o_code))
        return NULL;
    if (!check_count("n", n, 1) || !check_count("k", k, 0) || !check_product("gram", n, n) ||
        !check_real("penalty", penalty))
        return NULL;
    if (k > n) return PyErr_Format(PyExc_ValueError, "k: %zd atoms are more than the %zd there are", k, n);
    Py_buffer start, gram, atoms, values, code;
    int result = -1;
    if (!get_buffer(o_start, &start, "start", "d", 8, n, 0)) return NULL;
    if (!get_buffer(o_gram, &gram, "gram", "d", 8, n * n, 0)) goto fail_gram;
    if (!get_buffer(o_atoms, &atoms, "atoms", "lq", 8, k, 0)) goto fail_atoms;
    if (!get_buffer(o_values, &values, "values", "d", 8, k, 0)) goto fail_values;
    if (!get_buffer(o_code, &code, "code", "d", 8, n, 1)) goto fail_code;
    if (!check_finite("start", &start, 8, n) || !check_finite("gram", &gram, 8, n * n) ||
        !check_finite("values", &values, 8, k))
        goto done;
    for (Py_ssize_t p = 0; p < k; p++) {
        Py_ssize_t atom = ((const Py_ssize_t *)atoms.buf)[p];
        if (atom < 0 || atom >= n) {
            PyErr_Format(PyExc_ValueError, "atoms: %zd is not an atom of %zd", atom, n);
            goto done;
        }
    }
    Scratch s;
    if (!scratch_alloc(&s, n, k)) {
        PyErr_NoMemory();
        goto done;
    }
    result = certified((const double *)start.buf, (const double *)gram.buf, n, (const Py_ssize_t *)atoms.buf,
                       (const double *)values.buf, k, penalty, &s);
    for (Py_ssize_t p = 0; result && p < s.size; p++) ((double *)code.buf)[s.support[p]] = s.exact[p];
    scratch_free(&s);
done:
    PyBuffer_Release(&code);
fail_code:
    PyBuffer_Release(&values);
fail_values:
    PyBuffer_Release(&atoms);
fail_atoms:
    PyBuffer_Release(&gram);
fail_gram:
    PyBuffer_Release(&start);
    if (result < 0) return NULL;
    return PyBool_FromLong(result);
}

static PyObject *py_omp(PyObject *self, PyObject *args) {
    PyObject *o_signals, *o_dict, *o_gram, *o_indices, *o_values;
    Py_ssize_t rows, dim, n, count;
    double dependence;
    if (!PyArg_ParseTuple(args, "OOOnnnndOO", &o_signals, &o_dict, &o_gram, &rows, &dim, &n, &count, &dependence,
                          &o_indices, &o_values))
        return NULL;
    if (!check_count("rows", rows, 0) || !check_count("dim", dim, 1) || !check_count("n", n, 1) ||
        !check_real("dependence", dependence) || !check_product("signals", rows, dim) ||
        !check_product("dictionary", dim, n) || !check_product("gram", n, n))
        return NULL;
    if (count < 1 || count > n) return PyErr_Format(PyExc_ValueError, "count: %zd is not in 1..%zd", count, n);
    if (!check_product("indices", rows, count)) return NULL;
    Py_buffer signals, dict, gram, indices, values;
    Py_ssize_t signal_size = get_real_buffer(o_signals, &signals, "signals", rows * dim, 0);
    if (!signal_size) return NULL;
    if (!get_buffer(o_dict, &dict, "dictionary", "d", 8, dim * n, 0)) goto fail_dict;
    if (!get_buffer(o_gram, &gram, "gram", "d", 8, n * n, 0)) goto fail_gram;
    if (!get_buffer(o_indices, &indices, "indices", "lq", 8, rows * count, 1)) goto fail_indices;
    Py_ssize_t value_size = get_real_buffer(o_values, &values, "values", rows * count, 1);
    if (!value_size) goto fail_values;
    if (!check_finite("dictionary", &dict, 8, dim * n)) goto fail_all; /* gram: see check_finite */
    Py_ssize_t bad_row = -1, lost_row = -1; /* lost: no atom to choose */
    size_t m = (size_t)n, l = (size_t)count;
    double *inverse = malloc(l * l * sizeof(double)), *c = malloc(m * sizeof(double)),
           *score = malloc(m * sizeof(double)), *w = malloc(l * sizeof(double)), *coords = malloc(l * sizeof(double)),
           *row_values = malloc(l * sizeof(double)), *block = malloc((size_t)(ROW_BLOCK * dim) * sizeof(double)),
           *starts = malloc(ROW_BLOCK * m * sizeof(double));
    if (inverse && c && score && w && coords && row_values && block && starts) {
        Py_BEGIN_ALLOW_THREADS
        bad_row = first_non_finite_row(signals.buf, signal_size, rows, dim);
        for (Py_ssize_t row0 = 0; bad_row < 0 && lost_row < 0 && row0 < rows; row0 += ROW_BLOCK) {
            Py_ssize_t real = block_correlations(signals.buf, signal_size, rows, row0, dim, (const double *)dict.buf,
                                                 n, block, starts);
            for (Py_ssize_t row = row0; row < row0 + real; row++) {
                if (!omp_row(starts + (row - row0) * n, (const double *)gram.buf, n, count, dependence, inverse, c,
                             score, w, coords, (int64_t *)indices.buf + row * count, row_values)) {
                    lost_row = row;
                    break;
                }
                for (Py_ssize_t p = 0; p < count; p++) {
                    if (value_size == 4)
                        ((float *)values.buf)[row * count + p] = (float)row_values[p];
                    else
                        ((double *)values.buf)[row * count + p] = row_values[p];
                }
            }
        }
        Py_END_ALLOW_THREADS
        if (bad_row >= 0)
            PyErr_Format(PyExc_ValueError, "signals: row %zd holds NaN or infinity", bad_row);
        else if (lost_row >= 0)
            PyErr_Format(PyExc_ValueError, "signals: row %zd has no atom to choose: its correlations with the "
                         "dictionary overflow to NaN", lost_row);
    } else {
        PyErr_NoMemory();
    }
    free(inverse); free(c); free(score); free(w); free(coords); free(row_values); free(block); free(starts);
fail_all:
    PyBuffer_Release(&values);
fail_values:
    PyBuffer_Release(&indices);
fail_indices:
    PyBuffer_Release(&gram);
fail_gram:
    PyBuffer_Release(&dict);
fail_dict:
    PyBuffer_Release(&signals);
    if (PyErr_Occurred()) return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"lasso_paths", py_lasso_paths, METH_VARARGS,
     "lasso_paths(signals, dictionary, gram, rows, n, dim, alpha, cap, max_steps, codes, penalties, done): each "
     "row's certified LASSO code (signals [rows, dim] float32 or float64, dictionary [dim, n] float64) into codes (float32 or float64, zeros in), the penalty it ends at into penalties (alpha "
     "in), whether it is certified into done. cap 0: no cap on the non-zeros."},
    {"lasso_certified", py_lasso_certified, METH_VARARGS,
     "lasso_certified(start, gram, n, atoms, values, k, penalty, code): one row's end certified (the exact solution "
     "on the support and signs of values, and KKT), written to code; False where it is not."},
    {"omp", py_omp, METH_VARARGS,
     "omp(signals, dictionary, gram, rows, dim, n, count, dependence, indices, values): each row's OMP code with "
     "count atoms (signals [rows, dim] float32 or float64, dictionary [dim, n] float64), their indices (int64) and coefficients (float32 or float64) "
     "into indices and values [rows, count]."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_rowwise",
                                    "Sparse coding one signal at a time: the LASSO path and OMP (rowwise's kernels).",
                                    -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__rowwise(void) { return PyModule_Create(&module); }

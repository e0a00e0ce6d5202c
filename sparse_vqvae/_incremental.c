/* PixelSNAIL one position at a time, in C: the CPU's form of ``incremental.IncrementalBackbone`` and of
 * ``PairHead.emit``'s per-slot work.
 *
 * Generating or decoding codes is sequential: a position's features need the codes of every position before
 * it. For one small image the work of a position - a few dozen matrix-vector products on 64 channels - cost
 * less in arithmetic than in PyTorch's per-call overhead (about a hundred calls a position). Here the
 * backbone's pass at a position is one call (``step``), writing its codes another (``write``), and each of a
 * slot's atom logits, level logits and state update one more (``atom_logits``, ``level_logits``, ``advance``).
 *
 * The arithmetic is fixed: float64, every sum in one written-out order (four-lane vectors, their lanes
 * reduced in a fixed tree), the file compiled without FMA contraction, each row computed on its own. An
 * image's features and logits therefore do not depend on the rows beside it, on the SIMD width the loader
 * picks, or on the thread count.
 *
 * Layout (``generation.CompiledBackbone`` builds it): every buffer is channels-last and zero-padded by the
 * kernel's half width q, so the causal window of a convolution at (y, x) is q whole rows of (2q + 1) C
 * contiguous numbers above it and one partial row to its left (and the centre, unless strict); the weights
 * keep only the taps the mask keeps, in that order. Attention keeps its keys and values [heads, positions, C/heads]
 * per row (head-major: a head's scan over the positions reads contiguous numbers).
 *
 * Speed (docs/photo_codec.md, "Prior-coded speed"): a photograph's position costs ~0.1 ms of convolutions and
 * ~120 ns for every position it attends to (attention: per head, a 16-number dot, an exp and a 16-number weighted
 * sum, over 2 layers x 4 heads), so with attention over every earlier position the late positions of a 1 MP map
 * dominate; a prior with ``attention_rows`` attends to a window of rows and costs the same at every position. From
 * SPLIT_POSITION keys on, half the heads run in a second thread (``threads``); the prior coder's encoder computes
 * the head's logits of known codes in threads (``known_logits``, without the GIL).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <unistd.h>

#include "_buffers.h"

typedef double vector4 __attribute__((vector_size(32), aligned(8))); /* 4 doubles (GCC/Clang vector extension) */

#if defined(__x86_64__) && defined(__GNUC__)
#define VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define VECTOR_CLONES
#endif

/* w . x over count numbers: four vectors of partial sums over blocks of 16, reduced (a0 + a1) + (a2 + a3), then
 * lanes (0 + 1) + (2 + 3), then the tail in order - the same order on every machine. */
static inline double dot(const double *restrict w, const double *restrict x, Py_ssize_t count) {
    vector4 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
    Py_ssize_t i = 0;
    for (; i + 16 <= count; i += 16) {
        vector4 w0, w1, w2, w3, x0, x1, x2, x3;
        memcpy(&w0, w + i, sizeof w0); memcpy(&w1, w + i + 4, sizeof w1);
        memcpy(&w2, w + i + 8, sizeof w2); memcpy(&w3, w + i + 12, sizeof w3);
        memcpy(&x0, x + i, sizeof x0); memcpy(&x1, x + i + 4, sizeof x1);
        memcpy(&x2, x + i + 8, sizeof x2); memcpy(&x3, x + i + 12, sizeof x3);
        a0 += w0 * x0; a1 += w1 * x1; a2 += w2 * x2; a3 += w3 * x3;
    }
    vector4 s = (a0 + a1) + (a2 + a3);
    double sum = (s[0] + s[1]) + (s[2] + s[3]);
    for (; i < count; i++) sum += w[i] * x[i];
    return sum;
}

/* out [rows] = weight [rows, count] x + bias. */
VECTOR_CLONES
static void affine(const double *restrict weight, const double *restrict bias, const double *restrict x,
                   Py_ssize_t rows, Py_ssize_t count, double *restrict out) {
    for (Py_ssize_t o = 0; o < rows; o++) out[o] = dot(weight + o * count, x, count) + bias[o];
}

static inline double elu(double v) { return v > 0 ? v : expm1(v); }

/* A plan's second thread (``threads``): attention's later heads of one row at one position, while the calling thread
 * computes the first ones - each head's sums as one thread computes them, into its own scores and outputs, so the
 * same bits with one thread or two. */
typedef struct {
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t wake, done;
    pid_t pid;                /* the process that started it: a forked child has no such thread */
    int pending, quit;
    Py_ssize_t a, b, p, from; /* the work: heads from .. heads - 1 of attention a, row b, position p */
} Helper;

/* Windows of fewer positions than this attend over too few keys for a second thread to pay for its wake-up (~10 us). */
#define SPLIT_POSITION 1024

typedef struct {
    Py_ssize_t n, channels, height, width, in_radius, radius, layers, per_block, heads, num_atoms, coef_levels, slots;
    Py_ssize_t attention_rows; /* > 0: attention over the current row and this many above (``window_start``); 0: all */
    int threads; /* 2: attention's heads split over a second thread from SPLIT_POSITION on (``threads``) */
    Helper *helper;
    int has_position, has_condition;
    Py_buffer views[17];
    int held;
    /* the weights (read-only) */
    const double *atom_table, *level_table, *in_weight, *in_bias, *position, *first_weight, *first_bias,
        *second_weight, *second_bias, *conditions, *qkv_weight, *qkv_bias, *out_weight, *out_bias;
    /* the state (written) */
    double *embedded, *inputs, *hidden, *keys, *values;
    /* scratch */
    double *window, *h, *t, *gate, *qkv, *attended, *scores;
} Plan;

#define PLAN_NAME "sparse_vqvae._incremental.Plan"

static void plan_free(PyObject *capsule) {
    Plan *plan = PyCapsule_GetPointer(capsule, PLAN_NAME);
    if (!plan) return;
    Helper *helper = plan->helper;
    if (helper && helper->pid == getpid()) {
        pthread_mutex_lock(&helper->lock);
        helper->quit = 1;
        pthread_cond_signal(&helper->wake);
        pthread_mutex_unlock(&helper->lock);
        pthread_join(helper->thread, NULL);
        pthread_mutex_destroy(&helper->lock);
        pthread_cond_destroy(&helper->wake);
        pthread_cond_destroy(&helper->done);
        free(helper);
    }
    for (int i = 0; i < plan->held; i++) PyBuffer_Release(&plan->views[i]);
    free(plan->window);
    free(plan);
}

static double no_numbers[1]; /* what an empty array's data points to: an exporter may give NULL for it */

/* The most a plan's or a head's dimension may be: no model comes near it, and every size computed from them (a
 * product of a few, ``items``) is then checked for overflow instead of wrapping to a size an empty array has. */
#define MAX_DIMENSION ((Py_ssize_t)1 << 24)

/* a x b x c x d float64 items (each factor >= 0); -1 where their bytes overflow a Py_ssize_t. */
static Py_ssize_t items(Py_ssize_t a, Py_ssize_t b, Py_ssize_t c, Py_ssize_t d) {
    Py_ssize_t r;
    if (__builtin_mul_overflow(a, b, &r) || __builtin_mul_overflow(r, c, &r) || __builtin_mul_overflow(r, d, &r) ||
        r > PY_SSIZE_T_MAX / (Py_ssize_t)sizeof(double))
        return -1;
    return r;
}

/* The next array of ``arrays`` (the views[*held]-th) as float64 [count], C-contiguous (writable where asked), its
 * view kept in ``views`` until the plan is freed; NULL with an error. */
static double *take(Py_buffer *views, int *held, PyObject *arrays, const char *name, Py_ssize_t count, int writable) {
    Py_buffer *view = &views[*held];
    if (count < 0) {
        PyErr_Format(PyExc_ValueError, "%s: the dimensions make more items than memory can address", name);
        return NULL;
    }
    if (!get_buffer(PyTuple_GET_ITEM(arrays, *held), view, name, "d", 8, count, writable)) return NULL;
    (*held)++;
    return view->buf ? view->buf : no_numbers;
}

static PyObject *py_plan(PyObject *self, PyObject *args) {
    PyObject *arrays;
    Plan *plan = calloc(1, sizeof(Plan));
    if (!plan) return PyErr_NoMemory();
    if (!PyArg_ParseTuple(args, "O!(nnnnnnnnnnnnnii)", &PyTuple_Type, &arrays, &plan->n, &plan->channels,
                          &plan->height, &plan->width, &plan->in_radius, &plan->radius, &plan->layers,
                          &plan->per_block, &plan->heads, &plan->num_atoms, &plan->coef_levels, &plan->slots,
                          &plan->attention_rows, &plan->has_position, &plan->has_condition)) {
        free(plan);
        return NULL;
    }
    PyObject *capsule = PyCapsule_New(plan, PLAN_NAME, plan_free);
    if (!capsule) {
        free(plan);
        return NULL;
    }
    Py_ssize_t n = plan->n, c = plan->channels, hw = plan->height * plan->width, layers = plan->layers;
    Py_ssize_t attentions = plan->per_block > 0 ? layers / plan->per_block : 0;
    Py_ssize_t qi = plan->in_radius, q = plan->radius;
    Py_ssize_t in_taps = qi * (2 * qi + 1) + qi, taps = q * (2 * q + 1) + q + 1;
    Py_ssize_t padded_in = (plan->height + 2 * qi) * (plan->width + 2 * qi), padded = (plan->height + 2 * q) * (plan->width + 2 * q);
    Py_ssize_t dims[] = {n, c, plan->height, plan->width, qi, q, layers, plan->per_block, plan->heads,
                         plan->num_atoms, plan->coef_levels, plan->slots};
    for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++)
        if (dims[i] < 1 || dims[i] > MAX_DIMENSION) {
            PyErr_Format(PyExc_ValueError, "plan: dimension %zd (n, channels, height, width, in_radius, radius, "
                         "layers, per_block, heads, num_atoms, coef_levels, slots) is %zd, not in 1..%zd",
                         (Py_ssize_t)i, dims[i], MAX_DIMENSION);
            goto fail;
        }
    if (plan->attention_rows < 0) {
        PyErr_Format(PyExc_ValueError, "plan: attention_rows is %zd, not 0 (all) or more", plan->attention_rows);
        goto fail;
    }
    if (layers % plan->per_block || c % plan->heads) {
        PyErr_SetString(PyExc_ValueError, "plan: inconsistent dimensions (per_block must divide layers, heads channels)");
        goto fail;
    }
    if (PyTuple_GET_SIZE(arrays) != 17) {
        PyErr_Format(PyExc_ValueError, "plan: expected 17 arrays, got %zd", PyTuple_GET_SIZE(arrays));
        goto fail;
    }
    /* Each dimension below 2^24: hw, the taps and the padded areas below 2^51, no sum overflows; the products of
     * more than two go through ``items``. */
    if (!(plan->atom_table = take(plan->views, &plan->held, arrays, "atom_table", (plan->num_atoms + 1) * c, 0)) ||
        !(plan->level_table = take(plan->views, &plan->held, arrays, "level_table", plan->coef_levels * c, 0)) ||
        !(plan->in_weight = take(plan->views, &plan->held, arrays, "in_weight", items(c, in_taps, c, 1), 0)) ||
        !(plan->in_bias = take(plan->views, &plan->held, arrays, "in_bias", c, 0)) ||
        !(plan->position = take(plan->views, &plan->held, arrays, "position", plan->has_position ? items(hw, c, 1, 1) : 0, 0)) ||
        !(plan->first_weight = take(plan->views, &plan->held, arrays, "first_weight", items(layers, c, taps, c), 0)) ||
        !(plan->first_bias = take(plan->views, &plan->held, arrays, "first_bias", layers * c, 0)) ||
        !(plan->second_weight = take(plan->views, &plan->held, arrays, "second_weight", items(layers, 2 * c, taps, c), 0)) ||
        !(plan->second_bias = take(plan->views, &plan->held, arrays, "second_bias", layers * 2 * c, 0)) ||
        !(plan->conditions = take(plan->views, &plan->held, arrays, "conditions", plan->has_condition ? items(layers, n, hw, 2 * c) : 0, 0)) ||
        !(plan->qkv_weight = take(plan->views, &plan->held, arrays, "qkv_weight", items(attentions, 3 * c, c, 1), 0)) ||
        !(plan->qkv_bias = take(plan->views, &plan->held, arrays, "qkv_bias", attentions * 3 * c, 0)) ||
        !(plan->out_weight = take(plan->views, &plan->held, arrays, "out_weight", items(attentions, c, c, 1), 0)) ||
        !(plan->out_bias = take(plan->views, &plan->held, arrays, "out_bias", attentions * c, 0)) ||
        !(plan->embedded = take(plan->views, &plan->held, arrays, "embedded", items(n, padded_in, c, 1), 1)) ||
        !(plan->inputs = take(plan->views, &plan->held, arrays, "inputs", items(layers, n, padded, c), 1)) ||
        !(plan->hidden = take(plan->views, &plan->held, arrays, "hidden", items(layers, n, padded, c), 1)))
        goto fail;
    /* keys and values live after the scratch: one allocation (every term below 2^60 items: hidden's size bounds kv,
     * second_weight's the window) */
    size_t window = (size_t)((in_taps > taps ? in_taps : taps) * c), kv = (size_t)(attentions * n * hw * c);
    size_t scratch = window + c + c + 2 * c + 3 * c + c + (size_t)(plan->heads * hw);
    plan->window = calloc(scratch + 2 * kv, sizeof(double));
    if (!plan->window) {
        PyErr_NoMemory();
        goto fail;
    }
    plan->h = plan->window + window;
    plan->t = plan->h + c;
    plan->gate = plan->t + c;
    plan->qkv = plan->gate + 2 * c;
    plan->attended = plan->qkv + 3 * c;
    plan->scores = plan->attended + c;
    plan->keys = plan->scores + plan->heads * hw;
    plan->values = plan->keys + kv;
    return capsule;
fail:
    Py_DECREF(capsule);
    return NULL;
}

/* The causal window of a convolution of half width q at (y, x) from row ``b``'s padded buffer into ``window``:
 * q whole rows above, then the row's taps left of the centre (and the centre unless ``strict``); returns its
 * length. */
static Py_ssize_t gather(const double *buffer, Py_ssize_t width, Py_ssize_t c, Py_ssize_t q, Py_ssize_t y, Py_ssize_t x,
                         int strict, double *window) {
    Py_ssize_t stride = (width + 2 * q) * c, row = (2 * q + 1) * c, length = 0;
    for (Py_ssize_t dy = 0; dy < q; dy++, length += row)
        memcpy(window + length, buffer + (y + dy) * stride + x * c, (size_t)row * sizeof(double));
    Py_ssize_t left = (strict ? q : q + 1) * c;
    memcpy(window + length, buffer + (y + q) * stride + x * c, (size_t)left * sizeof(double));
    return length + left;
}

/* The first position that position p attends to: the start of the row attention_rows above its own (0: all). */
static Py_ssize_t window_start(const Plan *plan, Py_ssize_t p) {
    Py_ssize_t row = p / plan->width - plan->attention_rows;
    return plan->attention_rows && row > 0 ? row * plan->width : 0;
}

/* Heads from .. to - 1 of attention a for row b at position p: softmax over its window's positions (up to p) of the
 * query's scores, the values' weighted sum into ``attended`` (each head its own slice of it and of the scores). */
static void attend_heads(Plan *plan, Py_ssize_t a, Py_ssize_t b, Py_ssize_t p, Py_ssize_t from, Py_ssize_t to) {
    Py_ssize_t c = plan->channels, hw = plan->height * plan->width, dim = c / plan->heads, first = window_start(plan, p);
    const double *keys = plan->keys + (a * plan->n + b) * hw * c, *values = plan->values + (a * plan->n + b) * hw * c;
    double *qkv = plan->qkv, *scores = plan->scores, *attended = plan->attended;
    double scale = 1.0 / sqrt((double)dim);
    for (Py_ssize_t head = from; head < to; head++) {
        const double *query = qkv + head * dim;
        double *score = scores + head * hw, top = -INFINITY, total = 0;
        for (Py_ssize_t j = first; j <= p; j++) {
            score[j] = dot(query, keys + (head * hw + j) * dim, dim) * scale;
            if (score[j] > top) top = score[j];
        }
        for (Py_ssize_t j = first; j <= p; j++) total += (score[j] = exp(score[j] - top));
        double *out = attended + head * dim;
        for (Py_ssize_t i = 0; i < dim; i++) out[i] = 0;
        for (Py_ssize_t j = first; j <= p; j++) {
            const double *value = values + (head * hw + j) * dim;
            double weight = score[j] / total;
            for (Py_ssize_t i = 0; i < dim; i++) out[i] += weight * value[i];
        }
    }
}

static void *helper_main(void *arg) {
    Plan *plan = arg;
    Helper *helper = plan->helper;
    pthread_mutex_lock(&helper->lock);
    for (;;) {
        while (!helper->pending && !helper->quit) pthread_cond_wait(&helper->wake, &helper->lock);
        if (helper->quit) break;
        Py_ssize_t a = helper->a, b = helper->b, p = helper->p, from = helper->from;
        pthread_mutex_unlock(&helper->lock);
        attend_heads(plan, a, b, p, from, plan->heads);
        pthread_mutex_lock(&helper->lock);
        helper->pending = 0;
        pthread_cond_signal(&helper->done);
    }
    pthread_mutex_unlock(&helper->lock);
    return NULL;
}

/* The plan's second thread, started on first use; NULL where it cannot run (one thread, one head, a forked child, a
 * failed start: then the calling thread computes every head). */
static Helper *helper_of(Plan *plan) {
    if (plan->threads < 2 || plan->heads < 2) return NULL;
    if (plan->helper) return plan->helper->pid == getpid() ? plan->helper : NULL;
    Helper *helper = calloc(1, sizeof(Helper));
    if (!helper) {
        plan->threads = 1;
        return NULL;
    }
    helper->pid = getpid();
    pthread_mutex_init(&helper->lock, NULL);
    pthread_cond_init(&helper->wake, NULL);
    pthread_cond_init(&helper->done, NULL);
    plan->helper = helper;
    if (pthread_create(&helper->thread, NULL, helper_main, plan)) {
        pthread_mutex_destroy(&helper->lock);
        pthread_cond_destroy(&helper->wake);
        pthread_cond_destroy(&helper->done);
        free(helper);
        plan->helper = NULL;
        plan->threads = 1;
        return NULL;
    }
    return helper;
}

/* Causal attention of one row at position p: its query, key and value from h, softmax over its window per head,
 * h += out(attended); from SPLIT_POSITION keys on, the later half of the heads in the plan's second thread. */
static void attend(Plan *plan, Py_ssize_t a, Py_ssize_t b, Py_ssize_t p, double *h) {
    Py_ssize_t c = plan->channels, hw = plan->height * plan->width, heads = plan->heads;
    double *keys = plan->keys + (a * plan->n + b) * hw * c, *values = plan->values + (a * plan->n + b) * hw * c;
    double *qkv = plan->qkv, *attended = plan->attended;
    affine(plan->qkv_weight + a * 3 * c * c, plan->qkv_bias + a * 3 * c, h, 3 * c, c, qkv);
    for (Py_ssize_t head = 0, dim = c / heads; head < heads; head++) { /* head-major: each head's keys contiguous */
        memcpy(keys + (head * hw + p) * dim, qkv + c + head * dim, (size_t)dim * sizeof(double));
        memcpy(values + (head * hw + p) * dim, qkv + 2 * c + head * dim, (size_t)dim * sizeof(double));
    }
    Helper *helper = p - window_start(plan, p) >= SPLIT_POSITION ? helper_of(plan) : NULL;
    if (helper) {
        Py_ssize_t half = heads / 2;
        pthread_mutex_lock(&helper->lock);
        helper->a = a, helper->b = b, helper->p = p, helper->from = half, helper->pending = 1;
        pthread_cond_signal(&helper->wake);
        pthread_mutex_unlock(&helper->lock);
        attend_heads(plan, a, b, p, 0, half);
        pthread_mutex_lock(&helper->lock);
        while (helper->pending) pthread_cond_wait(&helper->done, &helper->lock);
        pthread_mutex_unlock(&helper->lock);
    } else {
        attend_heads(plan, a, b, p, 0, heads);
    }
    double *change = plan->t;
    affine(plan->out_weight + a * c * c, plan->out_bias + a * c, attended, c, c, change);
    for (Py_ssize_t i = 0; i < c; i++) h[i] += change[i];
}

/* Row b's features at (y, x) into out [C]. */
static void step_row(Plan *plan, Py_ssize_t b, Py_ssize_t y, Py_ssize_t x, double *out) {
    Py_ssize_t c = plan->channels, qi = plan->in_radius, q = plan->radius, height = plan->height, width = plan->width;
    Py_ssize_t padded_in = (height + 2 * qi) * (width + 2 * qi) * c, padded = (height + 2 * q) * (width + 2 * q) * c;
    Py_ssize_t stride = (width + 2 * q) * c, p = y * width + x;
    double *h = plan->h, *t = plan->t, *gate = plan->gate, *window = plan->window;
    Py_ssize_t length = gather(plan->embedded + b * padded_in, width, c, qi, y, x, 1, window);
    affine(plan->in_weight, plan->in_bias, window, c, length, h);
    if (plan->has_position)
        for (Py_ssize_t i = 0; i < c; i++) h[i] += plan->position[p * c + i];
    for (Py_ssize_t l = 0; l < plan->layers; l++) {
        double *inputs = plan->inputs + (l * plan->n + b) * padded, *hidden = plan->hidden + (l * plan->n + b) * padded;
        double *here = inputs + (y + q) * stride + (x + q) * c;
        for (Py_ssize_t i = 0; i < c; i++) here[i] = elu(h[i]);
        length = gather(inputs, width, c, q, y, x, 0, window);
        affine(plan->first_weight + l * c * length, plan->first_bias + l * c, window, c, length, t);
        here = hidden + (y + q) * stride + (x + q) * c;
        for (Py_ssize_t i = 0; i < c; i++) here[i] = elu(t[i]);
        gather(hidden, width, c, q, y, x, 0, window);
        affine(plan->second_weight + l * 2 * c * length, plan->second_bias + l * 2 * c, window, 2 * c, length, gate);
        if (plan->has_condition) {
            const double *term = plan->conditions + ((l * plan->n + b) * height * width + p) * 2 * c;
            for (Py_ssize_t i = 0; i < 2 * c; i++) gate[i] += term[i];
        }
        for (Py_ssize_t i = 0; i < c; i++) h[i] += gate[i] * (1.0 / (1.0 + exp(-gate[c + i])));
        if ((l + 1) % plan->per_block == 0) attend(plan, l / plan->per_block, b, p, h);
    }
    for (Py_ssize_t i = 0; i < c; i++) out[i] = elu(h[i]);
}

static Plan *get_plan(PyObject *capsule) { return PyCapsule_GetPointer(capsule, PLAN_NAME); }

/* threads(plan, count): 2 or more - attention's heads split over a second thread at later positions (same bits);
 * 1 - the calling thread only. */
static PyObject *py_threads(PyObject *self, PyObject *args) {
    PyObject *capsule;
    Py_ssize_t count;
    if (!PyArg_ParseTuple(args, "On", &capsule, &count)) return NULL;
    Plan *plan = get_plan(capsule);
    if (!plan) return NULL;
    if (count < 1) return PyErr_Format(PyExc_ValueError, "threads must be at least 1, got %zd", count);
    plan->threads = count > 1 ? 2 : 1;
    Py_RETURN_NONE;
}

static int check_position(Plan *plan, Py_ssize_t y, Py_ssize_t x) {
    if (y < 0 || y >= plan->height || x < 0 || x >= plan->width) {
        PyErr_Format(PyExc_IndexError, "position (%zd, %zd) is outside the %zdx%zd map", y, x, plan->height,
                     plan->width);
        return 0;
    }
    return 1;
}

static PyObject *py_step(PyObject *self, PyObject *args) {
    PyObject *capsule, *o_out;
    Py_ssize_t y, x;
    if (!PyArg_ParseTuple(args, "OnnO", &capsule, &y, &x, &o_out)) return NULL;
    Plan *plan = get_plan(capsule);
    if (!plan || !check_position(plan, y, x)) return NULL;
    Py_buffer out;
    if (!get_buffer(o_out, &out, "out", "d", 8, plan->n * plan->channels, 1)) return NULL;
    for (Py_ssize_t b = 0; b < plan->n; b++) step_row(plan, b, y, x, (double *)out.buf + b * plan->channels);
    PyBuffer_Release(&out);
    Py_RETURN_NONE;
}

/* Embed the codes of (y, x) - atoms and levels [n, slots] int64, atom -1 for an empty slot - into the input
 * buffer: the sum over present slots of the atom's and the level's embeddings. */
static PyObject *py_write(PyObject *self, PyObject *args) {
    PyObject *capsule, *o_atoms, *o_levels;
    Py_ssize_t y, x;
    if (!PyArg_ParseTuple(args, "OnnOO", &capsule, &y, &x, &o_atoms, &o_levels)) return NULL;
    Plan *plan = get_plan(capsule);
    if (!plan || !check_position(plan, y, x)) return NULL;
    Py_buffer atoms, levels;
    Py_ssize_t count = plan->n * plan->slots, c = plan->channels, qi = plan->in_radius;
    if (!get_buffer(o_atoms, &atoms, "atoms", "lq", 8, count, 0)) return NULL;
    if (!get_buffer(o_levels, &levels, "levels", "lq", 8, count, 0)) {
        PyBuffer_Release(&atoms);
        return NULL;
    }
    const int64_t *a = atoms.buf, *l = levels.buf;
    int ok = 1;
    for (Py_ssize_t i = 0; ok && i < count; i++) {
        if (a[i] < -1 || a[i] >= plan->num_atoms || l[i] < 0 || l[i] >= plan->coef_levels) {
            PyErr_Format(PyExc_ValueError, "the pair (%lld, %lld) is outside the prior's %zd atoms and %zd levels",
                         (long long)a[i], (long long)l[i], plan->num_atoms, plan->coef_levels);
            ok = 0;
        }
    }
    Py_ssize_t stride = (plan->width + 2 * qi) * c, padded = (plan->height + 2 * qi) * stride;
    for (Py_ssize_t b = 0; ok && b < plan->n; b++) {
        double *here = plan->embedded + b * padded + (y + qi) * stride + (x + qi) * c;
        for (Py_ssize_t i = 0; i < c; i++) here[i] = 0;
        for (Py_ssize_t k = 0; k < plan->slots; k++) {
            int64_t atom = a[b * plan->slots + k];
            const double *row = plan->atom_table + (atom < 0 ? plan->num_atoms : atom) * c;
            const double *level = plan->level_table + l[b * plan->slots + k] * c;
            for (Py_ssize_t i = 0; i < c; i++) here[i] += atom < 0 ? row[i] : row[i] + level[i];
        }
    }
    PyBuffer_Release(&atoms);
    PyBuffer_Release(&levels);
    if (!ok) return NULL;
    Py_RETURN_NONE;
}

/* The pair head (``PairHead``): per slot, the atom logits (masked as ``PairHead._atom_logits`` masks them), the
 * level logits given the atom, and the state's advance past the pair - for each row on its own. */
typedef struct {
    Py_ssize_t channels, num_atoms, coef_levels, slots, stage_atoms;
    int variable;
    Py_buffer views[11];
    int held;
    const double *atom_weight, *atom_bias, *atom_in, *level_weight, *level_bias, *pair_atom, *pair_level,
        *update_weight, *update_bias, *update_out_weight, *update_out_bias;
} Head;

#define HEAD_NAME "sparse_vqvae._incremental.Head"

static void head_free(PyObject *capsule) {
    Head *head = PyCapsule_GetPointer(capsule, HEAD_NAME);
    if (!head) return;
    for (int i = 0; i < head->held; i++) PyBuffer_Release(&head->views[i]);
    free(head);
}

static PyObject *py_head(PyObject *self, PyObject *args) {
    PyObject *arrays;
    Head *head = calloc(1, sizeof(Head));
    if (!head) return PyErr_NoMemory();
    if (!PyArg_ParseTuple(args, "O!(nnnnni)", &PyTuple_Type, &arrays, &head->channels, &head->num_atoms,
                          &head->coef_levels, &head->slots, &head->stage_atoms, &head->variable)) {
        free(head);
        return NULL;
    }
    PyObject *capsule = PyCapsule_New(head, HEAD_NAME, head_free);
    if (!capsule) {
        free(head);
        return NULL;
    }
    Py_ssize_t c = head->channels, n = head->num_atoms, levels = head->coef_levels;
    /* Each dimension below 2^24 (``MAX_DIMENSION``): every size below is then a product of two, below 2^49. */
    int in_range = c >= 1 && c <= MAX_DIMENSION && n >= 1 && n <= MAX_DIMENSION && levels >= 1 &&
                   levels <= MAX_DIMENSION && head->slots >= 1 && head->slots <= MAX_DIMENSION &&
                   head->stage_atoms >= 0 && head->stage_atoms <= MAX_DIMENSION &&
                   (head->variable == 0 || head->variable == 1);
    int staged_right = !head->stage_atoms || head->stage_atoms * head->slots == n;
    if (!in_range || !staged_right || PyTuple_GET_SIZE(arrays) != 11) {
        PyErr_SetString(PyExc_ValueError, "head: inconsistent dimensions or not 11 arrays");
        goto fail;
    }
    Py_buffer *v = head->views;
    int *held = &head->held;
    if (!(head->atom_weight = take(v, held, arrays, "atom_weight", (n + head->variable) * c, 0)) ||
        !(head->atom_bias = take(v, held, arrays, "atom_bias", n + head->variable, 0)) ||
        !(head->atom_in = take(v, held, arrays, "atom_in", n * c, 0)) ||
        !(head->level_weight = take(v, held, arrays, "level_weight", levels * c, 0)) ||
        !(head->level_bias = take(v, held, arrays, "level_bias", levels, 0)) ||
        !(head->pair_atom = take(v, held, arrays, "pair_atom", n * c, 0)) ||
        !(head->pair_level = take(v, held, arrays, "pair_level", levels * c, 0)) ||
        !(head->update_weight = take(v, held, arrays, "update_weight", c * c, 0)) ||
        !(head->update_bias = take(v, held, arrays, "update_bias", c, 0)) ||
        !(head->update_out_weight = take(v, held, arrays, "update_out_weight", c * c, 0)) ||
        !(head->update_out_bias = take(v, held, arrays, "update_out_bias", c, 0)))
        goto fail;
    return capsule;
fail:
    Py_DECREF(capsule);
    return NULL;
}

/* ``rows`` rows of ``width`` float64 numbers: 0 with a ValueError where rows is negative or their bytes overflow. */
static int check_rows(Py_ssize_t rows, Py_ssize_t width) {
    if (rows < 0) {
        PyErr_Format(PyExc_ValueError, "rows must be at least 0, got %zd", rows);
        return 0;
    }
    if (items(rows, width, 1, 1) < 0) {
        PyErr_Format(PyExc_ValueError, "rows: %zd rows of %zd numbers are more than memory can address", rows, width);
        return 0;
    }
    return 1;
}

static int check_indices(const int64_t *values, Py_ssize_t count, Py_ssize_t limit, const char *what) {
    for (Py_ssize_t i = 0; i < count; i++)
        if (values[i] < 0 || values[i] >= limit) {
            PyErr_Format(PyExc_ValueError, "%s %lld is outside the head's %zd", what, (long long)values[i], limit);
            return 0;
        }
    return 1;
}

/* One row's atom logits at ``slot`` (``atom_logits``) into logits [width]. */
static void atom_logits_row(const Head *head, const double *state, int64_t above, Py_ssize_t slot, Py_ssize_t last,
                            double *logits) {
    Py_ssize_t c = head->channels, n = head->num_atoms;
    if (head->stage_atoms) { /* the slot's rank's M atoms, then END (the last row) where counts vary: not masked */
        Py_ssize_t first = slot * head->stage_atoms;
        affine(head->atom_weight + first * c, head->atom_bias + first, state, head->stage_atoms, c, logits);
        if (head->variable) affine(head->atom_weight + n * c, head->atom_bias + n, state, 1, c, logits + head->stage_atoms);
        return;
    }
    affine(head->atom_weight, head->atom_bias, state, n + head->variable, c, logits);
    if (slot == 0 && (head->variable || head->slots == 1)) return; /* not masked */
    for (Py_ssize_t i = 0; i < n; i++)
        if (i <= above || i > last) logits[i] = -INFINITY;
}

/* One row's state after emitting (atom, level): state + update(pair_atom[atom] + pair_level[level]) into next [C];
 * scratch [3 C]. */
static void advance_row(const Head *head, const double *state, int64_t atom, int64_t level, double *scratch,
                        double *next) {
    Py_ssize_t c = head->channels;
    double *pair = scratch, *hidden = scratch + c, *change = scratch + 2 * c;
    const double *a = head->pair_atom + atom * c, *l = head->pair_level + level * c;
    for (Py_ssize_t i = 0; i < c; i++) pair[i] = a[i] + l[i];
    affine(head->update_weight, head->update_bias, pair, c, c, hidden);
    for (Py_ssize_t i = 0; i < c; i++) hidden[i] = elu(hidden[i]);
    affine(head->update_out_weight, head->update_out_bias, hidden, c, c, change);
    for (Py_ssize_t i = 0; i < c; i++) next[i] = state[i] + change[i];
}

/* atom_logits(head, state [rows, C], previous [rows] int64, slot, last, out [rows, width]): the logits over the
 * slot's atoms, or over its rank's M atoms (+ END where counts vary); an atom not above the previous one, or above
 * last (PairHead.last_atom: the room the remaining slots of a fixed count need), gets -inf - codes.atom_window. */
static PyObject *py_atom_logits(PyObject *self, PyObject *args) {
    PyObject *capsule, *o_state, *o_previous, *o_out;
    Py_ssize_t rows, slot, last;
    if (!PyArg_ParseTuple(args, "OOOnnnO", &capsule, &o_state, &o_previous, &rows, &slot, &last, &o_out)) return NULL;
    Head *head = PyCapsule_GetPointer(capsule, HEAD_NAME);
    if (!head) return NULL;
    if (slot < 0 || slot >= head->slots) return PyErr_Format(PyExc_IndexError, "slot %zd of %zd", slot, head->slots);
    Py_ssize_t c = head->channels, n = head->num_atoms;
    Py_ssize_t width = (head->stage_atoms ? head->stage_atoms : n) + head->variable;
    if (!check_rows(rows, c > width ? c : width)) return NULL;
    Py_buffer state, previous, out;
    if (!get_buffer(o_state, &state, "state", "d", 8, rows * c, 0)) return NULL;
    if (!get_buffer(o_previous, &previous, "previous", "lq", 8, rows, 0)) goto fail_previous;
    if (!get_buffer(o_out, &out, "out", "d", 8, rows * width, 1)) goto fail_out;
    if (last < 0 || last >= n) return PyErr_Format(PyExc_ValueError, "last atom %zd is outside the head's %zd", last, n);
    for (Py_ssize_t row = 0; row < rows; row++)
        atom_logits_row(head, (const double *)state.buf + row * c, ((const int64_t *)previous.buf)[row], slot, last,
                        (double *)out.buf + row * width);
    PyBuffer_Release(&out);
fail_out:
    PyBuffer_Release(&previous);
fail_previous:
    PyBuffer_Release(&state);
    if (PyErr_Occurred()) return NULL;
    Py_RETURN_NONE;
}

/* level_logits(head, state [rows, C], atoms [rows] int64, out [rows, levels]): level_out(state + atom_in[atom]). */
static PyObject *py_level_logits(PyObject *self, PyObject *args) {
    PyObject *capsule, *o_state, *o_atoms, *o_out;
    Py_ssize_t rows;
    if (!PyArg_ParseTuple(args, "OOOnO", &capsule, &o_state, &o_atoms, &rows, &o_out)) return NULL;
    Head *head = PyCapsule_GetPointer(capsule, HEAD_NAME);
    if (!head) return NULL;
    Py_ssize_t c = head->channels, levels = head->coef_levels;
    if (!check_rows(rows, c > levels ? c : levels)) return NULL;
    Py_buffer state, atoms, out;
    if (!get_buffer(o_state, &state, "state", "d", 8, rows * c, 0)) return NULL;
    if (!get_buffer(o_atoms, &atoms, "atoms", "lq", 8, rows, 0)) goto fail_atoms;
    if (!get_buffer(o_out, &out, "out", "d", 8, rows * levels, 1)) goto fail_out;
    const int64_t *atom = atoms.buf;
    double *x = malloc((size_t)c * sizeof(double));
    if (!x) {
        PyErr_NoMemory();
    } else if (check_indices(atom, rows, head->num_atoms, "atom")) {
        for (Py_ssize_t row = 0; row < rows; row++) {
            const double *h = (const double *)state.buf + row * c, *embedded = head->atom_in + atom[row] * c;
            for (Py_ssize_t i = 0; i < c; i++) x[i] = h[i] + embedded[i];
            affine(head->level_weight, head->level_bias, x, levels, c, (double *)out.buf + row * levels);
        }
    }
    free(x);
    PyBuffer_Release(&out);
fail_out:
    PyBuffer_Release(&atoms);
fail_atoms:
    PyBuffer_Release(&state);
    if (PyErr_Occurred()) return NULL;
    Py_RETURN_NONE;
}

/* advance(head, state [rows, C], atoms [rows], levels [rows] int64, out [rows, C]): the state after emitting the pair,
 * state + update(pair_atom[atom] + pair_level[level]), update = linear, ELU, linear. */
static PyObject *py_advance(PyObject *self, PyObject *args) {
    PyObject *capsule, *o_state, *o_atoms, *o_levels, *o_out;
    Py_ssize_t rows;
    if (!PyArg_ParseTuple(args, "OOOOnO", &capsule, &o_state, &o_atoms, &o_levels, &rows, &o_out)) return NULL;
    Head *head = PyCapsule_GetPointer(capsule, HEAD_NAME);
    if (!head) return NULL;
    Py_ssize_t c = head->channels;
    if (!check_rows(rows, c)) return NULL;
    Py_buffer state, atoms, levels, out;
    if (!get_buffer(o_state, &state, "state", "d", 8, rows * c, 0)) return NULL;
    if (!get_buffer(o_atoms, &atoms, "atoms", "lq", 8, rows, 0)) goto fail_atoms;
    if (!get_buffer(o_levels, &levels, "levels", "lq", 8, rows, 0)) goto fail_levels;
    if (!get_buffer(o_out, &out, "out", "d", 8, rows * c, 1)) goto fail_out;
    const int64_t *atom = atoms.buf, *level = levels.buf;
    double *pair = malloc(3 * (size_t)c * sizeof(double));
    if (!pair) {
        PyErr_NoMemory();
    } else if (check_indices(atom, rows, head->num_atoms, "atom") &&
               check_indices(level, rows, head->coef_levels, "level")) {
        for (Py_ssize_t row = 0; row < rows; row++)
            advance_row(head, (const double *)state.buf + row * c, atom[row], level[row], pair,
                        (double *)out.buf + row * c);
    }
    free(pair);
    PyBuffer_Release(&out);
fail_out:
    PyBuffer_Release(&levels);
fail_levels:
    PyBuffer_Release(&atoms);
fail_atoms:
    PyBuffer_Release(&state);
    if (PyErr_Occurred()) return NULL;
    Py_RETURN_NONE;
}

/* known_logits(head, features [rows, C], atoms [rows, slots], levels [rows, slots] int64, last [slots] int64, rows,
 * out [rows, slots, width]): every slot's atom logits of rows whose pairs are all known (prior coding's encoder), a
 * fixed-count head only: from each row's features, slot by slot, the logits of ``atom_logits`` (previous: the slot
 * before's atom) and the state advanced past the known pair by ``advance`` - the same functions, so the same bits as
 * those calls one slot at a time. Runs without the GIL: calls on other rows may run in other threads. */
static PyObject *py_known_logits(PyObject *self, PyObject *args) {
    PyObject *capsule, *o_features, *o_atoms, *o_levels, *o_last, *o_out;
    Py_ssize_t rows;
    if (!PyArg_ParseTuple(args, "OOOOOnO", &capsule, &o_features, &o_atoms, &o_levels, &o_last, &rows, &o_out))
        return NULL;
    Head *head = PyCapsule_GetPointer(capsule, HEAD_NAME);
    if (!head) return NULL;
    if (head->variable) {
        PyErr_SetString(PyExc_ValueError, "known_logits: a fixed-count head only (an END token closes a variable one)");
        return NULL;
    }
    Py_ssize_t c = head->channels, n = head->num_atoms, slots = head->slots;
    Py_ssize_t width = head->stage_atoms ? head->stage_atoms : n;
    if (!check_rows(rows, c) || items(rows, slots, width, 1) < 0 || !check_rows(rows * slots, width)) return NULL;
    Py_buffer features, atoms, levels, last, out;
    if (!get_buffer(o_features, &features, "features", "d", 8, rows * c, 0)) return NULL;
    if (!get_buffer(o_atoms, &atoms, "atoms", "lq", 8, rows * slots, 0)) goto fail_atoms;
    if (!get_buffer(o_levels, &levels, "levels", "lq", 8, rows * slots, 0)) goto fail_levels;
    if (!get_buffer(o_last, &last, "last", "lq", 8, slots, 0)) goto fail_last;
    if (!get_buffer(o_out, &out, "out", "d", 8, rows * slots * width, 1)) goto fail_out;
    const int64_t *atom = atoms.buf, *level = levels.buf, *lasts = last.buf;
    double *scratch = malloc(5 * (size_t)c * sizeof(double));
    if (!scratch) {
        PyErr_NoMemory();
    } else if (check_indices(atom, rows * slots, n, "atom") &&
               check_indices(level, rows * slots, head->coef_levels, "level") &&
               check_indices(lasts, slots, n, "last atom")) {
        Py_BEGIN_ALLOW_THREADS
        double *state = scratch + 3 * c, *next = scratch + 4 * c;
        for (Py_ssize_t row = 0; row < rows; row++) {
            memcpy(state, (const double *)features.buf + row * c, (size_t)c * sizeof(double));
            const int64_t *a = atom + row * slots, *l = level + row * slots;
            for (Py_ssize_t k = 0; k < slots; k++) {
                atom_logits_row(head, state, k ? a[k - 1] : -1, k, lasts[k], (double *)out.buf + (row * slots + k) * width);
                if (k + 1 == slots) break; /* the last slot needs no advance */
                advance_row(head, state, a[k], l[k], scratch, next);
                memcpy(state, next, (size_t)c * sizeof(double));
            }
        }
        Py_END_ALLOW_THREADS
    }
    free(scratch);
    PyBuffer_Release(&out);
fail_out:
    PyBuffer_Release(&last);
fail_last:
    PyBuffer_Release(&levels);
fail_levels:
    PyBuffer_Release(&atoms);
fail_atoms:
    PyBuffer_Release(&features);
    if (PyErr_Occurred()) return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"plan", py_plan, METH_VARARGS,
     "plan(arrays, dims): the state of one incremental pass (see generation.CompiledBackbone), as a capsule."},
    {"threads", py_threads, METH_VARARGS,
     "threads(plan, count): attention's heads over two threads (count >= 2) or one, the same bits either way."},
    {"step", py_step, METH_VARARGS, "step(plan, y, x, out): every row's features at (y, x) into out [n, C] float64."},
    {"write", py_write, METH_VARARGS,
     "write(plan, y, x, atoms, levels): the codes chosen at (y, x) ([n, slots] int64 each) into the input buffer."},
    {"head", py_head, METH_VARARGS, "head(arrays, dims): the pair head's weights (see incremental.CompiledHead), as a capsule."},
    {"atom_logits", py_atom_logits, METH_VARARGS,
     "atom_logits(head, state, previous, rows, slot, last, out): each row's masked atom logits at slot into out."},
    {"level_logits", py_level_logits, METH_VARARGS,
     "level_logits(head, state, atoms, rows, out): each row's level logits given its atom into out."},
    {"advance", py_advance, METH_VARARGS, "advance(head, state, atoms, levels, rows, out): each row's next state."},
    {"known_logits", py_known_logits, METH_VARARGS,
     "known_logits(head, features, atoms, levels, last, rows, out): every slot's atom logits of rows of known pairs."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_incremental",
                                    "PixelSNAIL's backbone one position at a time (incremental's compiled form).",
                                    -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__incremental(void) { return PyModule_Create(&module); }

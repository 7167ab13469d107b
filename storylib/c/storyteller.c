// storyteller.c — the course's storyteller in one C file: load, tokenize, decode with a KV cache, sample, print.
// Chapter 13 of LLM101n. In the spirit of llama2.c's run.c / runq.c; only libc and libm, OpenMP if there is one.
//
//   scripts/build_c.sh                                    (cc -O3 -march=native -fopenmp -> build/storyteller)
//   llm101n export-c models/storyteller story_int8.bin --dtype int8
//   build/storyteller story_int8.bin -i "Once upon a time" -n 256 -t 0.8 -p 0.9 -s 42
//
// The model file (storylib/export_c.py writes it; little-endian):
//   header, 256 bytes   "LLM101NC", then int32 version (1), dtype (0 fp32, 1 int8), group, n_layer, n_head, n_embd,
//                       vocab_size, block_size, n_merges, n_specials, n_letter_ranges, n_number_ranges,
//                       n_space_ranges; zeros up to byte 256
//   tensors             each at a multiple of 64 bytes: wte, wpe, then per layer ln_1.weight, ln_1.bias,
//                       attn.c_attn.weight, .bias, attn.c_proj.weight, .bias, ln_2.weight, .bias, mlp.c_fc.weight,
//                       .bias, mlp.c_proj.weight, .bias; then ln_f.weight, ln_f.bias. Vectors fp32; a matrix
//                       (rows, cols) is fp32, or (int8) its integers int8 rows·cols then its scales fp32
//                       rows·ceil(cols / group). lm_head is wte (tied).
//   tokenizer           at a multiple of 64 bytes: the merges (int32 a, b: merge i makes token 256 + i), the
//                       specials (int32 id, int32 length, bytes), then the (first, last) code point ranges of
//                       \p{L}, \p{N} and \s as Python's `regex` module sees them
//   end of file         exactly there
// Every size is checked against the file's length before anything is read: a short, long or foreign file is an
// error (exit code 3) with a message, never a read out of bounds.
//
// The forward pass is storylib.kvcache.forward_cached for one token at a time:
//   x = wte[token] + wpe[pos]
//   every block:  qkv = c_attn(ln_1(x)); k, v -> the cache at pos; each head attends over positions 0..pos;
//                 x += c_proj(heads side by side);  x += mlp.c_proj(gelu_tanh(mlp.c_fc(ln_2(x))))
//   logits = wte @ ln_f(x)       (lm_head is tied to wte)
// fp32: every matmul in fp32. int8 (Chapter 13's int8-g64-dyn): the weights are int8 with one scale per group of
// `group` inputs of a row; each matmul quantizes its input the same way as it arrives (dynamic, per group, absmax
// / 127, round half to even, as torch.round), sums int8 x int8 products in int32 within a group, and only then
// applies the two scales (runq.c's scheme). The embeddings are dequantized when looked up; the KV cache is fp32.
//
// Tokenizer: storylib's RegexTokenizer.encode_ordinary, by hand: GPT-4's split pattern (the storyteller's) as
// code, with the character classes from the file, then byte-pair merges inside each chunk, the earliest-learned
// pair first. The prompt is text (-i; special tokens are ordinary text in it), after <|endoftext|> as the story's
// start, or ids (--prompt-ids 4096,12,7: used as given). Bytes that are not UTF-8 are classified as U+FFFD.
//
// Exit codes: 0 done, 1 out of memory, 2 bad arguments, 3 bad model file.

#define _POSIX_C_SOURCE 200809L  // clock_gettime, with -std=c11
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

enum { EXIT_NOMEM = 1, EXIT_USAGE = 2, EXIT_BADFILE = 3 };
enum { DTYPE_F32 = 0, DTYPE_I8 = 1 };
#define HEADER_BYTES 256
#define ALIGN 64
#define MAX_TOKEN_BYTES 4096  // no token of a real tokenizer is this long; a corrupt file could make them huge

static void die(int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("storyteller: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(code);
}

static void *xcalloc(size_t n, size_t size) {
  void *p = calloc(n ? n : 1, size ? size : 1);
  if (!p) die(EXIT_NOMEM, "out of memory (%zu x %zu bytes)", n, size);
  return p;
}

// ----------------------------------------------------------------------------- reading the file, bounds-checked

typedef struct {
  const uint8_t *data;
  size_t len, off;
  const char *path;
} Reader;

// The next n bytes (at a multiple of ALIGN when aligned), or exit: the file is too short.
static const void *take(Reader *r, size_t n, int aligned, const char *what) {
  if (aligned) r->off = (r->off + ALIGN - 1) / ALIGN * ALIGN;
  if (r->off > r->len || n > r->len - r->off)
    die(EXIT_BADFILE, "%s: truncated: %s needs %zu bytes at offset %zu, the file has %zu", r->path, what, n, r->off,
        r->len);
  const void *p = r->data + r->off;
  r->off += n;
  return p;
}

static int32_t take_i32(Reader *r, const char *what) {
  int32_t v;
  memcpy(&v, take(r, 4, 0, what), 4);
  return v;
}

static void check(int ok, const Reader *r, const char *fmt, ...) {
  if (ok) return;
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "storyteller: %s: bad model file: ", r->path);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(EXIT_BADFILE);
}

// ----------------------------------------------------------------------------- the model

typedef struct {  // a matrix (rows, cols) as nn.Linear stores it: fp32 f, or int8 q with fp32 scales s
  const float *f;
  const int8_t *q;
  const float *s;
  int rows, cols;
} Matrix;

typedef struct {
  const float *ln1_w, *ln1_b, *attn_b, *aproj_b, *ln2_w, *ln2_b, *fc_b, *mproj_b;
  Matrix attn, aproj, fc, mproj;
} Layer;

typedef struct {
  int n_layer, n_head, n_embd, vocab, block, dtype, group;
  Matrix wte, wpe;
  Layer *layers;
  const float *lnf_w, *lnf_b;
} Model;

typedef struct {
  int n_merges, n_specials, n_vocab;  // n_vocab: one more than the largest id
  const int32_t *merges;              // (a, b) of merge i, which makes token 256 + i
  int *pair_key_a, *pair_key_b, *pair_id, table_size;  // pair -> merge id, open addressing
  uint8_t **token, *token_pool;       // token i's bytes: token[i], token_len[i] of them (NULL: no such id)
  int *token_len;
  int eot, end;                       // <|endoftext|> and <|end|>, or -1
  const int32_t *ranges[3];           // \p{L}, \p{N}, \s: sorted (first, last) pairs
  int n_ranges[3];
} Tokenizer;

static void read_matrix(Reader *r, Matrix *m, int rows, int cols, const Model *model, const char *what) {
  m->rows = rows;
  m->cols = cols;
  size_t n = (size_t)rows * cols;
  if (model->dtype == DTYPE_F32) {
    m->f = take(r, 4 * n, 1, what);
  } else {
    size_t groups = (size_t)rows * ((cols + model->group - 1) / model->group);
    m->q = take(r, n, 1, what);
    m->s = take(r, 4 * groups, 1, what);
  }
}

static const float *read_vector(Reader *r, int n, const char *what) { return take(r, 4 * (size_t)n, 1, what); }

static uint32_t pair_hash(int a, int b, int size) {
  return (uint32_t)(((uint64_t)(uint32_t)a * 0x9E3779B1u) ^ ((uint64_t)(uint32_t)b * 0x85EBCA77u)) & (size - 1);
}

static int pair_lookup(const Tokenizer *t, int a, int b) {  // the merge id of (a, b), or -1
  for (uint32_t h = pair_hash(a, b, t->table_size);; h = (h + 1) & (t->table_size - 1)) {
    if (t->pair_id[h] < 0) return -1;
    if (t->pair_key_a[h] == a && t->pair_key_b[h] == b) return t->pair_id[h];
  }
}

static void read_tokenizer(Reader *r, Tokenizer *t, int vocab) {
  take(r, 0, 1, "the tokenizer");
  t->merges = take(r, 8 * (size_t)t->n_merges, 0, "the merges");
  int n_ids = 256 + t->n_merges;
  int32_t *spec_id = xcalloc(t->n_specials, sizeof(int32_t));
  const uint8_t **spec_bytes = xcalloc(t->n_specials, sizeof(uint8_t *));
  int32_t *spec_len = xcalloc(t->n_specials, sizeof(int32_t));
  t->n_vocab = n_ids;
  for (int i = 0; i < t->n_specials; i++) {
    spec_id[i] = take_i32(r, "a special token's id");
    spec_len[i] = take_i32(r, "a special token's length");
    check(spec_id[i] >= n_ids && spec_id[i] < vocab, r, "special token %d has id %d (must be in %d..%d)", i,
          spec_id[i], n_ids, vocab - 1);
    check(spec_len[i] >= 1 && spec_len[i] <= 256, r, "special token %d is %d bytes long", i, spec_len[i]);
    spec_bytes[i] = take(r, spec_len[i], 0, "a special token's text");
    if (spec_id[i] + 1 > t->n_vocab) t->n_vocab = spec_id[i] + 1;
  }
  for (int c = 0; c < 3; c++) {
    t->ranges[c] = take(r, 8 * (size_t)t->n_ranges[c], 0, "the character classes");
    for (int i = 0; i < t->n_ranges[c]; i++) {
      int32_t lo, hi, prev_hi = -1;
      memcpy(&lo, t->ranges[c] + 2 * i, 4);
      memcpy(&hi, t->ranges[c] + 2 * i + 1, 4);
      if (i) memcpy(&prev_hi, t->ranges[c] + 2 * i - 1, 4);
      check(lo > prev_hi && lo <= hi && hi <= 0x10FFFF, r, "character class %d: range %d is not sorted", c, i);
    }
  }
  check(r->off == r->len, r, "%zu bytes after the end of the tokenizer", r->len - r->off);
  // every token's bytes: the 256 bytes, each merge the concatenation of its pair, the specials' text
  t->token = xcalloc(t->n_vocab, sizeof(uint8_t *));
  t->token_len = xcalloc(t->n_vocab, sizeof(int));
  size_t pool = 256;
  for (int i = 0; i < t->n_merges; i++) {
    int32_t ab[2];
    memcpy(ab, t->merges + 2 * i, 8);
    check(ab[0] >= 0 && ab[0] < 256 + i && ab[1] >= 0 && ab[1] < 256 + i, r,
          "merge %d is (%d, %d): a merge may only use ids made before it", i, ab[0], ab[1]);
    int len = (ab[0] < 256 ? 1 : t->token_len[ab[0]]) + (ab[1] < 256 ? 1 : t->token_len[ab[1]]);
    check(len <= MAX_TOKEN_BYTES, r, "merge %d makes a token of %d bytes", i, len);
    t->token_len[256 + i] = len;
    pool += len;
  }
  for (int i = 0; i < t->n_specials; i++) pool += spec_len[i];
  t->token_pool = xcalloc(pool, 1);
  uint8_t *p = t->token_pool;
  for (int i = 0; i < 256; i++) {
    *p = (uint8_t)i;
    t->token[i] = p++;
    t->token_len[i] = 1;
  }
  for (int i = 0; i < t->n_merges; i++) {
    int32_t ab[2];
    memcpy(ab, t->merges + 2 * i, 8);
    t->token[256 + i] = p;
    memcpy(p, t->token[ab[0]], t->token_len[ab[0]]);
    memcpy(p + t->token_len[ab[0]], t->token[ab[1]], t->token_len[ab[1]]);
    p += t->token_len[256 + i];
  }
  t->eot = t->end = -1;
  for (int i = 0; i < t->n_specials; i++) {
    check(t->token[spec_id[i]] == NULL, r, "id %d is given twice", spec_id[i]);
    t->token[spec_id[i]] = p;
    t->token_len[spec_id[i]] = spec_len[i];
    memcpy(p, spec_bytes[i], spec_len[i]);
    p += spec_len[i];
    if (spec_len[i] == 13 && !memcmp(spec_bytes[i], "<|endoftext|>", 13)) t->eot = spec_id[i];
    if (spec_len[i] == 7 && !memcmp(spec_bytes[i], "<|end|>", 7)) t->end = spec_id[i];
  }
  // the pair table: a power of two at least twice the merges
  for (t->table_size = 16; t->table_size < 2 * t->n_merges; t->table_size *= 2) {}
  t->pair_key_a = xcalloc(t->table_size, sizeof(int));
  t->pair_key_b = xcalloc(t->table_size, sizeof(int));
  t->pair_id = xcalloc(t->table_size, sizeof(int));
  for (int h = 0; h < t->table_size; h++) t->pair_id[h] = -1;
  for (int i = 0; i < t->n_merges; i++) {
    int32_t ab[2];
    memcpy(ab, t->merges + 2 * i, 8);
    check(pair_lookup(t, ab[0], ab[1]) < 0, r, "the pair (%d, %d) is merged twice", ab[0], ab[1]);
    uint32_t h = pair_hash(ab[0], ab[1], t->table_size);
    while (t->pair_id[h] >= 0) h = (h + 1) & (t->table_size - 1);
    t->pair_key_a[h] = ab[0];
    t->pair_key_b[h] = ab[1];
    t->pair_id[h] = 256 + i;
  }
  free(spec_id);
  free(spec_bytes);
  free(spec_len);
}

// Read the whole file into memory (64-byte aligned) and check it; the model's tensors point into it.
static uint8_t *load(const char *path, Model *m, Tokenizer *t) {
  FILE *f = fopen(path, "rb");
  if (!f) die(EXIT_BADFILE, "%s: cannot open", path);
  if (fseek(f, 0, SEEK_END) != 0) die(EXIT_BADFILE, "%s: cannot seek", path);
  long size = ftell(f);
  if (size < 0) die(EXIT_BADFILE, "%s: cannot tell its size", path);
  rewind(f);
  uint8_t *data = aligned_alloc(ALIGN, ((size_t)size + ALIGN) / ALIGN * ALIGN);
  if (!data) die(EXIT_NOMEM, "out of memory reading %s (%ld bytes)", path, size);
  if (fread(data, 1, (size_t)size, f) != (size_t)size) die(EXIT_BADFILE, "%s: read error", path);
  fclose(f);
  Reader r = {data, (size_t)size, 0, path};
  const uint8_t *magic = take(&r, 8, 0, "the magic");
  check(!memcmp(magic, "LLM101NC", 8), &r, "not a storyteller.c model (the magic is not LLM101NC; write one with "
        "`llm101n export-c`)");
  int version = take_i32(&r, "the version");
  check(version == 1, &r, "version %d; this program reads version 1", version);
  m->dtype = take_i32(&r, "dtype");
  m->group = take_i32(&r, "group");
  m->n_layer = take_i32(&r, "n_layer");
  m->n_head = take_i32(&r, "n_head");
  m->n_embd = take_i32(&r, "n_embd");
  m->vocab = take_i32(&r, "vocab_size");
  m->block = take_i32(&r, "block_size");
  t->n_merges = take_i32(&r, "n_merges");
  t->n_specials = take_i32(&r, "n_specials");
  for (int c = 0; c < 3; c++) t->n_ranges[c] = take_i32(&r, "the character classes' sizes");
  check(m->dtype == DTYPE_F32 || m->dtype == DTYPE_I8, &r, "dtype %d (0: fp32, 1: int8)", m->dtype);
  check(m->dtype == DTYPE_F32 || (m->group >= 1 && m->group <= (1 << 16)), &r, "group %d", m->group);
  check(m->n_layer >= 1 && m->n_layer <= 1024 && m->n_head >= 1 && m->n_embd >= 1 && m->n_embd <= (1 << 16) &&
        m->n_embd % m->n_head == 0 && m->vocab >= 257 && m->vocab <= (1 << 22) && m->block >= 1 &&
        m->block <= (1 << 20), &r, "config n_layer %d, n_head %d, n_embd %d, vocab_size %d, block_size %d",
        m->n_layer, m->n_head, m->n_embd, m->vocab, m->block);
  check(t->n_merges >= 0 && t->n_merges <= m->vocab - 256 && t->n_specials >= 0 && t->n_specials <= 1024, &r,
        "%d merges and %d special tokens for a table of %d", t->n_merges, t->n_specials, m->vocab);
  for (int c = 0; c < 3; c++) check(t->n_ranges[c] >= 0 && t->n_ranges[c] <= (1 << 20), &r, "character classes");
  take(&r, HEADER_BYTES - r.off, 0, "the header");
  int C = m->n_embd;
  read_matrix(&r, &m->wte, m->vocab, C, m, "wte");
  read_matrix(&r, &m->wpe, m->block, C, m, "wpe");
  m->layers = xcalloc(m->n_layer, sizeof(Layer));
  for (int l = 0; l < m->n_layer; l++) {
    Layer *L = &m->layers[l];
    L->ln1_w = read_vector(&r, C, "ln_1.weight");
    L->ln1_b = read_vector(&r, C, "ln_1.bias");
    read_matrix(&r, &L->attn, 3 * C, C, m, "attn.c_attn.weight");
    L->attn_b = read_vector(&r, 3 * C, "attn.c_attn.bias");
    read_matrix(&r, &L->aproj, C, C, m, "attn.c_proj.weight");
    L->aproj_b = read_vector(&r, C, "attn.c_proj.bias");
    L->ln2_w = read_vector(&r, C, "ln_2.weight");
    L->ln2_b = read_vector(&r, C, "ln_2.bias");
    read_matrix(&r, &L->fc, 4 * C, C, m, "mlp.c_fc.weight");
    L->fc_b = read_vector(&r, 4 * C, "mlp.c_fc.bias");
    read_matrix(&r, &L->mproj, C, 4 * C, m, "mlp.c_proj.weight");
    L->mproj_b = read_vector(&r, C, "mlp.c_proj.bias");
  }
  m->lnf_w = read_vector(&r, C, "ln_f.weight");
  m->lnf_b = read_vector(&r, C, "ln_f.bias");
  read_tokenizer(&r, t, m->vocab);
  return data;
}

// ----------------------------------------------------------------------------- the arithmetic

typedef float v8 __attribute__((vector_size(32), aligned(4)));  // 8 floats (GCC / clang vectors); unaligned ok

static float dot(const float *a, const float *b, int n) {  // two vector sums: the loop need not wait on one
  v8 s0 = {0}, s1 = {0};
  int i = 0;
  for (; i + 16 <= n; i += 16) {
    s0 += *(const v8 *)(a + i) * *(const v8 *)(b + i);
    s1 += *(const v8 *)(a + i + 8) * *(const v8 *)(b + i + 8);
  }
  s0 += s1;
  float s = 0.0f;
  for (int k = 0; k < 8; k++) s += s0[k];
  for (; i < n; i++) s += a[i] * b[i];
  return s;
}

// out[o] = b[o] + W[o, :] · x for every output o, fp32; the rows are shared out among the threads
static void matmul_f32(float *out, const Matrix *W, const float *b, const float *x) {
  int n_in = W->cols;
#pragma omp parallel for schedule(static)
  for (int o = 0; o < W->rows; o++) out[o] = dot(W->f + (size_t)o * n_in, x, n_in) + (b ? b[o] : 0.0f);
}

// x's groups of `group` values as int8 with one absmax scale each: xs[g] = max|x| / 127 (1 / 127 for zeros),
// xq = round(x / xs) to nearest, ties to even (rintf in the default rounding mode; torch.round does the same)
static void quantize_groups(int8_t *xq, float *xs, const float *x, int n, int group) {
  for (int g = 0, k0 = 0; k0 < n; g++, k0 += group) {
    int k1 = k0 + group < n ? k0 + group : n;
    float amax = 0.0f;
    for (int k = k0; k < k1; k++) amax = fabsf(x[k]) > amax ? fabsf(x[k]) : amax;
    float scale = (amax > 0.0f ? amax : 1.0f) / 127.0f;
    xs[g] = scale;
    for (int k = k0; k < k1; k++) {
      float q = rintf(x[k] / scale);
      xq[k] = (int8_t)(q > 127.0f ? 127.0f : q < -127.0f ? -127.0f : q);
    }
  }
}

// Σ_k x[k] · w[k] over n int8 pairs, exactly, in int32 (a product fits 15 bits, 2^16 of them 31 bits).
#if defined(__AVX2__)
#include <immintrin.h>
// With AVX2, 32 pairs an instruction or three: vpmaddubsw multiplies unsigned by signed bytes and adds neighbours
// into int16, so it gets |x| and w with x's sign (x, w in -127..127: a pair sums to at most 32258, no saturation);
// vpmaddwd then adds neighbouring int16s into int32.
static int32_t dot_i8(const int8_t *x, const int8_t *w, int n) {
  __m256i acc = _mm256_setzero_si256();
  int k = 0;
  for (; k + 32 <= n; k += 32) {
    __m256i a = _mm256_loadu_si256((const __m256i *)(x + k)), b = _mm256_loadu_si256((const __m256i *)(w + k));
    __m256i pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(a, a), _mm256_sign_epi8(b, a));
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
  }
  __m128i h = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
  h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0x4E));
  int32_t sum = _mm_cvtsi128_si32(_mm_add_epi32(h, _mm_shuffle_epi32(h, 0xB1)));
  for (; k < n; k++) sum += (int32_t)x[k] * (int32_t)w[k];
  return sum;
}
#else
static int32_t dot_i8(const int8_t *x, const int8_t *w, int n) {  // the compiler vectorizes this loop itself
  int32_t sum = 0;
  for (int k = 0; k < n; k++) sum += (int32_t)x[k] * (int32_t)w[k];
  return sum;
}
#endif

// out[o] = b[o] + Σ_g xs[g] · s[o, g] · Σ_{k in g} xq[k] · q[o, k]: each group's products summed exactly in
// int32, the two scales applied once per group
static void matmul_i8(float *out, const Matrix *W, const float *b, const int8_t *xq, const float *xs, int group) {
  int n_in = W->cols, n_groups = (n_in + group - 1) / group;
#pragma omp parallel for schedule(static)
  for (int o = 0; o < W->rows; o++) {
    const int8_t *w = W->q + (size_t)o * n_in;
    const float *s = W->s + (size_t)o * n_groups;
    float sum = 0.0f;
    for (int g = 0; g < n_groups; g++) {
      int k0 = g * group, n = k0 + group < n_in ? group : n_in - k0;
      sum += (float)dot_i8(xq + k0, w + k0, n) * xs[g] * s[g];
    }
    out[o] = sum + (b ? b[o] : 0.0f);
  }
}

typedef struct {  // what one decoding step works in, allocated once
  float *x, *xn, *qkv, *y, *hid, *att, *logits, *k_cache, *v_cache, *xs;
  int8_t *xq;
} State;

static void linear(float *out, const Model *m, State *s, const Matrix *W, const float *b, const float *x) {
  if (m->dtype == DTYPE_F32) {
    matmul_f32(out, W, b, x);
  } else {
    quantize_groups(s->xq, s->xs, x, W->cols, m->group);
    matmul_i8(out, W, b, s->xq, s->xs, m->group);
  }
}

static void embed_row(float *out, const Matrix *E, int row, const Model *m) {  // E[row, :], dequantized if int8
  int C = E->cols;
  if (m->dtype == DTYPE_F32) {
    memcpy(out, E->f + (size_t)row * C, 4 * (size_t)C);
  } else {
    int n_groups = (C + m->group - 1) / m->group;
    for (int i = 0; i < C; i++) out[i] = E->s[(size_t)row * n_groups + i / m->group] * (float)E->q[(size_t)row * C + i];
  }
}

static void layer_norm(float *out, const float *x, const float *w, const float *b, int n) {
  double mean = 0.0, var = 0.0;
  for (int i = 0; i < n; i++) mean += x[i];
  mean /= n;
  for (int i = 0; i < n; i++) var += (x[i] - mean) * (x[i] - mean);
  float rstd = (float)(1.0 / sqrt(var / n + 1e-5));  // biased variance, eps 1e-5, as torch
  for (int i = 0; i < n; i++) out[i] = (float)(x[i] - mean) * rstd * w[i] + b[i];
}

static State new_state(const Model *m) {
  size_t C = m->n_embd, T = m->block, L = m->n_layer;
  State s;
  s.x = xcalloc(C, 4);
  s.xn = xcalloc(C, 4);
  s.y = xcalloc(C, 4);
  s.qkv = xcalloc(3 * C, 4);
  s.hid = xcalloc(4 * C, 4);
  s.att = xcalloc((size_t)m->n_head * T, 4);
  s.logits = xcalloc(m->vocab, 4);
  s.k_cache = xcalloc(L * T * C, 4);  // layer l's key of position t at k_cache + (l * T + t) * C
  s.v_cache = xcalloc(L * T * C, 4);
  s.xq = xcalloc(4 * C, 1);
  s.xs = xcalloc(4 * C, 4);
  return s;
}

// One token at position pos (< block_size): its key and value go into the cache; with want_logits, the next
// token's logits into s->logits (a prompt's tokens before its last skip the lm_head).
static void forward(const Model *m, State *s, int token, int pos, int want_logits) {
  const int C = m->n_embd, H = m->n_head, hs = C / H, T = m->block;
  const float scale = 1.0f / sqrtf((float)hs);
  embed_row(s->x, &m->wte, token, m);
  embed_row(s->xn, &m->wpe, pos, m);
  for (int i = 0; i < C; i++) s->x[i] += s->xn[i];
  for (int l = 0; l < m->n_layer; l++) {
    const Layer *L = &m->layers[l];
    float *K = s->k_cache + (size_t)l * T * C, *V = s->v_cache + (size_t)l * T * C;
    layer_norm(s->xn, s->x, L->ln1_w, L->ln1_b, C);
    linear(s->qkv, m, s, &L->attn, L->attn_b, s->xn);
    memcpy(K + (size_t)pos * C, s->qkv + C, 4 * (size_t)C);
    memcpy(V + (size_t)pos * C, s->qkv + 2 * C, 4 * (size_t)C);
#pragma omp parallel for schedule(static)
    for (int h = 0; h < H; h++) {  // softmax(q · k / √hs) over positions 0..pos, then the weighted sum of v
      const float *q = s->qkv + h * hs;
      float *att = s->att + (size_t)h * T, *out = s->y + h * hs, top = -INFINITY, sum = 0.0f;
      for (int t = 0; t <= pos; t++) {
        att[t] = dot(q, K + (size_t)t * C + h * hs, hs) * scale;
        top = att[t] > top ? att[t] : top;
      }
      for (int t = 0; t <= pos; t++) sum += att[t] = expf(att[t] - top);
      for (int i = 0; i < hs; i++) out[i] = 0.0f;
      for (int t = 0; t <= pos; t++) {
        const float p = att[t] / sum, *v = V + (size_t)t * C + h * hs;
        for (int i = 0; i < hs; i++) out[i] += p * v[i];
      }
    }
    linear(s->xn, m, s, &L->aproj, L->aproj_b, s->y);
    for (int i = 0; i < C; i++) s->x[i] += s->xn[i];
    layer_norm(s->xn, s->x, L->ln2_w, L->ln2_b, C);
    linear(s->hid, m, s, &L->fc, L->fc_b, s->xn);
    for (int i = 0; i < 4 * C; i++) {  // GPT-2's GELU, the tanh form (storylib.gpt2.MLP)
      float u = s->hid[i], z = 0.7978845608028654f * (u + 0.044715f * u * u * u);
      float tanh_z = z > 15.0f ? 1.0f : 1.0f - 2.0f / (expf(2.0f * z) + 1.0f);  // expf: a third of tanhf's time
      s->hid[i] = 0.5f * u * (1.0f + tanh_z);
    }
    linear(s->xn, m, s, &L->mproj, L->mproj_b, s->hid);
    for (int i = 0; i < C; i++) s->x[i] += s->xn[i];
  }
  if (!want_logits) return;
  layer_norm(s->xn, s->x, m->lnf_w, m->lnf_b, C);
  linear(s->logits, m, s, &m->wte, NULL, s->xn);
}

// ----------------------------------------------------------------------------- the tokenizer

static int in_class(const Tokenizer *t, int c, int cls) {  // binary search of the class's sorted ranges
  const int32_t *r = t->ranges[cls];
  int lo = 0, hi = t->n_ranges[cls] - 1;
  while (lo <= hi) {
    int mid = (lo + hi) / 2;
    int32_t a, b;
    memcpy(&a, r + 2 * mid, 4);
    memcpy(&b, r + 2 * mid + 1, 4);
    if (c < a) hi = mid - 1;
    else if (c > b) lo = mid + 1;
    else return 1;
  }
  return 0;
}
enum { LETTER, NUMBER, SPACE };

// UTF-8 to code points; cp_start[i] is code point i's first byte. Bytes that are not UTF-8: U+FFFD, one byte each.
static int utf8_decode(const uint8_t *s, int n, int *cp, int *cp_start) {
  int count = 0;
  for (int i = 0; i < n;) {
    int c = s[i], len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    int ok = len > 0 && i + len <= n, v = len == 1 ? c : len == 2 ? c & 31 : len == 3 ? c & 15 : c & 7;
    for (int k = 1; ok && k < len; k++) {
      ok = (s[i + k] & 0xC0) == 0x80;
      v = (v << 6) | (s[i + k] & 63);
    }
    static const int min_of_len[] = {0, 0, 0x80, 0x800, 0x10000};
    ok = ok && v >= min_of_len[len] && v <= 0x10FFFF && !(v >= 0xD800 && v <= 0xDFFF);  // no overlong forms
    cp_start[count] = i;
    cp[count++] = ok ? v : 0xFFFD;
    i += ok ? len : 1;
  }
  cp_start[count] = n;
  return count;
}

static int is_fold(int c, int lower) {  // c matches (?i:lower): ASCII case, and ſ (U+017F) folds to s
  return c == lower || c == lower - 32 || (lower == 's' && c == 0x17F);
}

// How many code points the next chunk of GPT-4's pattern takes at i (the first alternative that matches):
//   '(?i:[sdmt]|ll|ve|re) | [^\r\n\p{L}\p{N}]?+\p{L}+ | \p{N}{1,3} | ' '?[^\s\p{L}\p{N}]++[\r\n]* | \s*[\r\n]
//   | \s+(?!\S) | \s+
static int chunk_length(const Tokenizer *t, const int *c, int n, int i) {
#define L_(k) in_class(t, c[k], LETTER)
#define N_(k) in_class(t, c[k], NUMBER)
#define S_(k) in_class(t, c[k], SPACE)
#define NL_(k) (c[k] == '\r' || c[k] == '\n')
  if (c[i] == '\'' && i + 1 < n) {
    int a = c[i + 1];
    if (is_fold(a, 's') || is_fold(a, 'd') || is_fold(a, 'm') || is_fold(a, 't')) return 2;
    if (i + 2 < n) {
      int b = c[i + 2];
      if ((is_fold(a, 'l') && is_fold(b, 'l')) || (is_fold(a, 'v') && is_fold(b, 'e')) ||
          (is_fold(a, 'r') && is_fold(b, 'e')))
        return 3;
    }
  }
  int j = i;
  if (!NL_(j) && !L_(j) && !N_(j)) j++;  // the one optional character (possessive: never given back)
  if (j < n && L_(j)) {
    while (j < n && L_(j)) j++;
    return j - i;
  }
  if (N_(i)) {
    for (j = i; j < n && j - i < 3 && N_(j); j++) {}
    return j - i;
  }
  j = c[i] == ' ' ? i + 1 : i;  // ' '? then symbols (neither space, letter nor number), then any \r \n
  if (j < n && !S_(j) && !L_(j) && !N_(j)) {
    while (j < n && !S_(j) && !L_(j) && !N_(j)) j++;
    while (j < n && NL_(j)) j++;
    return j - i;
  }
  int e = i;  // what is left starts with white space: its whole run is [i, e)
  while (e < n && S_(e)) e++;
  for (int k = e - 1; k >= i; k--)  // \s*[\r\n]: up to the run's last line break
    if (NL_(k)) return k + 1 - i;
  if (e == n || e - i == 1) return e - i;  // \s+(?!\S) at the end of the text, else \s+
  return e - 1 - i;                         // \s+(?!\S): leave the last space to the word after it
#undef L_
#undef N_
#undef S_
#undef NL_
}

// Byte-pair encoding of one chunk, in place: while some pair of neighbours was merged in training, the
// earliest-learned such pair is merged everywhere, left to right (storylib.tokenizer.Tokenizer._encode_bytes).
static int bpe(const Tokenizer *t, int *ids, int n) {
  for (;;) {
    int best = -1;
    for (int i = 0; i + 1 < n; i++) {
      int id = pair_lookup(t, ids[i], ids[i + 1]);
      if (id >= 0 && (best < 0 || id < best)) best = id;
    }
    if (best < 0) return n;
    int32_t ab[2];
    memcpy(ab, t->merges + 2 * (best - 256), 8);
    int w = 0;
    for (int i = 0; i < n; i++) {
      if (i + 1 < n && ids[i] == ab[0] && ids[i + 1] == ab[1]) {
        ids[w++] = best;
        i++;
      } else {
        ids[w++] = ids[i];
      }
    }
    n = w;
  }
}

// storylib's encode_ordinary: returns how many ids went into `out` (at most strlen(text) of them)
static int encode(const Tokenizer *t, const char *text, int *out) {
  int n = (int)strlen(text);
  int *cp = xcalloc(n + 1, sizeof(int)), *start = xcalloc(n + 1, sizeof(int));
  int n_cp = utf8_decode((const uint8_t *)text, n, cp, start), n_out = 0;
  for (int i = 0; i < n_cp;) {
    int len = chunk_length(t, cp, n_cp, i);
    int b0 = start[i], b1 = start[i + len];
    for (int b = b0; b < b1; b++) out[n_out + b - b0] = (uint8_t)text[b];
    n_out += bpe(t, out + n_out, b1 - b0);
    i += len;
  }
  free(cp);
  free(start);
  return n_out;
}

// ----------------------------------------------------------------------------- sampling

static uint64_t rng_state;

static uint32_t random_u32(void) {  // xorshift64*, as llama2.c
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return (uint32_t)((rng_state * 0x2545F4914F6CDD1Dull) >> 32);
}

static float random_f32(void) { return (float)(random_u32() >> 8) / 16777216.0f; }  // [0, 1)

typedef struct {
  float p;
  int id;
} Candidate;

static int by_probability(const void *a, const void *b) {
  float pa = ((const Candidate *)a)->p, pb = ((const Candidate *)b)->p;
  return pa > pb ? -1 : pa < pb ? 1 : ((const Candidate *)a)->id - ((const Candidate *)b)->id;
}

// storylib.kvcache.sample for one row: temperature 0 is the argmax (the first, as torch); else a draw from
// softmax(logits / temperature), with top_p < 1 restricted to the smallest set of most probable tokens whose
// probabilities reach top_p (the top token always stays).
static int sample(const float *logits, int n, float temperature, float top_p, Candidate *buf) {
  int best = 0;
  for (int i = 1; i < n; i++)
    if (logits[i] > logits[best]) best = i;
  if (temperature == 0.0f) return best;
  double total = 0.0;
  for (int i = 0; i < n; i++) {
    buf[i].p = expf((logits[i] - logits[best]) / temperature);
    buf[i].id = i;
    total += buf[i].p;
  }
  int keep = n;
  if (top_p < 1.0f) {
    qsort(buf, n, sizeof(Candidate), by_probability);
    double before = 0.0;
    for (keep = 0; keep < n && before < top_p * total; keep++) before += buf[keep].p;
    total = before;
  }
  double r = random_f32() * total, acc = 0.0;
  for (int i = 0; i < keep; i++) {
    acc += buf[i].p;
    if (r < acc) return buf[i].id;
  }
  return buf[keep - 1].id;  // rounding left r at the very top
}

// ----------------------------------------------------------------------------- the program

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void usage(int code) {  // to stdout for --help, else to stderr
  fputs("usage: storyteller MODEL.bin [options]\n"
        "  -i TEXT           the prompt (after <|endoftext|>, the start of a story; default: empty)\n"
        "  --prompt-ids A,B  the prompt as token ids, used as given (no <|endoftext|> added)\n"
        "  -n N              new tokens (default 256); stops early at <|endoftext|> or <|end|>\n"
        "  --no-stop         do not stop there: exactly N tokens (for benchmarks)\n"
        "  -t T              temperature (default 0.8; 0: greedy)\n"
        "  -p P              top-p (default 0.9; 1: off)\n"
        "  -s SEED           random seed (default: the time)\n"
        "  --ids             print the new token ids, not text\n"
        "  --encode          print the ids of the prompt text (encode_ordinary) and stop\n"
        "  --logits          print the logits after every prompt token (one line each) and stop\n"
        "  -q                no timing line on stderr\n"
        "exit codes: 0 done, 1 out of memory, 2 bad arguments, 3 bad model file\n",
        code ? stderr : stdout);
  exit(code);
}

static double number(const char *s, const char *flag) {
  char *end;
  double v = strtod(s, &end);
  if (end == s || *end) die(EXIT_USAGE, "%s wants a number, got '%s'", flag, s);
  return v;
}

static int parse_ids(const char *list, int *ids, int vocab) {  // "4096,12,7" -> ids; returns how many
  int n = 0;
  for (const char *p = list; *p;) {
    char *end;
    long v = strtol(p, &end, 10);
    if (end == p || v < 0 || v >= vocab || (*end && *end != ','))
      die(EXIT_USAGE, "--prompt-ids: ids in 0..%d, comma-separated", vocab - 1);
    ids[n++] = (int)v;
    p = *end ? end + 1 : end;
  }
  return n;
}

static void print_logits(const Model *m, State *s, const int *ids, int n_ids) {  // one line per prompt position
  for (int pos = 0; pos < n_ids && pos < m->block; pos++) {
    forward(m, s, ids[pos], pos, 1);
    for (int i = 0; i < m->vocab; i++) printf(i ? " %.9g" : "%.9g", s->logits[i]);
    printf("\n");
  }
}

// Prefill the prompt (its last block_size tokens), then one token a step, printed as it comes (text, or ids); when
// the cache is full, start it again from the last block_size / 2 tokens (storylib.kvcache.generate_tokens does
// the same). Stops after n_new tokens or (unless no_stop) at <|endoftext|> / <|end|>. ids has room for n_new more.
static void generate(const Model *m, const Tokenizer *t, State *s, int *ids, int n_ids, int n_new, float temperature,
                     float top_p, int print_ids, int quiet, int no_stop) {
  Candidate *buf = xcalloc(m->vocab, sizeof(Candidate));
  double t0 = now();
  int first = n_ids > m->block ? n_ids - m->block : 0, pos = 0, made = 0;
  for (int i = first; i < n_ids; i++) forward(m, s, ids[i], pos++, i == n_ids - 1);
  for (int step = 0; step < n_new; step++) {
    if (step && pos == m->block) {
      pos = 0;
      for (int i = n_ids - (m->block > 1 ? m->block / 2 : 1); i < n_ids; i++) forward(m, s, ids[i], pos++, i == n_ids - 1);
    } else if (step) {
      forward(m, s, ids[n_ids - 1], pos++, 1);
    }
    int next = sample(s->logits, m->vocab, temperature, top_p, buf);
    if (!no_stop && (next == t->eot || next == t->end)) break;
    ids[n_ids++] = next;
    made++;
    if (print_ids) printf(made > 1 ? " %d" : "%d", next);
    else if (next < t->n_vocab && t->token[next]) fwrite(t->token[next], 1, t->token_len[next], stdout);
    fflush(stdout);
  }
  printf("\n");
  double seconds = now() - t0;
  int threads = 1;
#ifdef _OPENMP
  threads = omp_get_max_threads();
#endif
  if (!quiet)
    fprintf(stderr, "storyteller: %d prompt tokens, %d new tokens in %.3f s: %.1f tokens/s (%s, %d thread%s)\n",
            n_ids - made - first, made, seconds, made / (seconds > 0 ? seconds : 1e-9),
            m->dtype == DTYPE_F32 ? "fp32" : "int8", threads, threads == 1 ? "" : "s");
  free(buf);
}

static void free_state(State *s) {
  float *f[] = {s->x, s->xn, s->y, s->qkv, s->hid, s->att, s->logits, s->k_cache, s->v_cache, s->xs};
  for (size_t i = 0; i < sizeof f / sizeof *f; i++) free(f[i]);
  free(s->xq);
}

static void free_tokenizer(Tokenizer *t) {
  free(t->pair_key_a);
  free(t->pair_key_b);
  free(t->pair_id);
  free(t->token);
  free(t->token_len);
  free(t->token_pool);
}

int main(int argc, char **argv) {
  const char *path = NULL, *text = "", *prompt_ids = NULL;
  int n_new = 256, mode_ids = 0, mode_encode = 0, mode_logits = 0, quiet = 0, no_stop = 0;
  float temperature = 0.8f, top_p = 0.9f;
  uint64_t seed = (uint64_t)time(NULL);
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    int has = i + 1 < argc;
    if (!strcmp(a, "--ids")) mode_ids = 1;
    else if (!strcmp(a, "--encode")) mode_encode = 1;
    else if (!strcmp(a, "--logits")) mode_logits = 1;
    else if (!strcmp(a, "-q")) quiet = 1;
    else if (!strcmp(a, "--no-stop")) no_stop = 1;
    else if (!strcmp(a, "-h") || !strcmp(a, "--help")) usage(0);
    else if (!strcmp(a, "-i") && has) text = argv[++i];
    else if (!strcmp(a, "--prompt-ids") && has) prompt_ids = argv[++i];
    else if (!strcmp(a, "-n") && has) n_new = (int)number(argv[++i], a);
    else if (!strcmp(a, "-t") && has) temperature = (float)number(argv[++i], a);
    else if (!strcmp(a, "-p") && has) top_p = (float)number(argv[++i], a);
    else if (!strcmp(a, "-s") && has) seed = (uint64_t)number(argv[++i], a);
    else if (a[0] != '-' && !path) path = a;
    else die(EXIT_USAGE, "unknown or incomplete option '%s' (--help lists them)", a);
  }
  if (!path) usage(EXIT_USAGE);
  if (n_new < 0 || temperature < 0.0f || !(top_p > 0.0f && top_p <= 1.0f))
    die(EXIT_USAGE, "need -n >= 0, -t >= 0 and 0 < -p <= 1");
  rng_state = seed ? seed : 0x9E3779B97F4A7C15ull;  // xorshift never leaves 0

  Model m;
  Tokenizer t;
  uint8_t *file = load(path, &m, &t);
  int *ids = xcalloc(strlen(text) + 2 + n_new + (prompt_ids ? strlen(prompt_ids) : 0), sizeof(int)), n_ids = 0;
  if (mode_encode) {
    n_ids = encode(&t, text, ids);
    for (int i = 0; i < n_ids; i++) printf(i ? " %d" : "%d", ids[i]);
    printf("\n");
  } else {
    if (prompt_ids) {
      n_ids = parse_ids(prompt_ids, ids, m.vocab);
    } else {
      if (t.eot >= 0) ids[n_ids++] = t.eot;
      n_ids += encode(&t, text, ids + n_ids);
    }
    if (n_ids == 0) die(EXIT_USAGE, "the prompt needs at least one token");
    State s = new_state(&m);
    if (mode_logits) {
      print_logits(&m, &s, ids, n_ids);
    } else {
      if (!mode_ids && !prompt_ids) fputs(text, stdout);
      generate(&m, &t, &s, ids, n_ids, n_new, temperature, top_p, mode_ids, quiet, no_stop);
    }
    free_state(&s);
  }
  free(ids);
  free_tokenizer(&t);
  free(m.layers);
  free(file);
  return 0;
}

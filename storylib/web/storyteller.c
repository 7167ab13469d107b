// The storyteller in your browser: a GPT-2 style forward pass with a KV cache, in plain C, compiled to WebAssembly
// with SIMD128 (storylib/web/build.py runs `python -m ziglang cc --target=wasm32-freestanding -msimd128 -O3`).
//
// It is storylib.kvcache.forward_cached for one token at a time, written out by hand:
//   x = wte[token] + wpe[pos]
//   every block:  qkv = c_attn(ln_1(x)); k, v -> the cache at pos; each head attends over positions 0..pos;
//                 x += c_proj(heads side by side);  x += mlp.c_proj(gelu_tanh(mlp.c_fc(ln_2(x))))
//   logits = wte @ ln_f(x)       (the lm_head is tied to wte)
// LayerNorm: biased variance, eps 1e-5; GELU: GPT-2's tanh form (storylib.gpt2.MLP). All math in fp32; the
// weights arrive as fp16 (half the download) and are widened to fp32 once, at load (f16_to_f32).
//
// No libc, no threads: the page's JavaScript (storylib/web/engine.js) asks for memory (mem_alloc), fills the
// parameters (param_ptr), then calls forward() on a prompt, in chunks, and step() once per new token. Everything here is single threaded, so any static host
// serves it (no SharedArrayBuffer, no special headers).

typedef float v4 __attribute__((vector_size(16), aligned(4)));  // 4 floats; aligned(4): unaligned loads are fine

#define LD(p) (*(const v4 *)(p))

// ----------------------------------------------------------------------------- memory: a bump allocator

extern unsigned char __heap_base;
static unsigned long heap_top;

// n bytes, 16-aligned, zeroed (fresh pages of a WebAssembly memory are zero; memory is only ever grown), or 0.
__attribute__((export_name("mem_alloc"))) void *mem_alloc(unsigned long n) {
  if (!heap_top) heap_top = (unsigned long)&__heap_base;
  heap_top = (heap_top + 15) & ~15UL;
  unsigned long p = heap_top, end = heap_top + n;
  unsigned long have = __builtin_wasm_memory_size(0), need = (end + 65535) / 65536;
  if (need > have && __builtin_wasm_memory_grow(0, need - have) == (unsigned long)-1) return 0;
  heap_top = end;
  return (void *)p;
}

// ----------------------------------------------------------------------------- math without libc

// e^x, Cephes' expf: x = k ln2 + r with |r| <= ln2 / 2, a degree-6 polynomial for e^r, times 2^k (~1 ulp)
static float exp_f(float x) {
  if (x < -87.0f) return 0.0f;
  if (x > 88.0f) x = 88.0f;
  float k = __builtin_floorf(x * 1.44269504088896341f + 0.5f);
  float r = x - k * 0.693359375f + k * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  float y = p * r * r + r + 1.0f;
  union { float f; int i; } two_k;
  two_k.i = ((int)k + 127) << 23;
  return y * two_k.f;
}

static float tanh_f(float x) {
  if (x > 9.0f) return 1.0f;
  if (x < -9.0f) return -1.0f;
  float e = exp_f(2.0f * x);
  return (e - 1.0f) / (e + 1.0f);
}

static float hsum(v4 a) { return (a[0] + a[1]) + (a[2] + a[3]); }

static float dot(const float *a, const float *b, int n) {
  v4 s0 = {0, 0, 0, 0}, s1 = {0, 0, 0, 0};
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    s0 += LD(a + i) * LD(b + i);
    s1 += LD(a + i + 4) * LD(b + i + 4);
  }
  for (; i + 4 <= n; i += 4) s0 += LD(a + i) * LD(b + i);
  float s = hsum(s0 + s1);
  for (; i < n; i++) s += a[i] * b[i];
  return s;
}

// out[t, o] = b[o] + W[o, :] · x[t, :] for t < n, o < n_out; W is (n_out, n_in) row-major, as nn.Linear stores it;
// x is (n, n_in), out (n, n_out). Eight rows of W at a time share each load of x (eight independent sums keep the CPU
// busy; more spill registers: measured, 4 to 12 rows), and stay in cache for every token of a prompt's chunk: a
// prompt is read in chunks of up to CHUNK tokens, so its weights come from memory once a chunk, not once a token.
// Each sum runs in the same order for one token or many: prefill and decoding give the same bits.
static void matmul(float *out, const float *W, const float *b, const float *x, int n, int n_out, int n_in) {
  int o = 0;
  for (; o + 8 <= n_out; o += 8) {
    const float *w = W + (long)o * n_in;
    for (int t = 0; t < n; t++) {
      const float *xt = x + (long)t * n_in;
      v4 a[8] = {{0}};
      int i = 0;
      for (; i + 4 <= n_in; i += 4) {
        v4 x0 = LD(xt + i);
        a[0] += LD(w + i) * x0; a[1] += LD(w + n_in + i) * x0; a[2] += LD(w + 2 * n_in + i) * x0;
        a[3] += LD(w + 3 * n_in + i) * x0; a[4] += LD(w + 4 * n_in + i) * x0; a[5] += LD(w + 5 * n_in + i) * x0;
        a[6] += LD(w + 6 * n_in + i) * x0; a[7] += LD(w + 7 * n_in + i) * x0;
      }
      for (int r = 0; r < 8; r++) {
        float s = hsum(a[r]);
        for (int k = i; k < n_in; k++) s += w[r * n_in + k] * xt[k];
        out[(long)t * n_out + o + r] = s + (b ? b[o + r] : 0.0f);
      }
    }
  }
  for (; o < n_out; o++)
    for (int t = 0; t < n; t++)
      out[(long)t * n_out + o] = dot(W + (long)o * n_in, x + (long)t * n_in, n_in) + (b ? b[o] : 0.0f);
}

static void layer_norm(float *out, const float *x, const float *w, const float *b, int n) {
  float mean = 0.0f, var = 0.0f;
  for (int i = 0; i < n; i++) mean += x[i];
  mean /= (float)n;
  for (int i = 0; i < n; i++) { float d = x[i] - mean; var += d * d; }
  var /= (float)n;  // biased, as torch
  float rstd = 1.0f / __builtin_sqrtf(var + 1e-5f);
  for (int i = 0; i < n; i++) out[i] = (x[i] - mean) * rstd * w[i] + b[i];
}

// ----------------------------------------------------------------------------- fp16 -> fp32 (at load)

static float half_to_float(unsigned short h) {
  unsigned int sign = (unsigned int)(h >> 15) << 31, exp = (h >> 10) & 31, man = h & 1023, bits;
  if (exp == 31) {
    bits = sign | 0x7f800000u | (man << 13);  // inf, nan
  } else if (exp) {
    bits = sign | ((exp + 112) << 23) | (man << 13);
  } else if (!man) {
    bits = sign;
  } else {  // subnormal: normalise
    exp = 113;
    while (!(man & 1024)) { man <<= 1; exp--; }
    bits = sign | (exp << 23) | ((man & 1023) << 13);
  }
  union { unsigned int i; float f; } u;
  u.i = bits;
  return u.f;
}

__attribute__((export_name("f16_to_f32"))) void f16_to_f32(const unsigned short *src, float *dst, int n) {
  for (int i = 0; i < n; i++) dst[i] = half_to_float(src[i]);
}

// ----------------------------------------------------------------------------- the model

enum { WTE, WPE, LNF_W, LNF_B, N_GLOBAL };
enum { LN1_W, LN1_B, ATTN_W, ATTN_B, APROJ_W, APROJ_B, LN2_W, LN2_B, FC_W, FC_B, MPROJ_W, MPROJ_B, N_LAYER_PARAMS };
#define MAX_LAYERS 64

static int L, H, C, V, T;
static float *global[N_GLOBAL], *layer[MAX_LAYERS][N_LAYER_PARAMS];
static float *kcache, *vcache;            // (L, T, C): layer l's key of position t at kcache + (l * T + t) * C
#define CHUNK 16                           // a prompt's tokens go through the model this many at a time
static float *x, *xn, *qkv, *y, *hid, *att, *logits;  // one row per token of a chunk (x: (CHUNK, C), ...)
static int *tokens;                       // the chunk's ids (JavaScript writes them: tokens_ptr)

static long layer_param_size(int which) {
  switch (which) {
    case ATTN_W: return 3L * C * C;
    case ATTN_B: return 3L * C;
    case APROJ_W: return (long)C * C;
    case FC_W: case MPROJ_W: return 4L * C * C;
    case FC_B: return 4L * C;
    default: return C;
  }
}

// Allocate a model: n_layer, n_head, n_embd, vocab_size, block_size. Returns 1, or 0 when memory ran out.
__attribute__((export_name("model_init"))) int model_init(int n_layer, int n_head, int n_embd, int vocab, int block) {
  if (n_layer > MAX_LAYERS || n_embd % n_head) return 0;
  L = n_layer; H = n_head; C = n_embd; V = vocab; T = block;
  global[WTE] = mem_alloc(4UL * V * C);
  global[WPE] = mem_alloc(4UL * T * C);
  global[LNF_W] = mem_alloc(4UL * C);
  global[LNF_B] = mem_alloc(4UL * C);
  for (int l = 0; l < L; l++)
    for (int p = 0; p < N_LAYER_PARAMS; p++) layer[l][p] = mem_alloc(4UL * layer_param_size(p));
  kcache = mem_alloc(4UL * L * T * C);
  vcache = mem_alloc(4UL * L * T * C);
  x = mem_alloc(4UL * CHUNK * C); xn = mem_alloc(4UL * CHUNK * C); y = mem_alloc(4UL * CHUNK * C);
  qkv = mem_alloc(12UL * CHUNK * C); hid = mem_alloc(16UL * CHUNK * C); att = mem_alloc(4UL * T);
  tokens = mem_alloc(4UL * CHUNK);
  logits = mem_alloc(4UL * V);
  return logits != 0;
}

// Where parameter `which` lives: layer < 0 for wte, wpe, ln_f.weight, ln_f.bias (0..3), else that layer's
// ln_1.weight, ln_1.bias, attn.c_attn.weight, .bias, attn.c_proj.weight, .bias, ln_2.weight, .bias, mlp.c_fc.weight,
// .bias, mlp.c_proj.weight, .bias (0..11). Its size in floats: param_size.
__attribute__((export_name("param_ptr"))) float *param_ptr(int l, int which) {
  if (l < 0) return which >= 0 && which < N_GLOBAL ? global[which] : 0;
  return l < L && which >= 0 && which < N_LAYER_PARAMS ? layer[l][which] : 0;
}

__attribute__((export_name("param_size"))) long param_size(int l, int which) {
  if (l >= 0) return layer_param_size(which);
  return which == WTE ? (long)V * C : which == WPE ? (long)T * C : C;
}

__attribute__((export_name("logits_ptr"))) float *logits_ptr(void) { return logits; }
__attribute__((export_name("tokens_ptr"))) int *tokens_ptr(void) { return tokens; }
__attribute__((export_name("chunk_size"))) int chunk_size(void) { return CHUNK; }

// The n tokens at tokens_ptr() (1 <= n <= CHUNK) at positions pos .. pos + n - 1 (< block_size): their keys and
// values go into the cache, each attends to positions 0 .. its own. With want_logits, the logits of the next token
// after the last one (vocab_size floats at logits_ptr()); without (a prompt's tokens before its last), the lm_head,
// a tenth of the work, is skipped. Returns 1, or 0 for a bad input.
__attribute__((export_name("forward"))) int forward(int n, int pos, int want_logits) {
  if (n < 1 || n > CHUNK || pos < 0 || pos + n > T) return 0;
  for (int t = 0; t < n; t++) if (tokens[t] < 0 || tokens[t] >= V) return 0;
  const int hs = C / H;
  const float scale = 1.0f / __builtin_sqrtf((float)hs);
  for (int t = 0; t < n; t++) {
    const float *te = global[WTE] + (long)tokens[t] * C, *pe = global[WPE] + (long)(pos + t) * C;
    for (int i = 0; i < C; i++) x[t * C + i] = te[i] + pe[i];
  }
  for (int l = 0; l < L; l++) {
    float **P = layer[l];
    float *K = kcache + (long)l * T * C, *Vc = vcache + (long)l * T * C;
    for (int t = 0; t < n; t++) layer_norm(xn + t * C, x + t * C, P[LN1_W], P[LN1_B], C);
    matmul(qkv, P[ATTN_W], P[ATTN_B], xn, n, 3 * C, C);
    for (int t = 0; t < n; t++)
      for (int i = 0; i < C; i++) {
        K[(long)(pos + t) * C + i] = qkv[t * 3 * C + C + i];
        Vc[(long)(pos + t) * C + i] = qkv[t * 3 * C + 2 * C + i];
      }
    for (int t = 0; t < n; t++) {
      const int last = pos + t;  // token t attends to positions 0 .. last
      for (int h = 0; h < H; h++) {
        const float *q = qkv + t * 3 * C + h * hs;
        float m = -3.0e38f, sum = 0.0f;
        for (int s = 0; s <= last; s++) {
          float a = dot(q, K + (long)s * C + h * hs, hs) * scale;
          att[s] = a;
          if (a > m) m = a;
        }
        for (int s = 0; s <= last; s++) { att[s] = exp_f(att[s] - m); sum += att[s]; }
        float inv = 1.0f / sum;
        float *out = y + t * C + h * hs;
        for (int i = 0; i < hs; i++) out[i] = 0.0f;
        for (int s = 0; s <= last; s++) {
          const float p = att[s] * inv, *vs = Vc + (long)s * C + h * hs;
          int i = 0;
          v4 pv = {p, p, p, p};
          for (; i + 4 <= hs; i += 4) *(v4 *)(out + i) = LD(out + i) + pv * LD(vs + i);
          for (; i < hs; i++) out[i] += p * vs[i];
        }
      }
    }
    matmul(xn, P[APROJ_W], P[APROJ_B], y, n, C, C);
    for (int i = 0; i < n * C; i++) x[i] += xn[i];
    for (int t = 0; t < n; t++) layer_norm(xn + t * C, x + t * C, P[LN2_W], P[LN2_B], C);
    matmul(hid, P[FC_W], P[FC_B], xn, n, 4 * C, C);
    for (int i = 0; i < n * 4 * C; i++) {
      float u = hid[i];
      hid[i] = 0.5f * u * (1.0f + tanh_f(0.7978845608028654f * (u + 0.044715f * u * u * u)));
    }
    matmul(xn, P[MPROJ_W], P[MPROJ_B], hid, n, C, 4 * C);
    for (int i = 0; i < n * C; i++) x[i] += xn[i];
  }
  if (want_logits) {
    layer_norm(xn, x + (n - 1) * C, global[LNF_W], global[LNF_B], C);
    matmul(logits, global[WTE], 0, xn, 1, V, C);
  }
  return 1;
}

// One token at position pos: forward() of a chunk of one.
__attribute__((export_name("step"))) int step(int token, int pos, int want_logits) {
  tokens[0] = token;
  return forward(1, pos, want_logits);
}

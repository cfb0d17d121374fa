/*
 * tb_shim.c: the host API of tradebotd's JavaScript strategy sandbox.
 *
 * One wasm instance runs one strategy. The host (tradebotd/sandbox/guest.py) talks to it
 * through three static structs whose addresses it reads once from tb_io():
 *
 *   tb_config_t  limits, written by the host before tb_load
 *   tb_input_t   position, current price and up to TB_INPUT_CAPACITY packed candles
 *                (6 f64 each: time, open, high, low, close, volume; time = open time in ms)
 *   tb_result_t  status, output JSON (result or error), console JSON, candles consumed
 *
 * Entry points (each one host->wasm call; all return the status also found in tb_result_t):
 *
 *   tb_alloc(n) / tb_free(p)    scratch memory for tb_load's strings (tb_alloc NUL-terminates)
 *   tb_init()                   fresh JSRuntime + JSContext with the prelude, no strategy yet:
 *                               what does not depend on tb_config or the strategy. The host may
 *                               snapshot linear memory right after it (see "init" below)
 *   tb_load(src, n, params, n, filename, n)
 *                               the state tb_init made (made now unless an untouched one
 *                               exists), evaluate the strategy, find its entry function
 *                               (tradingStrategy, evaluate, strategy)
 *   tb_push(n)                  append n candles to the history, no evaluation (warm-up)
 *   tb_step(n)                  append n candles, then evaluate once
 *   tb_run(n)                   for each of n candles: append, evaluate with currentPrice = its
 *                               close; stop at the first result that is not a hold
 *
 * Every entry re-arms the JS stack limit (JS_UpdateStackTop + JS_SetMaxStackSize) and the
 * wall-clock deadline checked by QuickJS's interrupt handler, so runaway recursion becomes a
 * catchable RangeError and a runaway loop an uncatchable "interrupted" error, both of which
 * leave the instance usable. The host's epoch deadline is only a backstop for the rare native
 * loop that never polls the interrupt handler.
 */
#include <malloc.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* QuickJS-NG is compiled inside this file (a unity build), for two reasons measured on backtests:
 * the hot helpers (js_dup, js_free_value_rt, ...) inline into the shim instead of costing a call
 * each, and the candles view below must read an object's reference count, weak-reference list
 * and fast-array storage, which quickjs.h does not expose. Everything used from the inside is
 * named in the "candles view" section; the sdist is pinned by sha256 (build.py), so these
 * internals cannot change under us. Upstream's warnings are upstream's business. */
#pragma clang diagnostic push
#pragma clang diagnostic ignored "-Weverything"
/* The interpreter's dispatch: quickjs.c uses computed gotos unless EMSCRIPTEN (or MSVC) is
 * defined, and nothing else in it or its headers reads EMSCRIPTEN that __wasi__ does not already
 * decide. wasm has no indirect branch, so clang turns the computed gotos into one switch fed by a
 * label table in linear memory: an extra load and bounds clamp per bytecode. A plain switch on the
 * opcode is one jump table (measured: 2-4% less CPU for a backtest of the SMA example). */
#define EMSCRIPTEN 1
#include "quickjs.c"
#undef EMSCRIPTEN
#pragma clang diagnostic pop

#define TB_EXPORT(name) __attribute__((export_name(name)))

/* Bump whenever a struct below or an entry point changes; the host refuses a mismatch. */
#define TB_ABI_VERSION 2
#define TB_INPUT_CAPACITY 1024
#define TB_CANDLE_FIELDS 6
/* Linear stack kept free below the JS budget for C frames (shim, libc, QuickJS natives). */
#define TB_STACK_RESERVE (16 * 1024)
/* Extra wall-clock time to describe an error after the deadline fired. */
#define TB_GRACE_MS 20

enum {
    TB_OK = 0,
    TB_JS_ERROR = 1,      /* the strategy threw (or a RangeError from deep recursion) */
    TB_BAD_RESULT = 2,    /* returned value is not a valid decision */
    TB_BAD_INPUT = 3,     /* host sent something invalid (non-finite candle, n too large) */
    TB_NO_FUNCTION = 4,   /* no tradingStrategy/evaluate/strategy function after load */
    TB_OUT_OF_MEMORY = 5, /* JS heap limit reached */
    TB_INTERRUPTED = 6,   /* wall-clock deadline reached */
    TB_STATE = 7,         /* entry called before a successful tb_load */
};

typedef struct {
    double interval_ms;        /* candle length: Date.now() = newest open time + interval_ms */
    uint64_t random_seed;      /* Math.random state after tb_load */
    uint32_t memory_limit;     /* JS_SetMemoryLimit, bytes */
    uint32_t stack_budget;     /* JS_SetMaxStackSize upper bound, bytes */
    uint32_t timeout_ms;       /* per evaluation */
    uint32_t load_timeout_ms;  /* for tb_load (top-level code of the strategy) */
    uint32_t max_candles;      /* history kept; oldest dropped */
    uint32_t max_result_bytes; /* UTF-8 bytes of the result JSON */
    uint32_t max_reason_chars;
    uint32_t max_log_lines;    /* console lines kept per call */
    uint32_t max_log_chars;    /* characters kept per console line */
    uint32_t reserved;
} tb_config_t;

typedef struct {
    double has_position;  /* 0 or 1 */
    double amount;
    double entry_price;
    double entry_time;
    double current_price; /* tb_step only; tb_run uses each candle's close */
    double reserved[3];
    double candles[TB_INPUT_CAPACITY * TB_CANDLE_FIELDS];
} tb_input_t;

typedef struct {
    int32_t status;
    uint32_t out_ptr;  /* result JSON on TB_OK (none for an all-hold tb_run), else error JSON */
    uint32_t out_len;
    uint32_t log_ptr;  /* JSON array of [level, text] pairs, or none */
    uint32_t log_len;
    uint32_t consumed; /* candles appended to the history by this call */
} tb_result_t;

typedef struct {
    uint32_t abi_version;
    uint32_t config;
    uint32_t input;
    uint32_t input_capacity;
    uint32_t result;
    uint32_t config_size;
    uint32_t input_size;
    uint32_t result_size;
} tb_io_t;

/* The prelude source, generated by build.py from tb_prelude.js. */
#include "tb_prelude.inc"

static tb_config_t tb_config;
static tb_input_t tb_input;
static tb_result_t tb_result;
static const tb_io_t tb_io_desc = {
    TB_ABI_VERSION,
    (uint32_t)(uintptr_t)&tb_config,
    (uint32_t)(uintptr_t)&tb_input,
    TB_INPUT_CAPACITY,
    (uint32_t)(uintptr_t)&tb_result,
    sizeof(tb_config_t),
    sizeof(tb_input_t),
    sizeof(tb_result_t),
};

enum { A_TIME, A_OPEN, A_HIGH, A_LOW, A_CLOSE, A_VOLUME,
       A_CANDLES, A_CURRENT_PRICE, A_POSITION, A_PARAMETERS,
       A_SIDE, A_AMOUNT, A_ENTRY_PRICE, A_ENTRY_TIME,
       A_SIGNAL, A_TAKE_PROFIT, A_STOP_LOSS, A_LIMIT_PRICE, A_ORDER_TYPE, A_REASON, A_INDICATORS,
       A_HOLD, A_BUY, A_SELL, A_COUNT };
static const char *const atom_names[A_COUNT] = {
    "time", "open", "high", "low", "close", "volume",
    "candles", "currentPrice", "position", "parameters",
    "side", "amount", "entryPrice", "entryTime",
    "signal", "takeProfit", "stopLoss", "limitPrice", "orderType", "reason", "indicators",
    "hold", "buy", "sell",
};

static struct {
    JSRuntime *rt;
    JSContext *ctx;
    JSAtom atoms[A_COUNT];
    JSValue entry;         /* the strategy's function */
    JSValue parameters;    /* deep-frozen */
    JSValue side_long;     /* the string "long" */
    JSValue hold;          /* the string "hold": the atom's own string, as a literal 'hold' is */
    JSValue buy, sell;     /* "buy" and "sell", likewise */
    JSShape *candle_shape, *context_shape, *position_shape; /* see "records" */
    JSValue finish, take_logs, describe_error; /* prelude helpers */
    JSValue limits, deep_freeze; /* the prelude's limits object (filled at load), its deepFreeze */
    int pristine;          /* tb_init's state, no strategy loaded into it yet */
    JSValue *history;      /* ring of frozen candle objects */
    JSValue *scratch;      /* ordered copy handed to JS_NewArrayFrom */
    uint32_t capacity, head, count;
    JSValue view;          /* the candles array handed out last, or JS_UNDEFINED (see below) */
    int view_used;         /* JS ran since the view was last checked */
    double now_ms;         /* what Date.now() returns */
    uint64_t rng;
    uint64_t deadline_ns;  /* 0 = none */
    int interrupted;       /* set when the interrupt handler stopped JS */
    char *out, *log;       /* growable output buffers */
    size_t out_cap, log_cap;
} S;

extern unsigned char __stack_low; /* lowest address of the linear stack (wasm-ld symbol) */

/* ---------------------------------------------------------------- JS heap limit
 *
 * Enforced by the allocator QuickJS is given, not by JS_SetMemoryLimit: when QuickJS's own
 * limit refuses an allocation, building the "out of memory" error can fail too, and QuickJS then
 * throws null, which looks exactly like a strategy's `throw null`. Counting here tells the shim
 * for certain that the heap ran out during this call, whatever ends up thrown. The count is
 * malloc_usable_size of what QuickJS holds (its arenas and large blocks), i.e. real footprint. */

static struct {
    size_t used;  /* bytes QuickJS currently holds */
    size_t limit; /* tb_config.memory_limit at load; 0 = none */
    int refused;  /* an allocation failed since the last entry call */
} H;

static int heap_admit(size_t more)
{
    if (H.limit && (more > H.limit || H.used > H.limit - more)) {
        H.refused = 1;
        return 0;
    }
    return 1;
}

static void *heap_took(void *p)
{
    if (p)
        H.used += malloc_usable_size(p);
    else
        H.refused = 1; /* linear memory itself is exhausted (store cap) */
    return p;
}

static void *heap_calloc(void *opaque, size_t count, size_t size)
{
    (void)opaque;
    if (size && count > SIZE_MAX / size) {
        H.refused = 1;
        return NULL;
    }
    return heap_admit(count * size) ? heap_took(calloc(count, size)) : NULL;
}

static void *heap_malloc(void *opaque, size_t size)
{
    (void)opaque;
    return heap_admit(size) ? heap_took(malloc(size)) : NULL;
}

static void heap_free(void *opaque, void *ptr)
{
    (void)opaque;
    if (!ptr)
        return;
    H.used -= malloc_usable_size(ptr);
    free(ptr);
}

static void *heap_realloc(void *opaque, void *ptr, size_t size)
{
    if (!ptr)
        return heap_malloc(opaque, size);
    size_t old = malloc_usable_size(ptr);
    if (size > old && !heap_admit(size - old))
        return NULL;
    void *grown = realloc(ptr, size);
    if (!grown) {
        H.refused = 1;
        return NULL;
    }
    H.used = H.used - old + malloc_usable_size(grown);
    return grown;
}

static size_t heap_usable_size(const void *ptr) { return malloc_usable_size((void *)ptr); }

static const JSMallocFunctions heap_functions = {
    heap_calloc, heap_malloc, heap_free, heap_realloc, heap_usable_size,
};

/* ---------------------------------------------------------------- small helpers */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void arm_deadline(uint32_t ms)
{
    S.interrupted = 0;
    S.deadline_ns = now_ns() + (uint64_t)ms * 1000000u;
}

static int interrupt_handler(JSRuntime *rt, void *opaque)
{
    (void)rt;
    (void)opaque;
    if (S.deadline_ns && now_ns() >= S.deadline_ns) {
        S.interrupted = 1;
        return 1;
    }
    return 0;
}

/* QuickJS's stack limit: `budget` below the caller's frame, at most down to the reserve. */
static __attribute__((noinline)) void set_stack_budget(size_t budget)
{
    JS_UpdateStackTop(S.rt);
    uintptr_t frame = (uintptr_t)__builtin_frame_address(0);
    uintptr_t floor = (uintptr_t)&__stack_low + TB_STACK_RESERVE;
    size_t room = frame > floor ? frame - floor : 0;
    JS_SetMaxStackSize(S.rt, budget < room ? budget : room);
}

/* Called at the top of every entry point: the host may enter from a different native depth
 * each time, so the stack top and the budget below it are recomputed. */
static void enter(void)
{
    tb_result.status = TB_OK;
    tb_result.out_len = 0;
    tb_result.log_len = 0;
    tb_result.consumed = 0;
    H.refused = 0;
    if (!S.rt)
        return;
    set_stack_budget(tb_config.stack_budget);
}

static int copy_out(char **buf, size_t *cap, const char *data, size_t len)
{
    if (len + 1 > *cap) {
        size_t want = len + 1 > 256 ? len + 1 : 256;
        char *grown = realloc(*buf, want);
        if (!grown)
            return -1;
        *buf = grown;
        *cap = want;
    }
    memcpy(*buf, data, len);
    (*buf)[len] = 0;
    return 0;
}

/* Returns -1 if the buffer could not grow (the host then sees no output). */
static int set_output(const char *data, size_t len)
{
    if (copy_out(&S.out, &S.out_cap, data, len) == 0) {
        tb_result.out_ptr = (uint32_t)(uintptr_t)S.out;
        tb_result.out_len = (uint32_t)len;
        return 0;
    }
    tb_result.out_len = 0;
    return -1;
}

static int32_t finish_call(int32_t status)
{
    tb_result.status = status;
    return status;
}

static int32_t fail_with(int32_t status, const char *name, const char *message)
{
    char buf[512];
    int n = snprintf(buf, sizeof buf, "{\"error\":{\"name\":\"%s\",\"message\":\"%s\",\"stack\":\"\"}}",
                     name, message);
    set_output(buf, (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1);
    return finish_call(status);
}

/* Copies a JS string into the output buffer; returns -1 if it is not a string or on OOM. */
static int output_js_string(JSValueConst value)
{
    size_t len;
    const char *s = JS_ToCStringLen(S.ctx, &len, value);
    if (!s)
        return -1;
    int r = set_output(s, len);
    JS_FreeCString(S.ctx, s);
    return r;
}

static void collect_logs(void)
{
    if (!S.ctx)
        return;
    JSValue logs = JS_Call(S.ctx, S.take_logs, JS_UNDEFINED, 0, NULL);
    if (JS_IsString(logs)) {
        size_t len;
        const char *s = JS_ToCStringLen(S.ctx, &len, logs);
        if (s && copy_out(&S.log, &S.log_cap, s, len) == 0) {
            tb_result.log_ptr = (uint32_t)(uintptr_t)S.log;
            tb_result.log_len = (uint32_t)len;
        }
        if (s)
            JS_FreeCString(S.ctx, s);
    } else if (JS_IsException(logs)) {
        JS_FreeValue(S.ctx, JS_GetException(S.ctx));
    }
    JS_FreeValue(S.ctx, logs);
}

/* Turns the pending JS exception into error JSON and a status: TB_INTERRUPTED if our deadline
 * stopped it, TB_OUT_OF_MEMORY if the heap ran out during this call (whatever was thrown:
 * null when even the error object could not be allocated), else `status`. */
static int32_t report_exception(int32_t status)
{
    JSValue exc = JS_GetException(S.ctx);
    if (S.interrupted) {
        status = TB_INTERRUPTED;
    } else if (H.refused) {
        status = TB_OUT_OF_MEMORY;
        JS_RunGC(S.rt); /* free what the failed allocation left behind before describing it */
    }
    /* describeError may read getters of a user-thrown object: give it a short deadline. */
    arm_deadline(TB_GRACE_MS);
    JSValue desc = JS_Call(S.ctx, S.describe_error, JS_UNDEFINED, 1, (JSValueConst *)&exc);
    JS_FreeValue(S.ctx, exc);
    if (JS_IsException(desc) || output_js_string(desc) < 0) {
        JS_FreeValue(S.ctx, JS_GetException(S.ctx));
        JS_FreeValue(S.ctx, desc);
        if (status == TB_INTERRUPTED)
            return fail_with(status, "InternalError", "interrupted");
        if (status == TB_OUT_OF_MEMORY)
            return fail_with(status, "InternalError", "out of memory");
        return fail_with(status, "Error", "(the error could not be described)");
    }
    JS_FreeValue(S.ctx, desc);
    return finish_call(status);
}

/* Runs queued promise jobs until none is left. -1: an uncatchable error (deadline, OOM) is
 * pending; reaction jobs turn ordinary exceptions into rejections themselves. */
static int drain_jobs(void)
{
    JSContext *job_ctx;
    for (;;) {
        int r = JS_ExecutePendingJob(S.rt, &job_ctx);
        if (r <= 0)
            return r;
    }
}

/* ---------------------------------------------------------------- host-backed JS functions */

static JSValue js_now(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    (void)this_val;
    (void)argc;
    (void)argv;
    return JS_NewNumber(ctx, S.now_ms);
}

/* splitmix64: tiny, full-period, good enough for strategy jitter; never a host entropy source. */
static JSValue js_random(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    (void)this_val;
    (void)argc;
    (void)argv;
    uint64_t z = (S.rng += UINT64_C(0x9E3779B97F4A7C15));
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    z ^= z >> 31;
    return JS_NewFloat64(ctx, (double)(z >> 11) * 0x1.0p-53);
}

/* ---------------------------------------------------------------- records
 *
 * Candles, the context and the position are plain objects with fixed keys. Each kind gets its
 * shape once per load, from a template object defined key by key (the shape an object literal
 * with those keys has), and every instance is then made from that shape with its values stored
 * directly: two allocations instead of a shape lookup and a property insertion per key (measured:
 * a fifth of a trivial strategy's evaluation). The properties are defined, never set, so a setter
 * a strategy puts on Object.prototype cannot intercept them. Uses QuickJS internals
 * (JS_NewObjectFromShape, JSObject.prop), like the candles view below. */

static JSShape *record_shape(const JSAtom *keys, int n, int flags)
{
    JSValue template = JS_NewObject(S.ctx);
    if (JS_IsException(template))
        return NULL;
    for (int i = 0; i < n; i++) {
        if (JS_DefinePropertyValue(S.ctx, template, keys[i], JS_UNDEFINED, flags) < 0) {
            JS_FreeValue(S.ctx, template);
            return NULL;
        }
    }
    JSShape *shape = js_dup_shape(JS_VALUE_GET_OBJ(template)->shape);
    JS_FreeValue(S.ctx, template);
    return shape;
}

/* A new object of `shape` holding `values` (taken over, also on failure). */
static JSValue new_record(JSShape *shape, JSValue *values)
{
    int n = shape->prop_count;
    JSValue obj = JS_NewObjectFromShape(S.ctx, js_dup_shape(shape), JS_CLASS_OBJECT, NULL);
    if (JS_IsException(obj)) {
        for (int i = 0; i < n; i++)
            JS_FreeValue(S.ctx, values[i]);
        return obj;
    }
    JSProperty *props = JS_VALUE_GET_OBJ(obj)->prop;
    for (int i = 0; i < n; i++)
        props[i].u.value = values[i];
    return obj;
}

static int make_record_shapes(void)
{
    /* Non-writable, non-configurable and (per object, below) not extensible = Object.isFrozen. */
    S.candle_shape = record_shape(&S.atoms[A_TIME], TB_CANDLE_FIELDS, JS_PROP_ENUMERABLE);
    JSAtom context_keys[4] = { S.atoms[A_CANDLES], S.atoms[A_CURRENT_PRICE], S.atoms[A_POSITION],
                               S.atoms[A_PARAMETERS] };
    S.context_shape = record_shape(context_keys, 4, JS_PROP_C_W_E);
    JSAtom position_keys[4] = { S.atoms[A_SIDE], S.atoms[A_AMOUNT], S.atoms[A_ENTRY_PRICE],
                                S.atoms[A_ENTRY_TIME] };
    S.position_shape = record_shape(position_keys, 4, JS_PROP_C_W_E);
    return S.candle_shape && S.context_shape && S.position_shape ? 0 : -1;
}

/* ---------------------------------------------------------------- candles view
 *
 * Each evaluation's context.candles is a fresh array of the history (a strategy may pop(),
 * sort() or extend its copy freely). Building one costs a reference-count increment per candle
 * (max_candles, 1000 by default), an 8 KiB copy and as many decrements when it is freed: about
 * a third of a simple strategy's evaluation in a backtest. So the shim keeps the array it handed
 * out and hands it out again, one candle further along, when that is indistinguishable from a
 * fresh array. It is, when after the evaluation
 *
 *   - nothing else references it: reference count 1 (ours), no weak reference (WeakRef,
 *     WeakMap/WeakSet key, FinalizationRegistry target), never used as a prototype; so no code
 *     can ever observe that it is the same object; and
 *   - its state is exactly that of a fresh array of the history: still a fast array with the
 *     initial Array shape (so no added, deleted or redefined property, same prototype),
 *     extensible, its length and every element the same as the history's.
 *
 * Otherwise it is released (the strategy keeps what it holds) and the next evaluation builds a
 * fresh one. The check runs lazily, before the view is next changed or handed out; it reads
 * QuickJS-NG internals (JS_REF_COUNT, JSObject fields, expand_fast_array), hence the unity
 * build. tests/sandbox covers each way a strategy can keep or change its array. */

static JSValue history_array(void)
{
    for (uint32_t i = 0; i < S.count; i++)
        S.scratch[i] = js_dup(S.history[(S.head + i) % S.capacity]);
    return JS_NewArrayFrom(S.ctx, (int)S.count, S.scratch);
}

/* NaN-boxed JSValues (wasm32) are 64-bit integers: equal bits, same value. */
_Static_assert(sizeof(JSValue) == sizeof(uint64_t), "JSValue is NaN-boxed on wasm32");

static int same_values(const JSValue *a, const JSValue *b, uint32_t n)
{
    uint64_t differ = 0;
    for (uint32_t i = 0; i < n; i++) /* no early exit: a straight loop of loads and ors */
        differ |= (uint64_t)a[i] ^ (uint64_t)b[i];
    return differ == 0;
}

static int view_intact(void)
{
    JSObject *p = JS_VALUE_GET_OBJ(S.view);
    JSValue length = p->prop[0].u.value;
    if (JS_REF_COUNT(p) != 1 || p->first_weak_ref || p->is_prototype || p->class_id != JS_CLASS_ARRAY ||
        !p->fast_array || !p->extensible || p->shape != S.ctx->array_shape || p->u.array.count != S.count ||
        JS_VALUE_GET_TAG(length) != JS_TAG_INT || (uint32_t)JS_VALUE_GET_INT(length) != S.count)
        return 0;
    uint32_t first = S.capacity - S.head < S.count ? S.capacity - S.head : S.count;
    const JSValue *values = p->u.array.u.values;
    return same_values(values, S.history + S.head, first) &&
           same_values(values + first, S.history, S.count - first);
}

static void view_drop(void)
{
    JS_FreeValue(S.ctx, S.view);
    S.view = JS_UNDEFINED;
    S.view_used = 0;
}

/* Before the history changes: keep the view only if it still matches the history. */
static void view_check(void)
{
    if (JS_IsUndefined(S.view) || !S.view_used)
        return;
    if (view_intact())
        S.view_used = 0;
    else
        view_drop();
}

/* After `candle` (a reference the history holds) was appended to the history. */
static void view_append(JSValue candle)
{
    if (JS_IsUndefined(S.view))
        return;
    JSObject *p = JS_VALUE_GET_OBJ(S.view);
    uint32_t n = p->u.array.count;
    if (n == S.count) { /* the history was full and dropped its oldest candle */
        JSValue *values = p->u.array.u.values;
        JS_FreeValue(S.ctx, values[0]);
        memmove(values, values + 1, (n - 1) * sizeof *values);
        values[n - 1] = js_dup(candle);
        return;
    }
    if (n + 1 > p->u.array.u1.size && expand_fast_array(S.ctx, p, n + 1) < 0) {
        JS_FreeValue(S.ctx, JS_GetException(S.ctx)); /* out of memory: build it afresh next time */
        view_drop();
        return;
    }
    p->u.array.u.values[n] = js_dup(candle);
    p->u.array.count = n + 1;
    p->prop[0].u.value = js_int32((int32_t)(n + 1));
}

/* The candles array for an evaluation (a new reference), or JS_EXCEPTION. */
static JSValue candles_array(void)
{
    view_check();
    if (JS_IsUndefined(S.view)) {
        JSValue fresh = history_array();
        if (JS_IsException(fresh))
            return fresh;
        S.view = fresh;
    }
    S.view_used = 1;
    return js_dup(S.view);
}

/* ---------------------------------------------------------------- history */

static int push_candle(const double *c)
{
    for (int i = 0; i < TB_CANDLE_FIELDS; i++)
        if (!isfinite(c[i]))
            return fail_with(TB_BAD_INPUT, "BadInput", "candle values must be finite numbers");
    /* Frozen through its shape's flags and extensible = false, not JS_FreezeObject afterwards,
     * which would give every candle its own copy of the shape. */
    JSValue fields[TB_CANDLE_FIELDS];
    for (int i = 0; i < TB_CANDLE_FIELDS; i++)
        fields[i] = js_number(c[i]);
    JSValue candle = new_record(S.candle_shape, fields);
    if (JS_IsException(candle))
        return report_exception(TB_JS_ERROR);
    JS_VALUE_GET_OBJ(candle)->extensible = false;
    view_check(); /* against the history as it was */
    if (S.count == S.capacity) {
        JS_FreeValue(S.ctx, S.history[S.head]);
        S.history[S.head] = candle;
        S.head = (S.head + 1) % S.capacity;
    } else {
        S.history[(S.head + S.count) % S.capacity] = candle;
        S.count++;
    }
    view_append(candle);
    S.now_ms = c[0] + tb_config.interval_ms;
    tb_result.consumed++;
    return TB_OK;
}

static JSValue make_context(double current_price)
{
    JSValue position = JS_NULL;
    if (tb_input.has_position != 0.0) {
        JSValue values[4] = {
            js_dup(S.side_long),
            js_number(tb_input.amount),
            js_number(tb_input.entry_price),
            js_number(tb_input.entry_time),
        };
        position = new_record(S.position_shape, values);
        if (JS_IsException(position))
            return position;
    }
    JSValue candles = candles_array();
    if (JS_IsException(candles)) {
        JS_FreeValue(S.ctx, position);
        return candles;
    }
    JSValue values[4] = { candles, js_number(current_price), position, js_dup(S.parameters) };
    return new_record(S.context_shape, values);
}

/* ---------------------------------------------------------------- evaluation */

/* Waits for an async strategy's promise; returns its value or JS_EXCEPTION with the status
 * in *status. */
static JSValue settle(JSValue promise, int32_t *status)
{
    if (drain_jobs() < 0) {
        JS_FreeValue(S.ctx, promise);
        *status = report_exception(TB_JS_ERROR);
        return JS_EXCEPTION;
    }
    JSValue value;
    switch (JS_PromiseState(S.ctx, promise)) {
    case JS_PROMISE_FULFILLED:
        value = JS_PromiseResult(S.ctx, promise);
        JS_FreeValue(S.ctx, promise);
        return value;
    case JS_PROMISE_REJECTED:
        JS_Throw(S.ctx, JS_PromiseResult(S.ctx, promise));
        JS_FreeValue(S.ctx, promise);
        *status = report_exception(TB_JS_ERROR);
        return JS_EXCEPTION;
    default:
        JS_FreeValue(S.ctx, promise);
        *status = fail_with(TB_BAD_RESULT, "InvalidResult",
                            "the strategy returned a promise that never settled");
        return JS_EXCEPTION;
    }
}

/* ---------------------------------------------------------------- holds checked natively
 *
 * In a backtest run most results are holds, and checking one with the prelude's finish() (a JS
 * call that reads eight keys and walks the indicators) cost about as much as a simple strategy's
 * own evaluation. hold_is_plain() decides natively, for the common case only, what finish() would
 * decide: that the result is a valid hold. It says so only when reading what finish() reads can
 * have no side effect and cannot differ from what it sees here: the result is an ordinary object
 * whose properties are all plain data properties; signal is its own property holding the
 * interned string 'hold' (what a literal 'hold' is); amount, takeProfit, stopLoss, limitPrice and
 * orderType are absent, undefined or null, and where absent no prototype has them either; reason
 * is absent, null or a short enough string; indicators is absent, null, or an ordinary object
 * whose enumerable own properties (what Object.keys lists) are plain data properties holding
 * finite numbers, strings or booleans within the result size budget. Anything else (getters,
 * proxies, arrays, an invalid value, a computed 'hold' string) returns 0 before anything was
 * read through JS, and finish() decides as always, error messages included. */

/* The atom is found nowhere on the prototype chain of `p`: reading it gives undefined, no getter runs. */
static int chain_lacks(JSObject *p, JSAtom atom)
{
    JSProperty *pr;
    for (JSObject *proto = p->shape->proto; proto; proto = proto->shape->proto) {
        if (proto->class_id != JS_CLASS_OBJECT || find_own_property(&pr, proto, atom))
            return 0;
    }
    return 1;
}

static int string_length(JSValueConst v, uint32_t *len)
{
    if (JS_VALUE_GET_TAG(v) != JS_TAG_STRING)
        return 0; /* ropes and everything else: finish() decides */
    *len = JS_VALUE_GET_STRING(v)->len;
    return 1;
}

static int indicators_plain(JSValueConst v)
{
    if (JS_VALUE_GET_TAG(v) != JS_TAG_OBJECT)
        return 0;
    JSObject *p = JS_VALUE_GET_OBJ(v);
    if (p->class_id != JS_CLASS_OBJECT || p->fast_array)
        return 0;
    int64_t budget = tb_config.max_result_bytes; /* the prelude's rough guard, step for step */
    JSShape *sh = p->shape;
    JSShapeProperty *prs = get_shape_prop(sh);
    for (int i = 0; i < sh->prop_count; i++) {
        JSAtom atom = prs[i].atom;
        if (atom == JS_ATOM_NULL || !(prs[i].flags & JS_PROP_ENUMERABLE))
            continue; /* deleted, or not listed by Object.keys */
        if (JS_AtomGetKind(S.ctx, atom) != JS_ATOM_KIND_STRING)
            continue; /* symbols are not listed either */
        if ((prs[i].flags & JS_PROP_TMASK) != JS_PROP_NORMAL)
            return 0;
        JSValue value = p->prop[i].u.value;
        uint32_t len;
        switch (JS_VALUE_GET_NORM_TAG(value)) { /* NaN-boxed: a double's raw tag is not FLOAT64 */
        case JS_TAG_INT:
            budget -= 24;
            break;
        case JS_TAG_FLOAT64:
            if (!isfinite(JS_VALUE_GET_FLOAT64(value)))
                return 0;
            budget -= 24;
            break;
        case JS_TAG_BOOL:
            budget -= 5;
            break;
        case JS_TAG_STRING:
            string_length(value, &len);
            budget -= len;
            break;
        default:
            return 0;
        }
    }
    return budget >= 0; /* the budget only falls, so never below 0 on the way either */
}

static int hold_is_plain(JSValueConst result)
{
    if (JS_VALUE_GET_TAG(result) != JS_TAG_OBJECT)
        return 0;
    JSObject *p = JS_VALUE_GET_OBJ(result);
    if (p->class_id != JS_CLASS_OBJECT || p->fast_array)
        return 0;
    enum { SEEN_SIGNAL = 1, SEEN_AMOUNT = 2, SEEN_TAKE_PROFIT = 4, SEEN_STOP_LOSS = 8,
           SEEN_LIMIT_PRICE = 16, SEEN_ORDER_TYPE = 32, SEEN_REASON = 64, SEEN_INDICATORS = 128 };
    static const int checked[] = { A_AMOUNT, A_TAKE_PROFIT, A_STOP_LOSS, A_LIMIT_PRICE, A_ORDER_TYPE,
                                   A_REASON, A_INDICATORS };
    static const int seen_bit[] = { SEEN_AMOUNT, SEEN_TAKE_PROFIT, SEEN_STOP_LOSS, SEEN_LIMIT_PRICE,
                                    SEEN_ORDER_TYPE, SEEN_REASON, SEEN_INDICATORS };
    int seen = 0;
    JSShape *sh = p->shape;
    JSShapeProperty *prs = get_shape_prop(sh);
    for (int i = 0; i < sh->prop_count; i++) {
        JSAtom atom = prs[i].atom;
        if (atom == JS_ATOM_NULL)
            continue;
        if ((prs[i].flags & JS_PROP_TMASK) != JS_PROP_NORMAL)
            return 0;
        JSValue value = p->prop[i].u.value;
        int tag = JS_VALUE_GET_NORM_TAG(value);
        int absent = tag == JS_TAG_UNDEFINED || tag == JS_TAG_NULL;
        if (atom == S.atoms[A_SIGNAL]) {
            if (tag != JS_TAG_STRING || JS_VALUE_GET_PTR(value) != JS_VALUE_GET_PTR(S.hold))
                return 0;
            seen |= SEEN_SIGNAL;
        } else if (atom == S.atoms[A_REASON]) {
            uint32_t len;
            if (!absent && !(string_length(value, &len) && len <= tb_config.max_reason_chars))
                return 0;
            seen |= SEEN_REASON;
        } else if (atom == S.atoms[A_INDICATORS]) {
            if (!absent && !indicators_plain(value))
                return 0;
            seen |= SEEN_INDICATORS;
        } else {
            for (int k = 0; k < 5; k++) { /* amount ... orderType: only absent is plain */
                if (atom == S.atoms[checked[k]]) {
                    if (!absent)
                        return 0;
                    seen |= seen_bit[k];
                }
            }
        }
    }
    if (!(seen & SEEN_SIGNAL))
        return 0;
    for (int k = 0; k < 7; k++)
        if (!(seen & seen_bit[k]) && !chain_lacks(p, S.atoms[checked[k]]))
            return 0;
    return 1;
}

/* ---------------------------------------------------------------- buys and sells written natively
 *
 * A buy or sell ends every backtest batch, and finish() (a JS call that validates the result and
 * JSON.stringifies a copy) cost a fifth of the batch's time in the guest. signal_json() writes,
 * for the common case only, the JSON finish() would return, byte for byte: the result is an
 * ordinary object of plain data properties (as for a plain hold); signal is its own property
 * holding the interned 'buy' or 'sell'; amount, takeProfit and stopLoss are absent, undefined,
 * null or finite positive numbers; limitPrice and orderType are absent, undefined or null;
 * reason and indicators are as for a plain hold, and no indicator key is an array index (which
 * Object.keys would list first). Where a key is absent no prototype has it. The keys come out in
 * finish()'s order (signal, amount, takeProfit, stopLoss, reason, indicators), indicators in
 * insertion order, numbers as JSON.stringify writes them (JS_ToString), strings quoted by the
 * same function JSON.stringify uses. Anything else returns 0 before anything was read through JS,
 * and finish() decides as always. tests/sandbox/test_js_results.py compares the two. */

enum { F_AMOUNT, F_TAKE_PROFIT, F_STOP_LOSS, F_REASON, F_INDICATORS, F_COUNT };

static int positive_number(JSValueConst v)
{
    switch (JS_VALUE_GET_NORM_TAG(v)) {
    case JS_TAG_INT:
        return JS_VALUE_GET_INT(v) > 0;
    case JS_TAG_FLOAT64:
        return isfinite(JS_VALUE_GET_FLOAT64(v)) && JS_VALUE_GET_FLOAT64(v) > 0;
    default:
        return 0;
    }
}

/* 1 and the fields (borrowed from the result; JS_UNDEFINED where absent or null) for a plain buy
 * or sell, else 0. */
static int signal_is_plain(JSValueConst result, JSValue *signal, JSValue fields[F_COUNT])
{
    if (JS_VALUE_GET_TAG(result) != JS_TAG_OBJECT)
        return 0;
    JSObject *p = JS_VALUE_GET_OBJ(result);
    if (p->class_id != JS_CLASS_OBJECT || p->fast_array)
        return 0;
    static const int field_atoms[F_COUNT] = { A_AMOUNT, A_TAKE_PROFIT, A_STOP_LOSS, A_REASON, A_INDICATORS };
    static const int never[2] = { A_LIMIT_PRICE, A_ORDER_TYPE }; /* only absent, undefined or null */
    int seen = 0; /* bits: fields, then never[], then signal */
    const int seen_signal = 1 << (F_COUNT + 2);
    for (int k = 0; k < F_COUNT; k++)
        fields[k] = JS_UNDEFINED;
    JSShape *sh = p->shape;
    JSShapeProperty *prs = get_shape_prop(sh);
    for (int i = 0; i < sh->prop_count; i++) {
        JSAtom atom = prs[i].atom;
        if (atom == JS_ATOM_NULL)
            continue;
        if ((prs[i].flags & JS_PROP_TMASK) != JS_PROP_NORMAL)
            return 0;
        JSValue value = p->prop[i].u.value;
        int tag = JS_VALUE_GET_NORM_TAG(value);
        int absent = tag == JS_TAG_UNDEFINED || tag == JS_TAG_NULL;
        if (atom == S.atoms[A_SIGNAL]) {
            void *ptr = JS_VALUE_GET_PTR(value);
            if (tag != JS_TAG_STRING || (ptr != JS_VALUE_GET_PTR(S.buy) && ptr != JS_VALUE_GET_PTR(S.sell)))
                return 0;
            *signal = value;
            seen |= seen_signal;
            continue;
        }
        for (int k = 0; k < F_COUNT; k++) {
            if (atom != S.atoms[field_atoms[k]])
                continue;
            seen |= 1 << k;
            if (absent)
                break;
            if (k == F_REASON) {
                uint32_t len;
                if (!(string_length(value, &len) && len <= tb_config.max_reason_chars))
                    return 0;
            } else if (k == F_INDICATORS) {
                if (!indicators_plain(value))
                    return 0;
                JSObject *q = JS_VALUE_GET_OBJ(value);
                JSShapeProperty *qprs = get_shape_prop(q->shape);
                for (int j = 0; j < q->shape->prop_count; j++) {
                    uint32_t index;
                    if (qprs[j].atom != JS_ATOM_NULL && JS_AtomIsArrayIndex(S.ctx, &index, qprs[j].atom))
                        return 0;
                }
            } else if (!positive_number(value)) {
                return 0;
            }
            fields[k] = value;
            break;
        }
        for (int k = 0; k < 2; k++) {
            if (atom == S.atoms[never[k]]) {
                if (!absent)
                    return 0;
                seen |= 1 << (F_COUNT + k);
            }
        }
    }
    if (!(seen & seen_signal))
        return 0;
    for (int k = 0; k < F_COUNT + 2; k++) {
        JSAtom atom = S.atoms[k < F_COUNT ? field_atoms[k] : never[k - F_COUNT]];
        if (!(seen & (1 << k)) && !chain_lacks(p, atom))
            return 0;
    }
    return 1;
}

/* Appends a new string (taken over), or records the failure that made it an exception. */
static void put_string(StringBuffer *b, JSValue v)
{
    if (JS_IsException(v))
        string_buffer_set_error(b);
    else
        string_buffer_concat_value_free(b, v);
}

/* The result JSON of a plain buy or sell (a new string), JS_UNDEFINED if it is not plain, or
 * JS_EXCEPTION (out of memory). */
static JSValue signal_json(JSValueConst result)
{
    JSValue signal, fields[F_COUNT];
    if (!signal_is_plain(result, &signal, fields))
        return JS_UNDEFINED;
    static const char *const names[F_COUNT] = { ",\"amount\":", ",\"takeProfit\":", ",\"stopLoss\":",
                                                ",\"reason\":", ",\"indicators\":" };
    StringBuffer b;
    string_buffer_init(S.ctx, &b, 128);
    string_buffer_puts8(&b, JS_VALUE_GET_PTR(signal) == JS_VALUE_GET_PTR(S.buy) ? "{\"signal\":\"buy\""
                                                                                 : "{\"signal\":\"sell\"");
    for (int k = 0; k < F_COUNT; k++) {
        JSValue value = fields[k];
        if (JS_IsUndefined(value))
            continue;
        string_buffer_puts8(&b, names[k]);
        if (k == F_REASON) {
            put_string(&b, JS_ToQuotedString(S.ctx, value));
        } else if (k != F_INDICATORS) {
            string_buffer_concat_value(&b, value); /* a number: JS_ToString, as JSON.stringify */
        } else {
            JSObject *q = JS_VALUE_GET_OBJ(value);
            JSShapeProperty *qprs = get_shape_prop(q->shape);
            int first = 1;
            string_buffer_putc8(&b, '{');
            for (int j = 0; j < q->shape->prop_count; j++) {
                JSAtom atom = qprs[j].atom;
                if (atom == JS_ATOM_NULL || !(qprs[j].flags & JS_PROP_ENUMERABLE) ||
                    JS_AtomGetKind(S.ctx, atom) != JS_ATOM_KIND_STRING)
                    continue; /* what Object.keys leaves out (indicators_plain skipped them too) */
                if (!first)
                    string_buffer_putc8(&b, ',');
                first = 0;
                put_string(&b, JS_ToQuotedStringFree(S.ctx, JS_AtomToString(S.ctx, atom)));
                string_buffer_putc8(&b, ':');
                JSValue item = q->prop[j].u.value;
                switch (JS_VALUE_GET_NORM_TAG(item)) {
                case JS_TAG_STRING:
                    put_string(&b, JS_ToQuotedString(S.ctx, item));
                    break;
                case JS_TAG_BOOL:
                    string_buffer_puts8(&b, JS_VALUE_GET_BOOL(item) ? "true" : "false");
                    break;
                default: /* a finite number (indicators_plain) */
                    string_buffer_concat_value(&b, item);
                }
            }
            string_buffer_putc8(&b, '}');
        }
    }
    string_buffer_putc8(&b, '}');
    return string_buffer_end(&b);
}

/* One evaluation. With hold_is_empty, a hold produces no output (tb_run keeps going). */
static int32_t evaluate(double current_price, int hold_is_empty)
{
    arm_deadline(tb_config.timeout_ms);
    JSValue context = make_context(current_price);
    if (JS_IsException(context))
        return report_exception(TB_JS_ERROR);
    JSValue result = JS_Call(S.ctx, S.entry, JS_UNDEFINED, 1, (JSValueConst *)&context);
    JS_FreeValue(S.ctx, context);
    if (JS_IsException(result))
        return report_exception(TB_JS_ERROR);
    int32_t status = TB_OK;
    if (JS_IsPromise(result)) {
        result = settle(result, &status);
        if (JS_IsException(result))
            return status;
    } else if (drain_jobs() < 0) { /* stray jobs must not leak into the next evaluation */
        JS_FreeValue(S.ctx, result);
        return report_exception(TB_JS_ERROR);
    }
    if (hold_is_empty && hold_is_plain(result)) { /* what finish() would say, without calling it */
        JS_FreeValue(S.ctx, result);
        return finish_call(TB_OK);
    }
    JSValue json = signal_json(result);
    if (JS_IsUndefined(json)) { /* not a plain buy or sell: finish() decides */
        JSValue args[2] = { result, JS_NewBool(S.ctx, hold_is_empty) };
        json = JS_Call(S.ctx, S.finish, JS_UNDEFINED, 2, (JSValueConst *)args);
    }
    JS_FreeValue(S.ctx, result);
    if (JS_IsException(json)) /* a getter or proxy trap on the result threw, or out of memory */
        return report_exception(TB_JS_ERROR);
    size_t len;
    const char *s = JS_ToCStringLen(S.ctx, &len, json);
    JS_FreeValue(S.ctx, json);
    if (!s)
        return report_exception(TB_JS_ERROR);
    if (len > 0 && s[0] == '!') {
        set_output(s + 1, len - 1);
        status = TB_BAD_RESULT;
    } else if (len > tb_config.max_result_bytes) {
        char message[160];
        snprintf(message, sizeof message, "the result is %zu bytes of JSON, the limit is %u",
                 len, (unsigned)tb_config.max_result_bytes);
        status = fail_with(TB_BAD_RESULT, "InvalidResult", message);
    } else if (len > 0 && set_output(s, len) < 0) {
        status = TB_OUT_OF_MEMORY; /* never let a lost buy/sell look like a hold */
    }
    JS_FreeCString(S.ctx, s);
    return finish_call(status);
}

/* ---------------------------------------------------------------- load / unload */

/* Frees everything tb_load created; safe on a partly built state. */
static void unload(void)
{
    if (S.ctx) {
        JS_FreeValue(S.ctx, S.view);
        for (uint32_t i = 0; i < S.count; i++)
            JS_FreeValue(S.ctx, S.history[(S.head + i) % S.capacity]);
        JSValue *values[] = { &S.entry, &S.parameters, &S.side_long, &S.hold, &S.buy, &S.sell, &S.finish, &S.take_logs,
                              &S.describe_error, &S.limits, &S.deep_freeze };
        for (size_t i = 0; i < sizeof values / sizeof values[0]; i++)
            JS_FreeValue(S.ctx, *values[i]);
        JSShape *shapes[] = { S.candle_shape, S.context_shape, S.position_shape };
        for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
            if (shapes[i])
                js_free_shape(S.rt, shapes[i]);
        for (int i = 0; i < A_COUNT; i++)
            JS_FreeAtom(S.ctx, S.atoms[i]);
        JS_FreeContext(S.ctx);
    }
    if (S.rt)
        JS_FreeRuntime(S.rt);
    H.used = 0; /* everything QuickJS held went with its runtime */
    free(S.history);
    free(S.scratch);
    JSValue *values[] = { &S.entry, &S.parameters, &S.side_long, &S.hold, &S.buy, &S.sell, &S.finish, &S.take_logs,
                          &S.describe_error, &S.limits, &S.deep_freeze };
    for (size_t i = 0; i < sizeof values / sizeof values[0]; i++)
        *values[i] = JS_UNDEFINED;
    S.pristine = 0;
    memset(S.atoms, 0, sizeof S.atoms);
    S.ctx = NULL;
    S.rt = NULL;
    S.history = S.scratch = NULL;
    S.capacity = S.head = S.count = 0;
    S.view = JS_UNDEFINED;
    S.view_used = 0;
    S.candle_shape = S.context_shape = S.position_shape = NULL;
}

/* JS_NewContext without `performance` (a host clock) and with nothing from quickjs-libc: no
 * std, os, print, timers or module loader exist in this build at all. */
static JSContext *new_context(JSRuntime *rt)
{
    JSContext *ctx = JS_NewContextRaw(rt);
    if (!ctx)
        return NULL;
    if (JS_AddIntrinsicBaseObjects(ctx) || JS_AddIntrinsicDate(ctx) || JS_AddIntrinsicEval(ctx) ||
        JS_AddIntrinsicRegExp(ctx) || JS_AddIntrinsicJSON(ctx) || JS_AddIntrinsicProxy(ctx) ||
        JS_AddIntrinsicMapSet(ctx) || JS_AddIntrinsicTypedArrays(ctx) ||
        JS_AddIntrinsicPromise(ctx) || JS_AddIntrinsicWeakRef(ctx) || JS_AddIntrinsicAToB(ctx)) {
        JS_FreeContext(ctx);
        return NULL;
    }
    return ctx;
}

/* The prelude's limits, read by it on each use: only the host's tb_config, set at each load. */
static const char *const limit_names[4] = { "maxLogLines", "maxLogChars", "maxResultBytes", "maxReasonChars" };

/* Evaluates the prelude and keeps its helpers; -1 on failure (exception left pending). The
 * limits object it is given is filled by set_limits at load, before any strategy code runs. */
static int install_prelude(void)
{
    JSValue factory = JS_Eval(S.ctx, tb_prelude_js, sizeof tb_prelude_js - 1, "<tradebotd>",
                              JS_EVAL_TYPE_GLOBAL);
    if (JS_IsException(factory))
        return -1;
    S.limits = JS_NewObject(S.ctx);
    for (int i = 0; i < 4; i++)
        JS_SetPropertyStr(S.ctx, S.limits, limit_names[i], JS_NewUint32(S.ctx, 0));
    JSValue args[3] = {
        JS_NewCFunction(S.ctx, js_now, "now", 0),
        JS_NewCFunction(S.ctx, js_random, "random", 0),
        js_dup(S.limits),
    };
    JSValue helpers = JS_Call(S.ctx, factory, JS_UNDEFINED, 3, (JSValueConst *)args);
    for (int i = 0; i < 3; i++)
        JS_FreeValue(S.ctx, args[i]);
    JS_FreeValue(S.ctx, factory);
    if (JS_IsException(helpers))
        return -1;
    S.finish = JS_GetPropertyStr(S.ctx, helpers, "finish");
    S.take_logs = JS_GetPropertyStr(S.ctx, helpers, "takeLogs");
    S.describe_error = JS_GetPropertyStr(S.ctx, helpers, "describeError");
    S.deep_freeze = JS_GetPropertyStr(S.ctx, helpers, "deepFreeze");
    JS_FreeValue(S.ctx, helpers);
    return 0;
}

static int set_limits(void)
{
    const uint32_t values[4] = { tb_config.max_log_lines, tb_config.max_log_chars, tb_config.max_result_bytes,
                                 tb_config.max_reason_chars };
    for (int i = 0; i < 4; i++)
        if (JS_SetPropertyStr(S.ctx, S.limits, limit_names[i], JS_NewUint32(S.ctx, values[i])) < 0)
            return -1;
    return 0;
}

/* ---------------------------------------------------------------- init
 *
 * What every strategy's instance starts from: a runtime, a context with the intrinsics, our
 * atoms and record shapes, and the prelude; nothing in it depends on tb_config or on the
 * strategy (the prelude's limits are filled at load). The host may call tb_init once, copy
 * the pages of linear memory it changed, and start every instance from that copy instead of
 * calling _initialize (tradebotd/sandbox/snapshot.py): linear memory is addressed from 0 in
 * every instance, so the copy is valid as is, the stack pointer is back at its start between
 * calls, and nothing here holds host state (no open file, no host reference; the clock is read
 * anew on each call). Context creation seeds QuickJS's Map hash salt from the clock: instances
 * started from one copy share one salt, which changes no result (Map and Set iterate in
 * insertion order). tb_load without a pristine state calls init first, so a fresh instance goes
 * through exactly these steps too. */
static int32_t init(void)
{
    H.limit = 0; /* the heap limit applies from load on, to everything held then */
    S.rt = JS_NewRuntime2(&heap_functions, NULL);
    if (!S.rt)
        return fail_with(TB_OUT_OF_MEMORY, "InternalError", "out of memory");
    JS_SetInterruptHandler(S.rt, interrupt_handler, NULL);
    set_stack_budget(JS_DEFAULT_STACK_SIZE); /* not tb_config's: it may not be written yet */
    S.ctx = new_context(S.rt);
    if (!S.ctx)
        return fail_with(TB_OUT_OF_MEMORY, "InternalError", "out of memory");
    for (int i = 0; i < A_COUNT; i++)
        S.atoms[i] = JS_NewAtom(S.ctx, atom_names[i]);
    S.side_long = JS_NewString(S.ctx, "long");
    S.hold = JS_AtomToString(S.ctx, S.atoms[A_HOLD]);
    S.buy = JS_AtomToString(S.ctx, S.atoms[A_BUY]);
    S.sell = JS_AtomToString(S.ctx, S.atoms[A_SELL]);
    if (make_record_shapes() < 0)
        return fail_with(TB_OUT_OF_MEMORY, "InternalError", "out of memory");
    S.deadline_ns = 0; /* our own code: no deadline */
    if (install_prelude() < 0) {
        JS_FreeValue(S.ctx, JS_GetException(S.ctx));
        return fail_with(TB_STATE, "InternalError", "the sandbox prelude failed to load");
    }
    S.pristine = 1;
    return TB_OK;
}

static const char entry_lookup[] =
    "typeof tradingStrategy === 'function' ? tradingStrategy"
    " : typeof evaluate === 'function' ? evaluate"
    " : typeof strategy === 'function' ? strategy : undefined";

/* The body of tb_load; the caller unloads on any status but TB_OK. */
static int32_t load(const char *source, uint32_t source_len, const char *params,
                    uint32_t params_len, const char *filename)
{
    if (!S.pristine) {
        unload();
        int32_t status = init();
        if (status != TB_OK)
            return status;
    }
    S.pristine = 0;
    enter(); /* the stack budget of tb_config */
    S.capacity = tb_config.max_candles ? tb_config.max_candles : 1;
    H.limit = tb_config.memory_limit;
    S.history = calloc(S.capacity, sizeof(JSValue));
    S.scratch = calloc(S.capacity, sizeof(JSValue));
    if (!S.history || !S.scratch || set_limits() < 0)
        return fail_with(TB_OUT_OF_MEMORY, "InternalError", "out of memory");
    arm_deadline(tb_config.load_timeout_ms);

    JSValue parsed = JS_ParseJSON(S.ctx, params, params_len, "<parameters>");
    if (JS_IsException(parsed))
        return report_exception(TB_BAD_INPUT);
    S.parameters = JS_Call(S.ctx, S.deep_freeze, JS_UNDEFINED, 1, (JSValueConst *)&parsed);
    JS_FreeValue(S.ctx, parsed);
    if (JS_IsException(S.parameters))
        return report_exception(TB_BAD_INPUT);

    JSValue done = JS_Eval(S.ctx, source, source_len, filename, JS_EVAL_TYPE_GLOBAL);
    if (JS_IsException(done))
        return report_exception(TB_JS_ERROR);
    JS_FreeValue(S.ctx, done);
    if (drain_jobs() < 0)
        return report_exception(TB_JS_ERROR);

    /* Evaluated as a second script so top-level const/let bindings are visible. */
    S.entry = JS_Eval(S.ctx, entry_lookup, sizeof entry_lookup - 1, "<tradebotd>",
                      JS_EVAL_TYPE_GLOBAL);
    if (JS_IsException(S.entry))
        return report_exception(TB_JS_ERROR);
    if (!JS_IsFunction(S.ctx, S.entry))
        return fail_with(TB_NO_FUNCTION, "NoEntryFunction",
                         "define a function tradingStrategy(context), evaluate(context) "
                         "or strategy(context)");
    return TB_OK;
}

TB_EXPORT("tb_io") const tb_io_t *tb_io(void) { return &tb_io_desc; }

TB_EXPORT("tb_alloc") void *tb_alloc(uint32_t n)
{
    char *p = malloc((size_t)n + 1);
    if (p)
        p[n] = 0;
    return p;
}

TB_EXPORT("tb_free") void tb_free(void *p) { free(p); }

TB_EXPORT("tb_init") int32_t tb_init(void)
{
    enter();
    unload();
    int32_t status = init();
    if (status != TB_OK)
        unload();
    return finish_call(status);
}

/* source, params and filename come from tb_alloc, so they are NUL-terminated. */
TB_EXPORT("tb_load")
int32_t tb_load(const char *source, uint32_t source_len, const char *params, uint32_t params_len,
                const char *filename, uint32_t filename_len)
{
    (void)filename_len;
    enter();
    S.rng = tb_config.random_seed;
    S.now_ms = 0;
    int32_t status = load(source, source_len, params, params_len, filename);
    if (S.ctx)
        collect_logs(); /* console output of the top-level code, also when it failed */
    if (status != TB_OK)
        unload();
    return finish_call(status);
}

static int32_t check_entry(uint32_t n)
{
    enter();
    if (!S.ctx || !JS_IsFunction(S.ctx, S.entry))
        return fail_with(TB_STATE, "InternalError", "no strategy loaded");
    if (n > TB_INPUT_CAPACITY)
        return fail_with(TB_BAD_INPUT, "BadInput", "too many candles for the input buffer");
    arm_deadline(tb_config.timeout_ms);
    return TB_OK;
}

TB_EXPORT("tb_push") int32_t tb_push(uint32_t n)
{
    int32_t status = check_entry(n);
    for (uint32_t i = 0; status == TB_OK && i < n; i++)
        status = push_candle(&tb_input.candles[i * TB_CANDLE_FIELDS]);
    return finish_call(status);
}

TB_EXPORT("tb_step") int32_t tb_step(uint32_t n)
{
    int32_t status = check_entry(n);
    for (uint32_t i = 0; status == TB_OK && i < n; i++)
        status = push_candle(&tb_input.candles[i * TB_CANDLE_FIELDS]);
    if (status == TB_OK)
        status = evaluate(tb_input.current_price, 0);
    collect_logs();
    return finish_call(status);
}

TB_EXPORT("tb_run") int32_t tb_run(uint32_t n)
{
    int32_t status = check_entry(n);
    for (uint32_t i = 0; status == TB_OK && i < n; i++) {
        const double *candle = &tb_input.candles[i * TB_CANDLE_FIELDS];
        status = push_candle(candle);
        if (status == TB_OK)
            status = evaluate(candle[4], 1);
        if (tb_result.out_len > 0)
            break; /* a buy/sell result or an error */
    }
    collect_logs();
    return finish_call(status);
}

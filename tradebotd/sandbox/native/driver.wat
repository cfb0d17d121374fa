;; The driver of native strategies (tradebotd/sandbox/native): ours, not the strategy's.
;; Instantiated next to the strategy in the same Store, over its memory and its tb_evaluate, it
;; appends the candles the host staged to the columns and calls tb_evaluate. Being wasm, it loops
;; over a batch at wasm speed, and it enforces the semantics (fresh outputs per evaluation, history
;; capped at max_candles, stop at the first non-hold or invalid output) whatever the strategy does.
;; The host's block it works in is laid out by guest.Layout.
(module
  (import "strategy" "memory" (memory 0))
  (import "strategy" "tb_evaluate" (func $evaluate (param i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (global $position (mut i32) (i32.const 0))  ;; f64[4] written by the host
  (global $stage (mut i32) (i32.const 0))     ;; f64[RUN_CHUNK][6] candles, written by the host
  (global $result (mut i32) (i32.const 0))    ;; f64[2]: signal, stopped; then the strategy's outputs
  (global $out (mut i32) (i32.const 0))       ;; f64[5 + indicators]: the strategy's outputs
  (global $columns (mut i32) (i32.const 0))   ;; f64[6][rows]
  (global $rows (mut i32) (i32.const 0))
  (global $capacity (mut i32) (i32.const 0))  ;; max_candles
  (global $reasons (mut i32) (i32.const 0))
  (global $indicators (mut i32) (i32.const 0))
  (global $filled (mut i32) (i32.const 0))    ;; rows of the columns in use
  ;; Candles appended since instantiation, for the host after a trap. A global of ours, so the
  ;; strategy cannot touch it (it can write anywhere in its memory).
  (global $appended (export "appended") (mut i64) (i64.const 0))

  (func (export "setup") (param $position i32) (param $stage i32) (param $result i32) (param $columns i32)
      (param $rows i32) (param $capacity i32) (param $reasons i32) (param $indicators i32)
    (global.set $position (local.get $position))
    (global.set $stage (local.get $stage))
    (global.set $result (local.get $result))
    (global.set $out (i32.add (local.get $result) (i32.const 16)))
    (global.set $columns (local.get $columns))
    (global.set $rows (local.get $rows))
    (global.set $capacity (local.get $capacity))
    (global.set $reasons (local.get $reasons))
    (global.set $indicators (local.get $indicators))
    (global.set $filled (i32.const 0)))

  ;; Appends staged candle $i; when the columns are full, first moves the newest capacity - 1
  ;; rows of each column to its front (rows >= 2 * capacity, so this is amortised O(1)).
  (func $append (param $i i32)
    (local $column_bytes i32) (local $keep i32) (local $c i32) (local $src i32) (local $dst i32)
    (local.set $column_bytes (i32.shl (global.get $rows) (i32.const 3)))
    (if (i32.eq (global.get $filled) (global.get $rows))
      (then
        (local.set $keep (i32.sub (global.get $capacity) (i32.const 1)))
        (loop $shift
          (local.set $dst (i32.add (global.get $columns) (i32.mul (local.get $c) (local.get $column_bytes))))
          (memory.copy (local.get $dst)
            (i32.add (local.get $dst) (i32.shl (i32.sub (global.get $rows) (local.get $keep)) (i32.const 3)))
            (i32.shl (local.get $keep) (i32.const 3)))
          (local.set $c (i32.add (local.get $c) (i32.const 1)))
          (br_if $shift (i32.lt_u (local.get $c) (i32.const 6))))
        (global.set $filled (local.get $keep))))
    (local.set $src (i32.add (global.get $stage) (i32.mul (local.get $i) (i32.const 48))))
    (local.set $dst (i32.add (global.get $columns) (i32.shl (global.get $filled) (i32.const 3))))
    (f64.store (local.get $dst) (f64.load (local.get $src)))
    (local.set $dst (i32.add (local.get $dst) (local.get $column_bytes)))
    (f64.store (local.get $dst) (f64.load offset=8 (local.get $src)))
    (local.set $dst (i32.add (local.get $dst) (local.get $column_bytes)))
    (f64.store (local.get $dst) (f64.load offset=16 (local.get $src)))
    (local.set $dst (i32.add (local.get $dst) (local.get $column_bytes)))
    (f64.store (local.get $dst) (f64.load offset=24 (local.get $src)))
    (local.set $dst (i32.add (local.get $dst) (local.get $column_bytes)))
    (f64.store (local.get $dst) (f64.load offset=32 (local.get $src)))
    (local.set $dst (i32.add (local.get $dst) (local.get $column_bytes)))
    (f64.store (local.get $dst) (f64.load offset=40 (local.get $src)))
    (global.set $filled (i32.add (global.get $filled) (i32.const 1)))
    (global.set $appended (i64.add (global.get $appended) (i64.const 1))))

  ;; push and run also return the memory size in pages: the host learns whether memory grew
  ;; (and may have moved) without another call into wasmtime.
  (func (export "push") (param $n i32) (result i32 i32)
    (local $i i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (call $append (local.get $i))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (local.get $n) (memory.size))

  ;; tb_evaluate on the newest min(filled, capacity) rows, with zeroed outputs.
  (func $evaluate_newest (result i32)
    (local $n i32) (local $first i32) (local $column_bytes i32)
    (local.set $n (select (global.get $filled) (global.get $capacity)
                          (i32.lt_u (global.get $filled) (global.get $capacity))))
    (local.set $column_bytes (i32.shl (global.get $rows) (i32.const 3)))
    (local.set $first (i32.add (global.get $columns)
                               (i32.shl (i32.sub (global.get $filled) (local.get $n)) (i32.const 3))))
    (memory.fill (global.get $out) (i32.const 0)
                 (i32.shl (i32.add (global.get $indicators) (i32.const 5)) (i32.const 3)))
    (call $evaluate
      (local.get $n)
      (local.get $first)
      (i32.add (local.get $first) (local.get $column_bytes))
      (i32.add (local.get $first) (i32.mul (local.get $column_bytes) (i32.const 2)))
      (i32.add (local.get $first) (i32.mul (local.get $column_bytes) (i32.const 3)))
      (i32.add (local.get $first) (i32.mul (local.get $column_bytes) (i32.const 4)))
      (i32.add (local.get $first) (i32.mul (local.get $column_bytes) (i32.const 5)))
      (global.get $position)
      (global.get $out)))

  ;; 0 (none) or positive and finite; NaN fails every comparison.
  (func $optional_positive (param $x f64) (result i32)
    (i32.or (f64.eq (local.get $x) (f64.const 0))
            (i32.and (f64.gt (local.get $x) (f64.const 0)) (f64.lt (local.get $x) (f64.const inf)))))

  (func $whole_up_to (param $x f64) (param $max i32) (result i32)
    (i32.and (f64.eq (local.get $x) (f64.trunc (local.get $x)))
             (i32.and (f64.ge (local.get $x) (f64.const 0))
                      (f64.le (local.get $x) (f64.convert_i32_u (local.get $max))))))

  ;; The host validates every output it reports; this cheap check makes a batch stop at an
  ;; invalid hold too, so run_until_signal fails exactly where step would.
  (func $valid (result i32)
    (local $p i32) (local $end i32) (local $x f64)
    (local.set $p (global.get $out))
    (if (i32.eqz
          (i32.and
            (i32.and (call $optional_positive (f64.load (local.get $p)))
                     (call $optional_positive (f64.load offset=8 (local.get $p))))
            (i32.and (call $optional_positive (f64.load offset=16 (local.get $p)))
                     (i32.and (call $whole_up_to (f64.load offset=24 (local.get $p)) (global.get $reasons))
                              (call $whole_up_to (f64.load offset=32 (local.get $p)) (global.get $indicators))))))
      (then (return (i32.const 0))))
    (local.set $end (i32.add (local.get $p)
                             (i32.shl (i32.trunc_f64_u (f64.load offset=32 (local.get $p))) (i32.const 3))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
        (local.set $x (f64.load offset=40 (local.get $p)))
        (if (f64.ne (f64.sub (local.get $x) (local.get $x)) (f64.const 0)) (then (return (i32.const 0))))
        (local.set $p (i32.add (local.get $p) (i32.const 8)))
        (br $next)))
    (i32.const 1))

  ;; Appends and evaluates staged candles one by one until a non-hold or invalid output.
  ;; Returns the candles consumed (the stopping one included); result: signal, stopped.
  (func (export "run") (param $n i32) (result i32 i32)
    (local $i i32) (local $signal i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (call $append (local.get $i))
        (local.set $signal (call $evaluate_newest))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (if (i32.or (local.get $signal) (i32.eqz (call $valid)))
          (then
            (f64.store (global.get $result) (f64.convert_i32_s (local.get $signal)))
            (f64.store offset=8 (global.get $result) (f64.const 1))
            (return (local.get $i) (memory.size))))
        (br $next)))
    (f64.store (global.get $result) (f64.const 0))
    (f64.store offset=8 (global.get $result) (f64.const 0))
    (local.get $n) (memory.size))
)

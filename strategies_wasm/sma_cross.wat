;; SMA crossover as a native tradebotd strategy (ABI v1, see ABI.md), written by hand in WAT.
;;
;; Same semantics as tradebotd/examples/sma_crossover.js: buy when flat and the fast simple
;; moving average of the closes crosses above the slow one, sell when long and it crosses below,
;; hold while warming up (fewer than slow + 1 candles). Sums run oldest to newest and divide
;; once, exactly as the JS does, so both give bit-identical averages.
;;
;; Parameters (exported mutable f64 globals, set by name at load):
;;   fast, slow  window lengths in candles (whole numbers, 1 <= fast < slow <= 100000)
;;   amount      base-asset quantity per buy
(module
  (memory (export "memory") 1)

  (global $fast (export "fast") (mut f64) (f64.const 5))
  (global $slow (export "slow") (mut f64) (f64.const 20))
  (global $amount (export "amount") (mut f64) (f64.const 0.001))

  ;; The windows as integers, set by tb_init once the host has written the parameters.
  (global $fast_n (mut i32) (i32.const 0))
  (global $slow_n (mut i32) (i32.const 0))

  ;; Metadata: indicator names (their order is the order of the output values) and reason texts
  ;; (a reason is reported as its 1-based index). NUL-terminated UTF-8 JSON.
  (data (i32.const 1024)
    "{\"indicators\": [\"fastSma\", \"slowSma\"],"
    " \"reasons\": ["
    "\"warming up\","                                                       ;; 1
    " \"fast SMA crossed above slow SMA\","                                 ;; 2
    " \"fast SMA crossed below slow SMA\","                                 ;; 3
    " \"fast and slow must be whole numbers with 1 <= fast < slow <= 100000\","  ;; 4
    " \"amount must be a positive number\"]}\00")                            ;; 5

  (func (export "tb_abi_version") (result i32) (i32.const 1))

  (func (export "tb_meta") (result i32) (i32.const 1024))

  ;; 0 when the parameters are usable, else the reason they are not.
  (func (export "tb_init") (result i32)
    (if (i32.eqz
          (i32.and
            (i32.and (f64.eq (global.get $fast) (f64.trunc (global.get $fast)))
                     (f64.eq (global.get $slow) (f64.trunc (global.get $slow))))
            (i32.and (f64.ge (global.get $fast) (f64.const 1))
                     (i32.and (f64.lt (global.get $fast) (global.get $slow))
                              (f64.le (global.get $slow) (f64.const 100000))))))
      (then (return (i32.const 4))))
    ;; NaN fails both comparisons.
    (if (i32.eqz (i32.and (f64.gt (global.get $amount) (f64.const 0))
                          (f64.lt (global.get $amount) (f64.const inf))))
      (then (return (i32.const 5))))
    (global.set $fast_n (i32.trunc_f64_s (global.get $fast)))
    (global.set $slow_n (i32.trunc_f64_s (global.get $slow)))
    (i32.const 0))

  ;; Candles needed before the first signal is possible.
  (func (export "tb_lookback") (result i32)
    (i32.add (global.get $slow_n) (i32.const 1)))

  ;; The host's buffer: whole new pages (zeroed by wasm), never freed.
  (func (export "tb_alloc") (param $bytes i32) (result i32)
    (local $old_pages i32)
    (local.set $old_pages
      (memory.grow (i32.shr_u (i32.add (local.get $bytes) (i32.const 0xffff)) (i32.const 16))))
    (if (result i32) (i32.eq (local.get $old_pages) (i32.const -1))
      (then (i32.const 0))
      (else (i32.shl (local.get $old_pages) (i32.const 16)))))

  ;; Mean of values[end - n .. end), summed oldest first like the JS.
  (func $sma (param $values i32) (param $end i32) (param $n i32) (result f64)
    (local $p i32) (local $stop i32) (local $sum f64)
    (local.set $p (i32.add (local.get $values)
                           (i32.shl (i32.sub (local.get $end) (local.get $n)) (i32.const 3))))
    (local.set $stop (i32.add (local.get $values) (i32.shl (local.get $end) (i32.const 3))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $p) (local.get $stop)))
        (local.set $sum (f64.add (local.get $sum) (f64.load (local.get $p))))
        (local.set $p (i32.add (local.get $p) (i32.const 8)))
        (br $next)))
    (f64.div (local.get $sum) (f64.convert_i32_s (local.get $n))))

  ;; One evaluation: $n candles, oldest first, as six f64 columns; the newest (n - 1) just closed.
  ;; $position -> f64[4]: held (1 or 0), amount, entry price, entry time.
  ;; $out -> f64 slots, zeroed by the host: 0 amount, 8 take profit, 16 stop loss, 24 reason,
  ;; 32 indicator count, 40... indicator values. Returns 0 hold, 1 buy, 2 sell.
  (func (export "tb_evaluate")
      (param $n i32) (param $time i32) (param $open i32) (param $high i32) (param $low i32)
      (param $close i32) (param $volume i32) (param $position i32) (param $out i32) (result i32)
    (local $fast_now f64) (local $slow_now f64) (local $fast_prev f64) (local $slow_prev f64)
    (local $held i32)
    (if (i32.lt_s (local.get $n) (i32.add (global.get $slow_n) (i32.const 1)))
      (then
        (f64.store offset=24 (local.get $out) (f64.const 1))   ;; "warming up"
        (return (i32.const 0))))
    (local.set $fast_now (call $sma (local.get $close) (local.get $n) (global.get $fast_n)))
    (local.set $slow_now (call $sma (local.get $close) (local.get $n) (global.get $slow_n)))
    (local.set $fast_prev
      (call $sma (local.get $close) (i32.sub (local.get $n) (i32.const 1)) (global.get $fast_n)))
    (local.set $slow_prev
      (call $sma (local.get $close) (i32.sub (local.get $n) (i32.const 1)) (global.get $slow_n)))
    (f64.store offset=32 (local.get $out) (f64.const 2))       ;; two indicators:
    (f64.store offset=40 (local.get $out) (local.get $fast_now)) ;; fastSma
    (f64.store offset=48 (local.get $out) (local.get $slow_now)) ;; slowSma
    (local.set $held (f64.ne (f64.load (local.get $position)) (f64.const 0)))
    (if (i32.and (i32.eqz (local.get $held))
                 (i32.and (f64.le (local.get $fast_prev) (local.get $slow_prev))
                          (f64.gt (local.get $fast_now) (local.get $slow_now))))
      (then
        (f64.store (local.get $out) (global.get $amount))
        (f64.store offset=24 (local.get $out) (f64.const 2))   ;; "fast SMA crossed above slow SMA"
        (return (i32.const 1))))
    (if (i32.and (local.get $held)
                 (i32.and (f64.ge (local.get $fast_prev) (local.get $slow_prev))
                          (f64.lt (local.get $fast_now) (local.get $slow_now))))
      (then
        (f64.store offset=24 (local.get $out) (f64.const 3))   ;; "fast SMA crossed below slow SMA"
        (return (i32.const 2))))
    (i32.const 0))
)

// SMA crossover in AssemblyScript: the same strategy as ../sma_cross.wat and
// tradebotd/examples/sma_crossover.js. Buy when flat and the fast simple moving average of the
// closes crosses above the slow one, sell when long and it crosses below, hold while warming up.
import { Candles, Output, Position, Signal, evaluateWith, indicator, reason } from "./tradebot";
export { tb_abi_version, tb_alloc, tb_evaluate, tb_meta } from "./tradebot";

// Parameters: exported mutable f64 globals, set by name at load (--param fast=5 ...).
export let fast: f64 = 5;
export let slow: f64 = 20;
export let amount: f64 = 0.001;

const FAST_SMA = indicator("fastSma");
const SLOW_SMA = indicator("slowSma");
const WARMING_UP = reason("warming up");
const CROSSED_ABOVE = reason("fast SMA crossed above slow SMA");
const CROSSED_BELOW = reason("fast SMA crossed below slow SMA");
const BAD_WINDOWS = reason("fast and slow must be whole numbers with 1 <= fast < slow <= 100000");
const BAD_AMOUNT = reason("amount must be a positive number");

let fastN: i32 = 0;
let slowN: i32 = 0;

/** Checks the parameters once they are set: 0, or the reason they are unusable. */
export function tb_init(): i32 {
  if (fast != Math.floor(fast) || slow != Math.floor(slow) || !(fast >= 1 && fast < slow && slow <= 100000)) {
    return BAD_WINDOWS;
  }
  if (!(amount > 0 && amount < Infinity)) return BAD_AMOUNT;
  fastN = <i32>fast;
  slowN = <i32>slow;
  return 0;
}

/** Candles needed before the first signal is possible. */
export function tb_lookback(): i32 {
  return slowN + 1;
}

/** Mean of the closes end - n .. end - 1, summed oldest first like the JS example. */
function sma(candles: Candles, end: i32, n: i32): f64 {
  let sum: f64 = 0;
  for (let i = end - n; i < end; i++) sum += candles.close(i);
  return sum / n;
}

evaluateWith((candles: Candles, position: Position, out: Output): Signal => {
  const n = candles.length;
  if (n < slowN + 1) {
    out.reason = WARMING_UP;
    return Signal.Hold;
  }
  const fastNow = sma(candles, n, fastN);
  const slowNow = sma(candles, n, slowN);
  const fastPrev = sma(candles, n - 1, fastN);
  const slowPrev = sma(candles, n - 1, slowN);
  out.indicator(FAST_SMA, fastNow);
  out.indicator(SLOW_SMA, slowNow);
  if (!position.held && fastPrev <= slowPrev && fastNow > slowNow) {
    out.amount = amount;
    out.reason = CROSSED_ABOVE;
    return Signal.Buy;
  }
  if (position.held && fastPrev >= slowPrev && fastNow < slowNow) {
    out.reason = CROSSED_BELOW;
    return Signal.Sell;
  }
  return Signal.Hold;
});

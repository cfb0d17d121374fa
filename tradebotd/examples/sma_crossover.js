// SMA crossover: buy when the fast average crosses above the slow one, sell on the cross below.
// Parameters (tradebotd strategy add ... --param fast=5 --param slow=20 --param amount=0.001):
//   fast, slow: window lengths in candles; amount: base-asset quantity per buy.
// The mean of the n closes before index `end`, summed oldest first and divided once.
function sma(candles, end, n) {
  let sum = 0;
  for (let i = end - n; i < end; i++) sum += candles[i].close;
  return sum / n;
}

function tradingStrategy(context) {
  const { candles, position, parameters } = context;
  const fast = parameters.fast ?? 5;
  const slow = parameters.slow ?? 20;
  if (candles.length < slow + 1) {
    return { signal: 'hold', reason: `warming up (${candles.length}/${slow + 1} candles)` };
  }
  // Only the last slow + 1 closes matter, read where they are: each evaluation is O(slow), not
  // O(history), and copies nothing (slicing them out first took a fifth of a backtest's time).
  const n = candles.length;
  const fastNow = sma(candles, n, fast), slowNow = sma(candles, n, slow);
  const fastPrev = sma(candles, n - 1, fast), slowPrev = sma(candles, n - 1, slow);
  const indicators = { fastSma: fastNow, slowSma: slowNow };

  if (!position && fastPrev <= slowPrev && fastNow > slowNow) {
    return { signal: 'buy', amount: parameters.amount ?? 0.001, reason: 'fast SMA crossed above slow SMA', indicators };
  }
  if (position && fastPrev >= slowPrev && fastNow < slowNow) {
    return { signal: 'sell', reason: 'fast SMA crossed below slow SMA', indicators };
  }
  return { signal: 'hold', indicators };
}

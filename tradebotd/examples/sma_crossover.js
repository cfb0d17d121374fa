// SMA crossover: buy when the fast average crosses above the slow one, sell on the cross below.
// Parameters (tradebotd strategy add ... --param fast=5 --param slow=20 --param amount=0.001):
//   fast, slow: window lengths in candles; amount: base-asset quantity per buy.
function sma(values, n) {
  let sum = 0;
  for (let i = values.length - n; i < values.length; i++) sum += values[i];
  return sum / n;
}

function tradingStrategy(context) {
  const { candles, position, parameters } = context;
  const fast = parameters.fast ?? 5;
  const slow = parameters.slow ?? 20;
  if (candles.length < slow + 1) {
    return { signal: 'hold', reason: `warming up (${candles.length}/${slow + 1} candles)` };
  }
  // Only the last slow + 1 closes matter; slicing first keeps each evaluation O(slow), not O(history).
  const closes = candles.slice(-(slow + 1)).map((c) => c.close);
  const prev = closes.slice(0, -1);
  const fastNow = sma(closes, fast), slowNow = sma(closes, slow);
  const fastPrev = sma(prev, fast), slowPrev = sma(prev, slow);
  const indicators = { fastSma: fastNow, slowSma: slowNow };

  if (!position && fastPrev <= slowPrev && fastNow > slowNow) {
    return { signal: 'buy', amount: parameters.amount ?? 0.001, reason: 'fast SMA crossed above slow SMA', indicators };
  }
  if (position && fastPrev >= slowPrev && fastNow < slowNow) {
    return { signal: 'sell', reason: 'fast SMA crossed below slow SMA', indicators };
  }
  return { signal: 'hold', indicators };
}

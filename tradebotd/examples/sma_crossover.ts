// SMA crossover, the TypeScript edition of sma_crossover.js (same decisions): buy when the fast
// average crosses above the slow one, sell on the cross below. Types are erased before loading.
interface Candle { time: number; open: number; high: number; low: number; close: number; volume: number }
interface Position { side: 'long'; amount: number; entryPrice: number; entryTime: number }
interface Params { fast?: number; slow?: number; amount?: number }
interface Context { candles: Candle[]; currentPrice: number; position: Position | null; parameters: Params }
type Signal = 'buy' | 'sell' | 'hold';
interface Result { signal: Signal; amount?: number; reason?: string; indicators?: Record<string, number> }

// The mean of the n closes before index `end`, summed oldest first and divided once.
function sma(candles: Candle[], end: number, n: number): number {
  let sum = 0;
  for (let i = end - n; i < end; i++) sum += candles[i].close;
  return sum / n;
}

function tradingStrategy(context: Context): Result {
  const { candles, position, parameters } = context;
  const fast: number = parameters.fast ?? 5;
  const slow: number = parameters.slow ?? 20;
  if (candles.length < slow + 1) {
    return { signal: 'hold', reason: `warming up (${candles.length}/${slow + 1} candles)` };
  }
  // Only the last slow + 1 closes matter, read where they are: each evaluation is O(slow), not
  // O(history), and copies nothing (slicing them out first took a fifth of a backtest's time).
  const n = candles.length;
  const fastNow = sma(candles, n, fast), slowNow = sma(candles, n, slow);
  const fastPrev = sma(candles, n - 1, fast), slowPrev = sma(candles, n - 1, slow);
  const indicators = { fastSma: fastNow, slowSma: slowNow } satisfies Record<string, number>;

  if (!position && fastPrev <= slowPrev && fastNow > slowNow) {
    return { signal: 'buy', amount: parameters.amount ?? 0.001, reason: 'fast SMA crossed above slow SMA', indicators };
  }
  if (position && fastPrev >= slowPrev && fastNow < slowNow) {
    return { signal: 'sell', reason: 'fast SMA crossed below slow SMA', indicators };
  }
  return { signal: 'hold', indicators } as Result;
}

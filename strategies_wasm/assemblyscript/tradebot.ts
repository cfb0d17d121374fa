// tradebotd native strategy ABI v1 for AssemblyScript (see ../ABI.md): the plumbing, so that a
// strategy file only declares its parameters, indicators and reasons and writes `evaluate`.
//
//   import { Candles, Output, Position, Signal, evaluateWith, indicator, reason } from "./tradebot";
//   export { tb_abi_version, tb_alloc, tb_evaluate, tb_meta } from "./tradebot";
//
// Build with `--runtime incremental` (the stub runtime never frees memory) and `--noAssert`.

/** What `evaluate` returns. */
export const enum Signal {
  Hold = 0,
  Buy = 1,
  Sell = 2,
}

/** The history: `length` candles, oldest first; index `length - 1` is the one that just closed.
 *  Each field is an f64 column in linear memory, valid during one evaluation only. */
@final
export class Candles {
  length: i32 = 0;
  timeColumn: usize = 0;
  openColumn: usize = 0;
  highColumn: usize = 0;
  lowColumn: usize = 0;
  closeColumn: usize = 0;
  volumeColumn: usize = 0;

  /** Open time in ms since the epoch (UTC). */
  @inline time(i: i32): f64 { return load<f64>(this.timeColumn + (<usize>i << 3)); }
  @inline open(i: i32): f64 { return load<f64>(this.openColumn + (<usize>i << 3)); }
  @inline high(i: i32): f64 { return load<f64>(this.highColumn + (<usize>i << 3)); }
  @inline low(i: i32): f64 { return load<f64>(this.lowColumn + (<usize>i << 3)); }
  @inline close(i: i32): f64 { return load<f64>(this.closeColumn + (<usize>i << 3)); }
  @inline volume(i: i32): f64 { return load<f64>(this.volumeColumn + (<usize>i << 3)); }
}

/** The open long position, if any (`held`). */
@final
export class Position {
  held: bool = false;
  amount: f64 = 0;
  entryPrice: f64 = 0;
  entryTime: f64 = 0;
}

/** The output slots; the host zeroes them before every evaluation (0 = not set). */
@final
export class Output {
  slots: usize = 0;

  /** Base-asset quantity of a buy (or a sell; the whole position when not set). Positive. */
  set amount(value: f64) { store<f64>(this.slots, value); }
  set takeProfit(value: f64) { store<f64>(this.slots, value, 8); }
  set stopLoss(value: f64) { store<f64>(this.slots, value, 16); }
  /** A number returned by `reason(text)`. */
  set reason(value: i32) { store<f64>(this.slots, <f64>value, 24); }

  /** Reports indicator `index` (from `indicator(name)`). Indicators below it that were not set
   *  are reported as 0; values must be finite. */
  indicator(index: i32, value: f64): void {
    store<f64>(this.slots + 40 + (<usize>index << 3), value);
    if (<f64>(index + 1) > load<f64>(this.slots, 32)) store<f64>(this.slots, <f64>(index + 1), 32);
  }
}

export type Evaluate = (candles: Candles, position: Position, out: Output) => Signal;

const indicatorNames = new Array<string>();
const reasonTexts = new Array<string>();
let handler: Evaluate | null = null;
let meta: ArrayBuffer | null = null;
const candles = new Candles();
const position = new Position();
const output = new Output();

/** Declares an indicator (call at top level, in output order); returns its index. */
export function indicator(name: string): i32 {
  indicatorNames.push(name);
  return indicatorNames.length - 1;
}

/** Declares a reason text (call at top level); returns its number for `Output.reason`. */
export function reason(text: string): i32 {
  reasonTexts.push(text);
  return reasonTexts.length;
}

/** Sets the strategy's evaluation function (call once, at top level). */
export function evaluateWith(evaluate: Evaluate): void {
  handler = evaluate;
}

export function tb_abi_version(): i32 {
  return 1;
}

/** The host's block: never freed, so outside the garbage collector's reach. */
export function tb_alloc(bytes: i32): usize {
  const block = heap.alloc(<usize>bytes);
  memory.fill(block, 0, <usize>bytes);
  return block;
}

/** NUL-terminated JSON naming the indicators and reasons. */
export function tb_meta(): usize {
  if (meta == null) {
    meta = String.UTF8.encode(
      '{"indicators": ' + jsonList(indicatorNames) + ', "reasons": ' + jsonList(reasonTexts) + "}",
      true,
    );
  }
  return changetype<usize>(meta);
}

export function tb_evaluate(
  n: i32, time: usize, open: usize, high: usize, low: usize, close: usize, volume: usize,
  held: usize, out: usize,
): i32 {
  candles.length = n;
  candles.timeColumn = time;
  candles.openColumn = open;
  candles.highColumn = high;
  candles.lowColumn = low;
  candles.closeColumn = close;
  candles.volumeColumn = volume;
  position.held = load<f64>(held) != 0;
  position.amount = load<f64>(held, 8);
  position.entryPrice = load<f64>(held, 16);
  position.entryTime = load<f64>(held, 24);
  output.slots = out;
  if (handler == null) return Signal.Hold;
  return changetype<Evaluate>(handler)(candles, position, output);
}

function jsonList(items: Array<string>): string {
  let json = "[";
  for (let i = 0; i < items.length; i++) {
    if (i > 0) json += ", ";
    json += jsonString(items[i]);
  }
  return json + "]";
}

function jsonString(text: string): string {
  let json = '"';
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c == 0x22 || c == 0x5c) json += "\\" + String.fromCharCode(c);
    else if (c < 0x20) json += "\\u00" + (c < 0x10 ? "0" : "") + c.toString(16);
    else json += String.fromCharCode(c);
  }
  return json + '"';
}

// tb_prelude.js: evaluated by tb_shim.c in every fresh JSContext, before the strategy.
//
// The script's completion value is a function. The shim calls it once with the host-backed
// pieces (virtual clock, seeded PRNG, limits) and keeps the helpers it returns. The strategy
// sees only what this installs on purpose: `console`, a `Date` whose "now" is the newest
// candle's decision time, and a seeded `Math.random`.
//
// The checks here give strategy authors precise messages ("amount must be a finite positive
// number, got NaN", which JSON would flatten to null). They are not the security boundary:
// the host validates the JSON again (tradebotd/sandbox/result.py).
(function (hostNow, hostRandom, limits) {
  'use strict';

  // Captured before any strategy code runs, so replacing these globals only breaks the strategy
  // that does it (and the host still rejects what comes out).
  const stringify = JSON.stringify;
  const isArray = Array.isArray;
  const objectKeys = Object.keys;
  const defineProperty = Object.defineProperty;
  const freeze = Object.freeze;
  const isFinite = Number.isFinite;
  const toStr = String;
  const RealDate = Date;
  const construct = Reflect.construct;
  const apply = Reflect.apply;
  const setPrototypeOf = Object.setPrototypeOf;
  const arraySlice = Array.prototype.slice;
  const ErrorClass = Error;

  // What this file stringifies is built from null-prototype objects and arrays, so a strategy
  // that defines Object.prototype.toJSON (or Array.prototype.toJSON) cannot reach it.
  function bareArray(array) {
    setPrototypeOf(array, null);
    return array;
  }

  function hidden(target, name, value) {
    defineProperty(target, name, { value, writable: true, configurable: true, enumerable: false });
  }

  // ---- clock: Date.now() and new Date() read the candle clock, never the host's ----
  // A function expression: a `function Date` declaration would be hoisted over RealDate above.
  const VirtualDate = function Date(...args) {
    if (new.target === undefined) return toStr(new RealDate(hostNow()));
    return construct(RealDate, args.length === 0 ? [hostNow()] : args, new.target);
  };
  defineProperty(VirtualDate, 'length', { value: 7 });
  defineProperty(VirtualDate, 'prototype', { value: RealDate.prototype });
  hidden(VirtualDate, 'now', function now() { return hostNow(); });
  hidden(VirtualDate, 'parse', RealDate.parse);
  hidden(VirtualDate, 'UTC', RealDate.UTC);
  hidden(RealDate.prototype, 'constructor', VirtualDate);
  hidden(globalThis, 'Date', VirtualDate);

  // ---- randomness: a PRNG seeded by the host at load ----
  hidden(Math, 'random', hostRandom);

  // ---- console: bounded capture, returned to the host after each call ----
  const lines = bareArray([]);
  let dropped = 0;

  function clip(text, max) {
    return text.length > max ? text.slice(0, max - 1) + '\u2026' : text;
  }

  function show(value) {
    const type = typeof value;
    if (type === 'string') return value;
    if (value instanceof ErrorClass) {
      return value.stack ? `${value.name}: ${value.message}\n${value.stack}` : toStr(value);
    }
    if (value === null || (type !== 'object' && type !== 'function')) return toStr(value);
    try {
      const json = stringify(value);
      if (json !== undefined) return json;
    } catch (_) {
      // cyclic, BigInt inside, throwing toJSON: fall through to String()
    }
    try {
      return toStr(value);
    } catch (_) {
      return '[unprintable]';
    }
  }

  function logger(level) {
    return function (...args) {
      if (lines.length >= limits.maxLogLines) {
        dropped++;
        return;
      }
      let text = '';
      for (let i = 0; i < args.length; i++) text += (i ? ' ' : '') + show(args[i]);
      lines[lines.length] = bareArray([level, clip(text, limits.maxLogChars)]);
    };
  }

  hidden(globalThis, 'console', {
    log: logger('log'),
    info: logger('info'),
    warn: logger('warn'),
    error: logger('error'),
    debug: logger('debug'),
  });

  function takeLogs() {
    if (lines.length === 0 && dropped === 0) return undefined;
    if (dropped) lines[lines.length] = bareArray(['warn', `(${dropped} more console lines dropped)`]);
    const json = stringify(lines);
    lines.length = 0;
    dropped = 0;
    return json;
  }

  // ---- result validation ----
  function describeValue(value) {
    if (typeof value === 'string') return stringify(clip(value, 40));
    if (value === null) return 'null';
    if (isArray(value)) return 'an array';
    if (typeof value === 'object') return 'an object';
    if (typeof value === 'number' || typeof value === 'boolean') return toStr(value);
    return typeof value;
  }

  // A rejected result is '!' followed by the error JSON; an accepted one is the result JSON,
  // which always starts with '{'. The shim tells them apart by the first character.
  function bad(message) {
    return '!' + stringify({ __proto__: null, error: { __proto__: null, name: 'InvalidResult', message, stack: '' } });
  }

  // `out` is null when the result is only checked (a hold in a backtest run: nothing is kept).
  function positiveNumber(result, out, key) {
    const value = result[key];
    if (value === undefined || value === null) return null;
    if (typeof value !== 'number' || !isFinite(value) || value <= 0) {
      return `${key} must be a finite positive number, got ${describeValue(value)}`;
    }
    if (out !== null) out[key] = value;
    return null;
  }

  // orderType 'market' (the default) or 'limit'; a limit order names its limitPrice, and only a
  // limit order does.
  function checkOrderType(result, out) {
    const orderType = result.orderType;
    const hasLimit = result.limitPrice !== undefined && result.limitPrice !== null;
    if (orderType === undefined || orderType === null) {
      return hasLimit ? "limitPrice is only for orderType 'limit'" : null;
    }
    if (orderType !== 'market' && orderType !== 'limit') {
      return `orderType must be 'market' or 'limit', got ${describeValue(orderType)}`;
    }
    if (orderType === 'limit' && !hasLimit) return "orderType 'limit' needs a limitPrice";
    if (orderType === 'market' && hasLimit) return "limitPrice is only for orderType 'limit'";
    if (out !== null) out.orderType = orderType;
    return null;
  }

  // Made only for a message: building it for every key of every result cost a string per
  // indicator per candle.
  function where(key) {
    return `indicators.${clip(key, 40)}`;
  }

  function checkIndicators(indicators, out) {
    if (typeof indicators !== 'object' || isArray(indicators)) {
      return `indicators must be an object, got ${describeValue(indicators)}`;
    }
    const clean = out === null ? null : { __proto__: null };
    let budget = limits.maxResultBytes; // rough size guard before JSON.stringify allocates
    // Indexed loops, not for-of: the array iterator is slower and a strategy can replace it.
    const keys = objectKeys(indicators);
    for (let k = 0; k < keys.length; k++) {
      const key = keys[k];
      const value = indicators[key];
      if (typeof value === 'number') {
        if (!isFinite(value)) return `${where(key)} must be a finite number, got ${value}`;
        budget -= 24;
      } else if (typeof value === 'string') {
        budget -= value.length;
      } else if (typeof value === 'boolean') {
        budget -= 5;
      } else if (isArray(value)) {
        if (value.length > budget / 2) return `${where(key)} has ${value.length} entries: result too large`;
        for (let i = 0; i < value.length; i++) {
          const x = value[i];
          if (typeof x !== 'number' || !isFinite(x)) {
            return `${where(key)}[${i}] must be a finite number, got ${describeValue(x)}`;
          }
        }
        budget -= value.length * 2;
      } else {
        return `${where(key)} must be a number, string, boolean or array of numbers, got ${describeValue(value)}`;
      }
      if (budget < 0) return `indicators exceed the ${limits.maxResultBytes}-byte result limit`;
      if (clean !== null) clean[key] = isArray(value) ? bareArray(apply(arraySlice, value, [])) : value;
    }
    if (out !== null) out.indicators = clean;
    return null;
  }

  // Validates a strategy's return value. Returns the normalised result as JSON, '' for a hold
  // that need not be serialised (holdIsEmpty), or '!'-prefixed error JSON. Unknown keys are
  // dropped.
  function finish(result, holdIsEmpty) {
    if (result === null || typeof result !== 'object' || isArray(result)) {
      return bad(`the strategy must return an object like {signal: 'hold'}, got ${describeValue(result)}`);
    }
    const signal = result.signal;
    if (signal !== 'buy' && signal !== 'sell' && signal !== 'hold') {
      return bad(`signal must be 'buy', 'sell' or 'hold', got ${describeValue(signal)}`);
    }
    const checkOnly = holdIsEmpty && signal === 'hold';
    const out = checkOnly ? null : { __proto__: null, signal };
    const problem =
      positiveNumber(result, out, 'amount') ||
      positiveNumber(result, out, 'takeProfit') ||
      positiveNumber(result, out, 'stopLoss') ||
      positiveNumber(result, out, 'limitPrice') ||
      checkOrderType(result, out);
    if (problem) return bad(problem);
    const reason = result.reason;
    if (reason !== undefined && reason !== null) {
      if (typeof reason !== 'string') return bad(`reason must be a string, got ${describeValue(reason)}`);
      if (reason.length > limits.maxReasonChars) {
        return bad(`reason has ${reason.length} characters, the limit is ${limits.maxReasonChars}`);
      }
      if (out !== null) out.reason = reason;
    }
    const indicators = result.indicators;
    if (indicators !== undefined && indicators !== null) {
      const indicatorProblem = checkIndicators(indicators, out);
      if (indicatorProblem) return bad(indicatorProblem);
    }
    if (checkOnly) return '';
    return stringify(out);
  }

  // ---- errors: {"error": {name, message, stack}} for whatever was thrown ----
  function describeError(thrown) {
    let name = 'Error';
    let message = '';
    let stack = '';
    try {
      if (thrown !== null && (typeof thrown === 'object' || typeof thrown === 'function')) {
        name = toStr(thrown.name ?? 'Error');
        message = toStr(thrown.message ?? '');
        const s = thrown.stack;
        if (typeof s === 'string') stack = s;
      } else {
        message = `uncaught ${typeof thrown}: ${toStr(thrown)}`;
      }
    } catch (_) {
      message = message || '(the thrown value could not be described)';
    }
    const error = { __proto__: null, name: clip(name, 200), message: clip(message, 2000), stack: clip(stack, 4000) };
    return stringify({ __proto__: null, error });
  }

  // QuickJS's JSON.parse makes every number a double, even 5; a double used as an index or a
  // loop bound sends every `values[i]` through the slow property path (number -> string ->
  // atom). Storing integral parameters as QuickJS small integers instead is invisible to the
  // strategy (a number is a number; -0 stays a double) and measured 20% faster on the SMA example.
  function deepFreeze(value) {
    if (value !== null && typeof value === 'object') {
      const keys = objectKeys(value);
      for (let k = 0; k < keys.length; k++) {
        const key = keys[k];
        const item = value[key];
        if (typeof item === 'number') {
          if ((item | 0) === item && (item !== 0 || 1 / item > 0)) value[key] = item | 0;
        } else {
          deepFreeze(item);
        }
      }
      freeze(value);
    }
    return value;
  }

  return { finish, takeLogs, describeError, deepFreeze };
})

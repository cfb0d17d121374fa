/*
 * tb_strtod.c: fast decimal-to-double conversion for JSON numbers.
 *
 * quickjs.c is compiled with -Dstrtod=tb_json_strtod; its only strtod call is in
 * JSON.parse, on text the JSON scanner has already validated
 * (-?digits[.digits][(e|E)[+-]digits]). wasi-libc's strtod costs 8k-19k wasm
 * instructions per number, which made JSON.parse of a 500-candle context 4x
 * slower.
 *
 * Clinger's fast path: when the decimal mantissa m fits in 53 bits and the
 * decimal exponent e satisfies |e| <= 22, both m and 10^|e| are exact doubles,
 * so one IEEE multiply or divide gives the correctly rounded result. Everything
 * else goes to QuickJS's own correctly rounded js_atod.
 */
#include <stdint.h>

#include "dtoa.h"

double tb_json_strtod(const char *nptr, char **endptr);

static const double kPow10[] = {
    1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
    1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
};

#define MAX_EXACT_MANTISSA (UINT64_C(1) << 53)
#define MAX_DIGITS 19 /* 10^19 - 1 still fits in uint64_t */

static int is_digit(char c) { return c >= '0' && c <= '9'; }

static double slow_path(const char *nptr, char **endptr)
{
    JSATODTempMem tmp;
    const char *end;
    double d = js_atod(nptr, &end, 10, 0, &tmp);
    if (endptr)
        *endptr = (char *)end;
    return d;
}

double tb_json_strtod(const char *nptr, char **endptr)
{
    const char *p = nptr;
    uint64_t mantissa = 0;
    int digits = 0;   /* significant digits folded into mantissa */
    int exp10 = 0;    /* decimal exponent from the fraction */
    int negative = 0;

    if (*p == '-' || *p == '+') {
        negative = *p == '-';
        p++;
    }
    if (!is_digit(*p))
        return slow_path(nptr, endptr);
    for (; is_digit(*p); p++) {
        if (mantissa == 0 && *p == '0')
            continue; /* leading zero: not significant */
        if (digits == MAX_DIGITS)
            return slow_path(nptr, endptr);
        mantissa = mantissa * 10 + (uint64_t)(*p - '0');
        digits++;
    }
    if (*p == '.') {
        for (p++; is_digit(*p); p++) {
            exp10--;
            if (mantissa == 0 && *p == '0')
                continue;
            if (digits == MAX_DIGITS)
                return slow_path(nptr, endptr);
            mantissa = mantissa * 10 + (uint64_t)(*p - '0');
            digits++;
        }
    }
    if (*p == 'e' || *p == 'E') {
        int exp_negative = 0, exponent = 0;
        p++;
        if (*p == '-' || *p == '+') {
            exp_negative = *p == '-';
            p++;
        }
        if (!is_digit(*p))
            return slow_path(nptr, endptr);
        for (; is_digit(*p); p++) {
            if (exponent > 100000)
                return slow_path(nptr, endptr); /* absurd exponent */
            exponent = exponent * 10 + (*p - '0');
        }
        exp10 += exp_negative ? -exponent : exponent;
    }

    double d;
    if (mantissa == 0) {
        d = 0.0; /* 0e999 and friends: exactly zero whatever the exponent */
    } else if (mantissa > MAX_EXACT_MANTISSA || exp10 < -22 || exp10 > 22) {
        return slow_path(nptr, endptr);
    } else if (exp10 >= 0) {
        d = (double)mantissa * kPow10[exp10];
    } else {
        d = (double)mantissa / kPow10[-exp10];
    }
    if (endptr)
        *endptr = (char *)p;
    return negative ? -d : d;
}

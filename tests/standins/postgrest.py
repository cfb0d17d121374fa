"""A PostgREST-subset stand-in on a real PostgreSQL: what the real ``supabase`` client talks to
in tests and ``make bench``.

It serves ``/rest/v1/<table>`` and ``/rest/v1/rpc/<fn>`` over HTTP/1.1 (aiohttp) and translates
each request into parameterised SQL with psycopg 3, the way PostgREST does (see
``/work/shared/notes/wire-protocols.md`` §1): values are bound as ``str``, which psycopg sends as
type ``unknown``, so PostgreSQL coerces them to the column's type exactly as it does PostgREST's
literals (and answers its own 22P02 for ``id=eq.abc``); rows come back from ``json_agg``, so
numbers and times are PostgreSQL's own JSON.

Each request runs in one transaction under the role and claims of its JWT (HS256, checked with
the test secret): ``role`` and ``request.jwt.claims`` are set locally, so row level security and
``auth.jwt()`` behave as on Supabase, and the service-role key bypasses RLS as it does there.

The grammar is the subset the daemon and the tests use: ``select`` (``*``, columns, ``alias:col``,
``col::type``), filters ``eq neq gt gte lt lte like ilike match imatch in is isdistinct`` with
``not.``, nested ``or``/``and``, ``order``, ``limit``/``offset``, ``Prefer`` ``return``,
``count``, ``resolution``; inserts, upserts (``on_conflict``, quoted ``columns``), PATCH, DELETE,
RPC (POST and GET; functions returning a table, a scalar or void), ``single()`` objects,
``Content-Range`` with 200/206/416. Anything else is answered 400 ``PGRST100`` naming what is not
implemented, so a gap shows loudly instead of being answered wrongly.

Test controls: ``requests`` (a log), ``wait_until(predicate)``, ``fail_next(n, status)``,
``go_down()`` / ``come_up()`` (connections refused and dropped), ``slow(seconds)``, and
``reset_catalog()`` after DDL.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

import psycopg
from aiohttp import web
from psycopg import sql

__all__ = ["LoggedRequest", "PostgrestStandin", "sign_jwt"]

SCHEMA = "public"
ROLES = ("anon", "authenticated", "service_role")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CAST = re.compile(r"^[a-z_][a-z0-9_ ]*(\[\])?$")
_RESERVED = {"select", "order", "limit", "offset", "or", "and", "not.or", "not.and", "columns", "on_conflict"}
_OPS = {"eq": "=", "neq": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<=", "like": "LIKE", "ilike": "ILIKE",
        "match": "~", "imatch": "~*"}  # fmt: skip


# -- JWT (HS256) ---------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_jwt(claims: Mapping[str, Any], secret: str) -> str:
    """An HS256 JWT, as Supabase signs its anon and service-role keys and third-party auth tokens."""
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps(dict(claims)).encode())
    mac = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(mac)}"


class _Fail(Exception):
    """An error answer: HTTP status and PostgREST's body."""

    def __init__(self, status: int, code: str, message: str, details: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.status, self.body = status, {"code": code, "message": message, "details": details, "hint": hint}


def _verify_jwt(token: str, secret: str) -> dict[str, Any]:
    try:
        head, body, mac = token.split(".")
        header = json.loads(_unb64(head))
        claims = json.loads(_unb64(body))
    except ValueError:
        raise _Fail(401, "PGRST301", "Expected 3 parts in JWT; got a malformed token") from None
    if header.get("alg") != "HS256":
        raise _Fail(401, "PGRST301", f"JWT algorithm {header.get('alg')!r} is not HS256")
    expected = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(expected, _unb64(mac)):
        raise _Fail(401, "PGRST301", "JWSError JWSInvalidSignature")
    if isinstance(claims.get("exp"), int | float) and claims["exp"] < time.time():
        raise _Fail(401, "PGRST303", "JWT expired")
    if not isinstance(claims, dict):
        raise _Fail(401, "PGRST301", "JWT claims are not an object")
    return claims


# -- catalog -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Table:
    name: str
    columns: dict[str, str]  # name -> type
    pk: tuple[str, ...]


@dataclass(frozen=True)
class _Function:
    name: str
    args: tuple[tuple[str, str, bool], ...]  # (name, type, has default)
    returns_set: bool
    returns_void: bool
    returns_rows: bool  # composite / table rows (objects), else a scalar


async def _load_catalog(conn: psycopg.AsyncConnection[Any]) -> tuple[dict[str, _Table], dict[str, list[_Function]]]:
    tables: dict[str, _Table] = {}
    cur = await conn.execute(
        """
        SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod),
               coalesce((SELECT array_agg(k.attname ORDER BY array_position(i.indkey, k.attnum))
                         FROM pg_index i JOIN pg_attribute k ON k.attrelid = i.indrelid AND k.attnum = ANY (i.indkey)
                         WHERE i.indrelid = c.oid AND i.indisprimary), '{}')
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
        WHERE n.nspname = %s AND c.relkind IN ('r', 'v', 'p')
        ORDER BY c.relname, a.attnum
        """,
        (SCHEMA,),
    )
    for relname, column, type_, pk in await cur.fetchall():
        table = tables.setdefault(relname, _Table(relname, {}, tuple(pk)))
        table.columns[column] = type_
    functions: dict[str, list[_Function]] = {}
    cur = await conn.execute(
        """
        SELECT p.proname, coalesce(p.proargnames, '{}'), coalesce(p.proargmodes::text[], '{}'),
               ARRAY(SELECT format_type(t, NULL) FROM unnest(p.proallargtypes) t),
               ARRAY(SELECT format_type(t, NULL) FROM unnest(p.proargtypes::oid[]) t),
               p.pronargdefaults, p.proretset, p.prorettype = 'void'::regtype,
               t.typtype IN ('c', 'p') AND p.prorettype <> 'void'::regtype
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace JOIN pg_type t ON t.oid = p.prorettype
        WHERE n.nspname = %s AND p.prokind = 'f'
        """,
        (SCHEMA,),
    )
    for name, argnames, modes, alltypes, intypes, ndefaults, retset, void, rows in await cur.fetchall():
        if modes:  # OUT/TABLE columns are listed with the inputs: keep the inputs
            names = [n for n, m in zip(argnames, modes, strict=True) if m in ("i", "b")]
            types = [t for t, m in zip(alltypes, modes, strict=True) if m in ("i", "b")]
        else:
            names, types = list(argnames), list(intypes)
        args = tuple((n, t, i >= len(names) - ndefaults) for i, (n, t) in enumerate(zip(names, types, strict=True)))
        functions.setdefault(name, []).append(_Function(name, args, retset, void, rows))
    return tables, functions


# -- the query grammar ---------------------------------------------------------------------------


def _split(text: str, sep: str = ",") -> list[str]:
    """Split at top-level separators: not inside parentheses or double quotes."""
    parts, depth, quoted, buf = [], 0, False, []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and quoted and i + 1 < len(text):
            buf.append(text[i : i + 2])
            i += 2
            continue
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch == "(":
            depth += 1
        elif not quoted and ch == ")":
            depth -= 1
        if ch == sep and depth == 0 and not quoted:
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
        i += 1
    if quoted or depth:
        raise _Fail(400, "PGRST100", f'"failed to parse" unbalanced quotes or parentheses in {text!r}')
    parts.append("".join(buf))
    return parts


def _unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    return text


def _ident(name: str, what: str = "column") -> sql.Identifier:
    if not _IDENT.match(name):
        raise _Fail(400, "PGRST100", f"this stand-in does not implement the {what} syntax {name!r}")
    return sql.Identifier(name)


def _select_list(spec: str | None) -> sql.Composable:
    if spec is None or spec.strip() in ("", "*"):
        return sql.SQL("*")
    items: list[sql.Composable] = []
    for raw in _split(spec):
        item = raw.strip()
        if "(" in item or "->" in item or "!" in item:
            raise _Fail(400, "PGRST100", f"this stand-in does not implement embedding or JSON paths: {item!r}")
        alias = None
        if ":" in item.replace("::", ""):
            alias, item = item.split(":", 1) if not item.startswith(":") else (None, item)
        cast = None
        if "::" in item:
            item, cast = item.split("::", 1)
            if not _CAST.match(cast):
                raise _Fail(400, "PGRST100", f"unsupported cast {cast!r}")
        if item == "*":
            if alias or cast:
                raise _Fail(400, "PGRST100", "'*' takes no alias or cast")
            items.append(sql.SQL("*"))
            continue
        column = _ident(item)
        expr: sql.Composable = sql.SQL("{}::{}").format(column, sql.SQL(cast)) if cast else column
        name = alias or item
        items.append(sql.SQL("{} AS {}").format(expr, _ident(name, "alias")))
    return sql.SQL(", ").join(items)


def _in_values(text: str) -> list[str]:
    if not (text.startswith("(") and text.endswith(")")):
        raise _Fail(400, "PGRST100", f'"failed to parse filter" in.{text}: expected a parenthesised list')
    inner = text[1:-1]
    return [] if inner == "" else [_unquote(v) for v in _split(inner)]


def _condition(column: str, expr: str, args: list[Any], *, in_tree: bool = False) -> sql.Composable:
    """``column`` + ``[not.]op.value`` -> SQL, appending bound values to ``args``. Inside logic
    trees a value may be double-quoted (to hold ``,.:()``), as PostgREST allows."""
    negate = expr.startswith("not.")
    if negate:
        expr = expr[4:]
    op, dot, value = expr.partition(".")
    if in_tree and op != "in":
        value = _unquote(value)
    if not dot:
        raise _Fail(400, "PGRST100", f'"failed to parse filter" {column}={expr}')
    col = _ident(column)
    cond: sql.Composable
    if op in _OPS:
        if op in ("like", "ilike"):
            value = value.replace("*", "%")
        args.append(value)
        cond = sql.SQL("{} {} %s").format(col, sql.SQL(_OPS[op]))
    elif op == "in":
        values = _in_values(value)
        if not values:
            cond = sql.SQL("false")
        else:
            args.extend(values)
            cond = sql.SQL("{} IN ({})").format(col, sql.SQL(", ").join(sql.SQL("%s") for _ in values))
    elif op == "is":
        word = value.lower()
        if word not in ("null", "true", "false", "unknown"):
            raise _Fail(400, "PGRST100", f'"failed to parse filter" is.{value}')
        cond = sql.SQL("{} IS {}").format(col, sql.SQL(word.upper()))
    elif op == "isdistinct":
        args.append(value)
        cond = sql.SQL("{} IS DISTINCT FROM %s").format(col)
    else:
        raise _Fail(400, "PGRST100", f"this stand-in does not implement the filter operator {op!r}")
    return sql.SQL("NOT ({})").format(cond) if negate else cond


def _logic(kind: str, body: str, args: list[Any]) -> sql.Composable:
    """``or=(a.eq.1,and(b.gt.2,c.lt.3))`` and friends."""
    negate = kind.startswith("not.")
    kind = kind.removeprefix("not.")
    if not (body.startswith("(") and body.endswith(")")):
        raise _Fail(400, "PGRST100", f'"failed to parse logic tree" {kind}={body}')
    parts: list[sql.Composable] = []
    for item in _split(body[1:-1]):
        item = item.strip()
        match = re.match(r"^(not\.)?(or|and)(\(.*\))$", item, re.S)
        if match:
            parts.append(_logic((match[1] or "") + match[2], match[3], args))
            continue
        column, dot, rest = item.partition(".")
        if not dot:
            raise _Fail(400, "PGRST100", f'"failed to parse logic tree" {item!r}')
        parts.append(_condition(column, rest, args, in_tree=True))
    joined = sql.SQL(f" {kind.upper()} ").join(parts) if parts else sql.SQL("true")
    return sql.SQL("NOT ({})" if negate else "({})").format(joined)


@dataclass
class _Query:
    where: sql.Composable
    args: list[Any]
    order: sql.Composable
    limit: int | None
    offset: int


def _query(params: Sequence[tuple[str, str]]) -> _Query:
    args: list[Any] = []
    conds: list[sql.Composable] = []
    order: sql.Composable = sql.SQL("")
    limit: int | None = None
    offset = 0
    for key, value in params:
        if key in ("select", "columns", "on_conflict"):
            continue
        if key in ("or", "and", "not.or", "not.and"):
            conds.append(_logic(key, value, args))
        elif key == "order":
            terms = []
            for term in _split(value):
                column, *mods = term.strip().split(".")
                text = sql.SQL("{}").format(_ident(column))
                for mod in mods:
                    if mod not in ("asc", "desc", "nullsfirst", "nullslast"):
                        raise _Fail(400, "PGRST100", f'"failed to parse order" {term!r}')
                    text = sql.SQL("{} {}").format(
                        text, sql.SQL({"nullsfirst": "NULLS FIRST", "nullslast": "NULLS LAST"}.get(mod, mod.upper()))
                    )
                terms.append(text)
            order = sql.SQL(" ORDER BY {}").format(sql.SQL(", ").join(terms))
        elif key in ("limit", "offset"):
            if not value.isdigit():
                raise _Fail(400, "PGRST100", f'"failed to parse" {key}={value}')
            if key == "limit":
                limit = int(value)
            else:
                offset = int(value)
        elif "." in key or "->" in key:
            raise _Fail(400, "PGRST108", f"this stand-in does not implement filters on embedded resources: {key!r}")
        else:
            conds.append(_condition(key, value, args))
    where = sql.SQL(" WHERE {}").format(sql.SQL(" AND ").join(conds)) if conds else sql.SQL("")
    return _Query(where, args, order, limit, offset)


def _columns_param(text: str) -> list[str]:
    return [_unquote(c) for c in _split(text)]


def _prefer(request: web.Request) -> dict[str, str]:
    prefs: dict[str, str] = {}
    for header in request.headers.getall("Prefer", []):
        for token in header.split(","):
            name, _, value = token.strip().partition("=")
            if name:
                prefs[name] = value
    if "missing" in prefs:
        raise _Fail(400, "PGRST100", "this stand-in does not implement Prefer: missing=default")
    return prefs


# -- errors --------------------------------------------------------------------------------------


def _pg_status(sqlstate: str, role: str) -> int:
    """SQLSTATE -> HTTP status, as PostgREST maps them (its errors.rst)."""
    if sqlstate in ("23505", "23503"):
        return 409
    if sqlstate in ("42P01", "42883"):
        return 404
    if sqlstate == "42501":
        return 401 if role == "anon" else 403
    if sqlstate.startswith("08") or sqlstate in ("53300", "57P01", "57P03"):
        return 503
    if sqlstate == "25006":
        return 405
    return 400


def _pg_fail(exc: psycopg.Error, role: str) -> _Fail:
    diag = exc.diag
    code = exc.sqlstate or "XX000"
    return _Fail(_pg_status(code, role), code, diag.message_primary or str(exc), diag.message_detail, diag.message_hint)


# -- the server ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    path: str  # after /rest/v1/
    query: tuple[tuple[str, str], ...]
    prefer: str
    role: str | None
    status: int
    body: Any = field(default=None, compare=False)

    def param(self, name: str) -> str | None:
        return next((v for k, v in self.query if k == name), None)


class PostgrestStandin:
    """``async with PostgrestStandin(dsn, jwt_secret=...) as rest: rest.url`` -> give it to
    ``supabase.acreate_client(rest.url, key)``."""

    def __init__(self, dsn: str, *, jwt_secret: str, host: str = "127.0.0.1", port: int = 0, pool_size: int = 4):
        self.dsn = dsn
        self.jwt_secret = jwt_secret
        self._host, self._port_wanted, self._pool_size = host, port, pool_size
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._port: int | None = None
        self._pool: asyncio.Queue[psycopg.AsyncConnection[Any]] = asyncio.Queue()
        self._conns: list[psycopg.AsyncConnection[Any]] = []
        self._catalog: tuple[dict[str, _Table], dict[str, list[_Function]]] | None = None
        self._changed = asyncio.Event()
        self._failures: list[int] = []
        self._down = False
        self._delay_s = 0.0
        self.requests: list[LoggedRequest] = []

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        for _ in range(self._pool_size):
            conn = await psycopg.AsyncConnection.connect(self.dsn)
            self._conns.append(conn)
            self._pool.put_nowait(conn)
        app = web.Application(middlewares=[self._outage], client_max_size=64 << 20)
        app.router.add_route("*", "/rest/v1/{path:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await self._listen(self._port_wanted)

    async def _listen(self, port: int) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, self._host, port, reuse_address=True)
        await self._site.start()
        self._port = int(self._runner.addresses[-1][1])

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for conn in self._conns:
            await conn.close()
        self._conns.clear()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def url(self) -> str:
        """The project URL the supabase client takes (it appends /rest/v1)."""
        return f"http://{self._host}:{self._port}"

    def reset_catalog(self) -> None:
        """Re-read tables and functions on the next request (after DDL)."""
        self._catalog = None

    # -- test controls ---------------------------------------------------------------------------

    def fail_next(self, count: int = 1, status: int = 503) -> None:
        """Answer the next ``count`` requests with ``status`` (503: PostgREST's "database
        unavailable") before touching the database."""
        self._failures.extend([status] * count)

    async def go_down(self) -> None:
        """An outage: stop listening (new connections are refused) and drop open ones."""
        self._down = True
        if self._site is not None:
            await self._site.stop()
            self._site = None

    async def come_up(self) -> None:
        """End the outage, on the same port."""
        self._down = False
        if self._site is None:
            await self._listen(self.port)

    @property
    def port(self) -> int:
        assert self._port is not None
        return self._port

    def slow(self, seconds: float) -> None:
        """Delay every answer by ``seconds`` (0 to stop)."""
        self._delay_s = seconds

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds, re-checked after every request (bound it with
        ``asyncio.timeout``)."""
        while not predicate():
            await self.next_request().wait()

    def next_request(self) -> asyncio.Event:
        """The event the next answered request sets (take it before checking a condition)."""
        return self._changed

    def count(self, method: str, path: str, *, ok: bool | None = None) -> int:
        return sum(
            1 for r in self.requests if r.method == method and r.path == path and (ok is None or (r.status < 300) == ok)
        )

    # -- request handling ------------------------------------------------------------------------

    @web.middleware
    async def _outage(self, request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        if self._down:
            # A kept-alive connection from before the outage: drop it as a dead server would.
            if request.transport is not None:
                request.transport.abort()
            raise ConnectionResetError("stand-in is down")
        if self._delay_s:
            await asyncio.sleep(self._delay_s)  # the fault being injected, not synchronisation
        response: web.StreamResponse = await handler(request)
        return response

    async def _handle(self, request: web.Request) -> web.Response:
        path = request.match_info["path"]
        query = tuple((k, v) for k, v in request.query.items())
        role: str | None = None
        body: Any = None
        try:
            if self._failures:
                status = self._failures.pop(0)
                raise _Fail(status, "PGRST000", "injected failure (stand-in fail_next)")
            role, claims = self._auth(request)
            raw = await request.read()
            if raw:
                try:
                    body = json.loads(raw)
                except ValueError:
                    raise _Fail(400, "PGRST102", "Empty or invalid json") from None
            response = await self._dispatch(request, path, query, role, claims, body)
        except _Fail as fail:
            response = web.Response(
                status=fail.status, text=json.dumps(fail.body), content_type="application/json", charset="utf-8"
            )
        prefer = ",".join(request.headers.getall("Prefer", []))
        self.requests.append(LoggedRequest(request.method, path, query, prefer, role, response.status, body))
        self._changed.set()
        self._changed = asyncio.Event()
        return response

    def _auth(self, request: web.Request) -> tuple[str, dict[str, Any]]:
        apikey = request.headers.get("apikey")
        if not apikey:
            raise _Fail(401, "PGRST301", "No API key found in request")
        _verify_jwt(apikey, self.jwt_secret)
        auth = request.headers.get("Authorization", "")
        token = auth[7:] if auth.lower().startswith("bearer ") else apikey
        claims = _verify_jwt(token, self.jwt_secret)
        role = str(claims.get("role") or "anon")
        if role not in ROLES:
            raise _Fail(401, "PGRST301", f'role "{role}" does not exist')
        profile = request.headers.get("Accept-Profile" if request.method in ("GET", "HEAD") else "Content-Profile")
        if profile not in (None, SCHEMA):
            raise _Fail(
                406, "PGRST106", f"Invalid schema: {profile}", hint=f"Only the following schemas are exposed: {SCHEMA}"
            )
        return role, claims

    async def _dispatch(
        self,
        request: web.Request,
        path: str,
        query: tuple[tuple[str, str], ...],
        role: str,
        claims: dict[str, Any],
        body: Any,
    ) -> web.Response:
        conn = await self._pool.get()
        try:
            if self._catalog is None:
                self._catalog = await _load_catalog(conn)
                await conn.rollback()
            tables, functions = self._catalog
            prefs = _prefer(request)
            single = "application/vnd.pgrst.object+json" in request.headers.get("Accept", "")
            try:
                async with conn.transaction():
                    await conn.execute(
                        "SELECT set_config('role', %s, true), set_config('request.jwt.claims', %s, true)",
                        (role, json.dumps(claims)),
                    )
                    if path.startswith("rpc/"):
                        return await self._rpc(conn, request, path[4:], query, functions, body, prefs, single)
                    table = tables.get(path)
                    if table is None:
                        raise _Fail(404, "PGRST205", f"Could not find the table '{SCHEMA}.{path}' in the schema cache")
                    if request.method in ("GET", "HEAD"):
                        return await self._read(conn, request, table, query, prefs, single)
                    return await self._write(conn, request, table, query, body, prefs, single)
            except psycopg.Error as exc:
                if isinstance(exc, psycopg.OperationalError) and conn.broken:
                    await self._replace(conn)
                    conn = self._conns[-1]
                raise _pg_fail(exc, role) from None
        finally:
            self._pool.put_nowait(conn)

    async def _replace(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conns.remove(conn)
        self._conns.append(await psycopg.AsyncConnection.connect(self.dsn))

    async def _read(
        self,
        conn: psycopg.AsyncConnection[Any],
        request: web.Request,
        table: _Table,
        query: tuple[tuple[str, str], ...],
        prefs: dict[str, str],
        single: bool,
    ) -> web.Response:
        q = _query(query)
        select = _select_list(dict(query).get("select"))
        source = sql.Identifier(SCHEMA, table.name)
        page = sql.SQL("SELECT {} FROM {}{}{}").format(select, source, q.where, q.order)
        if q.limit is not None:
            page = sql.SQL("{} LIMIT {}").format(page, sql.Literal(q.limit))
        if q.offset:
            page = sql.SQL("{} OFFSET {}").format(page, sql.Literal(q.offset))
        cur = await conn.execute(
            sql.SQL("SELECT coalesce(json_agg(_t), '[]')::text, count(*) FROM ({}) _t").format(page), q.args
        )
        text, n = await cur.fetchone()  # type: ignore[misc]
        total: int | None = None
        if "count" in prefs:
            cur = await conn.execute(sql.SQL("SELECT count(*) FROM {}{}").format(source, q.where), q.args)
            total = (await cur.fetchone())[0]  # type: ignore[index]
        if total is not None and q.offset > total:
            raise _Fail(
                416,
                "PGRST103",
                "Requested range not satisfiable",
                f"An offset of {q.offset} was requested, but there are only {total} rows.",
            )
        status = 206 if total is not None and n < total else 200
        content_range = (
            f"{q.offset}-{q.offset + n - 1}/{'*' if total is None else total}"
            if n
            else f"*/{'*' if total is None else total}"
        )
        return self._answer(request, text, n, status, single, content_range, representation=True)

    async def _write(
        self,
        conn: psycopg.AsyncConnection[Any],
        request: web.Request,
        table: _Table,
        query: tuple[tuple[str, str], ...],
        body: Any,
        prefs: dict[str, str],
        single: bool,
    ) -> web.Response:
        params = dict(query)
        source = sql.Identifier(SCHEMA, table.name)
        returning = prefs.get("return", "minimal")
        if returning not in ("minimal", "representation", "headers-only"):
            raise _Fail(400, "PGRST100", f"this stand-in does not implement Prefer: return={returning}")
        if request.method == "POST":
            rows = body if isinstance(body, list) else [body] if isinstance(body, dict) else None
            if rows is None or not all(isinstance(r, dict) for r in rows):
                raise _Fail(400, "PGRST102", "Empty or invalid json")
            if "columns" in params:
                columns = _columns_param(params["columns"])
            else:
                columns = list(rows[0]) if rows else []
                if any(set(r) != set(columns) for r in rows):
                    raise _Fail(400, "PGRST102", "All object keys must match")
            self._check_columns(table, columns)
            cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
            statement = sql.SQL(
                "INSERT INTO {} ({}) SELECT {} FROM json_populate_recordset(NULL::{}, %s::json) _"
            ).format(source, cols, cols, source)
            resolution = prefs.get("resolution")
            if resolution is not None:
                target = _columns_param(params["on_conflict"]) if "on_conflict" in params else list(table.pk)
                self._check_columns(table, target)
                conflict = sql.SQL(", ").join(sql.Identifier(c) for c in target)
                if resolution == "ignore-duplicates":
                    action = sql.SQL("DO NOTHING")
                elif resolution == "merge-duplicates":
                    action = sql.SQL("DO UPDATE SET {}").format(
                        sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in columns)
                    )
                else:
                    raise _Fail(400, "PGRST100", f"unknown Prefer: resolution={resolution}")
                statement = sql.SQL("{} ON CONFLICT ({}) {}").format(statement, conflict, action)
            args: list[Any] = [json.dumps(rows)]
            status = 201
        elif request.method == "PATCH":
            if not isinstance(body, dict):
                raise _Fail(400, "PGRST102", "Empty or invalid json")
            q = _query(query)
            if q.limit is not None or q.offset:
                raise _Fail(400, "PGRST100", "this stand-in does not implement limited updates")
            columns = list(body)
            if not columns:
                return self._answer(request, "[]", 0, 200 if returning == "representation" else 204, single, "*/*",
                                    representation=returning == "representation")  # fmt: skip
            self._check_columns(table, columns)
            cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
            statement = sql.SQL(
                "UPDATE {} SET ({}) = (SELECT {} FROM json_populate_record(NULL::{}, %s::json)){}"
            ).format(source, cols, cols, source, q.where)
            args = [json.dumps(body), *q.args]
            status = 200 if returning == "representation" else 204
        elif request.method == "DELETE":
            q = _query(query)
            if q.limit is not None:
                raise _Fail(400, "PGRST100", "this stand-in does not implement limited deletes")
            statement = sql.SQL("DELETE FROM {}{}").format(source, q.where)
            args = list(q.args)
            status = 200 if returning == "representation" else 204
        else:
            raise _Fail(405, "PGRST117", f"Unsupported HTTP method: {request.method}")
        if request.method == "POST" and returning != "representation":
            status = 201
        select = _select_list(params.get("select"))
        cur = await conn.execute(
            sql.SQL(
                "WITH pgrst_source AS ({} RETURNING {}.*) "
                "SELECT coalesce(json_agg(_t), '[]')::text, count(*) FROM (SELECT {} FROM pgrst_source) _t"
            ).format(statement, source, select),
            args,
        )
        text, n = await cur.fetchone()  # type: ignore[misc]
        if single and n != 1:
            raise _Fail(
                406,
                "PGRST116",
                "JSON object requested, multiple (or no) rows returned",
                f"The result contains {n} rows",
            )
        return self._answer(request, text, n, status, single, "*/*", representation=returning == "representation")

    @staticmethod
    def _check_columns(table: _Table, columns: Sequence[str]) -> None:
        for column in columns:
            if column not in table.columns:
                raise _Fail(
                    400, "PGRST204", f"Could not find the '{column}' column of '{table.name}' in the schema cache"
                )

    async def _rpc(
        self,
        conn: psycopg.AsyncConnection[Any],
        request: web.Request,
        name: str,
        query: tuple[tuple[str, str], ...],
        functions: dict[str, list[_Function]],
        body: Any,
        prefs: dict[str, str],
        single: bool,
    ) -> web.Response:
        if request.method in ("GET", "HEAD"):
            given: dict[str, Any] = dict(query)
        elif request.method == "POST":
            if query:
                raise _Fail(400, "PGRST100", "this stand-in does not implement filters on RPC results")
            if body is None:
                body = {}
            if not isinstance(body, dict):
                raise _Fail(400, "PGRST102", "RPC arguments must be a JSON object")
            given = body
        else:
            raise _Fail(405, "PGRST101", "Only GET and POST are allowed for RPC")
        fn = next(
            (
                f
                for f in functions.get(name, [])
                if set(given) <= {a[0] for a in f.args} and all(a[0] in given for a in f.args if not a[2])
            ),
            None,
        )
        if fn is None:
            raise _Fail(
                404,
                "PGRST202",
                f"Could not find the function {SCHEMA}.{name}({', '.join(sorted(given))}) in the schema cache",
            )
        used = [a for a in fn.args if a[0] in given]
        record = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(a), sql.SQL(t)) for a, t, _ in used)
        call = sql.SQL("{}({})").format(
            sql.Identifier(SCHEMA, fn.name),
            sql.SQL(", ").join(sql.SQL("{0} := _a.{0}").format(sql.Identifier(a)) for a, _, _ in used),
        )
        source = sql.SQL(" FROM json_to_record(%s::json) AS _a({})").format(record) if used else sql.SQL("")
        args = [json.dumps(given)] if used else []
        if fn.returns_void:
            await conn.execute(sql.SQL("SELECT {}{}").format(call, source), args)
            return web.Response(status=204, headers={"Content-Range": "*/*"})
        if fn.returns_set:
            if not fn.returns_rows:
                raise _Fail(400, "PGRST100", "this stand-in does not implement functions returning a set of scalars")
            statement = sql.SQL(
                "SELECT coalesce(json_agg(_t), '[]')::text, count(*) FROM (SELECT _r.*{}, LATERAL {} _r) _t"
            ).format(source if used else sql.SQL(" FROM (SELECT 1) _one"), call)
            cur = await conn.execute(statement, args)
            text, n = await cur.fetchone()  # type: ignore[misc]
            return self._answer(request, text, n, 200, single, f"0-{n - 1}/*" if n else "*/*", representation=True)
        cur = await conn.execute(sql.SQL("SELECT to_json({})::text{}").format(call, source), args)
        (text,) = await cur.fetchone()  # type: ignore[misc]
        return web.Response(status=200, text=text or "null", content_type="application/json", charset="utf-8")

    def _answer(
        self,
        request: web.Request,
        text: str,
        n: int,
        status: int,
        single: bool,
        content_range: str,
        *,
        representation: bool,
    ) -> web.Response:
        headers = {"Content-Range": content_range}
        if single:
            if n != 1:
                raise _Fail(
                    406,
                    "PGRST116",
                    "JSON object requested, multiple (or no) rows returned",
                    f"The result contains {n} rows",
                )
            text = json.dumps(json.loads(text)[0])
        if not representation or request.method == "HEAD":
            return web.Response(status=status, headers=headers)
        content_type = "application/vnd.pgrst.object+json" if single else "application/json"
        return web.Response(status=status, text=text, headers=headers, content_type=content_type, charset="utf-8")


async def _serve(dsn: str, secret: str, port: int) -> None:
    async with PostgrestStandin(dsn, jwt_secret=secret, port=port) as standin:
        print(f"PORT={standin.port}", flush=True)
        await asyncio.Event().wait()  # until killed


def main() -> None:
    """``python -m tests.standins.postgrest --dsn DSN --secret S [--port 0]``: the stand-in in its
    own process (benchmarks: Supabase is not on the daemon's event loop either); prints PORT=<n>."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.standins.postgrest")
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(_serve(args.dsn, args.secret, args.port))


if __name__ == "__main__":
    main()

"""The store faults the report covers, and what nginx, Envoy and Kong document for each.

Each :class:`Store` holds the gatekeeper's contract for a fault of that store (``DESIGN.md``)
beside the documented behaviours and defaults of the others: text for docs/reliability.md, not
measurements. :data:`FAULTS` names the fault probes as the tests record them.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FAULTS", "KINDS", "STORES", "Store"]

_PG_CONTRACT = (
    "Postgres is off the request path: workers keep serving, the recorder keeps coalescing in a "
    "bounded buffer, retries with backoff and counts what it must drop; admin writes fail "
    "(Postgres is written first), so no acknowledged write exists only in Redis."
)
_PG_NGINX = (
    "No database. Access rules (`allow`/`deny`, `map`, `geo`) are configuration, changed by a "
    "reload; logs go to local files (`access_log`). Nothing here for a database fault to break, "
    "and no per-device activity is kept."
)
_PG_ENVOY = (
    "No database. Routes and RBAC policies come from static config or a control plane (xDS); "
    "when the management server is unreachable Envoy keeps the previous configuration and "
    "retries (`control_plane.connected_state` shows it). No activity store of its own."
)
_PG_KONG = (
    "Traditional (DB) mode caches entities in memory and avoids the database when proxying: "
    "`db_cache_ttl` (default 0, never expires), `db_resurrect_ttl` (default 30 s, stale entities "
    "are kept when a refresh fails) and `db_cache_warmup_entities` (default `services`) decide "
    "what keeps working; a cache miss needs the database, and the Admin API cannot write. "
    "DB-less and hybrid data planes have no database on the request path."
)
_REDIS_CONTRACT = (
    "Each worker serves from its last mirror of the blocked set (`gatekeeper_blocklist_stale` = "
    "1) and resyncs on reconnect; a worker that never loaded a mirror is not ready and answers "
    "503 unless `fail_open` is set. An admin change made meanwhile is committed to Postgres and "
    "reaches the edge when the admin API's background reconcile succeeds (retried with backoff, "
    "at most 30 s apart)."
)
_REDIS_NGINX = (
    "No external block store: a block list is configuration, applied on reload, so no store "
    "fault can leak a block (and a block needs a reload). With `auth_request` the decision is a "
    "subrequest: 2xx allows, 401/403 deny, any other outcome is an error and the request fails "
    "(closed); stock nginx has no fail-open switch for it."
)
_REDIS_ENVOY = (
    "`ext_authz` asks an external service per request: `failure_mode_allow: false` (default) "
    "fails closed with `status_on_error` (default 403) when the service is down or times out; "
    "`true` forwards unchecked and counts `ext_authz.failure_mode_allowed`. The RBAC filter "
    "decides in-process from its config, with no store to lose. Health checking and outlier "
    "detection (defaults: 5 consecutive 5xx, 10 s sweep, 30 s base ejection) eject failing "
    "upstream hosts; they watch upstreams, not a policy store."
)
_REDIS_KONG = (
    "Consumers, credentials and ACLs live in the database cache, not in Redis. Redis backs the "
    "rate-limiting plugin (`policy: redis`): `fault_tolerant: true` (default) proxies without "
    "limiting while Redis is unreachable, `false` answers 500."
)

_HUNG_PG = (
    "A hung server accepts connections and never answers, so only timeouts detect "
    "it; Kong bounds each Postgres connect, read and write with `pg_timeout` (default "
    "5000 ms)."
)
_HUNG_REDIS = (
    "A hung server is detected only by timeouts: Envoy's ext_authz call by its "
    "service `timeout` (200 ms by default for gRPC), Kong's rate-limiting by its "
    "Redis timeout (2000 ms by default), then each applies its failure mode."
)
_CRASHED = (
    "A crash drops every connection without a goodbye; what was acknowledged must "
    "already be on disk (Postgres: committed transactions in the WAL)."
)


@dataclass(frozen=True, slots=True)
class Store:
    """One store the gatekeeper depends on, and what the others do when theirs fails."""

    name: str
    title: str
    contract: str
    nginx: str
    envoy: str
    kong: str
    hung: str
    crashed: str = _CRASHED


STORES: tuple[Store, ...] = (
    Store("postgres", "Postgres", _PG_CONTRACT, _PG_NGINX, _PG_ENVOY, _PG_KONG, _HUNG_PG),
    Store(
        "redis",
        "Redis (Valkey)",
        _REDIS_CONTRACT,
        _REDIS_NGINX,
        _REDIS_ENVOY,
        _REDIS_KONG,
        _HUNG_REDIS,
    ),
)
KINDS = ("stopped", "hung", "crashed")
# The fault probes, named as tests/test_store_faults.py records them: "<store>.<kind>".
FAULTS: tuple[str, ...] = tuple(f"{store.name}.{kind}" for store in STORES for kind in KINDS)

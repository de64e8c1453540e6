"""The Store in SQL, written once and composed of one class per aggregate: accounts
(sql_accounts), sessions (sql_sessions), API keys (sql_apikeys), projects (sql_projects),
site settings and registration tokens (sql_settings), all on :class:`SqlBase`
(sql_base: the backend, transactions, the revocations feed).
"""

from __future__ import annotations

from datetime import UTC, datetime

from cocalc_hub.db.sql_accounts import SqlAccounts
from cocalc_hub.db.sql_apikeys import SqlApiKeys
from cocalc_hub.db.sql_base import REVOCATIONS_KEPT, SqlBase
from cocalc_hub.db.sql_projects import SqlProjects
from cocalc_hub.db.sql_sessions import SqlSessions
from cocalc_hub.db.sql_settings import SqlSiteSettings
from cocalc_hub.db.store import Store

__all__ = ["REVOCATIONS_KEPT", "SqlBase", "SqlStore", "utc"]


class SqlStore(SqlAccounts, SqlSessions, SqlApiKeys, SqlProjects, SqlSiteSettings, Store):
    """Store implemented on a Backend."""


def utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

"""Data-quality queries over the raw tables, used by the observe asset checks and tests."""

from __future__ import annotations

import duckdb

# Deliberately loose: anything shaped like an address counts, so a check never under-reports.
EMAIL_PATTERN = r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}"


def duplicate_event_ids(con: duckdb.DuckDBPyConnection) -> int:
    """Number of event_ids that occur more than once in raw.events."""
    return con.execute(
        "SELECT count(*) FROM (SELECT event_id FROM raw.events GROUP BY 1 HAVING count(*) > 1)"
    ).fetchone()[0]


def unreconciled_batches(con: duckdb.DuckDBPyConnection) -> list[tuple]:
    """Batches whose counts do not satisfy received = accepted + duplicates + dead_lettered."""
    return con.execute(
        """
        SELECT batch_id, received, accepted, duplicates, dead_lettered
        FROM ops.ingest_batches
        WHERE received <> accepted + duplicates + dead_lettered
        ORDER BY started_at
        """
    ).fetchall()


def raw_email_hits(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Count, per ``schema.table.column``, text or blob values that contain an email address.

    Scans every VARCHAR, JSON and BLOB column of every table in the warehouse, so a new table
    cannot slip past the check.
    """
    columns = con.execute(
        """
        SELECT table_schema, table_name, column_name
        FROM information_schema.columns
        WHERE data_type IN ('VARCHAR', 'JSON', 'BLOB')
          AND table_catalog = current_database()
        """
    ).fetchall()
    hits: dict[str, int] = {}
    for schema, table, column in columns:
        # A BLOB cast to VARCHAR keeps ASCII as is and escapes other bytes, so an address
        # inside invalid UTF-8 (dead-lettered bytes) is still found.
        expr = f'"{column}"'
        n = con.execute(
            f'SELECT count(*) FROM "{schema}"."{table}" '
            f"WHERE regexp_matches(CAST({expr} AS VARCHAR), ?)",
            [EMAIL_PATTERN],
        ).fetchone()[0]
        if n:
            hits[f"{schema}.{table}.{column}"] = n
    return hits

"""Parquet tables of results: schemas, the atomic writer, DuckDB/pandas queries, reports."""

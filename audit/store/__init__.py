"""The data model and its only writer and readers: a scan directory of Parquet part files, and DuckDB over it."""

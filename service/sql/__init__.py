"""SQL over the S3 archive: DuckDB locally, the same queries on Athena in AWS.

- `archive`: mirrors the archive's Parquet objects from S3 (AWS or the local stack) into a
  local cache, incrementally, through our aiobotocore client. DuckDB's own S3 reader (the
  `httpfs` extension) is downloaded by DuckDB at run time from its extension site, which this
  project's machines cannot reach, and the PyPI packages that bundle it are built for older
  DuckDB releases; a local mirror also makes repeated queries free of S3 GET charges.
- `engine`: a DuckDB connection with `events` and `rejects` views over the mirror
  (`read_parquet(..., hive_partitioning = true)`: `dt`, `hour`, `shard` come from the keys),
  and the result as a table, CSV or JSON.
- `examples`: the shipped example queries (`queries/*.sql`), written in the SQL that DuckDB
  and Athena (Trino) share, so each runs unchanged on both.
"""

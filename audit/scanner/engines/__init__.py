"""Where a scan runs: the local engine is audit.scanner.pipeline.scan_pending; ray_data.py runs the same
batch scanner on a Ray Data actor pool. Both commit units through the same store writer, so rows never depend on
the engine."""

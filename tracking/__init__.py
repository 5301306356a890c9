"""MLflow logging, queries and reports for permsym (knows MLflow, pandas and matplotlib; never Ray).

- tracking.store: results folder, tracking URI, `prepare_store` (DB, migrations, experiment; driver only).
- tracking.runs: the sweep's parent run and one child run per trial (start / finish / fail / orphans).
- tracking.spool: keep records on disk while the server is unreachable; `sync` logs them later.
- tracking.environ: environment variables set for one block and put back after.
- tracking.query: `runs`, `points`, `summary` as pandas DataFrames.
- tracking.report: the Markdown report with figures.
Submodules are imported on demand so that `import tracking` stays cheap.
"""

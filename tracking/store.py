"""Where results live and how the MLflow store is prepared before any worker writes.

The embedded default is SQLite at an absolute path (`sqlite:///<results>/mlflow.db`) with artifacts beside
it (`<results>/artifacts`). The driver calls `prepare_store` once: concurrent first-time migrations of one
SQLite file crash workers and can break the file for good (measured, see DESIGN.md section 3 and
`create_sqlite_store`), so the database is built aside and linked into place whole, and it and the
experiment exist before the first trial starts.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import uuid
from pathlib import Path
from urllib.parse import urlparse

#: Environment for `mlflow server` processes started by permsym (the UI, tests, the cluster head).
#: Without it mlflow 3.17 starts 10 processes (job runner and huey consumers for GenAI features, ~1.2 GB);
#: with it 2 processes (~400 MB). This is the one place that sets it.
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def server_env(base: dict | None = None) -> dict:
    """A copy of `base` (default: os.environ) with the MLflow server settings permsym relies on."""
    env = dict(os.environ if base is None else base)
    env.update(SERVER_ENV)
    return env


def default_results_dir() -> Path:
    return Path("./permsym-results").resolve()


def results_uri(results_dir: str | os.PathLike) -> str:
    """The SQLite tracking URI of a results folder (absolute, so every worker's CWD agrees)."""
    return f"sqlite:///{Path(results_dir).resolve() / 'mlflow.db'}"


def artifact_root(results_dir: str | os.PathLike) -> Path:
    return Path(results_dir).resolve() / "artifacts"


def is_sqlite(tracking_uri: str) -> bool:
    return tracking_uri.startswith("sqlite:")


def is_http(tracking_uri: str) -> bool:
    return tracking_uri.startswith(("http://", "https://"))


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a `sqlite:///abs/path` URI (None for any other URI or in-memory SQLite)."""
    if not is_sqlite(tracking_uri):
        return None
    path = tracking_uri[len("sqlite:///"):] if tracking_uri.startswith("sqlite:///") else ""
    if not path or path == ":memory:":
        return None
    return Path("/" + path.lstrip("/")) if tracking_uri.startswith("sqlite:////") else Path(path)


def enable_wal(db_path: str | os.PathLike) -> str:
    """Switch a SQLite database to write-ahead logging (persistent in the file). Returns the new mode.

    Measured here (2 cores, load 6-12, 8 writer processes x 4 trial runs, 1 sample each): no "database is
    locked" and no lost run with or without WAL; writer wall time was within noise (25/43 s rollback journal,
    36/49 s WAL); a reader polling `query.runs` during the writes saw a max latency of 2.4 s with WAL and
    4.5 s without (medians 0.2 s both). Kept on for the readers (UI, `permsym results` during a sweep).
    Never use it on a network file system.
    """
    con = sqlite3.connect(str(db_path), timeout=30)
    try:
        mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    finally:
        con.close()
    return str(mode)


def template_dir() -> Path:
    """Where migrated empty stores are kept (one per MLflow version): beside the results cache."""
    base = os.environ.get("PERMSYM_CACHE_DIR")
    if not base:
        base = str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "permsym")
    return Path(base) / "store-templates"


def _migrated_db(path: Path, artifacts: Path) -> None:
    """Build a fully migrated MLflow SQLite database at `path` (tables + every migration: ~3-4 s)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore(f"sqlite:///{path}", str(artifacts))
    store.engine.dispose()                         # no pooled connection may outlive the rename


def _template() -> Path | None:
    """A migrated empty store for this MLflow version, built once and reused by every new store (None if
    the cache folder cannot be written: the caller migrates in place). Built aside and linked into place, so a
    concurrent builder never leaves a half-migrated template."""
    import mlflow

    folder = template_dir()
    tpl = folder / f"mlflow-{mlflow.__version__}.db"
    if tpl.is_file():
        return tpl
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{tpl.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            _migrated_db(tmp, folder / "artifacts")
            with contextlib.suppress(FileExistsError):
                os.link(tmp, tpl)
        finally:
            tmp.unlink(missing_ok=True)
        return tpl if tpl.is_file() else None
    except OSError:
        return None


def create_sqlite_store(db: Path, wal: bool = True) -> bool:
    """Create a fully migrated MLflow SQLite database at `db`, atomically; False if one was already there.

    MLflow creates tables and runs its migrations in whichever process opens a new file first, and two
    processes doing that at once break the file for good (measured: three clients started together left
    `_alembic_tmp_metrics` behind and an alembic version that no later client could upgrade from). So the
    tables are built in a private file beside `db`, switched to WAL, and hard-linked into place: another
    process (a second driver, the UI, a test polling for results) sees either no database or a complete one.
    The private file is a copy of a migrated empty template (`_template`, one per MLflow version, under
    `template_dir()`): the migrations (~3-4 s) run once per machine, not once per sweep. The copy's Default
    experiment is pointed at this store's artifacts folder; PERMSYM_STORE_TEMPLATE=off migrates in place.
    """
    if db.exists():
        return False
    tmp = db.with_name(f".{db.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tpl = None if os.environ.get("PERMSYM_STORE_TEMPLATE", "").lower() in ("off", "0", "false", "no") \
            else _template()
        if tpl is not None:
            shutil.copyfile(tpl, tmp)
            con = sqlite3.connect(str(tmp))
            with con:
                con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                            (str(db.parent / "artifacts" / "0"),))
            con.close()
        else:
            _migrated_db(tmp, db.parent / "artifacts")
        if wal:
            enable_wal(tmp)
        try:
            os.link(tmp, db)                       # fails if another process put its database there first
        except FileExistsError:
            return False
        return True
    finally:
        for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
            leftover.unlink(missing_ok=True)


#: MLflow 3's UI opens an experiment without this tag in its GenAI view (traces, evaluation runs); with
#: it, in the model-training view (runs table with nested children, metrics as columns).
EXPERIMENT_KIND_TAG = ("mlflow.experimentKind", "custom_model_development")


def prepare_store(tracking_uri: str, experiment_name: str, artifact_root: str | os.PathLike | None = None,
                  wal: bool = True) -> str:
    """Create the store (tables, migrations) and the experiment if needed; return the experiment id.

    Idempotent: a second call (or a relaunched sweep) returns the same id. For SQLite, the parent folder is
    created, the database is created whole with WAL on (`create_sqlite_store`; `wal=False` keeps the rollback
    journal) and, unless `artifact_root` says otherwise, the experiment's artifacts go to
    `<db folder>/artifacts/<experiment name>`. For a server,
    the server decides where artifacts go unless `artifact_root` is given.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    db = sqlite_path(tracking_uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
        if artifact_root is None:
            artifact_root = db.parent / "artifacts"
    location = None
    if artifact_root is not None:
        root = str(artifact_root)
        if "://" not in root:
            root = Path(root).resolve().as_uri()
        location = f"{root.rstrip('/')}/{experiment_name}"

    if db is not None and not create_sqlite_store(db, wal=wal) and wal:
        enable_wal(db)                             # a store made elsewhere; a no-op when it is WAL already
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment_name)
    if exp is None:
        try:
            return client.create_experiment(experiment_name, artifact_location=location,
                                            tags={EXPERIMENT_KIND_TAG[0]: EXPERIMENT_KIND_TAG[1]})
        except MlflowException as e:              # another driver created it in between
            if "RESOURCE_ALREADY_EXISTS" not in str(e.error_code) and "already exists" not in str(e):
                raise
            exp = client.get_experiment_by_name(experiment_name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    if EXPERIMENT_KIND_TAG[0] not in (exp.tags or {}):        # an experiment made before the tag existed
        client.set_experiment_tag(exp.experiment_id, *EXPERIMENT_KIND_TAG)
    return exp.experiment_id


def experiment_id_for(tracking_uri: str, experiment: str | None) -> list[str]:
    """Experiment ids to search: the named (or numbered) experiment, or every active experiment."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    if experiment is not None:
        exp = client.get_experiment_by_name(str(experiment))
        if exp is None and str(experiment).isdigit():
            try:
                exp = client.get_experiment(str(experiment))
            except Exception:
                exp = None
        return [] if exp is None else [exp.experiment_id]
    return [e.experiment_id for e in client.search_experiments()]


def server_base_url(tracking_uri: str) -> str:
    u = urlparse(tracking_uri)
    return f"{u.scheme}://{u.hostname or ''}" + (f":{u.port}" if u.port else "")


def redact_uri(uri: str) -> str:
    """The URI with any user:password@ replaced by ***@ (for printing, reports, Ray's runtime_env)."""
    u = urlparse(str(uri))
    if not u.netloc or "@" not in u.netloc:
        return str(uri)
    return u._replace(netloc="***@" + u.netloc.rsplit("@", 1)[1]).geturl()


def clean_uri(uri: str) -> str:
    """The URI without user:password@, the credentials moved into MLFLOW_TRACKING_USERNAME / _PASSWORD of this
    process (where MLflow reads them): what every command does before it prints, logs or hands on a URI."""
    import os

    uri, creds = split_credentials(uri)
    os.environ.update(creds)
    return uri


def split_credentials(uri: str) -> tuple[str, dict]:
    """(URI without user:password@, {"MLFLOW_TRACKING_USERNAME": .., "MLFLOW_TRACKING_PASSWORD": ..}).

    MLflow reads basic-auth credentials from those variables; a URI never needs to carry them, so permsym
    strips them off before the URI is printed, logged or handed to Ray."""
    from urllib.parse import unquote

    u = urlparse(str(uri))
    if not u.netloc or "@" not in u.netloc:
        return str(uri), {}
    creds, host = u.netloc.rsplit("@", 1)
    user, _, password = creds.partition(":")
    env = {"MLFLOW_TRACKING_USERNAME": unquote(user)}
    if password:
        env["MLFLOW_TRACKING_PASSWORD"] = unquote(password)
    return u._replace(netloc=host).geturl(), env

"""RewardLab: label preferences, train reward models on them, and inspect what they reward.

    python app.py                      serve the app on http://127.0.0.1:7860 (demo data if empty)
    python app.py import FILE [--dataset NAME]     import preference pairs or candidates to label
    python app.py datasets [NAME --overlap N --guidelines FILE --archive ...]   list datasets / change one
    python app.py export OUT [--dataset NAME ...] [--with-metadata]   write a TRL-ready preference dataset
    python app.py score --model M --input IN --output OUT [--trajectory]   M: registered name[@vN] or folder
    python app.py eval --model M --input PAIRS     accuracy and mean margin as JSON
    python app.py serve-rm --model M [--model M2] [--port 8001]   serve reward models to RL trainers over HTTP
    python app.py check-server URL --model M       compare a reward server's rewards with in-process scoring
    python app.py adduser NAME --role annotator|engineer|admin   create a login (password from stdin)
    python app.py users | passwd NAME | deluser NAME              list logins / set a password / disable a login
    python app.py train [--base-model demo|FOLDER|HUB_ID] [flags]   train a reward model in the foreground
    python app.py jobs | models                                      list training jobs / registered models
    python app.py backup OUT.db                                      copy the store while the app runs
    python app.py migrate-store --from URL --to URL                  move a store to another database (SQLite <-> PostgreSQL)
    python app.py --help               all subcommands

Every subcommand but migrate-store takes ``--db URL`` (default: ``$REWARDLAB_DB`` or ``data/rewardlab.db``).
This file only parses arguments and reports; the work, and the permission checks, are in ``core/``
(the command line acts as the local operator, ``core.accounts.operator_actor``).
Gradio is imported only by ``serve``, so the other commands start fast.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path

from core.accounts import (
    LOGIN_ROLES,
    AccountError,
    accounts_exist,
    add_user,
    disable_account,
    list_accounts,
    operator_actor,
    set_password,
)
from core.config_fields import ConfigError, add_config_arguments, config_from_args
from core.data.datasets import DatasetError, DatasetSettings, change_dataset_settings, create_dataset, datasets_for
from core.data.exporter import ExportConfig, export_dataset
from core.preferences.pairs import NothingToExport
from core.data.importer import ImportConfig, ImportRejected, import_file
from core.data.store_move import BackupError, TransferError, back_up_store, move_store
from core.limits import DEFAULT_MAX_UPLOAD_MB
from core.scoring.engine import ModelLoadError
from core.scoring.evaluation import EvalConfig, InputRejected, ScoreConfig, evaluate_pairs, score_file
from core.scoring.inspection import registered_models
from core.scoring.model_names import model_references
from core.serving.config import CheckServerConfig, ServerConfig
from core.loop.acquisition import ACQUISITIONS
from core.loop.settings import LoopError, LoopSettings, configure_loop
from core.training.config import TrainingConfig
from core.jobs.scheduling import recent_jobs, submit_job
from core.jobs.worker import execute_job, stop_at_next_step_on_signals
from storage.engine import DB_URL_ENV, Store, StoreConfigError

EXIT_BAD_INPUT = 2
EXIT_PARITY_FAILED = 1  # serve-rm and check-server: the server's rewards differ from in-process scoring


def _add_db_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        default=None,
        help=f"SQLAlchemy URL of the store, e.g. sqlite:///data/rewardlab.db or postgresql+psycopg://user@host/db "
        f"(default: ${DB_URL_ENV} or data/rewardlab.db)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python app.py",
        description="RewardLab: label preferences, train reward models, inspect their rewards. "
        "Without a subcommand, serves the app.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser("serve", help="serve the web app (the default)")
    _add_db_argument(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    serve.add_argument("--no-demo", action="store_true", help="do not load the demo dataset into an empty store")
    serve.add_argument("--max-upload-mb", type=int, default=DEFAULT_MAX_UPLOAD_MB,
                       help=f"largest file the Data tab accepts, in MB (default: {DEFAULT_MAX_UPLOAD_MB})")

    importer = commands.add_parser(
        "import", help="import preference pairs or candidates (jsonl, json, csv, parquet, .gz, save_to_disk folder)"
    )
    _add_db_argument(importer)
    add_config_arguments(importer, ImportConfig, positional=("path",))

    datasets = commands.add_parser(
        "datasets", help="list datasets with their counts, or create one / change its settings",
        description="Without NAME: list every dataset. With NAME and flags: change that dataset (admins' settings).",
    )
    datasets.add_argument("name", nargs="?", help="the dataset to create or change")
    datasets.add_argument("--create", action="store_true", help="create NAME, empty (import also creates datasets)")
    datasets.add_argument("--question", choices=("pairwise", "ranking"),
                          help="with --create: what the dataset asks (default pairwise; an empty dataset may change)")
    datasets.add_argument("--overlap", type=int, help="annotators per comparison that people label (1 to 10)")
    datasets.add_argument("--lease-seconds", type=int, help="how long a comparison handed out stays reserved")
    datasets.add_argument("--default-priority", type=int, help="priority of comparisons imported without one")
    datasets.add_argument("--guidelines", type=Path, help="a Markdown file with the labeling guidelines")
    archive = datasets.add_mutually_exclusive_group()
    archive.add_argument("--archive", dest="archived", action="store_const", const=True,
                         help="hand out nothing more from it and hide it from the Label tab (labels are kept)")
    archive.add_argument("--unarchive", dest="archived", action="store_const", const=False, help="open it again")
    datasets.add_argument("--annotators", nargs="+", metavar="NAME",
                          help="only these users may label it; 'all' opens it to every annotator")
    loop = datasets.add_argument_group("the active-learning loop")
    loop.add_argument("--order", choices=("priority", "uncertainty"),
                      help="queue order among equal priorities: import order, or the model's least certain first")
    loop.add_argument("--model", help="the registered model that scores the queue (NAME or NAME@vN), or 'latest': "
                                      "the loop's promoted version")
    loop.add_argument("--random-fraction", type=float, help="share of items served in random order as a control arm "
                                                            "(default 0.1)")
    loop.add_argument("--retrain-every", type=int, help="queue a training job after this many new human labels "
                                                        "(0: off); it trains with the dataset's last training config")
    loop.add_argument("--promotion-tolerance", type=float,
                      help="promote a new version unless its held-out accuracy is lower by more than this (0.02)")
    loop.add_argument("--min-heldout-pairs", type=int,
                      help="a new version is judged against the current one on the same held-out pairs, at least this "
                           "many (5 to 100000, default 30); with fewer the current model is kept")
    loop.add_argument("--uncertainty", choices=("margin", "ensemble"),
                      help="what 'least certain' means: the model's margin |r(a) - r(b)| (default), or the "
                           "disagreement of an ensemble of bootstrap reward heads on the model's features")
    loop.add_argument("--ensemble-size", type=int, help="heads in the ensemble, 2 to 16 (default 5)")
    loop.add_argument("--acquisition", choices=ACQUISITIONS,
                      help="for prompts with 3+ candidates: serve every pair (all, default), or first the one pair per "
                           "prompt a rule picks, holding the others back: margin, delta-ucb, dts (both on the ensemble's "
                           "heads) or random")
    loop.add_argument("--queue-encoder", metavar="FOLDER",
                      help="rank the queue with this frozen encoder (a registered model, or a folder inside the models "
                           "folder, e.g. all-MiniLM-L6-v2) plus bootstrap heads refitted on its cached features, instead "
                           "of the reward model; '' goes back to the reward model")
    loop.add_argument("--refit-every", type=int,
                      help="with --queue-encoder: refit its heads and re-rank after this many new human labels (seconds "
                           "each; 0: only when a rescore runs); full retrains keep --retrain-every")
    _add_db_argument(datasets)
    exporter = commands.add_parser("export", help="write a TRL-ready preference dataset")
    _add_db_argument(exporter)
    add_config_arguments(exporter, ExportConfig, positional=("out",))

    scorer = commands.add_parser("score", help="score prompt/response rows with a reward model")
    add_config_arguments(scorer, ScoreConfig)
    evaluator = commands.add_parser("eval", help="accuracy and mean margin of a reward model on preference pairs")
    add_config_arguments(evaluator, EvalConfig)
    reward_server = commands.add_parser(
        "serve-rm", help="serve reward models over HTTP to RL trainers (TRL, OpenRLHF, verl), after a parity check",
        description="POST /score, /get_reward (OpenRLHF), /classify (vLLM pooling, verl); GET /health, /info. "
        "Listens on 127.0.0.1 unless told otherwise; any other address needs --api-key-env.")
    add_config_arguments(reward_server, ServerConfig)
    checker = commands.add_parser(
        "check-server", help="compare a running reward server (RewardLab, OpenRLHF, vLLM pooling) with in-process scoring")
    add_config_arguments(checker, CheckServerConfig, positional=("url",))

    trainer = commands.add_parser("train", help="train a reward model on the store's labels, in the foreground")
    _add_db_argument(trainer)
    add_config_arguments(trainer, TrainingConfig)
    jobs = commands.add_parser("jobs", help="list training jobs")
    _add_db_argument(jobs)
    models = commands.add_parser("models", help="list registered reward models")
    _add_db_argument(models)
    backup = commands.add_parser("backup", help="copy the SQLite store to a file, safely while the app runs")
    _add_db_argument(backup)
    backup.add_argument("out", type=Path, help="the backup file to write (replaced whole)")

    mover = commands.add_parser(
        "migrate-store", help="copy a whole store into another, empty database (SQLite <-> PostgreSQL) and verify it"
    )
    mover.add_argument("--from", dest="from_url", required=True, help="URL of the store to copy, e.g. sqlite:///data/rewardlab.db")
    mover.add_argument("--to", dest="to_url", required=True,
                       help="URL of an empty database, e.g. postgresql+psycopg://user@host/rewardlab (created schema included)")

    adduser = commands.add_parser("adduser", help="create a login account (the app then requires logins)")
    _add_db_argument(adduser)
    adduser.add_argument("name", help="user name: letters, digits, '.', '_', '@', '-'")
    adduser.add_argument("--role", required=True, choices=[role.value for role in LOGIN_ROLES],
                         help="annotator: label; engineer: also import, export, train, team view; admin: everything")
    adduser.add_argument("--password", help="the password (default: read from standard input, or asked for)")
    users = commands.add_parser("users", help="list login accounts: role, created, disabled, label count")
    _add_db_argument(users)
    passwd = commands.add_parser("passwd", help="set a new password for a login account")
    _add_db_argument(passwd)
    passwd.add_argument("name", help="the account's user name")
    passwd.add_argument("--password", help="the new password (default: read from standard input, or asked for)")
    deluser = commands.add_parser(
        "deluser", help="disable a login: its labels are kept, and its open sessions stop at their next request")
    _add_db_argument(deluser)
    deluser.add_argument("name", help="the account's user name")
    return parser


def _password_from(args: argparse.Namespace) -> str:
    """``--password``, else one line of standard input, else asked for on the terminal."""
    if args.password is not None:
        return args.password
    if sys.stdin.isatty():
        return getpass.getpass(f"password for {args.name}: ")
    return sys.stdin.readline().rstrip("\n")


def run_adduser(args: argparse.Namespace) -> int:
    store = Store(args.db)
    first = not accounts_exist(store)
    add_user(store, args.name, args.role, _password_from(args))
    # Only the first account changes what a running app does (it starts asking for logins at its next start).
    print(f"created {args.role} {args.name!r}" + ("; restart a running app so that it asks for logins" if first else ""))
    return 0


def run_users(args: argparse.Namespace) -> int:
    store = Store(args.db)
    print(f"{'name':<24} {'role':<10} {'created (UTC)':<17} {'disabled (UTC)':<17} {'labels':>7}")
    for account in list_accounts(store, operator_actor(store)):
        created = f"{account.created_at:%Y-%m-%d %H:%M}"
        disabled = f"{account.disabled_at:%Y-%m-%d %H:%M}" if account.disabled else "-"
        print(f"{account.name:<24} {account.role:<10} {created:<17} {disabled:<17} {account.labels:>7}")
    return 0


def run_passwd(args: argparse.Namespace) -> int:
    password = _password_from(args)
    store = Store(args.db)
    set_password(store, operator_actor(store), args.name, password)
    print(f"password of {args.name!r} changed")
    return 0


def run_deluser(args: argparse.Namespace) -> int:
    store = Store(args.db)
    changed = disable_account(store, operator_actor(store), args.name)
    print(f"disabled the login of {args.name!r}; its labels are kept" if changed else f"{args.name!r} was already disabled")
    return 0


def run_score(args: argparse.Namespace) -> int:
    config = config_from_args(ScoreConfig, args)
    from tqdm import tqdm

    # A progress bar on a terminal (silent when stderr is a file or pipe): trajectories of long
    # reasoning traces take a while.
    with tqdm(total=100, desc="scoring", unit="%", file=sys.stderr, disable=None) as bar:
        try:
            count = score_file(config, progress=lambda done: bar.update(round(done * 100) - bar.n))
        except (InputRejected, ModelLoadError) as error:
            print(f"score refused, nothing written:\n{error}", file=sys.stderr)
            return EXIT_BAD_INPUT
    print(f"scored {count} rows into {config.output}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    config = config_from_args(EvalConfig, args)
    try:
        result = evaluate_pairs(config)
    except (InputRejected, ModelLoadError) as error:
        print(f"eval refused:\n{error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(json.dumps(result.as_dict()))
    return 0


def run_serve_rm(args: argparse.Namespace) -> int:
    from core.serving.parity import ParityFailed
    from core.serving.reward_server import serve_reward_models

    config = config_from_args(ServerConfig, args)
    try:
        serve_reward_models(config, say=lambda line: print(line, flush=True))
    except ParityFailed as error:
        print(f"serve-rm refuses to serve: the server's rewards differ from in-process scoring\n{error}", file=sys.stderr)
        return EXIT_PARITY_FAILED
    except (OSError, RuntimeError) as error:
        print(f"serve-rm stopped: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def run_check_server(args: argparse.Namespace) -> int:
    from core.serving.http_client import RemoteError
    from core.serving.reward_server import check_remote_server

    config = config_from_args(CheckServerConfig, args)
    try:
        report = check_remote_server(config)
    except RemoteError as error:
        hint = " (pass --api-key-env VAR with the server's key)" if error.status in (401, 403) else ""
        print(f"check-server: {error}{hint}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print("\n".join(report.lines()))
    return 0 if report.passed else EXIT_PARITY_FAILED


def run_train(args: argparse.Namespace) -> int:
    config = config_from_args(TrainingConfig, args)
    store = Store(args.db)
    try:
        job_id = submit_job(store, operator_actor(store), config)
    except DatasetError as error:
        print(f"train refused: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"job {job_id}: training in the foreground (Ctrl-C stops it at the next step)", flush=True)
    cancel_flag = [False]
    stop_at_next_step_on_signals(cancel_flag, log=lambda message: print(message, flush=True))
    try:
        return execute_job(store, job_id, cancel_flag=cancel_flag, log=lambda message: print(message, flush=True))
    except KeyboardInterrupt:
        return 130


def run_backup(args: argparse.Namespace) -> int:
    try:
        store = Store(args.db)
        pages = back_up_store(store, operator_actor(store), args.out)
    except BackupError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"backed up {pages} pages to {args.out}")
    return 0


def run_migrate_store(args: argparse.Namespace) -> int:
    def progress(table: str, rows: int) -> None:
        print(f"  {table}: {rows} rows", flush=True)

    try:
        report = move_store(args.from_url, args.to_url, progress=progress)
    except TransferError as error:
        print(f"migrate-store failed: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(report.summary())
    return 0


def run_jobs(args: argparse.Namespace) -> int:
    store = Store(args.db)
    rows = recent_jobs(store, operator_actor(store), limit=50)
    print(f"{'id':>4}  {'status':<11} {'progress':>11}  {'base model':<28} {'model / error'}")
    for job in rows:
        progress = f"{job.current_step}/{job.total_steps}" if job.total_steps else str(job.current_step)
        detail = job.reward_model_name or (job.error or "").splitlines()[0:1]
        detail = detail if isinstance(detail, str) else (detail[0] if detail else "")
        print(f"{job.id:>4}  {job.status:<11} {progress:>11}  {job.config.get('base_model', ''):<28} {detail}")
    return 0


def run_models(args: argparse.Namespace) -> int:
    store = Store(args.db)
    rows = registered_models(store, operator_actor(store))
    # Each model under the name that loads it (a plain name loads its newest version; name@v1 the first).
    references = model_references([model.name for model in rows])
    print(f"{'name':<28} {'accuracy':>8} {'pairs':>6}  {'base model':<28} path")
    for model in rows:
        accuracy = f"{model.eval_accuracy:.3f}" if model.eval_accuracy is not None else "-"
        print(f"{references[model.name]:<28} {accuracy:>8} {model.n_pairs or 0:>6}  {model.base_model or '':<28} {model.path}")
    return 0


def run_import(args: argparse.Namespace) -> int:
    config = config_from_args(ImportConfig, args)
    try:
        report = import_file(Store(args.db), config)
    except ImportRejected as rejected:
        print(f"import refused, nothing written ({rejected.total} problem(s)):", file=sys.stderr)
        print(str(rejected), file=sys.stderr)
        return EXIT_BAD_INPUT
    print(report.summary())
    return 0


def _read_guidelines(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read the guidelines file {path}: {error}") from None


def run_datasets(args: argparse.Namespace) -> int:
    store = Store(args.db)
    actor = operator_actor(store)
    if args.name is not None:
        if args.create:
            create_dataset(store, actor, args.name, args.question)
        members = None if args.annotators in (None, ["all"]) else tuple(args.annotators)
        settings = DatasetSettings(
            overlap=args.overlap, lease_seconds=args.lease_seconds, default_priority=args.default_priority,
            guidelines=_read_guidelines(args.guidelines) if args.guidelines else None, archived=args.archived,
            open_to_all=None if args.annotators is None else members is None, members=members,
        )
        if settings != DatasetSettings():
            change_dataset_settings(store, actor, args.name, settings)
        loop_settings = LoopSettings(order=args.order, model=args.model, random_fraction=args.random_fraction,
                                     retrain_every=args.retrain_every, promotion_tolerance=args.promotion_tolerance,
                                     min_heldout_pairs=args.min_heldout_pairs, uncertainty=args.uncertainty, ensemble_size=args.ensemble_size,
                                     acquisition=args.acquisition, queue_encoder=args.queue_encoder,
                                     refit_every=args.refit_every)
        if loop_settings != LoopSettings():
            status = configure_loop(store, actor, args.name, loop_settings)
            print(f"loop of {status.dataset}: order {status.order}"
                  + (f" ({status.uncertainty}{f', {status.ensemble_size} heads' if status.uncertainty == 'ensemble' else ''})"
                     if status.order == "uncertainty" else "")
                  + (f", acquisition {status.acquisition}" if status.acquisition != "all" else "")
                  + (f", queue encoder {status.queue_encoder} (heads refit every {status.refit_every or '-'} label(s))"
                     if status.queue_encoder else "")
                  + f", model {status.model or '-'} (promoted: "
                  f"{status.promoted_model or '-'}), random arm {status.random_fraction:.0%}, retrain every "
                  f"{status.retrain_every or '-'} label(s), {status.human_labels} human label(s) so far")
            for note in status.notes:
                print(note)
    summaries = datasets_for(store, actor)
    if args.name is not None:
        summaries = [summary for summary in summaries if summary.name == args.name]
        if not summaries:
            print(f"error: no dataset named {args.name!r} (create it with --create, or import into it)", file=sys.stderr)
            return EXIT_BAD_INPUT
    print(f"{'name':<24} {'kind':<5} {'question':<8} {'items':>11} {'labeled':>8} {'waiting':>8} {'labels':>7} "
          f"{'overlap':>7}  who")
    for summary in summaries:
        who = "all annotators" if summary.open_to_all else (", ".join(summary.members) or "nobody yet")
        state = " (archived)" if summary.archived else ""
        print(f"{summary.name:<24} {summary.prompt_kind or '-':<5} {summary.question:<8} {summary.comparisons:>11} {summary.labeled:>8} "
              f"{summary.waiting:>8} {summary.labels:>7} {summary.overlap:>7}  {who}{state}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    config = config_from_args(ExportConfig, args)
    try:
        report = export_dataset(Store(args.db), config)
    except NothingToExport as error:
        print(f"export refused: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(report.summary())
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from app.web_server import UnsafeListenAddress, serve

    try:
        serve(db_url=args.db, host=args.host, port=args.port, load_demo=not args.no_demo,
              max_upload_mb=args.max_upload_mb)
    except UnsafeListenAddress as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # No subcommand (nothing, or serve's own flags first) means serve.
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["serve", *argv]
    args = build_parser().parse_args(argv)
    handlers = {"serve": run_serve, "import": run_import, "datasets": run_datasets, "export": run_export,
                "adduser": run_adduser,
                "score": run_score, "eval": run_eval,
                "serve-rm": run_serve_rm, "check-server": run_check_server, "train": run_train, "jobs": run_jobs, "models": run_models,
                "backup": run_backup, "migrate-store": run_migrate_store,
                "users": run_users, "passwd": run_passwd, "deluser": run_deluser}
    try:
        return handlers[args.command](args)
    # Bad input from any command: one line saying what to change, exit 2.
    except (ConfigError, StoreConfigError, AccountError, DatasetError, LoopError, InputRejected, ModelLoadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())

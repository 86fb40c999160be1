"""The ``bert-finetune`` command line: local stack, workers, experiments, predictions."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from datetime import timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from temporalio.client import Client

from shared.settings import Settings
from shared.storage import open_runs_store
from shared.temporal import connect

STATE_DIR = Path(".bert-finetune")
# A query waits for a worker to answer it; without one, say so instead of waiting long.
PROGRESS_QUERY_TIMEOUT = timedelta(seconds=10)
console = Console(stderr=False)
errors = Console(stderr=True)


def _settings() -> Settings:
    settings = Settings.from_env()
    if settings.runs_uri is not None:
        from shared.logging import configure_logging

        # With BERT_RUNS_URI, `runs` and `runs show` read the store (BERT_RUNS_DIR caches
        # it); its log lines go to stderr, warnings only: stdout is the command's output.
        configure_logging("WARNING", settings.log_format)
        open_runs_store(settings, check=False)
    return settings


async def _client(settings: Settings) -> Client:
    from bert_finetune.cli_errors import TemporalUnreachable

    try:
        return await connect(settings.temporal)
    except Exception as err:
        raise TemporalUnreachable(settings.temporal.address, err) from None


def cmd_worker(args: argparse.Namespace) -> int:
    settings = _settings()
    if args.service == "trainer":
        from services.trainer.worker import run_trainer

        asyncio.run(run_trainer(settings))
    elif args.service == "controller":
        from services.trainer.worker import run_controller

        asyncio.run(run_controller(settings))
    else:
        from services.inferencer.worker import run_inferencer

        asyncio.run(run_inferencer(settings))
    return 0


def _stop_on_sigterm() -> None:
    """SIGTERM stops the local stack as cleanly as Ctrl-C (children are in their own session).

    SIGINT is set to Ctrl-C's handler too: a process started with SIGINT ignored (a shell's
    background job without job control, some supervisors) inherits that, and Python then
    leaves it ignored, so `kill -INT` would never stop the stack."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def cmd_dev(args: argparse.Namespace) -> int:
    from bert_finetune.stack import LocalStack
    from shared.logging import configure_logging

    _stop_on_sigterm()

    settings = _settings()
    configure_logging(settings.log_level, settings.log_format)
    stack = LocalStack(
        state_dir=Path(args.state_dir),
        port=args.port,
        ui_port=args.ui_port,
        runs_dir=settings.runs_dir,
        trainer_metrics_port=args.trainer_metrics_port,
        inferencer_metrics_port=args.inferencer_metrics_port,
        inferencer_http_port=args.inferencer_http_port,
        mlflow_port=args.mlflow_port if args.mlflow else None,
    )
    stack.start()
    for note in stack.port_notes:
        console.print(f"[yellow]{note}[/]", highlight=False)
    tracking = (
        f"MLflow UI {stack.mlflow_url} (runs in {Path(args.state_dir) / 'mlflow.db'}).\n"
        if stack.mlflow_url
        else ""
    )
    console.print(
        f"[bold green]Local stack up[/]: Temporal {stack.address}, Web UI {stack.ui_url}, "
        f"runs in {settings.runs_dir}, history in {Path(args.state_dir) / 'temporal.db'}.\n"
        f"{tracking}"
        f"Metrics: trainer http://localhost:{stack.trainer_metrics_port}/metrics, "
        f"inferencer http://localhost:{stack.inferencer_metrics_port}/metrics.\n"
        f"HTTP inference (Open Inference Protocol v2): {stack.http_url}, e.g. POST "
        f"{stack.http_url}/v2/models/@ALIAS/infer (docs/inference.md)."
        " Ctrl-C stops everything."
    )
    try:
        stack.wait()
    except KeyboardInterrupt:
        console.print("Stopping workers and the Temporal dev server...")
    finally:
        stack.stop()
    return 0


async def _train(args: argparse.Namespace) -> int:
    from bert_finetune import client_ops

    settings = _settings()
    experiment = client_ops.load_experiment(Path(args.experiment), overwrite=args.overwrite)
    client = await _client(settings)
    handle = await client_ops.start_experiment(
        client, experiment, settings.training_task_queue, args.workflow_id
    )
    if args.no_wait:
        console.print(handle.id)
        return 0
    console.print(f"Started workflow [bold]{handle.id}[/] ({len(experiment.runs)} runs)")
    output = await client_ops.watch_experiment(handle, console)
    console.print(client_ops.results_table(output))
    if args.json:
        console.print_json(output.model_dump_json())
    return 0


async def _sweep(args: argparse.Namespace) -> int:
    from bert_finetune import client_ops

    settings = _settings()
    sweep = client_ops.load_sweep(Path(args.spec), overwrite=args.overwrite)
    client = await _client(settings)
    handle = await client_ops.start_sweep(
        client, sweep, settings.training_task_queue, args.workflow_id
    )
    if args.no_wait:
        console.print(handle.id)
        return 0
    console.print(f"Started sweep [bold]{handle.id}[/] ({sweep.total_trials()} trials)")
    output = await client_ops.watch_sweep(handle, console)
    console.print(
        f"best: [bold]{output.best_run_id}[/] ({output.metric} {output.best_metric:.4f})"
        + (f", promoted to alias [bold]{output.alias}[/]" if output.alias else "")
    )
    if args.json:
        console.print_json(output.model_dump_json())
    return 0


def _lines(option: str, name: str) -> list[str]:
    """The non-blank lines of a UTF-8 file named by ``option``."""
    from bert_finetune import client_ops

    path = Path(name)
    if not path.is_file():
        raise client_ops.UserError(f"{option} {name!r} does not exist")
    try:
        content = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise client_ops.UserError(
            f"{option} {name!r} is not UTF-8 ({err.reason} at byte {err.start}); "
            "re-encode it, e.g. `iconv -f latin1 -t utf-8`"
        ) from None
    return [line for line in content.splitlines() if line.strip()]


async def _predict(args: argparse.Namespace) -> int:
    from bert_finetune import client_ops

    texts = list(args.texts)
    if args.file:
        texts += _lines("--file", args.file)
    if not texts:
        raise client_ops.UserError("give at least one TEXT or a --file with one text per line")
    # The second texts of a run trained on pairs: --pair per TEXT, then --pair-file's lines
    # for --file's, in order.
    pairs: list[str] | None = None
    if args.pair or args.pair_file:
        pairs = list(args.pair or [])
        if len(pairs) != len(args.texts):
            raise client_ops.UserError(
                f"{len(pairs)} --pair for {len(args.texts)} TEXT arguments: give one --pair "
                "per TEXT, in order (and --pair-file for the lines of --file)"
            )
        if args.pair_file:
            pairs += _lines("--pair-file", args.pair_file)
        if len(pairs) != len(texts):
            raise client_ops.UserError(
                f"{len(pairs) - len(args.texts)} lines in --pair-file for "
                f"{len(texts) - len(args.texts)} lines in --file: give one second text per "
                "text, line by line (blank lines are skipped in both)"
            )
    settings = _settings()
    # Validate before connecting: a bad request never reaches (or waits for) the server.
    requests = client_ops.inference_requests(
        args.model,
        texts,
        pairs,
        max_seq_length=args.max_seq_length,
        batch_size=args.batch_size,
    )
    client = await _client(settings)
    result = await client_ops.run_inference(client, requests, settings.inference_task_queue)
    if args.json:
        console.print_json(result.model_dump_json())
    else:
        console.print(
            client_ops.predictions_table(result, alias=requests[0].alias, text_pairs=pairs)
        )
    return 0


async def _promote(args: argparse.Namespace) -> int:
    from bert_finetune import client_ops

    settings = _settings()
    rollout: dict[str, object] = {"shadow": args.shadow, "rollback": args.rollback}
    if args.canary is not None:
        rollout["canary_percent"] = args.canary
    if args.gate_metric or args.gate_data:
        if not (args.gate_metric and args.gate_data):
            raise client_ops.UserError(
                "a gate needs both --gate-metric (e.g. eval_f1_macro) and --gate-data (a "
                "labelled file the inferencers can read)"
            )
        rollout["gate"] = {
            "metric": args.gate_metric,
            "data_file": args.gate_data,
            "min_delta": args.min_delta,
        }
    elif args.min_delta:
        raise client_ops.UserError(
            "--min-delta applies to a gate: add --gate-metric and --gate-data"
        )
    # A bad name or combination never reaches the server.
    client_ops.promote_input(args.run_id, args.alias, **rollout)
    client = await _client(settings)
    result = await client_ops.promote(
        client, args.run_id, args.alias, settings.training_task_queue, **rollout
    )
    for line in client_ops.promotion_summary(result, rolled_back=args.rollback):
        console.print(line, soft_wrap=True, highlight=False)
    return 0


async def _export(args: argparse.Namespace) -> int:
    from bert_finetune import client_ops

    settings = _settings()
    client_ops.export_input(args.run_id)  # a bad run id never reaches the server
    client = await _client(settings)
    handle = await client_ops.start_export(client, args.run_id, settings.training_task_queue)
    if not args.wait:
        console.print(handle.id)
        return 0
    output = await handle.result()
    if args.json:
        console.print_json(output.model_dump_json())
    summary = client_ops.export_summary(output)  # UserError when nothing was published
    if not args.json:
        console.print(summary, soft_wrap=True, highlight=False)
    return 0


async def _cancel(args: argparse.Namespace) -> int:
    client = await _client(_settings())
    await client.get_workflow_handle(args.workflow_id).cancel()
    console.print(f"Cancellation requested for {args.workflow_id}")
    return 0


async def _progress(args: argparse.Namespace) -> int:
    from shared.types import PROGRESS_QUERY

    client = await _client(_settings())
    # Experiments and sweeps answer different shapes: print whichever comes back.
    progress = await client.get_workflow_handle(args.workflow_id).query(
        PROGRESS_QUERY, rpc_timeout=PROGRESS_QUERY_TIMEOUT
    )
    console.print_json(data=progress)
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from bert_finetune.client_ops import UserError
    from bert_finetune.run_views import runs_table, show_run

    runs_dir = _settings().runs_dir
    if runs_dir.exists() and not runs_dir.is_dir():
        raise UserError(
            f"BERT_RUNS_DIR {str(runs_dir)!r} is not a directory; point it at the runs folder"
        )
    if args.action == "show":
        if not args.run_id:
            raise UserError("give the run to show: bert-finetune runs show RUN_ID")
        show_run(runs_dir, args.run_id, args.json, console)
    else:
        runs_table(runs_dir, args.json, console)
    return 0


async def _check_pollers(args: argparse.Namespace) -> int:
    from temporalio.api.enums.v1 import TaskQueueType
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

    settings = _settings()
    client = await _client(settings)
    # The training queue needs workflow pollers (a controller or trainers: GPU trainers may be
    # scaled to zero by KEDA until runs wait); the inference queue needs activity pollers.
    needed = (
        (settings.training_task_queue, TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW),
        (settings.inference_task_queue, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY),
    )
    missing = []
    for queue, queue_type in needed:
        response = await client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=settings.temporal.namespace,
                task_queue=TaskQueue(name=queue),
                task_queue_type=queue_type,
            )
        )
        if not response.pollers:
            missing.append(queue)
    if missing:
        raise ConnectionError(
            f"no workers polling {', '.join(missing)}; start them with `bert-finetune dev` "
            "or `bert-finetune worker trainer|inferencer` (same TEMPORAL_* and BERT_*_TASK_QUEUE)"
        )
    console.print("both task queues have pollers")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from bert_finetune import doctor
    from bert_finetune.client_ops import UserError

    try:
        from kubernetes.client.exceptions import ApiException
        from kubernetes.config import ConfigException
        from urllib3.exceptions import HTTPError
    except ImportError:
        raise UserError(
            "`bert-finetune doctor` needs the kubernetes package: "
            "pip install 'bert-finetune[local]' (or pip install kubernetes)"
        ) from None
    try:
        api_client, context_namespace = doctor.load_api_client(args.context)
    except (ConfigException, StopIteration) as err:
        raise UserError(
            f"no usable kubeconfig ({err or 'context ' + repr(args.context) + ' not found'}): "
            "set KUBECONFIG or --context to the cluster of the release"
        ) from None
    namespace = args.namespace or context_namespace
    try:
        install = doctor.collect(namespace, args.release, api_client)
    except ApiException as err:
        raise UserError(
            f"the Kubernetes API refused to list the release ({err.status} {err.reason}): "
            f"doctor needs get/list on pods, deployments, configmaps and PVCs in {namespace!r}"
        ) from None
    except HTTPError as err:
        raise UserError(f"cannot reach the Kubernetes API: {err}") from None
    checks = doctor.run_checks(
        install,
        address=args.temporal_address,
        namespace_exists=doctor.temporal_namespace_exists,
    )
    console.print(
        f"bert-finetune doctor: release {args.release!r} in namespace {namespace!r}",
        highlight=False,
    )
    return doctor.report(checks, lambda line: console.print(line, highlight=False, soft_wrap=True))


def cmd_demo(args: argparse.Namespace) -> int:
    from bert_finetune.demo import run_demo

    _stop_on_sigterm()
    return run_demo(
        state_dir=Path(args.state_dir),
        port=args.port,
        ui_port=args.ui_port,
        console=console,
        trainer_metrics_port=args.trainer_metrics_port,
        inferencer_metrics_port=args.inferencer_metrics_port,
        inferencer_http_port=args.inferencer_http_port,
    )


def _async(fn: Callable[[argparse.Namespace], Coroutine[Any, Any, int]]) -> Callable[..., int]:
    return lambda args: asyncio.run(fn(args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bert-finetune",
        description="Fine-tune and serve BERT text classifiers on Temporal.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def stack_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--state-dir", default=str(STATE_DIR), help="Temporal history lives here")
        p.add_argument("--port", type=int, default=7233, help="Temporal frontend port")
        p.add_argument("--ui-port", type=int, default=8233, help="Temporal Web UI port")
        p.add_argument("--trainer-metrics-port", type=int, default=9464)
        p.add_argument("--inferencer-metrics-port", type=int, default=9465)
        p.add_argument(
            "--inferencer-http-port",
            type=int,
            default=8080,
            help="the inferencer's HTTP inference port (Open Inference Protocol v2)",
        )

    p = sub.add_parser("dev", help="run the Temporal dev server and both workers")
    stack_options(p)
    p.add_argument(
        "--mlflow",
        action="store_true",
        help="also run an MLflow tracking server (SQLite in --state-dir) and track every run",
    )
    p.add_argument("--mlflow-port", type=int, default=5000, help="MLflow server and UI port")
    p.set_defaults(func=cmd_dev)

    p = sub.add_parser(
        "worker",
        help="run one worker, configured from the environment (controller: workflows and "
        "promotions only, no training)",
    )
    p.add_argument("service", choices=["trainer", "inferencer", "controller"])
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("train", help="start an experiment from a JSON or YAML file")
    p.add_argument("experiment", help="EXPERIMENT.json or .yaml")
    p.add_argument("--no-wait", action="store_true", help="print the workflow id and exit")
    p.add_argument("--workflow-id", help="default: bert-experiment-<experiment_name>")
    p.add_argument("--overwrite", action="store_true", help="replace finished runs")
    p.add_argument("--json", action="store_true", help="also print the result as JSON")
    p.set_defaults(func=_async(_train))

    p = sub.add_parser("sweep", help="search hyperparameters: start a sweep from a spec file")
    p.add_argument("spec", help="SWEEP.json or .yaml (sweep_name, base, space, strategy...)")
    p.add_argument("--no-wait", action="store_true", help="print the workflow id and exit")
    p.add_argument("--workflow-id", help="default: bert-sweep-<sweep_name>")
    p.add_argument("--overwrite", action="store_true", help="replace finished runs")
    p.add_argument("--json", action="store_true", help="also print the result as JSON")
    p.set_defaults(func=_async(_sweep))

    p = sub.add_parser(
        "predict",
        help="predict texts with a saved run or an alias (labels, scores or entities, by the "
        "run's task)",
    )
    p.add_argument("model", metavar="RUN_ID|@ALIAS", help="a run id, or @ALIAS for an alias")
    p.add_argument("texts", nargs="*", metavar="TEXT")
    p.add_argument("--file", help="a UTF-8 file with one text per line")
    p.add_argument(
        "--pair",
        action="append",
        metavar="TEXT_PAIR",
        help="the second text of a pair, for a run trained on pairs: once per TEXT, in order",
    )
    p.add_argument(
        "--pair-file",
        help="a UTF-8 file with the second text of each line of --file, line by line",
    )
    p.add_argument("--max-seq-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_async(_predict))

    p = sub.add_parser(
        "promote",
        help="point an alias at a complete run (atomic), optionally gated, as a canary or a "
        "shadow; --rollback removes a canary or shadow",
    )
    p.add_argument(
        "run_id", metavar="RUN_ID", nargs="?", help="the candidate (none with --rollback)"
    )
    p.add_argument("alias", metavar="ALIAS", help="e.g. production; predict with @ALIAS")
    p.add_argument(
        "--gate-metric",
        metavar="METRIC",
        help="promote only if RUN_ID beats the alias's run by this metric (e.g. eval_f1_macro)",
    )
    p.add_argument(
        "--gate-data",
        metavar="FILE",
        help="the gate's labelled file (the candidate's columns), readable by the inferencers",
    )
    p.add_argument(
        "--min-delta",
        type=float,
        default=0.0,
        help="how much better the candidate must be (default 0)",
    )
    rollout = p.add_mutually_exclusive_group()
    rollout.add_argument(
        "--canary",
        type=int,
        metavar="PERCENT",
        help="keep the alias's run and send PERCENT%% (1-99) of its requests to RUN_ID",
    )
    rollout.add_argument(
        "--shadow",
        action="store_true",
        help="keep the alias's run; RUN_ID scores every request unanswered (agreement metric)",
    )
    rollout.add_argument(
        "--rollback", action="store_true", help="remove the alias's canary or shadow"
    )
    p.set_defaults(func=_async(_promote))

    p = sub.add_parser(
        "export",
        help="add a saved run's ONNX export (runs trained before exports existed, or whose "
        "export failed); attaches to an export already running for the run",
    )
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument(
        "--wait",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="wait for the export and print its outcome (default); --no-wait prints the "
        "workflow id and exits",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_async(_export))

    p = sub.add_parser("cancel", help="cancel an experiment or a sweep")
    p.add_argument("workflow_id")
    p.set_defaults(func=_async(_cancel))

    p = sub.add_parser("progress", help="print an experiment's or sweep's progress as JSON")
    p.add_argument("workflow_id")
    p.set_defaults(func=_async(_progress))

    p = sub.add_parser("runs", help="list the runs in BERT_RUNS_DIR, or `runs show RUN_ID`")
    p.add_argument("action", nargs="?", choices=["show"], help="show one run's details")
    p.add_argument("run_id", nargs="?")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("check-pollers", help="exit 0 when both task queues have workers")
    p.set_defaults(func=_async(_check_pollers))

    p = sub.add_parser(
        "doctor",
        help="inspect a Kubernetes install of the chart: pods, GPUs, runs claim, Temporal, KEDA "
        "(one line per check, with the fix; exit 1 when one fails)",
    )
    p.add_argument("--namespace", "-n", help="the release's namespace (default: the context's)")
    p.add_argument("--release", default="bert-finetune", help="the Helm release name")
    p.add_argument("--context", help="kubeconfig context (default: the current one)")
    p.add_argument(
        "--temporal-address",
        help="reach Temporal here instead of the release's TEMPORAL_ADDRESS (e.g. localhost:7233 "
        "through kubectl port-forward), which also checks the Temporal namespace",
    )
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("demo", help="fine-tune MiniLM on real tweets end to end, then predict")
    stack_options(p)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    from bert_finetune.cli_errors import explain

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if args.command in ("train", "sweep"):
            what = "experiment" if args.command == "train" else "sweep"
            errors.print(
                f"interrupted: the {what} keeps running on Temporal; follow it with "
                "`bert-finetune progress WORKFLOW_ID` or stop it with `bert-finetune cancel`",
                highlight=False,
            )
        elif args.command == "export":
            errors.print(
                "interrupted: the export keeps running on Temporal; run `bert-finetune export "
                f"{args.run_id}` again to wait for it",
                highlight=False,
            )
        elif args.command == "predict":
            errors.print(
                "interrupted: if no answer came, check that an inferencer is running "
                "(`bert-finetune check-pollers`)",
                highlight=False,
            )
        return 130
    except Exception as err:
        message = explain(err, args.command)
        if message is None:
            raise  # a bug: keep the traceback
        errors.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
        return 1


def run() -> None:
    """Console-script entry point: ``main`` then a hard exit.

    The Temporal SDK's native runtime threads can race Python's interpreter finalization
    and print a fatal error after a command has already finished; exiting with
    ``os._exit`` once the output is flushed skips finalization altogether.
    """
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()

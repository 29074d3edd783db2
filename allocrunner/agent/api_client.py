"""Nomad's client endpoints: an allocation's files and logs, stats, restart, signal, GC.

``/v1/client/fs/{ls,stat,cat,readat,stream,logs}/:alloc`` read through the runner's
`AllocDir` (every path checked there: no escape, no ``secrets/``);
``/v1/client/allocation/:id/{stats,restart,signal,gc}``, ``/v1/client/stats`` and
``/v1/client/gc`` act on this node's runners.

Threads: the handlers run on the HTTP server's request threads; a followed stream or
log starts watcher threads through `allocrunner.agent.fsapi`, which end with the
response. Locks: none here (the stats sampler has its own). Owner: `build_router`
adds the routes; `HttpServer` calls them.
"""

from __future__ import annotations

import signal as signals

from allocrunner.agent import fsapi
from allocrunner.agent.context import ApiContext
from allocrunner.agent.errors import ApiError, bad_request, not_found
from allocrunner.agent.http import Request, Response, Router, json_response
from allocrunner.agent.stats import alloc_stats, host_stats
from allocrunner.errors import AllocRunnerError, TaskNotRunningError, UnknownTaskError
from allocrunner.runner.alloc_runner import AllocRunner
from allocrunner.structs import TaskEvent
from allocrunner.structs.task_state import EVENT_RESTART_SIGNAL

__all__ = ["add_routes"]

OCTET = "application/octet-stream"


def add_routes(router: Router, ctx: ApiContext) -> None:
    router.add("GET", "/v1/client/fs/ls/:id", lambda r: fs_ls(ctx, r))
    router.add("GET", "/v1/client/fs/stat/:id", lambda r: fs_stat(ctx, r))
    router.add("GET", "/v1/client/fs/cat/:id", lambda r: fs_cat(ctx, r))
    router.add("GET", "/v1/client/fs/readat/:id", lambda r: fs_readat(ctx, r))
    router.add("GET", "/v1/client/fs/stream/:id", lambda r: fs_stream(ctx, r))
    router.add("GET", "/v1/client/fs/logs/:id", lambda r: fs_logs(ctx, r))
    router.add("GET", "/v1/client/allocation/:id/stats", lambda r: stats(ctx, r))
    router.add("PUT POST", "/v1/client/allocation/:id/restart", lambda r: restart(ctx, r))
    router.add("PUT POST", "/v1/client/allocation/:id/signal", lambda r: signal(ctx, r))
    router.add("GET PUT POST", "/v1/client/allocation/:id/gc", lambda r: gc_alloc(ctx, r))
    router.add("GET", "/v1/client/stats", lambda r: node_stats(ctx, r))
    router.add("GET PUT POST", "/v1/client/gc", lambda r: gc_all(ctx, r))


def _runner(ctx: ApiContext, alloc_id: str) -> AllocRunner:
    runner = ctx.client.runner(alloc_id)
    if runner is None:
        if alloc_id in ctx.cluster.state().allocs:
            raise not_found(f"allocation {alloc_id} is not running on this client (collected)")
        raise not_found(f"unknown allocation ID {alloc_id!r}")
    return runner


def _path(req: Request) -> str:
    return req.param("path") or "/"


def _relative(path: str) -> str:
    """Nomad's fs paths are rooted at the alloc dir: ``/alloc/logs`` → ``alloc/logs``."""
    return path.lstrip("/") or "."


# --- files -------------------------------------------------------------------------


def fs_ls(ctx: ApiContext, req: Request) -> Response:
    runner = _runner(ctx, req.args[0])
    return json_response(fsapi.ls(runner.alloc_dir, _relative(_path(req))))


def fs_stat(ctx: ApiContext, req: Request) -> Response:
    runner = _runner(ctx, req.args[0])
    return json_response(fsapi.stat(runner.alloc_dir, _relative(_path(req))))


def fs_cat(ctx: ApiContext, req: Request) -> Response:
    runner = _runner(ctx, req.args[0])
    return Response(body=fsapi.cat(runner.alloc_dir, _relative(_path(req))), content_type=OCTET)


def fs_readat(ctx: ApiContext, req: Request) -> Response:
    runner = _runner(ctx, req.args[0])
    data = fsapi.readat(
        runner.alloc_dir,
        _relative(_path(req)),
        req.int_param("offset", 0),
        req.int_param("limit", -1),
    )
    return Response(body=data, content_type=OCTET)


def fs_stream(ctx: ApiContext, req: Request) -> Response:
    runner = _runner(ctx, req.args[0])
    try:
        body = fsapi.stream(
            runner.alloc_dir,
            _relative(_path(req)),
            offset=req.int_param("offset", 0),
            origin=req.param("origin") or "start",
            follow=req.flag("follow", True),
            cancel=req.cancel,
        )
    except ApiError as err:
        if err.status == 404:  # Nomad answers a stream of a missing file with a 400
            raise bad_request(err.message) from None
        raise
    return Response(body=body)


def fs_logs(ctx: ApiContext, req: Request) -> Response:
    runner = _runner(ctx, req.args[0])
    task = req.param("task") or ""
    plain = req.flag("plain")

    def task_dead() -> bool:
        state = runner.alloc_state().task_states.get(task)
        return state is not None and state.is_dead()

    body = fsapi.logs(
        runner.alloc_dir,
        task,
        log_type=req.param("type") or "stdout",
        follow=req.flag("follow"),
        origin=req.param("origin") or "start",
        offset=req.int_param("offset", 0),
        plain=plain,
        cancel=req.cancel,
        tasks=runner.task_names(),
        finished=task_dead,
    )
    return Response(body=body, content_type="text/plain" if plain else "application/json")


# --- stats ---------------------------------------------------------------------------


def stats(ctx: ApiContext, req: Request) -> Response:
    runner = _runner(ctx, req.args[0])
    try:
        return json_response(alloc_stats(runner, ctx.sampler, task=req.param("task") or None))
    except UnknownTaskError:
        raise not_found(f"unknown task name {req.param('task')!r}") from None


def node_stats(ctx: ApiContext, req: Request) -> Response:
    _check_node(ctx, req)
    return json_response(host_stats(ctx.config.alloc_dir, ctx.sampler))


def _check_node(ctx: ApiContext, req: Request) -> None:
    node_id = req.param("node_id")
    if node_id and node_id != ctx.node.id:
        raise not_found(f"unknown node {node_id!r}")


# --- actions -------------------------------------------------------------------------


def _body(req: Request) -> dict[str, object]:
    if not req.body:
        return {}
    body = req.json()
    if not isinstance(body, dict):
        raise bad_request("request body: expected a JSON object")
    return body


def restart(ctx: ApiContext, req: Request) -> Response:
    runner = _runner(ctx, req.args[0])
    body = _body(req)
    task = body.get("TaskName") or ""
    all_tasks = body.get("AllTasks") or False
    if not isinstance(task, str):
        raise bad_request("TaskName: expected a string")
    if not isinstance(all_tasks, bool):
        raise bad_request("AllTasks: expected a boolean")
    if task and all_tasks:
        raise bad_request("TaskName and AllTasks: give one or the other")
    try:
        if all_tasks:
            event = TaskEvent(EVENT_RESTART_SIGNAL, message="User requested all tasks to restart")
            runner.restart_all(event)
        elif task:
            event = TaskEvent(EVENT_RESTART_SIGNAL, message="User requested task to restart")
            runner.restart_task(task, event)
        else:
            event = TaskEvent(
                EVENT_RESTART_SIGNAL, message="User requested running tasks to restart"
            )
            runner.restart_running(event)
    except UnknownTaskError:
        raise not_found(f"unknown task name {task!r}") from None
    except TaskNotRunningError as err:
        raise bad_request(f"task not running: {err}") from None
    except AllocRunnerError as err:
        raise bad_request(str(err)) from None
    return json_response({})


def signal(ctx: ApiContext, req: Request) -> Response:
    runner = _runner(ctx, req.args[0])
    body = _body(req)
    task = body.get("Task") or ""
    sig = body.get("Signal") or "SIGKILL"
    if not isinstance(task, str):
        raise bad_request("Task: expected a string")
    if not isinstance(sig, str) or _signal_number(sig) is None:
        raise bad_request(f"Signal: unknown signal {sig!r}")
    if task and task not in runner.task_names():
        raise not_found(f"unknown task name {task!r}")
    try:
        runner.signal_task(task, sig.upper() if sig.upper().startswith("SIG") else "SIG" + sig)
    except TaskNotRunningError as err:
        raise bad_request(f"task not running: {err}") from None
    except AllocRunnerError as err:
        if not _running(runner, task):  # it exited while being signalled
            raise bad_request(f"task not running: {err}") from None
        raise ApiError(500, str(err)) from None
    return json_response({})


def _running(runner: AllocRunner, task: str) -> bool:
    """Whether `task` (every task when "") is running now."""
    states = runner.alloc_state().task_states
    if task:
        state = states.get(task)
        return state is not None and state.state == "running"
    return any(s.state == "running" for s in states.values())


def _signal_number(name: str) -> int | None:
    upper = name.upper()
    if not upper.startswith("SIG"):
        upper = "SIG" + upper
    try:
        return int(signals.Signals[upper])
    except KeyError:
        return None


def gc_alloc(ctx: ApiContext, req: Request) -> Response:
    alloc_id = req.args[0]
    runner = _runner(ctx, alloc_id)
    if runner.is_destroyed():
        return json_response(None)
    ctx.sampler.forget_alloc(alloc_id)
    if not ctx.client.collect(alloc_id):
        raise bad_request(
            f"allocation {alloc_id} is not eligible for garbage collection: it is still running"
        )
    return json_response(None)


def gc_all(ctx: ApiContext, req: Request) -> Response:
    _check_node(ctx, req)
    ctx.client.collect_all()
    return json_response(None)

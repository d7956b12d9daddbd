"""Fresh ``smallvit`` command-line processes in milliseconds, optionally with a fault injected.

``python -m smallvit.cli`` spends 4-12 s importing torch, timm and torchvision on 2 busy CPU cores, which would make a
suite of a few dozen real command-line runs take minutes. Instead a server process imports smallvit once and forks one
child per command. Each child is a new process: it runs ``smallvit.cli.main()`` with its own argv, environment,
working directory and stdout/stderr files, so its exit code, the text it prints on stderr and the signals it receives
are those of the real command (``main()`` is all ``python -m smallvit.cli`` runs). Only the import is shared, and it
runs no torch computation, so every child starts with fresh thread pools.

A child may carry fault hooks, installed in that child only (``hooks``):

- ``kill_in_step: N`` — SIGKILL itself at the start of optimizer step N (counted over the whole run, from the
  optimizer's own step counter, so also after a resume);
- ``nan_in_step: N`` — the augmented images of step N (once: a skipped step does not count) are NaN, a corrupt
  batch, so its loss is not finite;
- ``pause_in_step: [N, ready, go]`` — at the start of step N, create file ``ready`` and wait until file ``go`` exists
  (a test signals the process meanwhile, so the signal lands mid-epoch at a known step);
- ``pause_in_decode: [ready, go]`` — the same when the images start decoding (give the child an empty
  ``SMALLVIT_CACHE``, or nothing is decoded), before training begins;
- ``enospc_in_write: [NAME, K]`` — the K-th checkpoint write of file NAME writes half its bytes and fails with
  ``OSError(ENOSPC)``, as a full disk does;
- ``pictures: true`` — draw the run's pictures at the end of training (curves, confusion matrix, attention...).
  Without it children skip them: they only read the finished run, and on a tiny run they take most of its time.

Example::

    server = CliServer()
    result = server.run("train", "quickstart", "device=tpu9", env=env)   # -> Result(returncode, stdout, stderr)
    child = server.start("train", "quickstart", "epochs=2", env=env, hooks={"kill_in_step": 3})
    assert child.wait().returncode == -9
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# ---------------------------------------------------------------- the server (runs in its own process)


def _pause(ready: str, go: str) -> None:
    """Create file ``ready``, then wait until file ``go`` exists (at most a minute)."""
    Path(ready).touch()
    deadline = time.monotonic() + 60
    while not Path(go).exists() and time.monotonic() < deadline:
        time.sleep(0.01)


def _install_hooks(hooks: dict) -> None:
    import errno

    import smallvit.data.formats as formats
    import smallvit.engine.checkpoint as checkpoint
    import smallvit.engine.trainer as trainer

    if not hooks.get("pictures"):
        for name in ("plot_curves", "draw_run_pictures"):
            if hasattr(trainer, name):
                setattr(trainer, name, lambda *args, **kwargs: None)

    def applied_steps(optimizer) -> int:
        states = [s for s in optimizer.state.values() if "step" in s]
        return int(states[0]["step"]) if states else 0

    if {"kill_in_step", "nan_in_step", "pause_in_step"} & set(hooks):
        real_step = trainer.optimizer_step
        poisoned_once = []

        def optimizer_step(exp, train_model, optimizer, *args, **kwargs):
            step = applied_steps(optimizer) + 1
            if hooks.get("kill_in_step") == step:
                os.kill(os.getpid(), signal.SIGKILL)
            if "pause_in_step" in hooks and hooks["pause_in_step"][0] == step:
                _pause(*hooks["pause_in_step"][1:])
            if hooks.get("nan_in_step") == step and not poisoned_once:
                poisoned_once.append(step)
                augment = exp.augment

                def poisoned(*a, **k):
                    batch = augment(*a, **k)
                    for view in batch.views.values():
                        view.images.fill_(float("nan"))
                    return batch

                exp.augment = poisoned
                try:
                    return real_step(exp, train_model, optimizer, *args, **kwargs)
                finally:
                    exp.augment = augment
            return real_step(exp, train_model, optimizer, *args, **kwargs)

        trainer.optimizer_step = optimizer_step

    if "pause_in_decode" in hooks:
        real_decode = formats.decode_files

        def decode_files(*args, **kwargs):
            _pause(*hooks["pause_in_decode"])
            return real_decode(*args, **kwargs)

        formats.decode_files = decode_files

    if "enospc_in_write" in hooks:
        name, nth = hooks["enospc_in_write"]
        real_save = checkpoint.save_file
        calls = [0]

        def save_file(tensors, filename, metadata=None):
            real_save(tensors, filename, metadata=metadata)
            if f".{name}.tmp-" in Path(filename).name:
                calls[0] += 1
                if calls[0] == nth:
                    os.truncate(filename, os.path.getsize(filename) // 2)
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))

        checkpoint.save_file = save_file


def _child(request: dict) -> int:
    stdin = os.open(os.devnull, os.O_RDONLY)
    os.dup2(stdin, 0)
    os.close(stdin)
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        file = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(file, fd)
        os.close(file)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    code = 1
    try:
        import torch

        if request.get("threads"):
            torch.set_num_threads(request["threads"])
        _install_hooks(request.get("hooks") or {})
        import smallvit.cli

        sys.argv = ["smallvit", *request["args"]]
        smallvit.cli.main()
        code = 0
    except SystemExit as exit:
        if exit.code is None or isinstance(exit.code, int):
            code = exit.code or 0
        else:
            print(exit.code, file=sys.stderr)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return code


def serve() -> None:
    """Import smallvit, then answer one JSON request per stdin line: ``{"start": {...}}`` forks a child and replies
    its pid; ``{"wait": pid, "timeout": s}`` replies its exit code (negative: killed by that signal; SIGKILLed after
    ``timeout``). At end of input, kills and reaps the children still running."""
    import importlib
    import pkgutil

    # The commands run as if typed in a terminal, where Ctrl-C raises KeyboardInterrupt: a test suite started in the
    # background (a shell without job control starts it with SIGINT ignored) must not pass that on to them.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    reply = os.fdopen(os.dup(1), "w")  # replies on their own descriptor: whatever an import prints goes to stderr
    os.dup2(2, 1)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401
    import torch.utils.tensorboard  # noqa: F401

    import smallvit

    for module in pkgutil.walk_packages(smallvit.__path__, "smallvit."):
        try:  # everything the commands import lazily; a module another change is moving just stays lazy
            importlib.import_module(module.name)
        except Exception:
            pass
    children: set[int] = set()
    for line in sys.stdin:
        request = json.loads(line)
        if "start" in request:
            pid = os.fork()
            if pid == 0:
                reply.close()
                os._exit(_child(request["start"]))
            children.add(pid)
            answer = {"pid": pid}
        else:
            pid, deadline = request["wait"], time.monotonic() + request["timeout"]
            while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
            if done[0] == 0:
                os.kill(pid, signal.SIGKILL)
                done = os.waitpid(pid, 0)
            children.discard(pid)
            answer = {"code": os.waitstatus_to_exitcode(done[1]), "timed_out": done[0] == 0}
        reply.write(json.dumps(answer) + "\n")
        reply.flush()
    for pid in children:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    os._exit(0)  # nothing to flush; skips seconds of tearing down torch's modules


# ---------------------------------------------------------------- the client (runs in the test process)


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


class Child:
    """A running command: its ``pid``; :meth:`wait` for its :class:`Result`."""

    def __init__(self, server: CliServer, pid: int, stdout: Path, stderr: Path):
        self.server, self.pid, self.stdout, self.stderr = server, pid, stdout, stderr

    def wait(self, timeout: float = 300) -> Result:
        answer = self.server._ask({"wait": self.pid, "timeout": timeout})
        if answer["timed_out"]:
            raise TimeoutError(f"smallvit (pid {self.pid}) ran over {timeout} s: {self.stderr.read_text()[-2000:]}")
        return Result(answer["code"], self.stdout.read_text(), self.stderr.read_text())


class CliServer:
    """The client side: :meth:`start` a command, or :meth:`run` one to the end."""

    def __init__(self):
        self.logs = Path(tempfile.mkdtemp(prefix="smallvit-cli-"))
        self.count = 0
        self.process = subprocess.Popen(
            [sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=self.logs
        )

    def _ask(self, request: dict) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the smallvit command server died: run one command with `python -m smallvit.cli`")
        return json.loads(line)

    def start(
        self, *args: str, env: dict | None = None, cwd: Path | None = None, hooks: dict | None = None, threads=None
    ) -> Child:
        """Start ``smallvit ARGS`` with ``env`` (default: this process's environment) in ``cwd``."""
        self.count += 1
        stdout, stderr = self.logs / f"{self.count}.out", self.logs / f"{self.count}.err"
        request = {
            "args": [str(a) for a in args],
            "env": dict(os.environ if env is None else env),
            "cwd": str(cwd or Path.cwd()),
            "stdout": str(stdout),
            "stderr": str(stderr),
            "hooks": hooks,
            "threads": threads,
        }
        return Child(self, self._ask({"start": request})["pid"], stdout, stderr)

    def run(self, *args: str, timeout: float = 300, **kwargs) -> Result:
        return self.start(*args, **kwargs).wait(timeout)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)
        shutil.rmtree(self.logs, ignore_errors=True)


if __name__ == "__main__":
    serve()

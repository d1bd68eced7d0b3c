"""compose.yaml run without Docker: every service of a profile becomes local processes started from its
own `command` (through the image's ENTRYPOINT, the installed `stockout-sync`), with exactly the
environment compose would give the container: its env_file and environment, interpolated from the
project's `.env` like compose does (`${VAR:?msg}`, `${VAR:-default}`, nested, `$$`), plus the image's ENV.
Nothing of the test's own environment leaks in, so a variable compose does not pass is missing here too.

The compose network is modelled on loopback: each service gets an address of its own (127.0.0.N) and
free ports for the container ports it `expose`s. A service's name and port (`redis:6379`) in any value
become that address and port; its own container port in its own command, environment, config and
health check becomes its free port (it listens there). Volumes and configs become files and folders
of a temporary project; a container's own /tmp becomes a folder of its own.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from shared.redis.conn import free_port

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


class ComposeError(Exception):
    """What compose itself would refuse: a required variable unset, a service that is not defined."""


# -- interpolation, as compose does it ------------------------------------------------------------

def interpolate(text: str, env: Mapping[str, str]) -> str:
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != "$":
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1] if i + 1 < len(text) else ""
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "{":
            end = _closing_brace(text, i + 1)
            out.append(_expression(text[i + 2:end], env))
            i = end + 1
        else:
            match = re.match(r"[A-Za-z_][A-Za-z0-9_]*", text[i + 1:])
            if not match:
                out.append("$")
                i += 1
                continue
            out.append(env.get(match.group(0), ""))
            i += 1 + len(match.group(0))
    return "".join(out)


def _closing_brace(text: str, start: int) -> int:
    depth = 0
    for j in range(start, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return j
    raise ComposeError(f"unclosed ${{ in {text!r}")


def _expression(expr: str, env: Mapping[str, str]) -> str:
    match = re.match(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])(.*))?$", expr, re.S)
    if not match:
        raise ComposeError(f"invalid interpolation ${{{expr}}}")
    name, op, arg = match.group(1), match.group(2), match.group(3) or ""
    value = env.get(name)
    unset_or_empty = value is None or (op is not None and op.startswith(":") and value == "")
    if op in (":-", "-"):
        return interpolate(arg, env) if unset_or_empty else str(value)
    if op in (":?", "?"):
        if unset_or_empty:
            raise ComposeError(f"required variable {name} is missing a value: {interpolate(arg, env)}")
        return str(value)
    if op in (":+", "+"):
        return "" if unset_or_empty else interpolate(arg, env)
    return value or ""


def interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolate_tree(v, env) for v in node]
    if isinstance(node, dict):
        return {k: interpolate_tree(v, env) for k, v in node.items()}
    return node


def read_env_file(path: Path) -> dict[str, str]:
    """compose's env file format: KEY=VALUE lines, # comments, optional quotes around the value."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip().removeprefix("export ").strip()] = value
    return values


def image_facts(dockerfile: Path) -> tuple[list[str], dict[str, str]]:
    """The ENTRYPOINT (exec form) and ENV of our image, from its Dockerfile."""
    entrypoint: list[str] = []
    env: dict[str, str] = {}
    for line in dockerfile.read_text().splitlines():
        if line.startswith("ENTRYPOINT"):
            entrypoint = json.loads(line.split(None, 1)[1])
        elif line.startswith("ENV "):
            for word in shlex.split(line[4:]):
                key, _, value = word.partition("=")
                env[key] = value
    return entrypoint, env


# -- the services ---------------------------------------------------------------------------------

@dataclass
class Replica:
    service: str
    index: int
    address: str
    ports: dict[int, int]
    home: Path
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    healthcheck: list[str] | None = None
    proc: subprocess.Popen | None = None

    @property
    def log(self) -> Path:
        return self.home / "output.log"

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


class LocalCompose:
    def __init__(self, compose_file: Path, project: Path, workdir: Path, *, profiles: Iterable[str] = (),
                 services: Iterable[str] | None = None) -> None:
        self.project = project
        self.workdir = workdir
        self.env = read_env_file(project / ".env") if (project / ".env").exists() else {}
        raw = yaml.safe_load(compose_file.read_text())
        # compose interpolates the whole file (configs included) before anything else
        self.model = interpolate_tree(raw, self.env)
        self.entrypoint, self.image_env = image_facts(compose_file.parent / "Dockerfile")
        profiles = set(profiles)
        enabled = {name for name, s in self.model["services"].items()
                   if not s.get("profiles") or profiles & set(s["profiles"])}
        wanted = set(services) if services is not None else set(enabled)
        self.names = self._with_dependencies(wanted, enabled)
        self.replicas: dict[str, list[Replica]] = {}
        for n, name in enumerate(sorted(self.names)):
            spec = self.service(name)
            count = int((spec.get("deploy") or {}).get("replicas", 1))
            address = f"127.0.0.{n + 2}"
            self.replicas[name] = [
                Replica(name, i, address, {int(str(p).split("/")[0]): free_port() for p in spec.get("expose", [])},
                        workdir / f"{name}-{i}")
                for i in range(count)
            ]
        for name in self.names:
            for replica in self.replicas[name]:
                self._prepare(replica)

    def service(self, name: str) -> dict[str, Any]:
        try:
            return self.model["services"][name]
        except KeyError:
            raise ComposeError(f"service {name} is not defined") from None

    def _with_dependencies(self, wanted: set[str], enabled: set[str]) -> list[str]:
        order: list[str] = []

        def visit(name: str) -> None:
            if name in order:
                return
            for dep in self._depends_on(name):
                if dep not in enabled:
                    raise ComposeError(f"service {name} depends on {dep}, which is not enabled")
                visit(dep)
            order.append(name)

        for name in sorted(wanted):
            visit(name)
        return order

    def _depends_on(self, name: str) -> dict[str, str]:
        deps = self.service(name).get("depends_on") or {}
        if isinstance(deps, list):
            return dict.fromkeys(deps, "service_started")
        return {d: (c or {}).get("condition", "service_started") for d, c in deps.items()}

    # -- turning a container into local processes

    def _prepare(self, replica: Replica) -> None:
        spec = self.service(replica.service)
        replica.home.mkdir(parents=True, exist_ok=True)
        (replica.home / "tmp").mkdir(exist_ok=True)
        paths = self._paths(replica, spec)

        def local(value: str) -> str:
            return self._rewrite(value, replica, paths)

        env = {"PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin", "HOME": str(replica.home), "LANG": "C.UTF-8"}
        ours = "build" in spec
        if ours:
            env.update(self.image_env)
        for env_file in _as_list(spec.get("env_file")):
            path = env_file if isinstance(env_file, str) else env_file["path"]
            env.update(read_env_file(self.project / path))
        environment = spec.get("environment") or {}
        if isinstance(environment, list):
            environment = dict(item.split("=", 1) for item in environment)
        env.update({k: "" if v is None else str(v) for k, v in environment.items()})
        # PATH is the host's (where the entry point is installed), never a container path to map: a
        # checkout under /tmp would otherwise be taken for the container's /tmp.
        replica.env = {k: v if k == "PATH" else local(v) for k, v in env.items()}

        words = [str(w) for w in _as_list(spec.get("command"))]
        command: list[str] = []
        while words:
            peer = self._peer(words[:2])
            command += peer or [local(words[0])]
            words = words[len(peer) or 1:]
        if ours:
            entry = shutil.which(self.entrypoint[0], path=replica.env["PATH"]) or self.entrypoint[0]
            replica.argv = [entry, *self.entrypoint[1:], *command]
        else:
            replica.argv = [shutil.which(command[0]) or command[0], *command[1:]]

        test = (spec.get("healthcheck") or {}).get("test")
        if test and test[0] == "CMD-SHELL":
            replica.healthcheck = ["sh", "-c", local(test[1])]
        elif test and test[0] == "CMD":
            replica.healthcheck = [local(word) for word in test[1:]]

    def _paths(self, replica: Replica, spec: dict[str, Any]) -> dict[str, Path]:
        """Container paths → local ones: bind mounts, named volumes, configs, the container's /tmp."""
        paths: dict[str, Path] = {"/tmp": replica.home / "tmp"}
        for volume in spec.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith((".", "/")):
                paths[target] = (self.project / source).resolve()
            else:
                paths[target] = self.workdir / "volumes" / source
                paths[target].mkdir(parents=True, exist_ok=True)
        for config in spec.get("configs", []):
            name = config if isinstance(config, str) else config["source"]
            target = f"/{name}" if isinstance(config, str) else config.get("target", f"/{name}")
            definition = self.model["configs"][name]
            local_file = replica.home / f"config-{name}"
            if "content" in definition:
                local_file.write_text(self._rewrite(definition["content"], replica, {}))
            else:
                shutil.copy(self.project / definition["file"], local_file)
            paths[target] = local_file
        return paths

    def _peer(self, words: list[str]) -> list[str]:
        """`--replicaof redis 6379`: another service's name and port as two words → its address and port."""
        if len(words) == 2 and words[0] in self.replicas and words[1].isdigit():
            target = self.replicas[words[0]][0]
            if int(words[1]) in target.ports:
                return [target.address, str(target.ports[int(words[1])])]
        return []

    def _rewrite(self, value: str, replica: Replica, paths: Mapping[str, Path]) -> str:
        for name in self.names:  # the compose network: service:port or "service port" → its address and port
            for container_port, port in self.replicas[name][0].ports.items():
                value = re.sub(rf"(?<![\w.-]){re.escape(name)}(:|[ \t]+){container_port}(?!\d)",
                               lambda m, a=self.replicas[name][0].address, p=port: f"{a}{m.group(1)}{p}", value)
        for container_port, port in replica.ports.items():  # where this container itself listens
            value = re.sub(rf"(?<![\d.]){container_port}(?!\d)", str(port), value)
        if paths:  # one pass, so a replaced path is never replaced again
            targets = "|".join(re.escape(t) for t in sorted(paths, key=len, reverse=True))
            value = re.sub(rf"(?<![\w/.-])({targets})(?![\w.-])", lambda m: str(paths[m.group(1)]), value)
        return value

    # -- running

    def start(self, timeout: float = 90) -> None:
        for name in self.names:
            for dep, condition in self._depends_on(name).items():
                if condition == "service_healthy":
                    self.wait_healthy(dep, timeout)
            for replica in self.replicas[name]:
                cwd = replica.home / "work"
                cwd.mkdir(exist_ok=True)
                if "/data" in (paths := self._paths(replica, self.service(name))):
                    cwd = paths["/data"]  # the redis image's working directory: where its AOF goes
                replica.proc = subprocess.Popen(
                    replica.argv, env=replica.env, cwd=cwd, stdout=open(replica.log, "ab"),  # noqa: SIM115
                    stderr=subprocess.STDOUT, start_new_session=True)

    def check_running(self) -> None:
        for replicas in self.replicas.values():
            for replica in replicas:
                if replica.proc is not None and replica.proc.poll() is not None:
                    raise AssertionError(f"{replica.service}[{replica.index}] exited with {replica.proc.returncode}:\n"
                                         f"{' '.join(replica.argv)}\n{replica.log_tail()}")

    def run_healthcheck(self, replica: Replica, timeout: float = 30) -> subprocess.CompletedProcess:
        assert replica.healthcheck is not None
        return subprocess.run(replica.healthcheck, env=replica.env, cwd=replica.home, capture_output=True,
                              text=True, timeout=timeout)

    def wait_healthy(self, name: str, timeout: float = 90) -> None:
        for replica in self.replicas[name]:
            if replica.healthcheck is None:
                continue
            deadline = time.monotonic() + timeout
            while True:
                self.check_running()
                result = self.run_healthcheck(replica)
                if result.returncode == 0:
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(f"{name}[{replica.index}] never healthy: {replica.healthcheck}\n"
                                         f"{result.stdout}{result.stderr}\n{replica.log_tail()}")
                time.sleep(1)

    def stop(self) -> None:
        for name in reversed(self.names):
            for replica in self.replicas[name]:
                proc = replica.proc
                if proc is None or proc.poll() is not None:
                    continue
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(5)
                except ProcessLookupError:
                    pass

    def address(self, name: str, container_port: int) -> str:
        replica = self.replicas[name][0]
        return f"{replica.address}:{replica.ports[container_port]}"


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]

"""docker-compose.yml and Procfile (no Docker engine here: check them, run their commands)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from importlib.resources import files
from typing import Any

import jsonschema
import pytest
import yaml

from messaging import Settings
from tests.conftest import AGENTPOST, ROOT


def _help(argv: list[str]) -> None:
    """The command exists and parses: its ``--help`` exits 0."""
    assert argv[0] == "agentpost", argv
    sub = [a for a in argv[1:] if not a.startswith("-")][:2]
    # keep only the (sub)command words: "worker", "db upgrade", ...
    words = sub[:2] if sub[:1] == ["db"] else sub[:1]
    done = subprocess.run(
        [*AGENTPOST, *words, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
    )
    assert done.returncode == 0, (argv, done.stderr)


def _compose_schema() -> dict[str, Any]:
    """The Compose Specification's JSON schema, as vendored by check-jsonschema (from PyPI)."""
    vendored = files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema: dict[str, Any] = json.loads(vendored.read_text())
    return schema


def test_compose_file_follows_the_compose_specification() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    schema = _compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(compose)
    ]
    assert errors == []
    # The check bites: a typo'd service key or a mistyped port list is refused.
    broken = {**compose, "services": {**compose["services"], "beat": {"comand": ["agentpost"]}}}
    with pytest.raises(jsonschema.ValidationError, match="comand"):
        validator.validate(broken)
    broken["services"]["beat"] = {"image": "x", "ports": "5555"}
    with pytest.raises(jsonschema.ValidationError, match="not of type 'array'"):
        validator.validate(broken)


def test_compose_file_is_complete_and_its_commands_exist() -> None:
    compose: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {
        "redis",
        "postgres",
        "migrate",
        "worker-1",
        "worker-2",
        "beat",
        "flower",
        "metrics",
        "web",
    } <= set(services)
    assert "--appendonly" in services["redis"]["command"]
    known = {f"AGENTPOST_{name.upper()}" for name in Settings.model_fields}
    for name, service in services.items():
        for key in service.get("environment", {}):
            if key.startswith("AGENTPOST_"):
                assert key in known, f"{name}: unknown setting {key}"
        if "command" in service and service.get("build"):
            _help(service["command"])
    assert services["flower"]["environment"]["AGENTPOST_FLOWER_BASIC_AUTH"].startswith("${")
    assert services["worker-1"]["depends_on"]["migrate"]["condition"] == (
        "service_completed_successfully"
    )


def test_procfile_processes_exist() -> None:
    lines = [line for line in (ROOT / "Procfile").read_text().splitlines() if line.strip()]
    processes = dict(line.split(":", 1) for line in lines)
    assert {"worker", "beat", "flower", "metrics", "web", "release"} <= set(processes)
    for command in processes.values():
        _help(
            shlex.split(command.replace("${PORT:-5555}", "5555").replace("${PORT:-8000}", "8000"))
        )

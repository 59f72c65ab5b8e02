"""The CLI as users call it: exit codes, messages, files written or not, help for every command."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from nginxctl.cli import app
from typer.testing import CliRunner

from helpers import cli

ROOT = Path(__file__).parent.parent
runner = CliRunner()


def test_render_shipped_inventory_stream_and_full():
    stream = cli("render", "-i", str(ROOT / "inventory.yaml"))
    full = cli("render", "-i", str(ROOT / "inventory.yaml"), "--full")
    assert stream.returncode == 0 and full.returncode == 0
    assert "\nstream {\n" in stream.stdout and "events {" not in stream.stdout
    assert "events {" in full.stdout and "\nstream {\n" in full.stdout


def test_render_default_path_is_inventory_yaml_in_cwd():
    result = cli("render", cwd=ROOT)
    assert result.returncode == 0 and "upstream echo {" in result.stdout


def test_python_dash_m_works():
    assert cli("--version").stdout.startswith("nginxctl ")


def test_render_output_file_written(tmp_path):
    out = tmp_path / "stream.conf"
    result = cli("render", "-i", str(ROOT / "inventory.yaml"), "-o", str(out))
    assert result.returncode == 0
    assert out.read_text() == cli("render", "-i", str(ROOT / "inventory.yaml")).stdout


def test_bad_inventory_exit_2_located_and_nothing_written(tmp_path):
    inv = tmp_path / "inventory.yaml"
    inv.write_text("upstreams:\n  netty_pool:\n    listen: 6666\n    servers:\n      - 127.0.0.1:1\n"
                   "      - {address: 127.0.0.1:2, weight: five}\n")
    out = tmp_path / "out.conf"
    out.write_text("previous\n")
    result = cli("render", "-i", str(inv), "-o", str(out))
    assert result.returncode == 2
    assert f"{inv}:6:40: upstreams.netty_pool.servers[1].weight: expected an integer >= 1" in result.stderr
    assert "Traceback" not in result.stderr
    assert out.read_text() == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inventory.yaml", "out.conf"]


@pytest.mark.parametrize("content, message", [
    (None, "inventory file not found"),
    ("", "the inventory is empty"),
    ("upstreams: [\n", "YAML syntax error"),
])
def test_missing_empty_broken_file_exit_2(tmp_path, content, message):
    inv = tmp_path / "inventory.yaml"
    if content is not None:
        inv.write_text(content)
    result = cli("render", "-i", str(inv))
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_unknown_option_is_a_usage_error_exit_2():
    assert cli("render", "--nope").returncode == 2


def test_schema_is_json_schema_of_the_inventory():
    result = cli("schema")
    schema = json.loads(result.stdout)
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert "upstreams" in schema["required"]
    group = schema["$defs"]["group"]["properties"]
    assert group["balance"]["enum"] == ["round_robin", "least_conn", "hash", "random", "random_two_least_conn"]
    assert schema["$defs"]["server"]["required"] == ["address"]


def test_schema_accepts_the_shipped_inventory_and_rejects_a_typo():
    import jsonschema
    import yaml

    schema = json.loads(cli("schema").stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    data = yaml.safe_load((ROOT / "inventory.yaml").read_text())
    assert list(validator.iter_errors(data)) == []
    data["upstreams"]["echo"]["balanse"] = "least_conn"
    assert [e.validator for e in validator.iter_errors(data)] == ["additionalProperties"]


def test_templates_flag_overrides_shipped_templates(tmp_path):
    (tmp_path / "group.conf.j2").write_text("    # custom {{ group.name }}\n")
    result = cli("render", "-i", str(ROOT / "inventory.yaml"), "--templates", str(tmp_path))
    assert result.returncode == 0 and "    # custom echo\n" in result.stdout


def test_templates_folder_missing_exit_2(tmp_path):
    result = cli("render", "-i", str(ROOT / "inventory.yaml"), "--templates", str(tmp_path / "nope"))
    assert result.returncode == 2


COMMANDS = ["render", "schema", "validate", "apply", "diff", "status", "history", "rollback", "drain", "undrain"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    import inspect

    from nginxctl import cli as cli_module

    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    doc = inspect.getdoc(getattr(cli_module, command))
    assert doc and doc.split("\n")[0][:40] in result.output  # the command's own summary
    for option in _options(getattr(cli_module, command)):
        assert option in result.output, (command, option)


def _options(func):  # type: ignore[no-untyped-def]
    """The --long option names a command declares."""
    import typing

    names = []
    for hint in typing.get_type_hints(func, include_extras=True).values():
        for meta in getattr(hint, "__metadata__", ()):
            names += [d for d in getattr(meta, "param_decls", ()) or () if d.startswith("--")][:1]
    return names


def test_readme_exit_code_table_is_the_code():
    import re

    from nginxctl.errors import EXIT_CODES

    readme = (ROOT / "README.md").read_text()
    table = dict(re.findall(r"^\| (\d+) \| (.+?) \|$", readme, re.M))
    assert {int(code) for code in table} == set(EXIT_CODES)
    for code, meaning in EXIT_CODES.items():
        assert table[str(code)] == meaning, code
    for command in COMMANDS:
        assert f"nginxctl {command}" in readme


def test_inventory_reference_doc_is_generated_from_the_schema():
    from nginxctl.inventory.schema import reference_markdown

    doc = (ROOT / "docs" / "inventory.md").read_text()
    assert doc.endswith(reference_markdown()), "regenerate docs/inventory.md from reference_markdown()"


# -- in-process, no Docker: typer's CliRunner ----------------------------------------------------------------

NO_DOCKER = {"DOCKER_HOST": "unix:///nonexistent/nginxctl-test.sock"}
GOOD = "upstreams:\n  a: {listen: 7000, servers: [127.0.0.1:7001, 127.0.0.1:7002]}\n"


def invoke(*args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return runner.invoke(app, list(args), env={**NO_DOCKER, "COLUMNS": "200", **(env or {})})


@pytest.mark.parametrize("args", [
    ["apply", "--container", ""], ["status", "--container", " "], ["diff", "-c", ""], ["history", "-c", ""],
    ["rollback", "-c", ""], ["drain", "a", "127.0.0.1:7001", "-c", ""], ["validate", "--container", ""]])
def test_empty_container_is_a_usage_error_before_anything_runs(tmp_path, args):
    inv = tmp_path / "inventory.yaml"
    inv.write_text(GOOD)
    result = invoke(*args, "-i", str(inv))
    assert result.exit_code == 2, result.output
    assert "--container is empty" in result.output
    assert inv.read_text() == GOOD


@pytest.mark.parametrize("args", [
    ["apply", "--wait", "--timeout", "5s"], ["apply", "--wait-timeout", "5"], ["apply", "--lock-timeout", "1m"],
    ["drain", "a", "127.0.0.1:7001", "--timeout", "5"], ["drain", "a", "127.0.0.1:7001", "--lock-timeout", "0"],
    ["undrain", "a", "127.0.0.1:7001", "--lock-timeout", "1h30m"], ["rollback", "-c", "x", "--lock-timeout", "500ms"]])
def test_every_time_option_takes_units_or_seconds(tmp_path, args):
    inv = tmp_path / "inventory.yaml"
    inv.write_text(GOOD)
    result = invoke(*args, "-i", str(inv))
    assert result.exit_code == 3, result.output  # parsed; then Docker is not reachable
    assert "Docker is not reachable" in result.output


@pytest.mark.parametrize("value", ["5x", "-1", "1.5s", "soon", ""])
def test_a_bad_time_option_says_what_a_duration_is(value):
    result = invoke("apply", "--lock-timeout", value)
    assert result.exit_code == 2
    assert "expected a duration such as 30s" in result.output


@pytest.mark.parametrize("command", ["validate", "apply", "diff", "status", "history", "rollback"])
def test_json_is_one_document_on_stdout_for_an_inventory_error(tmp_path, command):
    inv = tmp_path / "inventory.yaml"
    inv.write_text("upstreams:\n  a: {listen: 7000, servers: [127.0.0.1:7001], balance: fastest}\n")
    result = cli(command, "-i", str(inv), "--format", "json")
    assert result.returncode == 2, result.stderr
    doc = json.loads(result.stdout)
    assert (doc["ok"], doc["exit_code"]) == (False, 2)
    error = doc["errors"][0]
    assert (error["file"], error["line"], error["column"], error["path"]) == (str(inv), 2, 57, "upstreams.a.balance")


@pytest.mark.parametrize("command", ["apply", "diff", "status", "drain", "undrain"])
def test_json_is_one_document_on_stdout_when_docker_is_unreachable(tmp_path, command):
    inv = tmp_path / "inventory.yaml"
    inv.write_text(GOOD)
    extra = ["a", "127.0.0.1:7001"] if command in ("drain", "undrain") else []
    result = cli(command, *extra, "-i", str(inv), "-c", "lb", "-f", "json", env=NO_DOCKER)
    assert result.returncode == 3
    doc = json.loads(result.stdout)
    assert (doc["ok"], doc["exit_code"], doc["errors"][0]["type"]) == (False, 3, "EnvironmentProblem")
    assert "Docker is not reachable" in doc["errors"][0]["message"]


def test_json_is_one_document_even_for_a_command_line_typer_refuses():
    result = cli("status", "--format", "json", "--bogus")
    assert result.returncode == 2
    assert json.loads(result.stdout) == {"ok": False, "exit_code": 2, "errors": [
        {"type": "UsageError", "message": "invalid command line (see stderr)"}]}


def test_an_unexpected_error_is_exit_70_not_1(tmp_path, monkeypatch):
    """A bug in the library must never read as "nginx rejected the config" (exit 1)."""
    from nginxctl import workflows

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(workflows, "render_inventory", broken)
    result = invoke("render", "-i", str(ROOT / "inventory.yaml"))
    assert result.exit_code == 70
    assert "internal error: ZeroDivisionError: division by zero (a bug in nginxctl" in result.output
    assert "Traceback" not in result.output


def test_render_refuses_to_replace_a_read_only_file(tmp_path):
    out = tmp_path / "nginx.conf"
    out.write_text("mine\n")
    out.chmod(0o444)
    result = invoke("render", "-i", str(ROOT / "inventory.yaml"), "-o", str(out))
    assert result.exit_code == 2
    assert "the file is read-only" in result.output
    assert out.read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nginx.conf"]


def test_nginxctl_on_path_is_the_package_under_test():
    """The suite runs the nginxctl of the venv it was installed into, never a leftover elsewhere on PATH."""
    import shutil
    import sys

    found = shutil.which("nginxctl")
    assert found is not None, "nginxctl is not on PATH: run the tests with the venv's bin first (scripts/test.sh)"
    assert Path(found).parent == Path(sys.executable).parent, found


def test_render_writes_through_a_symlink_and_refuses_what_is_not_a_file(tmp_path):
    real = tmp_path / "real.conf"
    real.write_text("old\n")
    link = tmp_path / "link.conf"
    link.symlink_to(real)
    result = invoke("render", "-i", str(ROOT / "inventory.yaml"), "-o", str(link))
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and "stream {" in real.read_text()
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    refused = invoke("render", "-i", str(ROOT / "inventory.yaml"), "-o", str(fifo))
    assert refused.exit_code == 2 and "not a regular file" in refused.output
    assert fifo.is_fifo()


def test_a_reader_that_goes_away_is_no_error(tmp_path):
    """`nginxctl schema | head -1`: the pipe closes early; no traceback, no internal error, exit 0. The reader
    is gone before nginxctl writes a byte (its read end is closed at once), so every write meets a broken pipe,
    the flush at exit included."""
    import subprocess
    import sys

    for command in (["schema"], ["render", "-i", str(ROOT / "inventory.yaml")]):
        with subprocess.Popen([sys.executable, "-m", "nginxctl", *command], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, cwd=tmp_path) as proc:
            assert proc.stdout is not None and proc.stderr is not None
            proc.stdout.close()
            err = proc.stderr.read().decode()
            assert proc.wait(timeout=60) == 0, (command, err)
        assert "Traceback" not in err and "internal error" not in err and "Exception ignored" not in err, err

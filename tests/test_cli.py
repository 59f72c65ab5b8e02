"""The CLI as users call it: exit codes, messages, files written or not, help for every command."""

from __future__ import annotations

import json
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
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert len(result.output.strip()) > 100


def test_readme_documents_every_command_and_exit_code():
    readme = (ROOT / "README.md").read_text()
    for command in COMMANDS:
        assert f"nginxctl {command}" in readme
    for code in "01234":
        assert f"| {code} |" in readme


def test_inventory_reference_doc_is_generated_from_the_schema():
    from nginxctl.inventory.schema import reference_markdown

    doc = (ROOT / "docs" / "inventory.md").read_text()
    assert doc.endswith(reference_markdown()), "regenerate docs/inventory.md from reference_markdown()"

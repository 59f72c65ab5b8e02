"""validate: nginx -t in a throwaway, locked-down container, with the traps of CI handled."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from nginxctl.nginxtext import parse_version

from helpers import IMAGE, cli

ROOT = Path(__file__).parent.parent
pytestmark = pytest.mark.integration


def image_version(client, image: str) -> str:  # type: ignore[no-untyped-def]
    output = client.containers.run(image, ["nginx", "-v"], entrypoint=[], remove=True, network_mode="none",
                                   stdout=True, stderr=True)
    return parse_version(output.decode())


def write(tmp_path: Path, upstreams: dict, **top) -> Path:  # type: ignore[no-untyped-def]
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump({"upstreams": upstreams, **top}))
    return path


def validate(inv: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return cli("validate", "-i", str(inv), "--image", IMAGE, *args)


def test_shipped_inventory_validates(docker_client):
    result = cli("validate", "-i", str(ROOT / "inventory.yaml"), "--image", IMAGE)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"ok: nginx {image_version(docker_client, IMAGE)} ({IMAGE})")


def test_golden_inventories_validate(docker_client):
    for case in sorted((ROOT / "tests" / "golden").iterdir()):
        result = validate(case / "inventory.yaml", "--format", "json")
        assert result.returncode == 0, (case.name, result.stdout)


def test_default_image_is_the_local_build_and_nothing_is_pulled(docker_client, tmp_path):
    inv = write(tmp_path, {"a": {"listen": 7000, "servers": ["127.0.0.1:7001"]}})
    result = cli("validate", "-i", str(inv), env={"NGINXCTL_IMAGE": ""})
    assert result.returncode == 0, result.stderr
    assert "nginx:stable is not present; using the local nginxctl/nginx:latest" in result.stderr
    assert "pulling" not in result.stderr


def test_validate_tests_with_the_image_the_target_runs(lb):
    lb.write({"a": {"listen": 7000, "servers": ["127.0.0.1:7001"]}})
    report = json.loads(cli("validate", "-i", str(lb.inventory), "--format", "json",
                            env={"NGINXCTL_IMAGE": "nginxctl/does-not-exist:1"}).stdout)
    assert report["ok"] is True and report["image"] == lb.container.attrs["Image"]
    assert report["network"] == "none"  # the target's image, not its network: CI checks the config alone


def test_dynamic_stream_module_is_loaded_automatically(docker_client, tmp_path):
    inv = write(tmp_path, {"a": {"listen": 7000, "servers": ["127.0.0.1:7001"]}})
    report = json.loads(validate(inv, "--format", "json").stdout)
    assert report["ok"] and report["stream_module_loaded"] == ["/usr/lib/nginx/modules/ngx_stream_module.so"]


def test_host_specific_listen_and_unresolvable_names_pass_with_a_note(docker_client, tmp_path):
    inv = write(tmp_path, {"a": {"listen": "10.20.30.40:80", "servers": ["db.internal.example:3306"]},
                           "b": {"listen": "[2001:db8::5]:80", "servers": ["127.0.0.1:1"]}})
    result = validate(inv)
    assert result.returncode == 0, result.stderr
    assert "not resolved (mapped to a placeholder): db.internal.example" in result.stderr
    report = json.loads(validate(inv, "--format", "json").stdout)
    assert report["unchecked_names"] == ["db.internal.example"]


def test_resolve_checks_names_for_real(docker_client, tmp_path):
    inv = write(tmp_path, {"a": {"listen": "127.0.0.1:7000", "servers": ["no-such-host.invalid:3306"]}})
    result = validate(inv, "--resolve")
    assert result.returncode == 1
    assert "host not found in upstream" in result.stderr
    assert f"{inv}:" in result.stderr and "upstreams.a.servers[0]: nginx: host not found" in result.stderr


def test_rejected_config_exit_1_json(docker_client, tmp_path):
    inv = write(tmp_path, {"a": {"listen": 7000, "servers": ["127.0.0.1:7001"]}},
                nginx={"load_modules": ["/usr/lib/nginx/modules/ngx_nope_module.so"]})
    result = validate(inv, "--format", "json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False and report["exit_code"] == 1 and "ngx_nope_module.so" in report["output"]
    assert report["errors"] and report["errors"][0]["type"] == "ConfigRejected"


def test_missing_image_exit_3(docker_client, tmp_path):
    inv = write(tmp_path, {"a": {"listen": 7000, "servers": ["127.0.0.1:7001"]}})
    result = validate(inv, "--image", "nginxctl/does-not-exist:1")
    assert result.returncode == 3
    assert "image nginxctl/does-not-exist:1 is not present on the Docker engine" in result.stderr
    as_json = json.loads(validate(inv, "--image", "nginxctl/does-not-exist:1", "--format", "json").stdout)
    assert (as_json["ok"], as_json["exit_code"], as_json["errors"][0]["type"]) == (False, 3, "EnvironmentProblem")


def test_validate_leaves_no_container_or_volume(docker_client, tmp_path):
    inv = write(tmp_path, {"a": {"listen": 7000, "servers": ["127.0.0.1:7001"]}})
    assert validate(inv).returncode == 0
    assert docker_client.containers.list(all=True, filters={"label": "nginxctl.role=validate"}) == []
    assert [v for v in docker_client.volumes.list() if v.name.startswith("nginxctl-validate-")] == []


def test_github_actions_example_steps_run(docker_client, tmp_path):
    workflow = yaml.safe_load((ROOT / "examples" / "ci" / "github-actions.yml").read_text())
    steps = [s for s in workflow["jobs"]["validate"]["steps"] if "run" in s and s.get("id") != "install"]
    assert [s["name"] for s in steps] == ["render", "validate"]
    shutil.copy(ROOT / "inventory.yaml", tmp_path / "inventory.yaml")
    # The nginxctl installed beside the Python running the tests (the .venv), whatever else is on PATH.
    venv_bin = Path(sys.executable).parent
    assert (venv_bin / "nginxctl").is_file(), f"no nginxctl script beside {sys.executable}"
    for step in steps:
        result = subprocess.run(["bash", "-eo", "pipefail", "-c", step["run"]], cwd=tmp_path, text=True,
                                capture_output=True, timeout=120,
                                env={"PATH": f"{venv_bin}:/usr/bin:/bin", "NGINXCTL_IMAGE": IMAGE})
        assert result.returncode == 0, (step["name"], result.stderr)
    assert json.loads((tmp_path / "validate.json").read_text())["ok"] is True
    assert "stream {" in (tmp_path / "nginx.conf").read_text()

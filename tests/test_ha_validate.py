"""validate with `ha:`: each target's keepalived.conf checked by the real keepalived (`keepalived --config-test`) in
a throwaway container of nginxctl/keepalived:local (scripts/build-keepalived-image.sh), after nginx -t."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from nginxctl.render import shipped_templates

from helpers import IMAGE, cli

GOLDEN = Path(__file__).parent / "golden"
pytestmark = pytest.mark.integration


def validate(inv: Path, *args: str):  # type: ignore[no-untyped-def]
    return cli("validate", "-i", str(inv), "--image", IMAGE, *args)


def pair(tmp_path: Path, ha_extra: str = "", keepalived_template: str | None = None) -> Path:
    """The golden pair in tmp_path; optionally more ha: keys and a custom keepalived template."""
    text = (GOLDEN / "ha_pair" / "inventory.yaml").read_text()
    if ha_extra:
        text = text.replace("advert_interval: 1s}", f"advert_interval: 1s, {ha_extra}}}")
    if keepalived_template is not None:
        (tmp_path / "tpl" / "keepalived").mkdir(parents=True)
        (tmp_path / "tpl" / "keepalived" / "keepalived.conf.j2").write_text(keepalived_template)
        text += "templates: tpl\n"
    path = tmp_path / "inventory.yaml"
    path.write_text(text)
    return path


def shipped_keepalived() -> str:
    return (shipped_templates() / "keepalived" / "keepalived.conf.j2").read_text()


def test_the_golden_pair_passes_nginx_and_keepalived(docker_client, tmp_path):
    result = validate(pair(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1] == ("ok: keepalived (nginxctl/keepalived:local) accepts the keepalived.conf "
                                             "of lb1, lb2")
    assert "keepalived --config-test of lb2's keepalived.conf in a throwaway nginxctl/keepalived:local" in result.stderr
    report = json.loads(validate(pair(tmp_path), "--format", "json").stdout)
    assert report["ok"] and report["keepalived"] == {"image": "nginxctl/keepalived:local",
                                                     "targets_checked": ["lb1", "lb2"]}


def test_any_interface_name_is_checked_with_a_stand_in(docker_client, tmp_path):
    inv = pair(tmp_path)
    inv.write_text(inv.read_text().replace("interface: eth0", "interface: ens192.7"))
    result = validate(inv)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("change", "said"), [
    (("virtual_router_id {{ ha.virtual_router_id }}", "virtual_router_id {{ ha.virtual_router_id + 300 }}"),
     "VRID '351' not valid - must be between 1 & 255"),
    (("    nopreempt\n", "    bogus_keyword 3\n"), "Unknown keyword 'bogus_keyword'"),
    (("/bin/busybox sh -c", "/bin/nosuch sh -c"), "Disabling track script nginxctl_nginx since not found/accessible"),
])
def test_a_config_keepalived_refuses_is_exit_1_with_its_message(docker_client, tmp_path, change, said):
    template = shipped_keepalived()
    assert change[0] in template
    inv = pair(tmp_path, keepalived_template=template.replace(*change))
    result = validate(inv)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert ("\nerror: lb1: keepalived rejected its keepalived.conf (`nginxctl render --keepalived --targets lb1` "
            "shows it): ") in result.stderr
    assert said in result.stderr
    report = json.loads(validate(inv, "--format", "json").stdout)
    assert report["ok"] is False and report["exit_code"] == 1
    assert report["errors"][0]["type"] == "KeepalivedRejected" and report["errors"][0]["target"] == "lb1"
    assert said in report["errors"][0]["keepalived_output"]


def test_without_the_keepalived_image_validate_says_how_to_build_it(docker_client, tmp_path):
    result = validate(pair(tmp_path, "image: nginxctl/no-such-keepalived:1"))
    assert result.returncode == 3, result.stderr
    assert "image nginxctl/no-such-keepalived:1 is not present on the Docker engine (ha: keepalived)" in result.stderr
    assert "scripts/build-keepalived-image.sh" in result.stderr


def test_an_nginx_rejection_comes_first_and_keepalived_is_not_run(docker_client, tmp_path):
    inv = pair(tmp_path, keepalived_template="{{ this_would_fail }}")
    (tmp_path / "tpl" / "stream.conf.j2").write_text(
        (shipped_templates() / "stream.conf.j2").read_text().replace("\nstream {\n", "\nstream {\n    bogus;\n", 1))
    result = validate(inv)
    assert result.returncode == 1 and "nginx rejected the config" in result.stderr, result.stderr
    assert "keepalived" not in result.stderr


def test_the_keepalived_image_is_built_offline_and_runs_keepalived(docker_client):
    assert shutil.which("docker") is not None
    image = docker_client.images.get("nginxctl/keepalived:local")
    assert image.attrs["Config"]["Entrypoint"][0] == "/usr/sbin/keepalived"
    out = docker_client.containers.run("nginxctl/keepalived:local", ["--version"], remove=True, network_mode="none",
                                       stdout=True, stderr=True)
    assert b"Keepalived v2." in out

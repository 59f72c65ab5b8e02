"""The config a target should run, rendered from an inventory: the templates, the stream module a target's
nginx needs loaded, and the health decisions a running watch publishes. Nothing here changes a target.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .apply import Deployer
from .inventory import Inventory
from .inventory.model import NamedTarget
from .nginxtext import Build
from .render import render, render_keepalived, template_env


def render_config(inv: Inventory, templates: Path | None = None, *, full: bool,
                  modules: tuple[str, ...] = (), base: Path | None = None) -> str:
    """The rendered config; `templates` (else the inventory's `templates:`, relative to `base`, the
    inventory's folder) overrides the shipped templates. Raises TemplateError."""

    if templates is None and inv.templates:
        templates = (base if base is not None else Path(inv.source).parent) / inv.templates
    return render(inv, template_env(templates), full=full, modules=modules)


def keepalived_configs(inv: Inventory, targets: list[NamedTarget], templates: Path | None = None,
                       base: Path | None = None) -> dict[str, str]:
    """Each target's keepalived.conf (inventories with `ha:`), by target name; `templates` and `base` as for
    `render_config`. Raises TemplateError."""
    if templates is None and inv.templates:
        templates = (base if base is not None else Path(inv.source).parent) / inv.templates
    env = template_env(templates)
    return {t.name: render_keepalived(inv, t, env) for t in targets}


def loads_stream(inv: Inventory) -> bool:
    return any(m.endswith("ngx_stream_module.so") for m in inv.nginx.load_modules)


def stream_module(inv: Inventory, build: Build) -> tuple[str, ...]:
    return (build.stream_module,) if build.dynamic_stream and not loads_stream(inv) else ()



@dataclass(frozen=True)
class RenderTarget:
    """What rendering needs to know of a target: whether it takes the stream block alone, and its nginx's build
    (whether the stream module is dynamic, and where). Read once per attach."""

    name: str
    stream_only: bool
    build: Build | None = None


def target_of(name: str, deployer: Deployer) -> RenderTarget:
    """The target's render facts (`nginx -V` once per attach, only for a whole-config target)."""
    return RenderTarget(name, deployer.stream_only, None if deployer.stream_only else deployer.live.build())


def render_target(inv: Inventory, target: RenderTarget, templates: Path | None, base: Path | None = None) -> str:
    """What the target should run: the stream block for a stream-only target, else a whole nginx.conf
    (with the stream module loaded when the target's nginx builds it as a dynamic module). Raises TemplateError."""
    modules = stream_module(inv, target.build) if not target.stream_only and target.build is not None else ()
    return render_config(inv, templates, full=not target.stream_only, modules=modules, base=base)


def render_for(inv: Inventory, deployer: Deployer, templates: Path | None, base: Path | None = None) -> str:
    """`render_target` for a target as a Deployer reaches it."""
    return render_target(inv, target_of(deployer.live.name, deployer), templates, base)

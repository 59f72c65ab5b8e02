"""The config a target should run, rendered from an inventory: the templates, the stream module a target's
nginx needs loaded, and the health decisions a running watch publishes. Nothing here changes a target.
"""

from __future__ import annotations

from pathlib import Path

from .apply import Deployer
from .inventory import Inventory
from .nginxtext import Build


def render_config(inv: Inventory, templates: Path | None = None, *, full: bool,
                  modules: tuple[str, ...] = (), base: Path | None = None) -> str:
    """The rendered config; `templates` (else the inventory's `templates:`, relative to `base`, the
    inventory's folder) overrides the shipped templates. Raises TemplateError."""
    from .render import render, template_env

    if templates is None and inv.templates:
        templates = (base if base is not None else Path(inv.source).parent) / inv.templates
    return render(inv, template_env(templates), full=full, modules=modules)


def loads_stream(inv: Inventory) -> bool:
    return any(m.endswith("ngx_stream_module.so") for m in inv.nginx.load_modules)


def stream_module(inv: Inventory, build: Build) -> tuple[str, ...]:
    return (build.stream_module,) if build.dynamic_stream and not loads_stream(inv) else ()



def render_for(inv: Inventory, deployer: Deployer, templates: Path | None, base: Path | None = None) -> str:
    """What the target should run: the stream block for a stream-only target, else a whole nginx.conf
    (with the stream module loaded when the target's nginx builds it as a dynamic module)."""
    modules: tuple[str, ...] = ()
    if not deployer.stream_only and not loads_stream(inv):
        modules = stream_module(inv, deployer.live.build())
    return render_config(inv, templates, full=not deployer.stream_only, modules=modules, base=base)



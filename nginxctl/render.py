"""Inventory -> nginx config text, through the Jinja2 templates.

`render()` is a function of the inventory and a template environment: it touches no disk, Docker
or network (the environment's loader reads template files, which `template_env` sets up once).
Every value a template prints passes `_gate`: a template cannot emit whitespace, `;{}#`, quotes or
an unknown `$variable` through `{{ }}`, whatever the inventory says.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import TemplateError
from .inventory.grammar import SAFE_TOKEN, Duration, Size
from .inventory.model import Group, Inventory, NamedTarget
from .lazy import lazy_import

if TYPE_CHECKING:
    import jinja2
else:
    jinja2 = lazy_import("jinja2")  # `nginxctl --help` renders nothing

# What nginx answers on the ha health listener, and what keepalived's check looks for: one constant, two templates.
HEALTH_ANSWER = "nginxctl-ha-ok"
KEEPALIVED_TEMPLATE = "keepalived/keepalived.conf.j2"
# Where keepalived writes its VRRP state (MASTER, BACKUP, FAULT) in its companion container: the shipped
# keepalived.conf's `notify` writes it, `status` and `watch` read it (nginx/vip.py).
VRRP_STATE_FILE = "/run/nginxctl-vrrp.state"

PROXY_DIRECTIVES = (
    "proxy_connect_timeout", "proxy_timeout", "proxy_next_upstream", "proxy_next_upstream_tries",
    "proxy_next_upstream_timeout", "proxy_responses", "proxy_protocol", "proxy_buffer_size",
    "proxy_socket_keepalive",
)


def shipped_templates() -> Path:
    """The templates inside the installed package, or `templates/` of a source checkout."""
    packaged = Path(__file__).parent / "templates"
    return packaged if packaged.is_dir() else Path(__file__).parent.parent / "templates"


@dataclass(frozen=True)
class Directive:
    name: str
    value: Any


def group_directives(group: Group, inv: Inventory) -> list[Directive]:
    """The proxy_* directives of a group's server {}, in a fixed order; booleans become on/off."""
    out = []
    for name in PROXY_DIRECTIVES:
        value = getattr(group, name)
        if name == "proxy_buffer_size" and value is None:
            value = inv.nginx.proxy_buffer_size
        if value is None:
            continue
        out.append(Directive(name, ("on" if value else "off") if isinstance(value, bool) else value))
    return out


def _gate(value: Any) -> Any:
    """Finalize hook: the last check on every value a template prints."""
    if isinstance(value, bool) or value is None:
        raise TemplateError(f"a template printed {value!r}: print on/off or a value, not a Python "
                            "boolean or None")
    if isinstance(value, int):
        return value
    if isinstance(value, (str, Duration, Size)) and SAFE_TOKEN.match(str(value)):
        return value
    raise TemplateError(f"a template tried to print {str(value)!r}, which is not one safe nginx token "
                        "(no whitespace, quotes, ;{{}}#, or $ outside a stream variable)")


def template_env(custom_dir: str | os.PathLike[str] | None = None) -> jinja2.Environment:
    """A Jinja2 environment: templates from `custom_dir` first, then the shipped ones."""
    paths = [str(shipped_templates())]
    if custom_dir is not None:
        if not Path(custom_dir).is_dir():
            raise TemplateError(f"templates folder {custom_dir} does not exist")
        paths.insert(0, str(custom_dir))
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(paths), undefined=jinja2.StrictUndefined, finalize=_gate,
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, autoescape=False)


def render(inv: Inventory, env: jinja2.Environment, *, full: bool = False,
           modules: Iterable[str] = ()) -> str:
    """The stream {} block, or with `full` a whole nginx.conf.

    `modules` are load_module paths added to the inventory's own (validate and apply pass the
    stream module when the image builds it as a dynamic module). Raises TemplateError.
    """
    all_modules = list(dict.fromkeys([*inv.nginx.load_modules, *modules]))
    name = "nginx.conf.j2" if full else "stream.conf.j2"
    text = _render(env, name, inv=inv, nginx=inv.nginx, full=full, modules=all_modules, vars=inv.vars,
                   group_directives=lambda group: group_directives(group, inv), health_answer=HEALTH_ANSWER)
    if inv.ha is not None and f"listen 127.0.0.1:{inv.ha.health_port};" not in text:
        raise TemplateError(f"template {name} left out the ha health listener (listen 127.0.0.1:"
                            f"{inv.ha.health_port}): keepalived would find nginx dead on every target; keep the "
                            "`{% if inv.ha %}` block of the shipped stream.conf.j2 in your copy")
    return text


def render_keepalived(inv: Inventory, target: NamedTarget, env: jinja2.Environment) -> str:
    """keepalived.conf of one target of a fleet with `ha:` (VRRP for the virtual IP, and the check that nginx
    answers). Raises TemplateError (also when the inventory has no `ha:`)."""
    if inv.ha is None:
        raise TemplateError("the inventory has no ha: section, so no target runs keepalived")
    return _render(env, KEEPALIVED_TEMPLATE, inv=inv, ha=inv.ha, target=target, health_answer=HEALTH_ANSWER,
                   state_file=VRRP_STATE_FILE)


def _render(env: jinja2.Environment, name: str, **values: Any) -> str:
    """One template rendered; its errors said as TemplateError (file:line, what is undefined or missing)."""
    try:
        return env.get_template(name).render(**values)
    except TemplateError:
        raise
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"{exc.filename or exc.name}:{exc.lineno}: template syntax error: {exc.message}") from None
    except jinja2.TemplateNotFound as exc:
        raise TemplateError(f"template {exc.name} not found in {env.loader.searchpath}") from None  # type: ignore[union-attr]
    except jinja2.UndefinedError as exc:
        raise TemplateError(f"template {name}: {exc.message}") from None

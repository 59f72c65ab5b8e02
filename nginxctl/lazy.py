"""Third-party modules loaded on first use, so that a command pays only for what it uses.

`nginxctl --help`, `render` and `schema` never talk to Docker, etcd or Prometheus: they must not import
the Docker SDK (with requests and urllib3), etcd3gw, watchdog or prometheus_client to start. A module that
needs one of them binds it with `lazy_import` at its top (and imports it for real under TYPE_CHECKING, so
types are checked); the module is loaded when an attribute of it is first used. This is the standard
library's `importlib.util.LazyLoader`, nothing of ours.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType


def lazy_import(name: str) -> ModuleType:
    """`name`, loaded on its first attribute access (at once if it is already loaded). Raises
    ModuleNotFoundError when it is not installed."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module

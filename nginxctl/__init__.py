"""nginxctl: nginx as a TCP/UDP (L4) load balancer, driven by one inventory file.

Layout: `inventory/` (schema, grammar, loading: pure), `capacity` and `render` (pure), `nginx`
(the one module that talks to Docker and nginx), `apply` (the change procedure), `cli`.
"""

__version__ = "0.1.0"

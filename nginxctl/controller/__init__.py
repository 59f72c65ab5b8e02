"""The controller (`nginxctl watch`): sources publish what they see, one pure merge turns the inventory and
their snapshots into the model `render` takes, and one loop decides when to apply it, through the same
`Deployer` as `nginxctl apply`.

  debounce   when to apply: a quiet period with a ceiling (pure, injectable clock)
  merge      labels and etcd values -> servers; inventory + snapshots -> inventory (pure)
  sources    the inventory file, Docker events, etcd watches: each publishes whole snapshots
  metrics    Prometheus metrics and /healthz, a view of the loop's state
  loop       the reconcile loop
"""

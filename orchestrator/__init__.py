"""The control plane of pdserve: config, API servers, gateway, router, budgets, planner, controller, metrics.

Never touches tensors or engines: it decides (pure policies: `router.pick`, `planner.decide`,
`budget` checks) and coordinates (the controller actor, the gateway, the actuators). May import
`workers` only to create worker actors and to call their public methods.
"""

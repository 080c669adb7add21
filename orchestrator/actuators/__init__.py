"""Actuators: apply a planner `ScalingDecision` to a cluster and report its replicas per tier.

- `BaseActuator`: the contract (`apply(decision)`, `observe_replicas()`, both async).
- `VirtualActuator`: simulated time, no I/O (the simulator, the tests).
- `RayActuator`: hands counts to the controller actor, which starts and drains worker actors.
- `KubernetesActuator` (in `orchestrator.actuators.kuberay`, imported on demand: it needs the
  `kubernetes` client): patches the RayCluster's prefill and decode worker-group replicas.
May import `orchestrator.planner` (the decision type), `orchestrator.config`, `orchestrator.errors`.
"""

from orchestrator.actuators.base import ActuationFailed, BaseActuator
from orchestrator.actuators.ray import RayActuator
from orchestrator.actuators.virtual import VirtualActuator

__all__ = ["ActuationFailed", "BaseActuator", "RayActuator", "VirtualActuator"]

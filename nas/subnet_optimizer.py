"""An optimizer step that changes only the weights the step's subnet used (DESIGN section 4).

AdamW moves every entry of a parameter it steps: decoupled weight decay shrinks it, and momentum from
earlier steps keeps moving it with a zero gradient. SGD with momentum or weight decay does the same. In a
supernet most of a sliced weight is outside the active subnet, and those entries must stay put.

`SubnetOptimizer` wraps a torch AdamW / Adam / SGD optimizer (as timm's `create_optimizer_v2` builds
them, with their param groups). It records which elastic ops ran in the forward passes since the last
step. It then runs torch's functional update on the *active views* of those ops' parameters, gradients
and optimizer state. Parameters of ops that did not run are not touched at all. The state lives in the
wrapped optimizer, so its `state_dict()` checkpoints as usual.

Adam's bias correction uses the number of steps in which a parameter tensor was used. Entries used less
often than their tensor get a slightly smaller correction, as in any per-tensor Adam.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.optim.adam import adam
from torch.optim.sgd import sgd

from supernets.elastic_ops import Elastic


class SubnetOptimizer:
    def __init__(self, optimizer: torch.optim.Optimizer, model: nn.Module):
        if not isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW | torch.optim.SGD):
            raise ValueError(f"optimizer {type(optimizer).__name__}: the unused-weights guard supports "
                             "AdamW, Adam and SGD")
        if any(g.get("dampening", 0) for g in optimizer.param_groups):
            raise ValueError("the unused-weights guard supports SGD without dampening")
        self.optimizer = optimizer
        self.kind = "sgd" if isinstance(optimizer, torch.optim.SGD) else "adam"
        self.owners: dict[nn.Parameter, tuple[Elastic, str]] = {}
        self.ran: set[Elastic] = set()
        for module in model.modules():
            if isinstance(module, Elastic):
                for name, param in module.named_parameters(recurse=False):
                    self.owners[param] = (module, name)
                module.register_forward_pre_hook(self._record)
        plain = [p for g in optimizer.param_groups for p in g["params"] if p not in self.owners]
        if plain:
            raise ValueError(f"{len(plain)} optimized parameter(s) belong to no elastic op")

    def _record(self, module: Elastic, _inputs) -> None:
        self.ran.add(module)

    # the wrapped optimizer's interface, for schedulers, GradScaler and checkpoints
    @property
    def param_groups(self):
        return self.optimizer.param_groups

    @property
    def state(self):
        return self.optimizer.state

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return self.optimizer.state_dict()

    def load_state_dict(self, state) -> None:
        self.optimizer.load_state_dict(state)

    @torch.no_grad()
    def step(self) -> None:
        for group in self.optimizer.param_groups:
            active = [(p, *self.owners[p]) for p in group["params"]
                      if p.grad is not None and self.owners[p][0] in self.ran]
            if active:
                (self._adam if self.kind == "adam" else self._sgd)(group, active)
        self.ran.clear()

    def _adam(self, group: dict, active: list) -> None:
        views: dict[str, list[torch.Tensor]] = {"p": [], "g": [], "m": [], "v": [], "vmax": []}
        steps = []
        for p, module, name in active:
            state = self.optimizer.state[p]
            if not state:
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if group["amsgrad"]:
                    state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            view = module.active_view
            views["p"].append(view(name, p))
            views["g"].append(view(name, p.grad))
            views["m"].append(view(name, state["exp_avg"]))
            views["v"].append(view(name, state["exp_avg_sq"]))
            if group["amsgrad"]:
                views["vmax"].append(view(name, state["max_exp_avg_sq"]))
            steps.append(state["step"])
        beta1, beta2 = group["betas"]
        decoupled = isinstance(self.optimizer, torch.optim.AdamW) or group.get("decoupled_weight_decay", False)
        adam(views["p"], views["g"], views["m"], views["v"], views["vmax"], steps, foreach=True,
             decoupled_weight_decay=decoupled, amsgrad=group["amsgrad"], beta1=beta1, beta2=beta2, lr=group["lr"],
             weight_decay=group["weight_decay"], eps=group["eps"], maximize=group["maximize"])

    def _sgd(self, group: dict, active: list) -> None:
        params, grads, buffers = [], [], []
        for p, module, name in active:
            state = self.optimizer.state[p]
            if group["momentum"] and "momentum_buffer" not in state:
                # zeros: the first update buf = momentum * 0 + grad equals torch's buf = grad (dampening 0)
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            params.append(module.active_view(name, p))
            grads.append(module.active_view(name, p.grad))
            buffers.append(module.active_view(name, state["momentum_buffer"]) if group["momentum"] else None)
        sgd(params, grads, buffers, foreach=True, weight_decay=group["weight_decay"], momentum=group["momentum"],
            lr=group["lr"], dampening=group["dampening"], nesterov=group["nesterov"], maximize=group["maximize"])

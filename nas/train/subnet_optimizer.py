"""An optimizer step that changes only the weights the step's subnet used (docs/design.md section 4).

AdamW moves every entry of a parameter it steps: decoupled weight decay shrinks it, and momentum from
earlier steps keeps moving it with a zero gradient. SGD with momentum or weight decay does the same. In a
supernet most of a sliced weight is outside the active subnet, and those entries must stay put.

`SubnetOptimizer` wraps a torch AdamW / Adam / SGD optimizer (as timm's `create_optimizer_v2` builds
them, with their param groups). It records which elastic ops ran in the forward passes since the last
step, and the slice each forward used (`Elastic.slice_config`). It then runs torch's functional update on
those slices of the ops' parameters, gradients and optimizer state. Parameters of ops that did not run are
not touched at all. The state lives in the wrapped optimizer, so its `state_dict()` checkpoints as usual.

With several archs per step (the sandwich sampler), an op may have run with several slices. The step then
updates the union of those slices once, with the gradient accumulated over the archs: the update runs on
full-size copies and only the union's entries are written back, so the others stay bit-identical. An op
that ran with one slice (every op, with one arch per step) is updated on its views, with no copy.

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
        self.ran: dict[Elastic, set[tuple]] = {}  # op -> the slice configurations it ran with since the step
        for module in model.modules():
            if isinstance(module, Elastic):
                for name, param in module.named_parameters(recurse=False):
                    self.owners[param] = (module, name)
                module.register_forward_pre_hook(self._record)
        plain = [p for g in optimizer.param_groups for p in g["params"] if p not in self.owners]
        if plain:
            raise ValueError(f"{len(plain)} optimized parameter(s) belong to no elastic op")

    def _record(self, module: Elastic, _inputs) -> None:
        # at the forward, not at the step: a later arch of the same step may set_active this op to another slice
        self.ran.setdefault(module, set()).add(module.slice_config())

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
            active = []
            for p in group["params"]:
                module, name = self.owners[p]
                if p.grad is not None and module in self.ran:
                    active.append((p, module, name, self.ran[module]))
            if active:
                (self._adam if self.kind == "adam" else self._sgd)(group, active)
        self.ran.clear()

    def _operands(self, active: list, keys: list[str]) -> tuple[list[list[torch.Tensor]], list]:
        """The tensors for the functional update, as columns [params, grads, *state[keys]], and the write-backs
        to do after it: (union mask, the parameter's tensors, what the update ran on) per copied parameter."""
        columns = [[] for _ in range(2 + len(keys))]
        writebacks = []
        for p, module, name, configs in active:
            state = self.optimizer.state[p]
            tensors = [p, p.grad, *(state[k] for k in keys)]
            if len(configs) == 1:
                (config,) = configs
                operands = [module.config_view(config, name, t) for t in tensors]
            else:
                # not the view of each slice in turn: an entry in two slices would be stepped twice
                mask = torch.zeros_like(p, dtype=torch.bool)  # shaped like p: True on the union of the slices
                for config in configs:
                    module.config_view(config, name, mask).fill_(True)
                operands = [t if t is p.grad else t.clone() for t in tensors]  # the gradient is only read
                writebacks.append((mask, tensors, operands))
            for column, t in zip(columns, operands):
                column.append(t)
        return columns, writebacks

    @staticmethod
    def _write_back(writebacks: list) -> None:
        for mask, originals, updated in writebacks:
            for original, new in zip(originals, updated):
                if new is not original:
                    torch.where(mask, new, original, out=original)

    def _adam(self, group: dict, active: list) -> None:
        keys = ["exp_avg", "exp_avg_sq", *(["max_exp_avg_sq"] if group["amsgrad"] else [])]
        for p, *_ in active:
            state = self.optimizer.state[p]
            if not state:
                state["step"] = torch.tensor(0.0)
                for key in keys:
                    state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
        # the per-tensor step counters themselves: the update increments each once
        steps = [self.optimizer.state[p]["step"] for p, *_ in active]
        (params, grads, exp_avgs, exp_avg_sqs, *rest), writebacks = self._operands(active, keys)
        beta1, beta2 = group["betas"]
        decoupled = isinstance(self.optimizer, torch.optim.AdamW) or group.get("decoupled_weight_decay", False)
        adam(params, grads, exp_avgs, exp_avg_sqs, rest[0] if rest else [], steps, foreach=True,
             decoupled_weight_decay=decoupled, amsgrad=group["amsgrad"], beta1=beta1, beta2=beta2, lr=group["lr"],
             weight_decay=group["weight_decay"], eps=group["eps"], maximize=group["maximize"])
        self._write_back(writebacks)

    def _sgd(self, group: dict, active: list) -> None:
        keys = ["momentum_buffer"] if group["momentum"] else []
        for p, *_ in active:
            state = self.optimizer.state[p]
            if group["momentum"] and "momentum_buffer" not in state:
                # zeros: the first update buf = momentum * 0 + grad equals torch's buf = grad (dampening 0)
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        (params, grads, *rest), writebacks = self._operands(active, keys)
        buffers = rest[0] if rest else [None] * len(params)
        sgd(params, grads, buffers, foreach=True, weight_decay=group["weight_decay"], momentum=group["momentum"],
            lr=group["lr"], dampening=group["dampening"], nesterov=group["nesterov"], maximize=group["maximize"])
        self._write_back(writebacks)

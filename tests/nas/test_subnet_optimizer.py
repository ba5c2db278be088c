"""The unused-weights guard: a step changes only the active slices of the ops its subnet ran."""
import numpy as np
import pytest
import torch
from timm.optim import create_optimizer_v2

from nas.train.arch_samplers import SandwichSampler
from nas.train.subnet_optimizer import SubnetOptimizer
from search_spaces import load_space
from supernets.elastic_ops import Elastic
from supernets.supernet import Supernet


def _archs(space, n, seed):
    rng = np.random.default_rng(seed)
    return [space.sample(rng) for _ in range(n)]


def _loss(model, x, y):
    return torch.nn.functional.cross_entropy(model(x), y)


def _step(model, guard, arch, x, y):
    model.set_active(arch)
    _loss(model, x, y).backward()
    ran = set(guard.ran)
    guard.step()
    guard.zero_grad()
    return ran


def _active_mask(model, ran):
    """name -> bool mask of the entries inside the active views of the ops that ran."""
    masks = {}
    for module_name, module in model.named_modules():
        if isinstance(module, Elastic):
            for name, p in module.named_parameters(recurse=False):
                mask = torch.zeros_like(p, dtype=torch.bool)
                if module in ran:
                    module.active_view(name, mask).fill_(True)
                masks[f"{module_name}.{name}"] = mask
    return masks


@pytest.mark.parametrize("opt", ["adamw", "sgd"])
def test_a_step_leaves_unused_weights_bit_identical(opt):
    torch.manual_seed(0)
    space = load_space("tiny-32")
    model = Supernet(space)
    optimizer = create_optimizer_v2(model, opt, lr=0.05, weight_decay=0.1, momentum=0.9)
    guard = SubnetOptimizer(optimizer, model)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    first, second = _archs(space, 2, seed=3)
    _step(model, guard, first, x, y)  # gives momentum to the first subnet's weights
    before = {k: v.clone() for k, v in model.named_parameters()}
    ran = _step(model, guard, second, x, y)
    masks = _active_mask(model, ran)
    changed_active = 0
    for name, p in model.named_parameters():
        unused = ~masks[name]
        assert torch.equal(p[unused], before[name][unused]), f"{name}: unused entries moved"
        changed_active += int((p[masks[name]] != before[name][masks[name]]).sum())
    assert changed_active > 0.5 * sum(int(m.sum()) for m in masks.values())


def test_the_active_slice_moves_exactly_as_plain_adamw_on_the_exported_model(tiny32_ln):
    # LayerNorm: under BatchNorm the biases that feed a BatchNorm through linear maps (the local branch's last
    # norm, a path's last fc2) have a zero true gradient, and Adam turns their rounding noise into lr-sized steps
    torch.manual_seed(1)
    space = load_space(str(tiny32_ln))
    model = Supernet(space)
    arch = _archs(space, 1, seed=4)[0]
    standalone = model.export(arch)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    guard = SubnetOptimizer(create_optimizer_v2(model, "adamw", lr=1e-2, weight_decay=0.05), model)
    plain = create_optimizer_v2(standalone, "adamw", lr=1e-2, weight_decay=0.05)
    for _ in range(3):
        _step(model, guard, arch, x, y)
        _loss(standalone, x, y).backward()
        plain.step()
        plain.zero_grad()
    exported = model.export(arch).state_dict()
    for name, value in standalone.state_dict().items():
        if name.endswith("attn.k.bias"):
            # zero true gradient (softmax ignores a per-query constant): Adam normalises float noise
            # into lr-sized steps there, differently for sliced and contiguous matmuls
            continue
        # float rounding of sliced vs contiguous matmuls, through Adam's normalisation: ~1e-6 on a few entries;
        # a guard fault (an unused entry stepped, an entry stepped twice) moves entries by ~lr = 1e-2
        torch.testing.assert_close(exported[name], value, atol=1e-5, rtol=1e-5)


def test_optimizer_state_checkpoints_and_unsupported_optimizers_are_refused():
    space = load_space("tiny-32")
    model = Supernet(space)
    guard = SubnetOptimizer(create_optimizer_v2(model, "adamw", lr=1e-3), model)
    _step(model, guard, _archs(space, 1, seed=5)[0], torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,)))
    state = guard.state_dict()
    assert state["state"] and all("exp_avg" in s for s in state["state"].values())
    with pytest.raises(ValueError, match="supports AdamW, Adam and SGD"):
        SubnetOptimizer(torch.optim.RMSprop(model.parameters()), model)


# ---- several archs per step (the sandwich sampler) ---------------------------------------------------------

def _sandwich_step(model, guard, archs, x, y):
    """A step of the training loop with several archs: a forward and backward of loss / len(archs) each, then one
    guard step. Returns, per arch, name -> bool mask of the entries its forward used, and the summed gradients."""
    current = set()
    hooks = [m.register_forward_pre_hook(lambda m, _: current.add(m))
             for m in model.modules() if isinstance(m, Elastic)]
    used = []
    try:
        for arch in archs:
            current.clear()
            model.set_active(arch)
            (_loss(model, x, y) / len(archs)).backward()
            used.append(_active_mask(model, current))  # while the arch is still the active one
    finally:
        for hook in hooks:
            hook.remove()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    guard.step()
    guard.zero_grad()
    return used, grads


def _sandwich_run(opt, seed):
    """A tiny-32 supernet, its guard, a sandwich sampler, a batch, and one sandwich step already done (it gives
    momentum to the entries its archs used)."""
    torch.manual_seed(seed)
    space = load_space("tiny-32")
    model = Supernet(space)
    optimizer = create_optimizer_v2(model, opt, lr=0.01, weight_decay=0.1, momentum=0.9)
    guard = SubnetOptimizer(optimizer, model)
    sampler = SandwichSampler(space, seed)
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,))
    _sandwich_step(model, guard, sampler.archs(0), x, y)
    return model, guard, sampler, x, y


@pytest.mark.parametrize("opt", ["adamw", "sgd"])
def test_a_sandwich_step_moves_the_entries_of_every_arch_and_no_others(opt):
    model, guard, sampler, x, y = _sandwich_run(opt, seed=0)
    before = {k: v.clone() for k, v in model.named_parameters()}
    used, _ = _sandwich_step(model, guard, sampler.archs(1), x, y)
    largest, last = used[0], used[-1]
    only_largest = changed = 0
    for name, p in model.named_parameters():
        outside = largest[name] & ~last[name]  # the largest arch's entries that the last arch did not use
        only_largest += int(outside.sum())
        changed += int((p[outside] != before[name][outside]).sum())
        unused = ~torch.stack([u[name] for u in used]).any(0)
        assert torch.equal(p[unused], before[name][unused]), f"{name}: entries no arch used moved"
    assert only_largest > 1000
    assert changed > 0.99 * only_largest, f"{changed} of the {only_largest} entries of the largest arch alone moved"


@pytest.mark.parametrize("opt", ["adamw", "sgd"])
def test_the_union_of_the_archs_is_stepped_once_as_plain_torch_with_the_summed_gradient(opt):
    """Plain torch steps each parameter's union entries (gathered into a 1-D tensor, with the state the guard had
    there) once with the step's summed gradient; the guard must land on the same values."""
    model, guard, sampler, x, y = _sandwich_run(opt, seed=1)
    before = {k: v.clone() for k, v in model.named_parameters()}
    names = {p: name for name, p in model.named_parameters()}
    state_before = {names[p]: {k: v.clone() for k, v in s.items()} for p, s in guard.state.items()}
    groups = [dict(g, params=[names[p] for p in g["params"]]) for g in guard.param_groups]
    used, grads = _sandwich_step(model, guard, sampler.archs(1), x, y)
    union = {name: torch.stack([u[name] for u in used]).any(0) for name in before}
    shared = sum(int((torch.stack([u[name] for u in used]).sum(0) >= 2).sum()) for name in before)
    assert shared > 1000  # entries of two or three archs, which a step per arch would move more than once

    refs, ref_groups = {}, []
    for group in groups:
        params = []
        for name in group["params"]:
            if name not in grads:
                continue
            mask = union[name]
            ref = torch.nn.Parameter(before[name][mask].clone())  # (entries of the union,)
            ref.grad = grads[name][mask].clone()
            refs[name] = ref
            params.append(ref)
        ref_groups.append(dict(group, params=params, foreach=False))
    ref_cls = torch.optim.AdamW if opt == "adamw" else torch.optim.SGD
    reference = ref_cls(ref_groups)
    for name, ref in refs.items():
        if name in state_before:
            reference.state[ref] = {k: (v if v.dim() == 0 else v[union[name]]).clone()
                                    for k, v in state_before[name].items()}
    reference.step()

    for name, p in model.named_parameters():
        if name in refs:
            torch.testing.assert_close(p[union[name]], refs[name].detach(), atol=0, rtol=0, msg=name)
            if opt == "adamw":
                step = guard.state[p]["step"]
                assert step == (state_before[name]["step"] + 1 if name in state_before else 1)

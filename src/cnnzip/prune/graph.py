"""Which channels can be removed together: coupled channel groups, found with Torch-Pruning's dependency graph.

Torch-Pruning traces the model and groups every layer whose channels must shrink together (a conv, its BN, the
convs that read it, both sides of a residual addition, the slices of a concatenation). Its tracer guesses at
operations it does not know, and some guesses are wrong (the zero-padding shortcut of CIFAR ResNets is one).
So cnnzip trusts no group it has not seen work: removing two probe channels of every group is tried on a copy
(groups coupled through unfamiliar operations apart from the others), and only groups whose surgery gives the
same outputs as zeroing those channels are offered for pruning. The others are reported, with the layers involved, and left
untouched. Every actual pruning is verified again in full (`channels.prune_channels`).
"""

from __future__ import annotations

import copy
import functools
import math
import re
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import ConfigError, ModelError, layer_patterns
from .layers import SURGERY_ERRORS, cannot_zero, custom_pruners, rule_for

__all__ = ["ChannelGroup", "ChannelGraph", "Member", "Surgery", "analyze", "attempt", "check_equivalent", "find_failing",
           "probe_input", "TOLERANCE"]

# Operations whose output channel c depends only on input channel c (or that act on other dimensions): removing a
# channel before them removes exactly that channel after them. Anything else in a group is tried before trusted.
# Names are autograd node names without "Backward<N>", lower-cased; "t" is the weight transpose inside F.linear.
_CHANNELWISE_OPS = frozenset({
    "add", "sub", "mul", "div", "neg", "relu", "sigmoid", "tanh", "hardtanh", "hardswish", "hardsigmoid", "silu",
    "gelu", "elu", "leakyrelu", "clamp", "clampmin", "threshold", "maxpool2dwithindices", "avgpool2d",
    "adaptiveavgpool2d", "adaptivemaxpool2d", "nativedropout", "clone", "tocopy", "softplus", "mish", "t",
})
# Reductions are channel-wise when they do not reduce over the channel dimension (1): global average pooling.
_REDUCTIONS = frozenset({"mean", "sum", "amax", "amin"})


@dataclass(frozen=True)
class Member:
    """One layer touched when a group loses channels: `kind` is 'out' (its outputs go) or 'in' (its inputs go)."""

    name: str
    kind: str
    layer: str  # the layer's class name, e.g. Conv2d
    role: str = "other"  # what it is: conv, linear, norm, or other (by isinstance, so subclasses count)

    def __str__(self) -> str:
        return f"{self.name}[{self.kind}]"


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that must be removed together, indexed by the output channels of the root layer `name`."""

    name: str
    size: int
    members: tuple[Member, ...]
    blocks: int = 1  # a grouped convolution's groups: the same positions go from each block of size // blocks

    def layer_names(self) -> list[str]:
        return [m.name for m in self.members]


@dataclass
class ChannelGraph:
    """The result of `analyze`: prunable groups, and the groups left alone with the reason why.

    It holds the dependency graph of the model it analysed, which must not change afterwards; pruning works on
    copies.
    """

    model: nn.Module
    example_input: torch.Tensor
    groups: list[ChannelGroup]
    excluded: dict[str, str] = field(default_factory=dict)  # root name -> reason
    probe: torch.Tensor | None = None  # the batch surgeries are checked on (`probe_input`)
    _dg: object = None
    _roots: dict[str, tuple[nn.Module, object]] = field(default_factory=dict)
    _names: dict[nn.Module, str] = field(default_factory=dict)
    _reference: nn.Module | None = None  # a float64 copy of the model while many surgeries are checked
    _mapped: dict[tuple, list] = field(default_factory=dict)  # the last few `_pruning_group` answers

    def _pruning_group(self, name: str, idxs: Sequence[int]) -> list:
        """Torch-Pruning's group for removing root channels `idxs` ((dependency, mapped indices) pairs), cached:
        a surgery and its check ask for the same groups, and mapping indices through concatenations is slow."""
        key = (name, tuple(sorted(int(i) for i in idxs)))
        if key not in self._mapped:
            if len(self._mapped) > 4096:
                self._mapped.clear()
            module, fn = self._roots[name]
            self._mapped[key] = list(self._dg.get_pruning_group(module, fn, list(key[1])))
        return self._mapped[key]

    def group(self, name: str) -> ChannelGroup:
        for g in self.groups:
            if g.name == name:
                return g
        if name in self.excluded:
            raise ModelError(f"the channels of {name} cannot be pruned: {self.excluded[name]}")
        raise ModelError(f"{name} is not the root of a channel group; prunable groups: "
                         f"{', '.join(g.name for g in self.groups) or 'none'}")

    def residual_groups(self) -> set[str]:
        """Groups whose channels several layers write: a residual addition joins them."""
        return {g.name for g in self.groups
                if sum(m.kind == "out" and m.role in ("conv", "linear") for m in g.members) > 1}

    def items(self, name: str, idxs: Sequence[int]) -> list[tuple[str, nn.Module, str, list[int]]]:
        """Every (layer name, module, kind, mapped channel indices) that removing root channels `idxs` touches.

        Only real layers are listed (with parameters, or a rule of their own); operations are skipped. Indices are mapped through
        concatenations and flattens by Torch-Pruning.
        """
        out = []
        for dep, mapped in self._pruning_group(name, idxs):
            target = dep.target.module
            if _has_channels(target):
                kind = "out" if self._dg.is_out_channel_pruning_fn(dep.handler) else "in"
                out.append((self._names[target], target, kind, [int(i) for i in mapped]))
        return out

    def pruned_copy(self, plan: dict[str, Sequence[int]], *, share: bool = False,
                    source: nn.Module | None = None) -> nn.Module:
        """A deep copy of the model with the channels in `plan` (root name -> indices) physically removed.

        With `share`, the copy's untouched parameters and buffers are the original's tensors (new `Parameter`
        objects over the same memory), which makes a throwaway trial cheap; such a copy must never be trained or
        changed in place. `source` is a model of the same structure to copy instead (the float64 reference).

        The model is traced once (in `analyze`): each group's Torch-Pruning handlers and channel indices are read
        from that graph, in the original model's numbering, merged per layer, and applied to a copy, one call per
        layer and handler. Pruning groups one after another would need a new trace after each, since the indices
        of a later group (behind a concatenation, a flatten) depend on the earlier cuts.
        """
        import torch_pruning as tp

        cuts: dict[tuple[str, str], tuple[Callable, set[int]]] = {}
        params = self._dg._param_to_name
        for name, idxs in plan.items():
            if len(idxs) == 0:
                continue
            group_def = self.group(name)
            if len(set(idxs)) >= group_def.size:
                raise ConfigError(f"cannot remove all {group_def.size} channels of {name}")
            for dep, mapped in self._pruning_group(name, idxs):
                target = dep.target.module
                if dep.target.type == tp.ops.OPTYPE.PARAMETER:
                    key = (params[target], "parameter")
                elif isinstance(target, nn.Module) and target in self._names:
                    key = (self._names[target], dep.handler.__name__)
                else:  # an operation of the traced graph (concatenation, split...): nothing to cut in the model
                    continue
                cuts.setdefault(key, (dep.handler, set()))[1].update(int(i) for i in mapped)
        source = self.model if source is None else source
        pruned = (_shared_copy(source) if share else copy.deepcopy(source)).eval()
        modules = dict(pruned.named_modules())
        for (name, kind), (handler, idxs) in cuts.items():
            if kind == "parameter":
                owner, _, attr = name.rpartition(".")
                parent = pruned.get_submodule(owner) if owner else pruned
                setattr(parent, attr, handler(getattr(parent, attr), sorted(idxs)))
            else:
                handler(modules[name], sorted(idxs))
        return pruned

    def reference(self) -> nn.Module:
        """The model's float64 CPU copy the checks run (kept for later checks unless the model is large)."""
        ref = self._reference
        if ref is None:
            ref = _float64_copy(self.model)
            if sum(p.numel() for p in ref.parameters()) <= REFERENCE_KEPT_UP_TO:
                self._reference = ref
        return ref

    def masked_output(self, plan: dict[str, Sequence[int]], x: torch.Tensor) -> torch.Tensor:
        """What the model with `plan`'s channels zeroed computes on `x`, in float64 on the CPU.

        The plan's channels are zeroed inside a float64 copy of the model (`_reference`, kept for later checks
        unless the model is large) and put back afterwards: a conv, linear or norm layer's values are copied back
        from the original (exact: float64 holds them); any other layer is swapped for a zeroed copy of itself.
        """
        ref = self.reference()
        modules = dict(ref.named_modules())
        swapped: dict[str, nn.Module] = {}
        edited: set[str] = set()
        try:
            with torch.no_grad():
                for name, idxs in plan.items():
                    if len(idxs) == 0:
                        continue
                    for layer, _module, kind, mapped in self.items(name, idxs):
                        rule = rule_for(modules[layer])
                        if rule is None:  # no channel parameters (activations, pooling)
                            continue
                        if rule.in_place:
                            edited.add(layer)
                        elif layer not in swapped:
                            swapped[layer] = modules[layer]
                            modules[layer] = copy.deepcopy(modules[layer])
                            ref.set_submodule(layer, modules[layer])
                        rule.zero(modules[layer], kind, mapped)
                return ref(x.detach().cpu().double())
        finally:
            with torch.no_grad():
                originals = dict(self.model.named_modules())
                for layer in edited:
                    for t, o in zip(_own_tensors(modules[layer]), _own_tensors(originals[layer]), strict=True):
                        t.copy_(o)
            for layer, original in swapped.items():
                ref.set_submodule(layer, original)

    def masked_copy(self, plan: dict[str, Sequence[int]]) -> nn.Module:
        """A deep copy with the same channels zeroed instead of removed: what the pruned model must equal."""
        masked = copy.deepcopy(self.model).eval()
        modules = dict(masked.named_modules())
        with torch.no_grad():
            for name, idxs in plan.items():
                if len(idxs) == 0:
                    continue
                for layer, _module, kind, mapped in self.items(name, idxs):
                    rule = rule_for(modules[layer])
                    if rule is not None:  # others have no channel parameters (activations, pooling)
                        rule.zero(modules[layer], kind, mapped)
        return masked


def analyze(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    skip: Iterable[str] = (),
    verify: bool = True,
) -> ChannelGraph:
    """Find the prunable channel groups of `model` for inputs shaped like `example_input` (a batch).

    `skip` holds layer names or regular expressions (full match): a group that touches a matching layer is
    left alone. Output layers (whose channels are the model's outputs) are never pruned. With `verify`, every
    group is tried on a copy first (see the module docstring); groups that fail are excluded with the reason.
    """
    import torch_pruning as tp

    if example_input.dim() < 2:
        raise ConfigError("example_input must be a batch, e.g. torch.randn(1, 3, 32, 32)")
    device = next(iter(model.parameters()), torch.empty(0)).device
    example_input = example_input.to(device)
    model_was_training = model.training
    model.eval()
    patterns = layer_patterns(skip, "--skip")
    dg = tp.DependencyGraph()
    op_owner = _record_op_owners(model)
    try:
        with torch.no_grad():
            output_layers, output_shape = _output_layers(model, example_input)
        probe = probe_input(example_input, model, output_shape)
        # Traced on the probe's size (the same couplings; a flatten before a linear layer keeps the full size).
        try:
            dg.build_dependency(model, example_inputs=probe[:1].clone(),
                                customized_pruners=custom_pruners() or None)
        except SURGERY_ERRORS as exc:
            raise ModelError(f"Torch-Pruning's tracer cannot follow this model ({type(exc).__name__}: "
                             f"{str(exc)[:160]}), so cnnzip cannot tell which channels go together; nothing was "
                             "pruned. Please report the model's structure.") from exc
    finally:
        op_owner.remove()
        model.train(model_was_training)
    names = {m: n for n, m in model.named_modules()}
    modules = dict(model.named_modules())

    graph = ChannelGraph(model=model, example_input=example_input.clone(), groups=[], _dg=dg, _names=names,
                         probe=probe)
    suspicious: dict[str, str] = {}
    roots = (nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.Linear)
    for root, group in _all_groups(dg, roots):
        name = names.get(root)
        if name is None:
            continue
        if group is None:
            graph.excluded[name] = ("Torch-Pruning's search for the layers coupled to these channels does not end "
                                    "(a residual addition over part of the channels, as in ReXNet, can cause this)")
            continue
        root_dep, root_idxs = group[0]
        members, odd_ops = [], []
        for dep, _ in group:
            target = dep.target.module
            if target in names and _has_channels(target):
                kind = "out" if dg.is_out_channel_pruning_fn(dep.handler) else "in"
                members.append(Member(names[target], kind, type(target).__name__, _role(target)))
            elif isinstance(target, tp.ops._ElementWiseOp):
                grad_fn = getattr(dg.module2node.get(target), "grad_fn", None)
                if not _channelwise(grad_fn):
                    owner = op_owner.owners.get(grad_fn, "an operation outside any module")
                    hint = (": a layer cnnzip does not know; declare it with cnnzip.prune.register_layer"
                            if op_owner.unknown_layer(owner) else "")
                    odd_ops.append(f"{_op_name(grad_fn)} in {owner}{hint}")
        size = len(root_idxs)
        members_t = tuple(dict.fromkeys(members))
        if any(m.name in output_layers and m.kind == "out" for m in members_t):
            continue  # the model's outputs (class scores) are not channels to prune
        hit = [m.name for m in members_t if any(p.fullmatch(m.name) for p in patterns)]
        if hit:
            graph.excluded[name] = f"skipped by request ({', '.join(hit)})"
            continue
        if size < 2:
            graph.excluded[name] = "a single channel: nothing can be removed"
            continue
        odd = [f"{m} ({why})" for m in members_t if m.kind == "out" and (why := cannot_zero(modules[m.name]))]
        if odd:
            graph.excluded[name] = f"layers whose channels cannot be verified: {', '.join(odd)}"
            continue
        blocks = 1
        for m in members_t:
            module = modules[m.name]
            if isinstance(module, nn.modules.conv._ConvNd) and 1 < module.groups and not (
                    module.groups == module.in_channels == module.out_channels):  # grouped, not depthwise
                blocks = math.lcm(blocks, module.groups)
        if size % blocks:
            graph.excluded[name] = (f"read or written by a grouped convolution ({blocks} groups) whose groups do "
                                    f"not divide these {size} channels evenly")
            continue
        if size // blocks < 2:
            graph.excluded[name] = (f"a grouped convolution ({blocks} groups) with one channel per group: removing "
                                    "one would remove them all")
            continue
        graph._roots[name] = (root, root_dep.handler)
        graph.groups.append(ChannelGroup(name=name, size=size, members=members_t, blocks=blocks))
        if odd_ops:
            suspicious[name] = ("coupled through operations Torch-Pruning may not map right: "
                                + ", ".join(dict.fromkeys(odd_ops)))

    if verify and graph.groups:
        _verify_groups(graph, suspicious)
    return graph


def _all_groups(dg, roots: tuple[type, ...]):
    """(root module, group) for every conv or linear layer not yet in a group, as Torch-Pruning's `get_all_groups`;
    the group is None when Torch-Pruning's walk over the coupled layers does not end.

    That walk revisits a layer whenever the channel indices reaching it differ, and chained residual additions over
    part of the channels (ReXNet) multiply the variants with every block: Torch-Pruning alone hangs there. A group never needs more
    entries than a few per traced node (the largest seen in 30 timm models: 122 for 330 nodes), so a walk past
    `4 * nodes + 1000` entries is stopped and its root left alone.
    """
    from torch_pruning.dependency.group import Group

    limit = 4 * len(dg.module2node) + 1000
    add_dep = Group.add_dep

    def bounded_add_dep(self, dep, idxs):
        if len(self._group) >= limit:
            raise _Runaway
        add_dep(self, dep, idxs)

    visited: set = set()
    ignored = list(getattr(dg, "IGNORED_LAYERS_IN_TRACING", []))  # inside layers a custom pruner handles
    for module in list(dg.module2node):
        if not isinstance(module, roots) or module in visited or any(module is m for m in ignored):
            continue
        pruner = dg.get_pruner_of_module(module)
        if pruner is None or pruner.get_out_channels(module) is None:
            continue
        Group.add_dep = bounded_add_dep  # only for this call: restored before anything else runs
        try:
            group = dg.get_pruning_group(module, pruner.prune_out_channels,
                                         list(range(pruner.get_out_channels(module))))
        except _Runaway:
            yield module, None
            continue
        finally:
            Group.add_dep = add_dep
        for dep, _ in group:
            if dg.is_out_channel_pruning_fn(dep.handler):
                visited.add(dep.target.module)
        yield module, group


class _Runaway(Exception):
    """Torch-Pruning's group walk grew past any real group's size."""


def _has_channels(target) -> bool:
    """A layer whose channels are data (parameters, or a channel map like the zero-padding shortcut's)."""
    return isinstance(target, nn.Module) and (any(True for _ in target.parameters(recurse=False))
                                              or rule_for(target) is not None)


def _role(module: nn.Module) -> str:
    if isinstance(module, nn.modules.conv._ConvNd):
        return "conv"
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)):
        return "norm"
    return "other"


def check_equivalent(a: nn.Module, b: nn.Module, x: torch.Tensor, *, fresh: bool = False) -> float | None:
    """Largest difference between a(x) and b(x) relative to a's output scale; None if b fails or changes shape.

    Both run as float64 copies on the CPU: rounding then stays near 1e-15, so a tight tolerance separates a
    correct surgery from a wrong one that barely moves the outputs, whatever device (TF32, AMP) the model is on.
    With `fresh`, `a` and `b` are throwaway copies already and are converted in place.
    """
    with torch.no_grad():
        ya = (a if fresh else _shared_copy(a)).cpu().double().eval()(x.detach().cpu().double())
    return compare_outputs(ya, b if fresh else _shared_copy(b), x)


def compare_outputs(expected: torch.Tensor, model: nn.Module, x: torch.Tensor) -> float | None:
    """Largest difference between `expected` (float64) and `model`(x) run in float64, relative to the expected
    scale; None if `model` fails or changes the shape. `model` is converted to float64 on the CPU in place."""
    return difference(expected, run_float64(model, x))


def run_float64(model: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """`model`(x) in float64 on the CPU (the model converted in place); None if it fails."""
    with torch.no_grad():
        try:
            return model.cpu().double().eval()(x.detach().cpu().double())
        except SURGERY_ERRORS:  # a broken surgery can fail in many ways; the caller reports it
            return None


def difference(expected, got) -> float | None:
    """Largest difference relative to the expected scale; None if either is not a tensor or the shapes differ."""
    if not isinstance(expected, torch.Tensor) or not isinstance(got, torch.Tensor) or expected.shape != got.shape:
        return None
    scale = float(expected.abs().max()) or 1.0
    return float((expected - got).abs().max()) / scale


TOLERANCE = 1e-9  # relative, in float64
REFERENCE_KEPT_UP_TO = 50_000_000  # parameters: a graph keeps its model's float64 copy (8 bytes each) up to this


@dataclass
class Surgery:
    """One try of a plan: the pruned copy, its difference from the masked original, and what is wrong if any."""

    model: nn.Module | None
    error: float | None  # relative, in float64; None when the surgery failed outright
    problem: str | None  # None when the pruned copy equals the masked original

    @property
    def exact(self) -> bool:
        return self.problem is None


def attempt(graph: ChannelGraph, plan: dict[str, Sequence[int]], x: torch.Tensor, *, keep: bool = True) -> Surgery:
    """Remove the channels of `plan` from a copy and compare it with the masked original on `x`.

    The copy starts from the original's tensors (nothing cloned) and the check converts it to float64; with `keep`
    it is converted back and returned, owning all its memory. Without `keep` only the verdict is wanted.
    """
    try:
        # A throwaway trial is cut from the float64 reference, so there is nothing to convert (the masked output
        # below edits that reference in place, after the trial has run, and restores it). A failed cut costs no
        # forward pass.
        pruned = graph.pruned_copy(plan, share=True, source=None if keep else graph.reference())
    except ConfigError:
        raise
    except SURGERY_ERRORS as exc:  # Torch-Pruning can fail in many ways on channels it maps wrong
        return Surgery(None, None, f"surgery failed ({type(exc).__name__}: {str(exc)[:120]})")
    kept = {k: (t.dtype, t.device) for k, t in _tensors(pruned)}  # the check converts the copy in place
    got = run_float64(pruned, x)  # first: a copy that fails at forward needs no masked output
    err = None if got is None else difference(graph.masked_output(plan, x), got)
    if err is None:
        return Surgery(None, None, "the pruned model fails or changes its output shape")
    problem = None if err <= TOLERANCE else f"the pruned model differs from the masked one by {err:.2e}"
    if not keep:
        return Surgery(None, err, problem)
    original = {t.data_ptr() for _, t in _tensors(graph.model)}
    with torch.no_grad():
        for k, t in _tensors(pruned):  # back to each tensor's own dtype and device (exact: float64 holds them)
            t.data = t.data.to(device=kept[k][1], dtype=kept[k][0])
            if t.data_ptr() in original:  # not converted (an integer counter, a float64 model): its own copy
                t.data = t.data.clone()
    return Surgery(pruned, err, problem)


def _shared_copy(model: nn.Module) -> nn.Module:
    """A deep copy of the modules whose parameters and buffers alias the original's memory (nothing cloned).

    Each tensor is a new tensor object over the same memory, so that reassigning `.data` in the copy (a dtype
    conversion) leaves the original alone; Torch-Pruning's handlers build new tensors rather than edit in place.
    """
    tensors: dict[int, torch.Tensor] = {}
    for p in model.parameters():
        tensors[id(p)] = nn.Parameter(p.data, requires_grad=p.requires_grad)
    for b in model.buffers():
        tensors[id(b)] = b.detach()
    return _module_tree_copy(model, tensors, {})


_MODULE_DICTS = ("_parameters", "_buffers", "_modules", "_non_persistent_buffers_set", "_forward_hooks",
                 "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
                 "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks", "_state_dict_hooks",
                 "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks")


@functools.cache
def _has_slots(cls: type) -> bool:
    return any("__slots__" in vars(c) for c in cls.__mro__[:-1])


def _module_tree_copy(module: nn.Module, tensors: dict[int, torch.Tensor], memo: dict[int, nn.Module]) -> nn.Module:
    """A copy of the module tree: new module objects (with their own attribute, parameter, buffer, child and hook
    dicts) over the tensors `tensors` maps, a module reached twice copied once. Other attributes are shared:
    surgery replaces them (widths, weights) and never edits one in place. Far cheaper than `copy.deepcopy`, which
    walks every attribute of every module; the trials it serves are verified against the original anyway."""
    if id(module) in memo:
        return memo[id(module)]
    cls = type(module)
    if _has_slots(cls):
        new = copy.copy(module)
    else:  # what copy.copy does for a plain object (a new object, a shallow copy of __dict__), without its detours
        new = object.__new__(cls)
        new.__dict__.update(module.__dict__)
    memo[id(module)] = new
    for name in _MODULE_DICTS:
        if name in module.__dict__:
            new.__dict__[name] = module.__dict__[name].copy()
    for k, p in module._parameters.items():
        new._parameters[k] = None if p is None else tensors.get(id(p), p)
    for k, b in module._buffers.items():
        new._buffers[k] = None if b is None else tensors.get(id(b), b)
    for k, child in module._modules.items():
        new._modules[k] = None if child is None else _module_tree_copy(child, tensors, memo)
    return new


def _float64_copy(model: nn.Module) -> nn.Module:
    """An evaluation-mode float64 copy on the CPU that owns all its memory (converted, never cloned twice)."""
    original = {t.data_ptr() for t in _own_tensors(model, recurse=True)}
    ref = _shared_copy(model).cpu().double().eval()
    with torch.no_grad():
        for t in _own_tensors(ref, recurse=True):
            if t.data_ptr() in original:
                t.data = t.data.clone()
    return ref


def _own_tensors(module: nn.Module, recurse: bool = False) -> list[torch.Tensor]:
    return [*module.parameters(recurse=recurse), *module.buffers(recurse=recurse)]


def _tensors(model: nn.Module):
    yield from model.named_parameters()
    yield from model.named_buffers()


@contextmanager
def holding_reference(graph: ChannelGraph):
    """Keep one float64 copy of even a large model for the trials inside (each would convert its own), and
    drop it after them."""
    large = graph._reference is None and sum(p.numel() for p in graph.model.parameters()) > REFERENCE_KEPT_UP_TO
    if large:
        graph._reference = _float64_copy(graph.model)
    try:
        yield
    finally:
        if large:
            graph._reference = None


def _verify_groups(graph: ChannelGraph, suspicious: dict[str, str]) -> None:
    """Try removing a few channels of every group; exclude the groups whose surgery is not exact."""
    x = graph.probe if graph.probe is not None else probe_input(graph.example_input)
    trusted = [g.name for g in graph.groups if g.name not in suspicious]
    failed: dict[str, str] = {}

    def trial(names: list[str]) -> str | None:
        return attempt(graph, {n: _probe_channels(graph.group(n)) for n in names}, x, keep=False).problem

    with holding_reference(graph):
        # Every group is tried at once, and the set halved only where it fails: a model whose groups all pass
        # (most; also those coupled through unfamiliar operations, as ConvNeXt's permutes and EfficientNet's
        # squeeze-excite) costs one surgery. Groups coupled through unfamiliar operations come last.
        for name, reason in find_failing(trusted + list(suspicious), trial).items():
            failed[name] = f"{reason}; {suspicious[name]}" if name in suspicious else reason
    for name, reason in failed.items():
        graph.excluded[name] = reason
    graph.groups = [g for g in graph.groups if g.name not in failed]


def find_failing(names: Sequence[str], trial: Callable[[list[str]], str | None],
                 known: str | None = None) -> dict[str, str]:
    """The names that fail `trial` (None: passes; else the reason), found by halving the parts that fail.

    When a failing part's first half passes, its second half is known to fail without a trial of its own (so a
    model with few failing groups costs few surgeries, and one with none costs one). Each trial holds only its
    part (a smaller surgery): names that fail only together with another are found as one of the two, not
    always the right one, so the caller checks the union. `known`: the reason all names failed together.
    """
    failed: dict[str, str] = {}

    def split(part: list[str], reason: str | None) -> bool:
        if reason is None:
            reason = trial(part)
            if reason is None:
                return True
        if len(part) == 1:
            failed[part[0]] = reason
            return False
        half = len(part) // 2
        passes = split(part[:half], None)
        split(part[half:], reason if passes else None)
        return False

    if names:
        split(list(names), known)
    return failed


def _probe_channels(group: ChannelGroup) -> list[int]:
    """Two positions (one if there are two), in every block."""
    units = group.size // group.blocks
    positions = sorted({0, units // 2}) if units > 2 else [0]
    return [b * units + p for b in range(group.blocks) for p in positions]


PROBE_SIZES = (32, 64, 96, 128)


def probe_input(example: torch.Tensor, model: nn.Module | None = None,
                output_shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """A seeded random batch (at least 2) shaped like `example`, on which surgeries are checked.

    With `model`, images are probed at the smallest of PROBE_SIZES below their own size that the model takes with
    an output of the same shape: a channel's coupling does not depend on the resolution, and the float64 checks
    then cost a fraction (224 -> 32: 49x fewer positions). A model whose outputs depend on the size (a flatten
    before a linear layer) keeps the full size; one that shrinks its input a lot (Inception) gets a larger probe.
    """
    g = torch.Generator().manual_seed(0)
    shape = (max(2, example.shape[0]), *example.shape[1:])
    full = torch.randn(shape, generator=g, dtype=example.dtype).to(example.device)
    if model is None or example.dim() != 4:
        return full
    for size in PROBE_SIZES:
        if size >= max(example.shape[2:]):
            break
        small = full[..., :min(size, shape[2]), :min(size, shape[3])].contiguous()
        try:
            with torch.no_grad():
                y_small = model(small[:1])
                if output_shape is None:
                    output_shape = tuple(model(full[:1]).shape)
        except SURGERY_ERRORS:
            continue
        if isinstance(y_small, torch.Tensor) and tuple(y_small.shape[1:]) == tuple(output_shape[1:]):
            return small
    return full


def _channelwise(grad_fn) -> bool:
    name = _op_name(grad_fn).lower()
    if name in _CHANNELWISE_OPS:
        return True
    if name in _REDUCTIONS:
        sizes = getattr(grad_fn, "_saved_self_sym_sizes", None)
        dims = getattr(grad_fn, "_saved_dim", None)
        if sizes is not None and dims is not None:
            return 1 not in {d % len(sizes) for d in dims}
    return False


def _op_name(grad_fn) -> str:
    name = grad_fn.name() if grad_fn is not None and hasattr(grad_fn, "name") else str(grad_fn)
    return re.sub(r"Backward\d*$", "", name)


def _output_layers(model: nn.Module, x: torch.Tensor) -> tuple[set[str], tuple[int, ...] | None]:
    """Names of layers whose output tensor is the model's output, or a view of it (a 1x1 conv classifier and a
    flatten): their channels are class scores. Also the shape of that output (None if it is not one tensor)."""
    outputs: dict[tuple[int, int], str] = {}
    alive: list[torch.Tensor] = []  # keep every output alive, so that no memory is reused by a later tensor

    def remember(name):
        def hook(module, inputs, output):
            if isinstance(output, torch.Tensor):
                alive.append(output)
                outputs.setdefault(_memory(output), name)  # a forward hook must return None, or it replaces it
        return hook

    handles = [m.register_forward_hook(remember(n))
               for n, m in model.named_modules() if n and isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    try:
        y = model(x)
    finally:
        for h in handles:
            h.remove()
    ys = [t for t in (y if isinstance(y, (tuple, list)) else (y,)) if isinstance(t, torch.Tensor)]
    return ({outputs[_memory(t)] for t in ys if _memory(t) in outputs},
            tuple(y.shape) if isinstance(y, torch.Tensor) else None)


def _memory(t: torch.Tensor) -> tuple[int, int]:
    """Where a tensor's values live, and how many: the same for a tensor and a reshaped view of all of it."""
    return t.untyped_storage().data_ptr(), t.numel()


class _record_op_owners:
    """Forward hooks that remember which module ran each autograd node (the innermost one), to name layers in
    reports: every node between a module's inputs and its output is its own."""

    def __init__(self, model: nn.Module) -> None:
        self.owners: dict[object, str] = {}
        self.modules: dict[str, nn.Module] = {}
        self.handles = [m.register_forward_hook(self._hook(n)) for n, m in model.named_modules() if n]

    def _hook(self, name: str):
        def hook(module, inputs, output):
            if not isinstance(output, torch.Tensor) or output.grad_fn is None:
                return
            label = f"{name} ({type(module).__name__})"
            self.modules[label] = module
            stop = {t.grad_fn for t in inputs if isinstance(t, torch.Tensor) and t.grad_fn is not None}
            stack, seen = [output.grad_fn], set()
            while stack:
                fn = stack.pop()
                if fn is None or fn in stop or fn in seen:
                    continue
                seen.add(fn)
                self.owners.setdefault(fn, label)  # inner modules' hooks run first: the innermost owner wins
                stack.extend(f for f, _ in fn.next_functions)
        return hook

    def unknown_layer(self, label: str) -> bool:
        """Whether the module behind `label` has parameters of its own that no rule knows how to cut."""
        module = self.modules.get(label)
        return (module is not None and rule_for(module) is None
                and any(True for _ in module.parameters(recurse=False)))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

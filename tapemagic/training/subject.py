"""What is trained, in one of the seed's three styles: raw Variables, a Keras model, a step.

Owns the Trainer's `params`, `predict`, `model` and `step`. `resolve` checks which style
the arguments describe and builds nothing; `build` (on a sample batch, inside the device
or strategy scope) creates an unbuilt model's weights, finds every variable a user step
touches, and returns the complete, frozen `Style` the rest of training reads.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tapemagic.variables import unwrap

KINDS = ("params", "model", "step")


@dataclass(frozen=True)
class SubjectSpec:
    """The checked arguments of one style; nothing is built yet."""

    kind: str  # one of KINDS
    params: list | None  # the user's Variables (params=, also alongside a step)
    names: list[str]  # their display names (empty without params)
    forward: Callable[[Any, bool], Any] | None  # (x, training) -> y_pred
    user_step: Callable[[Any, Any], Any] | None = None
    model: Any = None


@dataclass(frozen=True)
class Style:
    """What is trained and how its predictions are made, complete once built."""

    kind: str  # one of KINDS
    trainable: list  # variables the trainer differentiates (a step's trainable ones)
    names: list[str]  # display names of `trainable`
    weights: list  # all model state: trainable, BatchNorm statistics, RNG seeds
    forward: Callable[[Any, bool], Any] | None  # (x, training) -> y_pred
    user_step: Callable[[Any, Any], Any] | None = None
    model: Any = None
    lr_variable: Any = None  # a step's own optimizer learning rate, when found


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Keras wraps a layer's error: its first line only names the call, the cause comes next,
# then an "Arguments received" block.
_KERAS_WRAPPER = "Exception encountered when calling"
_OP_PREFIX = re.compile(r"^\{\{function_node [^}]*\}\}\s*")
_OP_SUFFIX = re.compile(r"\s*\[Op:\w+\]( name:.*)?$")


def first_line(err: BaseException) -> str:
    """'TypeError: the first line of its message', for one-line errors that wrap it (for a
    Keras layer's error, the line that says what is wrong, not the one naming the call)."""
    lines = [ln.strip() for ln in _ANSI.sub("", str(err)).splitlines() if ln.strip()]
    text = lines[0] if lines else ""
    if text.startswith(_KERAS_WRAPPER) and len(lines) > 1:
        text = lines[1] if not lines[1].startswith("Arguments received") else text
    text = _OP_SUFFIX.sub("", _OP_PREFIX.sub("", text))  # an eager op's name and device
    return f"{type(err).__name__}: {text}"


_FRAME = re.compile(r'^\s*File "([^"]+)", line (\d+), in (\S*)')
_RAISED = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Warning)): (.*)$")
_ASSERT = re.compile(r"^assertion failed: \[(.*?)\](.*)$")
_NODE = re.compile(r" \([\w/]+:\d+\)")
_LIBRARIES = tuple(
    os.path.dirname(m.__file__) + os.sep for m in (tf, keras, np) if getattr(m, "__file__", None)
) + (os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep,)


def traced_message(err: BaseException) -> str | None:
    """For an error that carries TensorFlow's trace (raised while tracing a tf.function,
    "in user code: ...", or while running one, "Graph execution error: ..."): the user's
    own message, then where in the user's code it was raised, '(in fn, file, line N)'.
    None for any other error."""
    text = _ANSI.sub("", err.message if isinstance(err, tf.errors.OpError) else str(err))
    traced = text.startswith("in user code:")
    if not (traced or text.startswith("Graph execution error:")):
        return None
    lines = text.splitlines()
    frames = [(i, m) for i, m in ((i, _FRAME.match(ln)) for i, ln in enumerate(lines)) if m]
    after = lines[frames[-1][0] + 1 :] if frames else lines[1:]
    message = _raised_message(after) or (lines[-1].strip() if lines else type(err).__name__)
    # A trace of a traced function starts inside it; a graph error's starts at the
    # program's first line, so the user's frames before the library's are the caller's.
    where = _user_frame([m for _, m in frames], inside_already=traced)
    return f"{message} ({where})" if where else message


def _raised_message(lines: Sequence[str]) -> str:
    """The raised message among the lines after the trace's last frame."""
    rest = [ln.strip() for ln in lines if ln.strip()]
    rest = [ln for ln in rest if not ln.startswith(("[[", "[Op:"))]
    raised = [k for k, ln in enumerate(rest) if _RAISED.match(ln)]
    rest = rest[raised[0] :] if raised else rest  # past the last frame's source line
    for k, line in enumerate(rest):
        exc = _RAISED.match(line)
        if exc:  # a Python exception raised while tracing: "ValueError: ..."
            line = exc.group(2)
        if line.startswith(_KERAS_WRAPPER):  # Keras names the call, then the cause
            causes = [ln for ln in rest[k + 1 :] if not ln.startswith("Arguments received")]
            line = causes[0] if causes else line
        asserted = _ASSERT.match(line)
        if asserted:  # tf.debugging: "assertion failed: [the user's message] [values]..."
            user = asserted.group(1)
            detail = _NODE.sub("", asserted.group(2)).strip()  # graph names mean nothing here
            return f"{user}: assertion failed {detail}" if detail else user
        if line:
            return line
    return ""


def _user_frame(frames: Sequence[re.Match], inside_already: bool) -> str:
    """'in fn, file.py, line N': the innermost frame outside TensorFlow, Keras, NumPy and
    tapemagic that training code called (not the line that called run())."""
    entered, found = inside_already, None
    for m in frames:
        library = m.group(1).startswith(_LIBRARIES) or "site-packages" in m.group(1)
        entered = entered or library
        if entered and not library:
            found = m
    if found is None:
        return ""
    path, line, func = found.group(1), found.group(2), found.group(3)
    return f"in {func}, {path}, line {line}" if func else f"{path}, line {line}"


def resolve(model: Any, params: Any, predict: Any, step: Any) -> SubjectSpec:
    """Check which style the arguments describe; build nothing yet."""
    if model is not None and params is not None:
        raise ValueError("pass either model= or params= (with predict=), not both")
    if step is not None and not callable(step):
        raise ValueError("step must be a function train_step(x, y) that returns the loss")
    if predict is not None and params is None and step is None:
        raise ValueError("predict= needs params=[the Variables it uses], e.g. params=[a, b]")
    if params is not None and predict is None and step is None:
        raise ValueError("params= needs predict=fn(X) that computes the predictions from them")
    if model is None and params is None and step is None:
        raise ValueError(
            "nothing to train: pass params=[a, b] with predict=fn, model=keras_model, "
            "or step=train_step (a function (x, y) -> loss that updates the weights itself)"
        )
    if model is not None and not isinstance(model, keras.Model | keras.layers.Layer):
        raise ValueError(f"model must be a Keras model or layer, got {type(model).__name__}")
    if params is not None:
        names: list[str] | None = None
        if isinstance(params, Mapping):
            names, params = [str(k) for k in params], list(params.values())
        elif isinstance(params, tf.Variable | keras.Variable):
            params = [params]
        else:
            params = list(params)
        names = names or _names_in(predict or step, params)
        _check_params(params, names)
        forward = None if predict is None else (lambda x, training: predict(x))
        kind = "step" if step is not None else "params"
        return SubjectSpec(kind, params, variable_names(params, names), forward, step)
    if model is not None:
        forward = lambda x, training: model(x, training=training)  # noqa: E731
        kind = "step" if step is not None else "model"
        return SubjectSpec(kind, None, [], forward, step, model)
    return SubjectSpec("step", None, [], None, step)


def _names_in(fn: Any, params: Sequence[Any]) -> list[str] | None:
    """The names `fn` uses for the params (closure or globals), as the user wrote them."""
    code = getattr(fn, "__code__", None)
    if code is None:
        return None
    scope = {}
    for name, cell in zip(code.co_freevars, fn.__closure__ or (), strict=False):
        try:
            scope[name] = cell.cell_contents
        except ValueError:  # an empty cell
            continue
    for name in code.co_names:
        if name in fn.__globals__:
            scope.setdefault(name, fn.__globals__[name])
    by_id = {id(v): k for k, v in scope.items()}
    found = [by_id.get(id(p)) for p in params]
    return found if all(found) and len(set(found)) == len(found) else None


def _check_params(params: Sequence[Any], names: Sequence[str] | None) -> None:
    if not params:
        raise ValueError("params is empty: pass the tf.Variables to train, e.g. params=[a, b]")
    for i, p in enumerate(params):
        label = names[i] if names else f"params[{i}]"
        if not isinstance(p, tf.Variable | keras.Variable):
            raise ValueError(
                f"{label} is a {type(p).__name__}, not a tf.Variable; make it "
                "tf.Variable(initial_value) so it can be trained"
            )
        dtype = tf.as_dtype(p.dtype)
        if not dtype.is_floating:
            raise ValueError(
                f"{label} is a {dtype.name} Variable; gradients exist only for float "
                f"Variables: create it as tf.Variable({_float_hint(p)})"
            )
        if not p.trainable:
            raise ValueError(f"{label} has trainable=False; make it trainable or leave it out")


def _float_hint(p: Any) -> str:
    try:
        return repr(float(p.numpy()))
    except (TypeError, ValueError):
        return "..., dtype=tf.float32"


def dtype_of(spec: SubjectSpec) -> tf.DType:
    """The float dtype data should take: the given Variables', else the model's or floatx."""
    for v in spec.params or []:
        if tf.as_dtype(v.dtype).is_floating:
            return tf.as_dtype(v.dtype)
    if spec.model is not None:
        policy = getattr(spec.model, "dtype_policy", None)
        name = getattr(policy, "compute_dtype", None) or keras.config.floatx()
        return tf.as_dtype(name)
    return tf.as_dtype(keras.config.floatx())


def build(spec: SubjectSpec, x_sample: Any, y_sample: Any) -> Style:
    """The complete `Style`: an unbuilt model built on `x_sample`, a step's variables found.

    Run it inside the device (or strategy) scope: weights are created where it puts them."""
    model = spec.model
    if model is not None and not model.built:
        try:
            model(x_sample, training=False)
        except Exception as err:
            shapes = [tuple(t.shape) for t in tf.nest.flatten(x_sample)]
            hint = " (for 1-D X, pass X[:, None])" if any(len(s) == 1 for s in shapes) else ""
            raise ValueError(
                f"the model cannot take a batch of X with shape "
                f"{shapes[0] if len(shapes) == 1 else shapes}{hint}: {first_line(err)}"
            ) from err
    if spec.kind == "params":
        params = list(spec.params)
        return Style("params", params, list(spec.names), params, spec.forward)
    if spec.kind == "model":
        trainable = list(model.trainable_variables)
        weights = list(model.variables)
        names = variable_names(trainable)
        return Style("model", trainable, names, weights, spec.forward, None, model)
    return _build_step(spec, x_sample, y_sample)


def _build_step(spec: SubjectSpec, x: Any, y: Any) -> Style:
    """Trace the user's step once to find (and build) every variable it touches."""
    shapes = (x, y)
    spec_in = tf.nest.map_structure(lambda t: tf.TensorSpec([None, *t.shape[1:]], t.dtype), shapes)
    try:
        concrete = tf.function(spec.user_step).get_concrete_function(*spec_in)
    except Exception as err:
        shapes = [tuple(t.shape) for t in tf.nest.flatten(x)]
        message = traced_message(err) or first_line(err)
        raise ValueError(
            f"step fails when compiled on a batch of X with shape "
            f"{shapes[0] if len(shapes) == 1 else shapes}: {message}"
        ) from err
    found = list(concrete.variables)
    lr = [v for v in found if not v.trainable and v.name.split("/")[-1] == "learning_rate:0"]
    state = [v for v in found if not any(v is r for r in lr)]
    model = spec.model
    weights = list(model.variables) if model is not None else list(spec.params or [])
    known = {id(unwrap(v)) for v in weights}
    weights += [v for v in state if id(v) not in known]
    if spec.params:
        trainable, names = list(spec.params), list(spec.names)
    else:
        if model is not None:
            trainable = list(model.trainable_variables)
        else:
            trainable = [v for v in state if v.trainable]
        names = variable_names(trainable)
    lr_var = lr[0] if len(lr) == 1 else None
    return Style("step", trainable, names, weights, spec.forward, spec.user_step, model, lr_var)


# -- names -------------------------------------------------------------------------------


def variable_names(variables: Sequence[Any], given: Sequence[str] | None = None) -> list[str]:
    """Readable, distinct names: given ones, Keras paths, or tf names without ':0'."""
    names = list(given) if given is not None else []
    if not names:
        for v in variables:
            name = getattr(v, "path", None) or v.name
            names.append(name[:-2] if name.endswith(":0") else name)
    seen: dict[str, int] = {}
    out = []
    for name in names:
        count = seen.get(name, 0)
        seen[name] = count + 1
        out.append(name if count == 0 else f"{name}_{count}")
    return out


def scalar_names(variables: Sequence[Any], names: Sequence[str]) -> list[str]:
    """One name per scalar entry: 'a' for a scalar, 'kernel[0,1]' inside a tensor."""
    out = []
    for v, name in zip(variables, names, strict=True):
        shape = tuple(int(d) for d in v.shape)
        if not shape:
            out.append(name)
        else:
            out.extend(f"{name}[{','.join(map(str, i))}]" for i in np.ndindex(*shape))
    return out


def misplaced(variables: Sequence[Any], names: Sequence[str], device: str) -> list[str]:
    """'name (on /GPU:0)' for each variable that lives elsewhere than `device`."""
    out = []
    for v, name in zip(variables, names, strict=True):
        where = unwrap(v).device
        if "device:" in where:
            where = "/" + where.split("device:")[-1]
            if where != device:
                out.append(f"{name} (on {where})")
    return out

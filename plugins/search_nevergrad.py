"""The ``nevergrad`` search strategy: any optimizer of nevergrad's registry, by name.

Needs ``pip install 'mlrig[nevergrad]'``; nevergrad is imported when the strategy is
built, never when this module is imported.

The space becomes a nevergrad ``ng.p.Dict``: a float range is a bounded ``Scalar`` (a
``Log`` for ``log``); a float range with ``step`` and an int range are integer-cast
indices of their values (a log int range an integer-cast ``Log`` on
``[low - 0.5, high + 0.5]``), so nevergrad knows they are discrete; a choice of three or
more numbers is an ordered ``TransitionChoice``, any other choice a ``Choice``; constants
and one-value parameters are not optimised, only filled in. Conditional parameters are
all parametrized and the inactive ones dropped from each point with
:meth:`SearchSpace.active`: nevergrad sees a fixed-size space in which an inactive
coordinate does not change the result.

nevergrad minimises: under ``maximize`` the negated value is told. A failed trial (or
NaN) is told as the worst value seen so far (``tell_failed_as = "worst"``, held back until
a first value arrives) or not told at all (``"skip"``: nevergrad allows asks that are
never told).

**State.** Pickling an optimizer holds every candidate it archived, about 15 kB each on
a 10-parameter space (3 MB and 0.1 s per save after 200 trials), too much to write after
every ask and tell. The saved state is instead JSON: the settings (space, seed, optimizer,
parallelism, budget), the trial ledger and the log of every call made to nevergrad (each
ask with the candidate's standardized data, each tell with the loss told). nevergrad is
deterministic for a given random state and sequence of calls, so :meth:`restore` rebuilds
the optimizer and replays the log, checking that every replayed ask gives the recorded
data: the restored search is the same search, its next asks those the uninterrupted one
would make. Should a replay differ (another nevergrad version...), the optimizer is
rebuilt from the history instead: every recorded point told with its loss as a point it
did not ask (where the optimizer supports that), so the search goes on informed by all
results, though not on the same random path; ``describe()`` then says
``"restored_from": "history"``.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import math
import secrets
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mlrig.contracts.search import (
    Choice,
    Constant,
    Direction,
    FloatRange,
    IntRange,
    SearchSpace,
    SearchStrategy,
    Trial,
)
from mlrig.errors import MissingExtraError, ValidationError
from mlrig.search.ledger import TrialLedger, check_direction, check_seed, dump_state, load_state

_KIND = "nevergrad"
_VERSIONS = (1,)
#: how many close matches an unknown optimizer name is offered first
_CLOSE_MATCHES = 5


def _nevergrad() -> Any:
    """The nevergrad module, or :class:`MissingExtraError` saying what to install."""
    try:
        with warnings.catch_warnings():
            # cma (a nevergrad dependency) warns at import that matplotlib is missing,
            # which is for its plotting only: nothing a sweep's user can act on
            # (nevergrad imports cma lazily, at the first ask of a CMA-based optimizer:
            # import it here, under the filter)
            warnings.filterwarnings("ignore", message=".*matplotlib", category=UserWarning)
            import nevergrad

            with contextlib.suppress(ImportError):
                import cma  # noqa: F401
    except ModuleNotFoundError as exc:
        msg = (
            "search strategy 'nevergrad' needs: pip install 'mlrig[nevergrad]' "
            f"({exc.name} is missing)"
        )
        raise MissingExtraError(msg, details={"missing": [exc.name]}) from exc
    _numpy_scalars(nevergrad)
    return nevergrad


def _numpy_scalars(ng: Any) -> None:
    """nevergrad 1.0's MetaModel (NGOpt picks it for small continuous spaces) calls
    ``float()`` on one-element arrays, a TypeError since numpy 2.4. Give that one module
    the ``float()`` older numpy had: one-element arrays convert, everything else as
    before."""
    try:
        from nevergrad.optimization import metamodel
    except ImportError:  # pragma: no cover - another layout: nothing to mend
        return
    if getattr(metamodel, "_mlrig_float", False):
        return

    def _float(x: Any = 0.0) -> float:
        if getattr(x, "ndim", 0) and getattr(x, "size", 0) == 1:
            x = x.item()
        return float(x)

    metamodel.float = _float
    metamodel._mlrig_float = True


def optimizer_names() -> list[str]:
    """The names of nevergrad's optimizer registry, sorted."""
    return sorted(_nevergrad().optimizers.registry)


def check_optimizer(name: object) -> str:
    """``name`` if nevergrad's registry has it, else :class:`ValidationError` listing close
    matches first, then every name nevergrad has."""
    names = optimizer_names()
    if isinstance(name, str) and name in names:
        return name
    close: list[str] = []
    if isinstance(name, str):
        folded = {n.lower(): n for n in names}
        if name.lower() in folded:
            close.append(folded[name.lower()])
        for match in difflib.get_close_matches(name.lower(), folded, n=_CLOSE_MATCHES, cutoff=0.6):
            if folded[match] not in close:
                close.append(folded[match])
    version = getattr(_nevergrad(), "__version__", "?")
    hint = f"did you mean {', '.join(close)}? " if close else ""
    msg = (
        f"search.nevergrad optimizer {name!r} is not in nevergrad's registry; {hint}"
        f"nevergrad {version} has {len(names)}: {', '.join(names)}"
    )
    raise ValidationError(
        msg, details={"field": "optimizer", "value": name, "close": close, "allowed": names}
    )


class NevergradOptions(BaseModel):
    """``[search.nevergrad]`` options (or a sweep's strategy options)."""

    model_config = ConfigDict(extra="forbid")
    #: a name of nevergrad's optimizer registry (``ng.optimizers.registry``): NGOpt,
    #: CMA, TwoPointsDE, PSO, OnePlusOne, RandomSearch...
    optimizer: str = "NGOpt"
    #: what nevergrad is told of a failed trial (or NaN): "worst" = the worst value told
    #: so far; "skip" = nothing (nevergrad allows asks never told)
    tell_failed_as: Literal["worst", "skip"] = "worst"
    #: the budget nevergrad is given when the sweep sets no trial count (NGOpt picks its
    #: optimizer by budget, and some of those it picks need one); asks may go past it
    default_budget: int = Field(default=100, ge=1, le=10_000_000)


class _Diverged(Exception):
    """A replayed ask did not give the recorded candidate."""


@contextmanager
def _quiet(ng: Any) -> Any:
    """nevergrad's advice warnings (suboptimal settings, clipped losses) silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ng.errors.NevergradWarning)
        yield


def _random_state(seed: int) -> Any:
    import numpy as np

    words = [seed & 0xFFFFFFFF, seed >> 32] if seed >= 2**32 else seed
    return np.random.RandomState(words)


def _parametrize(ng: Any, space: SearchSpace) -> tuple[dict[str, Any], dict, dict[str, Any]]:
    """The nevergrad parameters of ``space``, their decoders (raw value -> parameter
    value) and the fixed values (constants and one-value parameters)."""
    params: dict[str, Any] = {}
    decoders: dict[str, Callable[[Any], Any]] = {}
    fixed: dict[str, Any] = {}
    for name, param in space.params.items():
        if isinstance(param, Constant) or param.size(None) == 1:
            fixed[name] = param.from_unit(0.5)
        elif isinstance(param, FloatRange) and param.step is None:
            lo, hi = param.low, param.high
            if param.log:
                try:
                    params[name] = ng.p.Log(lower=lo, upper=hi)
                except ValueError:  # subnormal or very narrow: its own bounds check fails
                    params[name] = ng.p.Scalar(lower=math.log(lo), upper=math.log(hi))
                    decoders[name] = lambda v, lo=lo, hi=hi: min(max(math.exp(float(v)), lo), hi)
                    continue
            else:
                params[name] = ng.p.Scalar(lower=lo, upper=hi)
            decoders[name] = lambda v, lo=lo, hi=hi: min(max(float(v), lo), hi)
        elif isinstance(param, IntRange) and param.log:
            lo, hi = param.low, param.high
            params[name] = ng.p.Log(lower=lo - 0.5, upper=hi + 0.5).set_integer_casting()
            decoders[name] = lambda v, lo=lo, hi=hi: min(max(int(v), lo), hi)
        elif isinstance(param, FloatRange | IntRange):
            # the k-th of n values, k an integer-cast scalar with an equal share per value
            n = param.size()
            params[name] = ng.p.Scalar(lower=-0.5, upper=n - 0.5).set_integer_casting()
            decoders[name] = _index_decoder(param, n)
        elif isinstance(param, Choice):
            n = len(param.options)
            ordered = n >= 3 and all(
                isinstance(o, int | float) and not isinstance(o, bool) for o in param.options
            )
            if ordered:
                order = sorted(range(n), key=lambda i, o=param.options: o[i])
                params[name] = ng.p.TransitionChoice(order)
            else:
                params[name] = ng.p.Choice(list(range(n)))
            decoders[name] = _index_decoder(param, n)
        else:  # pragma: no cover - the space admits no other kind
            msg = f"parameter {name!r}: nevergrad cannot search a {type(param).__name__}"
            raise ValidationError(msg, details={"parameter": name})
    return params, decoders, fixed


def _index_decoder(param: Any, n: int) -> Callable[[Any], Any]:
    """Index ``k`` -> the parameter's k-th value, through its own ``from_unit`` (so the
    value is normalised exactly as the space normalises it)."""
    return lambda k: param.from_unit((min(max(int(k), 0), n - 1) + 0.5) / n)


class NevergradSearch(SearchStrategy):
    """Ask/tell through a nevergrad optimizer (``NGOpt`` unless ``optimizer`` says)."""

    Options = NevergradOptions

    def __init__(self, options: NevergradOptions) -> None:
        super().__init__(options)
        self._ng = _nevergrad()
        self.optimizer_name = check_optimizer(options.optimizer)
        self.tell_failed_as = options.tell_failed_as
        self.default_budget = options.default_budget
        self.space: SearchSpace | None = None
        self.ledger: TrialLedger | None = None
        self.seed = 0
        self.parallelism = 1
        self.budget = 0
        self.restored_from: str | None = None
        self._direction = "minimize"
        self._optimizer: Any = None
        self._decoders: dict[str, Callable[[Any], Any]] = {}
        self._fixed: dict[str, Any] = {}
        #: trial number -> nevergrad candidate, for the trials asked and not yet told
        self._candidates: dict[int, Any] = {}
        #: failed trials waiting for a first value to be told as the worst one
        self._pending: dict[int, Any] = {}
        self._worst: float | None = None
        #: the call log, as comma-separated JSON arrays (see the module docstring)
        self._log = bytearray()
        self._history = False  # rebuilding from the history: asks are not replayed

    # --- lifecycle ----------------------------------------------------------------------

    def start(
        self,
        space: SearchSpace,
        *,
        direction: Direction,
        seed: int | None,
        parallelism: int = 1,
        budget: int | None = None,
    ) -> None:
        if not isinstance(space, SearchSpace):
            space = SearchSpace.from_dict(space)
        direction = check_direction(direction)  # type: ignore[assignment]
        seed = check_seed(seed)
        self._setup(
            space,
            direction=direction,
            seed=secrets.randbits(32) if seed is None else seed,
            parallelism=_positive("parallelism", parallelism),
            budget=self.default_budget if budget is None else _positive("budget", budget),
        )
        self.ledger = TrialLedger(direction=direction)

    def _setup(
        self, space: SearchSpace, *, direction: str, seed: int, parallelism: int, budget: int
    ) -> None:
        """Build the parametrization and the optimizer; nothing asked yet."""
        ng = self._ng
        params, self._decoders, self._fixed = _parametrize(ng, space)
        if not params:
            msg = (
                "the space has nothing for nevergrad to search: every parameter is a constant "
                "or has a single value; give at least one range or choice"
            )
            raise ValidationError(msg, details={"field": "space"})
        parametrization = ng.p.Dict(**params)
        parametrization.random_state = _random_state(seed)
        name = self.optimizer_name
        factory = ng.optimizers.registry[name]
        if parallelism > 1 and getattr(factory, "no_parallelization", False):
            msg = (
                f"nevergrad optimizer {name!r} runs one trial at a time; use parallelism 1 "
                f"or another optimizer (parallelism is {parallelism})"
            )
            raise ValidationError(msg, details={"field": "optimizer", "value": name})
        try:
            with _quiet(ng):
                optimizer = factory(
                    parametrization=parametrization, budget=budget, num_workers=parallelism
                )
        except ImportError as exc:
            raise self._missing(exc) from exc
        except Exception as exc:
            msg = f"nevergrad optimizer {name!r} cannot search this space: {exc}"
            raise ValidationError(msg, details={"field": "optimizer", "value": name}) from exc
        self.space = space
        self.seed = seed
        self.parallelism = parallelism
        self.budget = budget
        self._direction = direction
        self._optimizer = optimizer
        self._candidates = {}
        self._pending = {}
        self._worst = None
        self._log = bytearray()
        self._history = False

    def _missing(self, exc: ImportError) -> ValidationError:
        name = self.optimizer_name
        msg = (
            f"nevergrad optimizer {name!r} needs a package that is not installed ({exc}); "
            "install it or choose another optimizer"
        )
        return ValidationError(msg, details={"field": "optimizer", "value": name})

    def _ready(self) -> tuple[SearchSpace, TrialLedger]:
        if self.space is None or self.ledger is None:
            msg = "the nevergrad search was not started: call start() or restore() first"
            raise ValidationError(msg)
        return self.space, self.ledger

    # --- the calls to nevergrad, each logged ---------------------------------------------

    def _record(self, event: list[Any]) -> None:
        if self._log:
            self._log += b","
        self._log += json.dumps(event, separators=(",", ":"), allow_nan=False).encode()

    def _ask(self, number: int, recorded: list[float] | None = None) -> Any:
        """A new candidate for trial ``number``; during a replay, check it is the recorded
        one (or, rebuilding from the history, make the recorded one)."""
        ng, optimizer = self._ng, self._optimizer
        if self._history and recorded is not None:
            import numpy as np

            candidate = optimizer.parametrization.spawn_child()
            candidate.set_standardized_data(np.asarray(recorded, dtype=float))
            data = recorded
        else:
            try:
                with _quiet(ng):
                    candidate = optimizer.ask()
            except Exception as exc:  # an optimizer that imports its package on first use
                missing = _import_error(exc)
                if missing is None:
                    raise
                raise self._missing(missing) from exc
            data = candidate.get_standardized_data(reference=optimizer.parametrization).tolist()
            if recorded is not None and data != recorded:
                raise _Diverged(number)
        self._candidates[number] = candidate
        self._record(["a", number, data])
        return candidate

    def _tell(self, number: int, loss: float) -> None:
        """Tell nevergrad the ``loss`` of trial ``number`` (outstanding or pending)."""
        ng = self._ng
        candidate = self._candidates.pop(number, None)
        if candidate is None:
            candidate = self._pending.pop(number)
        try:
            with _quiet(ng):
                self._optimizer.tell(candidate, loss)
        except ng.errors.TellNotAskedNotSupportedError:
            if not self._history:
                raise
            # rebuilt from the history: this optimizer learns only from its own asks
        self._worst = loss if self._worst is None else max(self._worst, loss)
        self._record(["t", number, loss])

    def _drop(self, number: int) -> None:
        """Forget trial ``number``'s candidate: nevergrad is told nothing of it."""
        self._candidates.pop(number)
        self._record(["x", number])

    def _hold(self, number: int) -> None:
        """Keep failed trial ``number`` until there is a worst value to tell it."""
        self._pending[number] = self._candidates.pop(number)
        self._record(["w", number])

    def _replay(self, events: list[Any]) -> None:
        for event in events:
            kind, number = event[0], int(event[1])
            if kind == "a":
                self._ask(number, [float(x) for x in event[2]])
            elif kind == "t":
                self._tell(number, float(event[2]))
            elif kind == "x":
                self._drop(number)
            elif kind == "w":
                self._hold(number)
            else:
                msg = f"unknown event {kind!r}"
                raise ValueError(msg)

    # --- ask / tell ---------------------------------------------------------------------

    def ask(self) -> Trial | None:
        space, ledger = self._ready()
        number = ledger.next_number
        candidate = self._ask(number)
        value = candidate.value  # computed afresh on every access: once, not per parameter
        point = {name: decode(value[name]) for name, decode in self._decoders.items()}
        point.update(self._fixed)
        params = space.active(point)
        extra: dict[str, Any] = {"optimizer": self.optimizer_name}
        inactive = [name for name in self._decoders if name not in params]
        if inactive:
            extra["inactive"] = inactive
        return ledger.new(params, extra)

    def tell(self, trial: Trial, value: float) -> None:
        _, ledger = self._ready()
        if ledger.record(trial, value) is None:  # NaN, inf: failed
            self._failed(trial.number)
            return
        loss = float(value) if self._direction == "minimize" else -float(value)
        first = self._worst is None
        self._tell(trial.number, loss)
        if first:
            for number in list(self._pending):
                self._tell(number, self._worst)  # type: ignore[arg-type]

    def tell_failed(self, trial: Trial, reason: str | None = None) -> None:
        _, ledger = self._ready()
        ledger.record_failed(trial)
        self._failed(trial.number)

    def _failed(self, number: int) -> None:
        if self.tell_failed_as == "skip":
            self._drop(number)
        elif self._worst is None:
            self._hold(number)
        else:
            self._tell(number, self._worst)

    # --- state --------------------------------------------------------------------------

    def save(self) -> bytes:
        space, ledger = self._ready()
        head = dump_state(
            _KIND,
            1,
            {
                "optimizer": self.optimizer_name,
                "tell_failed_as": self.tell_failed_as,
                "nevergrad": self._ng.__version__,
                "space": space.to_dict(),
                "seed": self.seed,
                "parallelism": self.parallelism,
                "budget": self.budget,
                "ledger": ledger.to_json(),
            },
        )
        return head[:-1] + b',"events":[' + bytes(self._log) + b"]}"

    def restore(self, state: bytes) -> None:
        data = load_state(_KIND, _VERSIONS, state)
        try:
            space = SearchSpace.from_dict(data["space"])
            ledger = TrialLedger.from_json(data["ledger"])
            settings = {
                "direction": ledger.direction,
                "seed": int(data["seed"]),
                "parallelism": int(data["parallelism"]),
                "budget": int(data["budget"]),
            }
            optimizer, failed_as = str(data["optimizer"]), data["tell_failed_as"]
            events = list(data["events"])
        except (KeyError, TypeError, ValueError) as exc:
            msg = f"the saved nevergrad search state is damaged ({exc!r})"
            raise ValidationError(msg, details={"field": "state"}) from None
        if failed_as not in ("worst", "skip"):
            msg = f"the saved nevergrad search state is damaged (tell_failed_as {failed_as!r})"
            raise ValidationError(msg, details={"field": "state"})
        # the saved search keeps its own optimizer, whatever the options say now
        self.optimizer_name = check_optimizer(optimizer)
        self.tell_failed_as = failed_as
        self.restored_from = "log"
        try:
            try:
                self._setup(space, **settings)
                self._replay(events)
            except _Diverged:
                self._setup(space, **settings)
                self._history = True
                self.restored_from = "history"
                self._replay(events)
                self._history = False
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            msg = f"the saved nevergrad search state is damaged ({exc!r})"
            raise ValidationError(msg, details={"field": "state"}) from None
        if set(self._candidates) != set(ledger.outstanding):
            msg = (
                "the saved nevergrad search state is damaged: its log and its ledger disagree "
                f"on the outstanding trials ({sorted(self._candidates)} vs "
                f"{sorted(ledger.outstanding)})"
            )
            raise ValidationError(msg, details={"field": "state"})
        self.ledger = ledger

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "strategy": _KIND,
            "optimizer": self.optimizer_name,
            "tell_failed_as": self.tell_failed_as,
            "nevergrad": self._ng.__version__,
        }
        if self.space is None or self.ledger is None:
            return info
        info.update(num_workers=self.parallelism, budget=self.budget, seed=self.seed)
        selected = self._selected()
        if selected and selected != self.optimizer_name:
            info["selected"] = selected
        if self.restored_from:
            info["restored_from"] = self.restored_from
        info.update(self.ledger.summary())
        return info

    def _selected(self) -> str | None:
        """The optimizer a meta-optimizer such as NGOpt picked, once it has picked one
        (read without making it pick: that would draw from the random state)."""
        optimizer, seen = self._optimizer, 0
        while optimizer is not None and seen < 8:
            inner = vars(optimizer).get("_optim")
            if inner is None:
                return str(getattr(optimizer, "name", type(optimizer).__name__))
            optimizer, seen = inner, seen + 1
        return None


def _import_error(exc: BaseException) -> ImportError | None:
    """The ImportError behind ``exc`` (recast optimizers re-raise their thread's errors
    as a RuntimeError caused by them), if any."""
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, ImportError):
            return exc
        exc, seen = exc.__cause__, seen + 1  # type: ignore[assignment]
    return None


def _positive(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        msg = f"{name} must be a positive integer, got {value!r}"
        raise ValidationError(msg, details={"field": name})
    return value

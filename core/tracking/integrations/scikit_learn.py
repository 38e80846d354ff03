"""scikit-learn autologging: the patched ``fit`` behind :func:`mlrig.autolog`.

Every class deriving from ``sklearn.base.BaseEstimator`` that defines ``fit``,
``fit_transform`` or ``fit_predict`` (as a plain function) gets a wrapper; classes
defined later (a module of scikit-learn imported afterwards, the user's own estimators)
get it when they are defined, through a ``__init_subclass__`` hook on ``BaseEstimator``.
When scikit-learn is not imported yet, an import hook does all this the moment
``sklearn.base`` is. One fit at a time is logged in the process: a fit that starts while
another is being logged (a pipeline's steps, a search's candidates, the trees a forest
fits in threads) just runs.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.util
import inspect
import logging
import math
import sys
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlrig.tracking.autolog import AutologConfig
    from mlrig.tracking.run import Run

__all__ = ["disable", "enable", "estimator_params", "training_metrics"]

log = logging.getLogger("mlrig.tracking")

_METHODS = ("fit", "fit_transform", "fit_predict")
_MARK = "__mlrig_autolog__"
#: the longest text a parameter value is logged as
_MAX_TEXT = 500

_lock = threading.Lock()
_config: AutologConfig | None = None
_fitting = False  # a logged fit is running (in some thread)
_patched: dict[tuple[type, str], Callable[..., Any]] = {}
_hook: tuple[type, Any] | None = None  # (BaseEstimator, its own __init_subclass__ or None)
_finder: _WhenImported | None = None
#: autologged fits per run id: the step of the next one's metrics
_fits: dict[str, int] = {}


# --- switching on and off -----------------------------------------------------------------


def enable(config: AutologConfig) -> None:
    """Patch scikit-learn now (imported already) or when ``sklearn.base`` is imported."""
    global _config, _finder
    with _lock:
        _config = config
    if "sklearn.base" in sys.modules:
        _patch_all(sys.modules["sklearn.base"])
    elif _finder is None:
        _finder = _WhenImported("sklearn.base", _patch_all)
        sys.meta_path.insert(0, _finder)


def disable() -> None:
    """Give every patched class its own methods back; stop patching new ones."""
    global _config, _finder, _hook
    with _lock:
        _config = None
        for (cls, name), original in _patched.items():
            setattr(cls, name, original)
        _patched.clear()
        if _hook is not None:
            base, previous = _hook
            if previous is None:
                del base.__init_subclass__
            else:
                base.__init_subclass__ = previous
            _hook = None
        if _finder is not None:
            if _finder in sys.meta_path:
                sys.meta_path.remove(_finder)
            _finder = None


def _patch_all(base_module: Any) -> None:
    global _hook
    base = base_module.BaseEstimator
    with _lock:
        if _config is None:
            return
        if _hook is None:
            previous = base.__dict__.get("__init_subclass__")

            def __init_subclass__(cls: type, **kwargs: Any) -> None:
                if previous is not None:
                    previous.__func__(cls, **kwargs)
                else:
                    super(base, cls).__init_subclass__(**kwargs)
                if _config is not None:
                    _patch_class(cls)

            base.__init_subclass__ = classmethod(__init_subclass__)
            _hook = (base, previous)
        pending, seen = [base], set()
        while pending:
            cls = pending.pop()
            if cls in seen:
                continue
            seen.add(cls)
            _patch_class(cls)
            pending.extend(cls.__subclasses__())


def _patch_class(cls: type) -> None:
    for name in _METHODS:
        original = cls.__dict__.get(name)
        if not inspect.isfunction(original) or getattr(original, _MARK, False):
            continue  # absent, a descriptor (available_if) or patched already
        setattr(cls, name, _wrap(original))
        _patched[(cls, name)] = original


class _WhenImported(importlib.abc.MetaPathFinder):
    """Runs ``callback(module)`` right after module ``name`` is first imported."""

    def __init__(self, name: str, callback: Callable[[Any], None]) -> None:
        self.name = name
        self.callback = callback

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != self.name:
            return None
        global _finder
        if self in sys.meta_path:
            sys.meta_path.remove(self)  # once; and the search below must not find us
        _finder = None
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader, callback = spec.loader, self.callback

        class _Loader(importlib.abc.Loader):
            def create_module(self, spec: Any) -> Any:
                return loader.create_module(spec)

            def exec_module(self, module: Any) -> None:
                loader.exec_module(module)
                try:
                    callback(module)
                except Exception as exc:  # never break the user's import
                    log.warning("mlrig.autolog: could not patch scikit-learn: %s", exc)

            def __getattr__(self, attr: str) -> Any:
                return getattr(loader, attr)

        spec.loader = _Loader()
        return spec


# --- the patched fit ----------------------------------------------------------------------


def _wrap(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def patched(self: Any, *args: Any, **kwargs: Any) -> Any:
        global _fitting
        with _lock:
            config = _config
            if config is None or _fitting:
                config = None
            else:
                _fitting = True
        if config is None:
            return original(self, *args, **kwargs)
        try:
            return _logged_fit(config, original, self, args, kwargs)
        finally:
            with _lock:
                _fitting = False

    setattr(patched, _MARK, True)
    return patched


def _logged_fit(
    config: AutologConfig,
    original: Callable[..., Any],
    estimator: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    from mlrig.tracking import fluent

    run = fluent.active_run()
    own = None
    if run is None:
        try:
            run = own = fluent.start_run(config.experiment, tags={"mlrig.autolog": "sklearn"})
        except Exception as exc:
            _warn(config, f"no run could be started, the fit is not logged: {exc}")
            return original(estimator, *args, **kwargs)
    try:
        result = original(estimator, *args, **kwargs)
    except BaseException as exc:
        if own is not None:
            status = "killed" if isinstance(exc, KeyboardInterrupt) else "failed"
            _end(config, own, status, f"{type(exc).__name__}: {exc}")
        raise
    try:
        _log_fit(config, run, original, estimator, args, kwargs)
    except Exception as exc:
        _warn(config, f"logging the fit of {type(estimator).__name__} failed: {exc}")
    if own is not None:
        _end(config, own, "completed", None)
    return result


def _end(config: AutologConfig, run: Run, status: str, error: str | None) -> None:
    try:
        run.end(status, error=" ".join((error or "").split())[:2000] or None)
    except Exception as exc:
        _warn(config, f"run {run.name!r} could not be ended: {exc}")


def _warn(config: AutologConfig, message: str) -> None:
    if not config.silent:
        log.warning("mlrig.autolog: %s", message)


def _log_fit(
    config: AutologConfig,
    run: Run,
    original: Callable[..., Any],
    estimator: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> None:
    x, y, weight = _fit_data(original, estimator, args, kwargs)
    step = _fits.get(run.id, 0)
    _fits[run.id] = step + 1
    cls = type(estimator)
    run.set_tags(
        {"estimator_name": cls.__name__, "estimator_class": f"{cls.__module__}.{cls.__qualname__}"}
    )
    _attempt(config, "its parameters", run.log_params, estimator_params(estimator))
    best = getattr(estimator, "best_params_", None)
    if isinstance(best, Mapping):
        _attempt(config, "the best parameters", run.log_params, _best(best))
    metrics: dict[str, float] = {}
    if config.log_training_metrics and x is not None:
        metrics = training_metrics(estimator, x, y, weight)
        if metrics:
            run.log_metrics(metrics, step=step, kind="train")
    cv_score = getattr(estimator, "best_score_", None)
    if isinstance(cv_score, (int, float)):
        run.log_metrics({"best_cv_score": float(cv_score)}, step=step, kind="validation")
    if config.log_datasets and _is_table(x):
        _attempt(config, "the training data", run.log_dataset, x, name="training")
    if config.log_models:
        model = getattr(estimator, "best_estimator_", None) or estimator
        name = config.registered_model_name or type(model).__name__
        version = run.log_model(model, name=name, sample=_head(x))
        run.set_tags({"mlrig.autolog.model": f"{name}/{version.get('version')}"})


def _attempt(
    config: AutologConfig, what: str, call: Callable[..., Any], *args: Any, **kwargs: Any
) -> None:
    """One logging call whose failure (a param logged before with another value...) is a
    warning, so the rest is still logged."""
    try:
        call(*args, **kwargs)
    except Exception as exc:
        _warn(config, f"{what} could not be logged: {exc}")


def _fit_data(
    original: Callable[..., Any], estimator: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Any, Any, Any]:
    """``(X, y, sample_weight)`` of a fit call (``None`` for what it was not given)."""
    try:
        bound = inspect.signature(original).bind_partial(estimator, *args, **kwargs).arguments
    except TypeError:
        bound = {}
    extra = {}
    for value in bound.values():  # **fit_params
        if isinstance(value, dict) and "sample_weight" in value:
            extra = value
    x = bound.get("X", args[0] if args else None)
    y = bound.get("y", bound.get("Y", args[1] if len(args) > 1 else None))
    weight = bound.get("sample_weight", extra.get("sample_weight"))
    return x, y, weight


# --- what is logged -----------------------------------------------------------------------


def estimator_params(estimator: Any) -> dict[str, Any]:
    """``get_params(deep=True)`` as JSON values: nested estimators by their class name
    (their own parameters come as ``name__param``), functions by their dotted name, other
    objects as their text (at most 500 characters)."""
    try:
        params = estimator.get_params(deep=True)
    except Exception:
        return {}
    return {str(k): _plain(v) for k, v in sorted(params.items())}


def _best(best: Mapping[str, Any]) -> dict[str, Any]:
    return {f"best_{k}": _plain(v) for k, v in best.items()}


def _plain(value: Any, depth: int = 0) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value if not isinstance(value, str) else value[:_MAX_TEXT]
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)  # params are JSON: "nan"
    if hasattr(value, "get_params") and not isinstance(value, type):  # an estimator
        return type(value).__name__
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # a numpy scalar
        return value.item()
    if isinstance(value, (list, tuple)) and depth < 3 and len(value) <= 100:
        return [_plain(v, depth + 1) for v in value]
    if isinstance(value, Mapping) and depth < 3 and len(value) <= 100:
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    if inspect.isfunction(value) or inspect.isclass(value) or inspect.isbuiltin(value):
        return f"{value.__module__}.{value.__qualname__}"
    text = repr(value)
    if " at 0x" in text:  # an address: another value in every process
        return type(value).__name__
    return text[:_MAX_TEXT]


def training_metrics(estimator: Any, x: Any, y: Any, sample_weight: Any = None) -> dict[str, float]:
    """Metrics of a fitted estimator on its training data.

    Classifiers: ``accuracy``, ``precision``, ``recall``, ``f1`` (weighted over the
    classes), ``log_loss`` and ``roc_auc`` (with ``predict_proba``), ``score``.
    Regressors: ``mse``, ``rmse``, ``mae``, ``r2``, ``score``. Others: ``score`` when they
    have one. A metric that does not apply (multi-output...) is left out."""
    from sklearn import base
    from sklearn import metrics as m

    found: dict[str, float] = {}
    w = sample_weight

    def put(name: str, compute: Callable[[], Any]) -> None:
        try:
            found[name] = float(compute())
        except Exception as exc:  # not for this estimator or target
            log.debug("mlrig.autolog: %s not computed: %s", name, exc)

    def score() -> Any:
        return estimator.score(x, y) if w is None else estimator.score(x, y, sample_weight=w)

    if y is None:
        if callable(getattr(estimator, "score", None)) and base.is_clusterer(estimator):
            put("score", lambda: estimator.score(x))
        return found
    if base.is_classifier(estimator) and callable(getattr(estimator, "predict", None)):
        try:
            predicted = estimator.predict(x)
        except Exception:
            return found
        put("accuracy", lambda: m.accuracy_score(y, predicted, sample_weight=w))
        averaged = {"precision": m.precision_score, "recall": m.recall_score, "f1": m.f1_score}
        for name, metric in averaged.items():
            weighted = functools.partial(metric, average="weighted", zero_division=0)
            put(name, lambda f=weighted: f(y, predicted, sample_weight=w))
        if callable(getattr(estimator, "predict_proba", None)):
            try:
                proba = estimator.predict_proba(x)
            except Exception:
                proba = None
            if proba is not None:
                classes = getattr(estimator, "classes_", None)
                put("log_loss", lambda: m.log_loss(y, proba, sample_weight=w, labels=classes))
                put("roc_auc", lambda: _roc_auc(y, proba, w, classes))
        put("score", score)
    elif base.is_regressor(estimator) and callable(getattr(estimator, "predict", None)):
        try:
            predicted = estimator.predict(x)
        except Exception:
            return found
        put("mse", lambda: m.mean_squared_error(y, predicted, sample_weight=w))
        if "mse" in found:
            found["rmse"] = math.sqrt(found["mse"])
        put("mae", lambda: m.mean_absolute_error(y, predicted, sample_weight=w))
        put("r2", lambda: m.r2_score(y, predicted, sample_weight=w))
        put("score", score)
    elif callable(getattr(estimator, "score", None)):
        put("score", score)
    return found


def _roc_auc(y: Any, proba: Any, weight: Any, classes: Any) -> float:
    from sklearn.metrics import roc_auc_score

    if proba.ndim == 2 and proba.shape[1] == 2:
        return roc_auc_score(y, proba[:, 1], sample_weight=weight)
    return roc_auc_score(
        y, proba, sample_weight=weight, multi_class="ovr", average="weighted", labels=classes
    )


def _is_table(x: Any) -> bool:
    """A DataFrame or a NumPy array (what a dataset record is computed from)."""
    return (hasattr(x, "columns") and hasattr(x, "dtypes")) or (
        hasattr(x, "shape") and hasattr(x, "dtype") and hasattr(x, "tobytes")
    )


def _head(x: Any, rows: int = 5) -> Any:
    """The first rows of the training data: the signature's sample."""
    if x is None:
        return None
    if hasattr(x, "iloc"):
        return x.iloc[:rows]
    try:
        return x[:rows]
    except Exception:
        return None

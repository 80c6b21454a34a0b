"""CTR models selectable by name: ``build_model("deepfm", spec)``."""
import inspect

from .base import CTRModel
from .dcn import DCN
from .deepfm import DeepFM
from .dlrm import DLRM
from .fm import FM
from .lr import LR
from .predict import predict, write_predictions
from .wide_deep import WideDeep
# The loop and the step moved to sparse_train.training; re-exported here
# (through the old modules, which then stay importable as well).
from .fit import fit, report  # noqa: E402,I001
from .training import evaluate, train_step  # noqa: E402,I001

__all__ = ["build_model", "MODELS", "CTRModel", "LR", "FM", "WideDeep", "DeepFM", "DCN",
           "DLRM", "train_step", "evaluate", "fit", "report", "model_options", "predict",
           "write_predictions"]

#: Registry name -> model class.
MODELS = {cls.name: cls for cls in (LR, FM, WideDeep, DeepFM, DCN, DLRM)}

_COMMON_OPTIONS = ("scope", "combiner", "tables", "initializer", "embedding_init_scale",
                   "dynamic", "table_dtype", "table_rounding")


def model_options(name):
    """Keyword options ``build_model(name, ...)`` accepts, besides the spec,
    ``embedding_dim`` and ``seed``, with their defaults."""
    cls = _model_class(name)
    options = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
               if k not in ("self", "spec", "embedding_dim", "seed", "options")}
    base = inspect.signature(CTRModel.__init__).parameters
    options.update({k: base[k].default for k in _COMMON_OPTIONS})
    return options


def _model_class(name):
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; models are {sorted(MODELS)}")
    return MODELS[name]


def build_model(name, spec, embedding_dim=16, seed=0, **options):
    """A CTR model by registry name: ``"lr"``, ``"fm"``, ``"wide_deep"``,
    ``"deepfm"``, ``"dcn"`` or ``"dlrm"``.

    Args:
        name: registry name.
        spec: the data's ``DataSpec``.
        embedding_dim: D of the embedding tables.
        seed: initializer seed.
        **options: the model's options (``model_options(name)``), e.g.
            ``hidden_units=(400, 400, 400)`` for DeepFM, ``scope``,
            ``combiner``, ``tables``.

    Returns:
        a ``CTRModel``: ``forward(batch) -> [B] logits Tensor``, ``loss(batch)``,
        ``predict(batch)``, ``sparse_variables()``, ``dense_variables()``,
        ``variables()``.

    >>> from sparse_train.data import DataSpec, FeatureSpec
    >>> spec = DataSpec((FeatureSpec("user", 100), FeatureSpec("item", 50)), ("age",))
    >>> model = build_model("deepfm", spec, embedding_dim=8, hidden_units=(16, 16), scope="doc")
    >>> [v.name for v in model.dense_variables()][:3]
    ['doc/linear/dense/kernel', 'doc/linear/bias', 'doc/deep/dense_0/kernel']
    """
    cls = _model_class(name)
    unknown = sorted(set(options) - set(model_options(name)))
    if unknown:
        raise ValueError(f"model {name!r} has no option(s) {unknown}; its options are "
                         f"{sorted(model_options(name))}")
    return cls(spec, embedding_dim=embedding_dim, seed=seed, **options)

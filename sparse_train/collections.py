"""Named collections of variables (TF1 ``tf.add_to_collection`` /
``tf.get_collection``), used to split a model's variables between optimizers.

Layers register every Variable they create: in ``GLOBAL_VARIABLES``, in
``TRAINABLE_VARIABLES`` when trainable, and in ``EMBEDDING_VARIABLES``
(tables) or ``DENSE_VARIABLES`` (everything else). The recipe "tables on
AdagradDecay, dense layers on Adam" is then::

    tables = get_collection(EMBEDDING_VARIABLES, scope="deepfm/")
    dense = get_collection(DENSE_VARIABLES, scope="deepfm/")

Collections hold strong references, like TF's default graph, until
``reset_collections()`` (TF ``reset_default_graph``). A value is added at most
once to a collection. ``scope`` filters by NAME PREFIX (``name.startswith``);
TF matches a regular expression at the start of the name, which is the same
for scopes without regex metacharacters.
"""
__all__ = ["add_to_collection", "add_to_collections", "get_collection",
           "get_collection_ref", "get_all_collection_keys", "clear_collection",
           "reset_collections", "GLOBAL_VARIABLES", "TRAINABLE_VARIABLES",
           "EMBEDDING_VARIABLES", "DENSE_VARIABLES"]

#: Every Variable a layer created (TF ``GraphKeys.GLOBAL_VARIABLES``).
GLOBAL_VARIABLES = "variables"
#: Variables an optimizer updates by default (TF ``GraphKeys.TRAINABLE_VARIABLES``).
TRAINABLE_VARIABLES = "trainable_variables"
#: Embedding tables (row-sparse gradients); DeepRec's ``EMBEDDING_VARIABLES``.
EMBEDDING_VARIABLES = "embedding_variables"
#: Dense layer weights and biases (dense gradients).
DENSE_VARIABLES = "dense_variables"

_COLLECTIONS = {}


def add_to_collection(name, value):
    """Append ``value`` to the collection ``name`` (created if missing);
    a value already in it is not added twice.

    >>> reset_collections()
    >>> from sparse_train import Variable
    >>> add_to_collection("mine", Variable([1.0], "a/w"))
    >>> [v.name for v in get_collection("mine")]
    ['a/w']
    """
    items = _COLLECTIONS.setdefault(name, [])
    if not any(item is value for item in items):
        items.append(value)


def add_to_collections(names, value):
    """``add_to_collection(name, value)`` for each name of ``names``."""
    if isinstance(names, str):
        names = (names,)
    for name in names:
        add_to_collection(name, value)


def get_collection(name, scope=None):
    """A new list of the values in collection ``name``, in the order added.

    Args:
        name: the collection's key.
        scope: optional name prefix; only values with a ``name`` attribute
            starting with it are returned.

    >>> reset_collections()
    >>> from sparse_train import Variable
    >>> for n in ("deep/w", "deep/b", "wide/w"):
    ...     add_to_collection(TRAINABLE_VARIABLES, Variable([0.0], n))
    >>> [v.name for v in get_collection(TRAINABLE_VARIABLES, scope="deep/")]
    ['deep/w', 'deep/b']
    """
    items = _COLLECTIONS.get(name, [])
    if scope is None:
        return list(items)
    return [item for item in items
            if isinstance(getattr(item, "name", None), str) and item.name.startswith(scope)]


def get_collection_ref(name):
    """The collection's list itself (created if missing): edits are kept."""
    return _COLLECTIONS.setdefault(name, [])


def get_all_collection_keys():
    """Names of the non-empty collections, sorted."""
    return sorted(key for key, items in _COLLECTIONS.items() if items)


def clear_collection(name):
    """Empty the collection ``name``."""
    _COLLECTIONS.pop(name, None)


def reset_collections():
    """Empty every collection (TF ``reset_default_graph``)."""
    _COLLECTIONS.clear()


def register_variable(var, embedding=False):
    """Called by layers for each Variable they create (see module docstring)."""
    add_to_collection(GLOBAL_VARIABLES, var)
    if var.trainable:
        add_to_collection(TRAINABLE_VARIABLES, var)
    add_to_collection(EMBEDDING_VARIABLES if embedding else DENSE_VARIABLES, var)
